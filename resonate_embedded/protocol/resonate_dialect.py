"""The Resonate dialect (aioresonate 0.13.x, "R") and choosing between R and Sendspin.

R differs from Sendspin v1 (PROTOCOL.md §0, §2.2, §3):

* ``client/hello``: unversioned role ``"player"`` and ``player_support`` with independent
  ``support_*`` lists (the server combines them itself, preferring FLAC > Opus > PCM);
* ``player/update {state: "playing"|"idle", volume, muted}`` instead of ``client/state``;
  no ``client/goodbye``, no ``server/command`` (no remote volume), no ``stream/clear``;
* ``server/hello`` without ``active_roles``/``connection_reason``; ``session/update``
  instead of ``group/update``; ``stream/end`` without a ``payload`` key;
* binary audio type **1** with an unsigned big-endian timestamp, payload from byte 9.

Everything here is pure (no I/O) except :func:`await_server_hello` and
:func:`connect_speaking`, which implement the dialect fallback of PROTOCOL.md §0: send a
Sendspin hello; if no ``server/hello`` arrives within ~3 s or the socket closes,
reconnect and send a Resonate hello.  Messages R shares with Sendspin are parsed into
the same :mod:`~resonate_embedded.protocol.messages` classes, so a session can treat
both dialects alike.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal, Union
from urllib.parse import urlsplit

import attrs
import trio

from resonate_embedded.audio.formats import StreamFormat
from resonate_embedded.protocol.binary import (
    AUDIO_TYPE_RESONATE,
    MAX_BINARY_FRAME_BYTES,
    AudioChunk,
    BinaryFrameError,
)
from resonate_embedded.protocol.connection import Connection, ConnectionClosed, connect
from resonate_embedded.protocol.messages import (
    ClientHello,
    ProtocolError,
    ServerError,
    ServerHello,
    ServerTime,
    StreamEnd,
    StreamStart,
    UnknownMessage,
    parse_server_message,
)

log = logging.getLogger(__name__)

Dialect = Literal["sendspin", "resonate"]
DIALECTS: tuple[Dialect, ...] = ("sendspin", "resonate")
SENDSPIN_PATH = "/sendspin"
RESONATE_PATH = "/resonate"

FALLBACK_HELLO_TIMEOUT_S = 3.0  # waiting this long for server/hello before trying the other dialect
FINAL_HELLO_TIMEOUT_S = 5.0  # the last (or only) dialect to try
R_BIT_DEPTH = 16  # 0.13.2 maps 24-bit to PyAV format 's24', which does not exist
R_CHANNELS = (1, 2)  # "Only mono and stereo layouts are supported"
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)  # R never sends Opus at another rate

_HEADER = struct.Struct(">BQ")


# --------------------------------------------------------------------------- which dialect


def dialect_for(path_or_service: str) -> Dialect | None:
    """The dialect a URL, path or mDNS service type implies; None if it implies none.

    ``/resonate``, ``ws://h:p/resonate``, ``_resonate._tcp.local.`` and
    ``_resonate-server._tcp.local.`` mean Resonate; the ``sendspin`` spellings mean Sendspin.
    """
    text = path_or_service.strip()
    if "://" in text:
        text = urlsplit(text).path
    text = text.lower()
    if text.startswith("/"):
        head = text.strip("/").split("/", 1)[0]
    else:
        head = text.split(".", 1)[0].lstrip("_").removesuffix("-server")
    return head if head in DIALECTS else None  # type: ignore[return-value]


def dialect_candidates(url: str, learned: Dialect | None = None) -> tuple[Dialect, ...]:
    """Dialects to try on ``url``, in order.

    The URL's own hint wins and is tried alone.  Otherwise the dialect that worked last
    time (``learned``) goes first, then the other one; with nothing known, Sendspin first.
    """
    hinted = dialect_for(url)
    if hinted is not None:
        return (hinted,)
    first = learned or "sendspin"
    return (first,) + tuple(d for d in DIALECTS if d != first)


# --------------------------------------------------------------------------- client → server


def resonate_player_support(formats: Sequence[StreamFormat], buffer_capacity: int) -> dict[str, Any]:
    """R's ``player_support`` for a player that can play ``formats`` (in preference order).

    R combines independent lists itself (codec by its fixed FLAC > Opus > PCM order, then
    rate, depth and channel count each on its own), so the lists are built such that
    **every** format R can pick from them is one of ``formats``: only 16-bit mono/stereo
    entries count (R's 24-bit path is broken; Opus only at 8/12/16/24/48 kHz), one codec
    is listed (that of the first
    usable format), and a rate or channel count of a later format of that codec is added
    only if every resulting combination is in ``formats``.  Raises ValueError if no format
    is usable with R.
    """
    usable = [f for f in formats if f.bit_depth == R_BIT_DEPTH and f.channels in R_CHANNELS
              and (f.codec != "opus" or f.sample_rate in OPUS_RATES)]
    if not usable:
        raise ValueError("Resonate servers send only 16-bit mono/stereo; no such format configured")
    codec = usable[0].codec
    have = {(f.sample_rate, f.channels) for f in usable if f.codec == codec}
    rates, channels = [usable[0].sample_rate], [usable[0].channels]
    for f in usable[1:]:
        if f.codec != codec:
            continue
        if f.sample_rate not in rates and all((f.sample_rate, c) in have for c in channels):
            rates.append(f.sample_rate)
        if f.channels not in channels and all((r, f.channels) in have for r in rates):
            channels.append(f.channels)
    return {"support_codecs": [codec], "support_channels": channels,
            "support_sample_rates": rates, "support_bit_depth": [R_BIT_DEPTH],
            "buffer_capacity": buffer_capacity}


def resonate_hello_json(hello: ClientHello) -> str:
    """R's ``client/hello`` for the same player as a Sendspin :class:`ClientHello`."""
    return _dump("client/hello", {
        "client_id": hello.client_id,
        "name": hello.name,
        "version": 1,
        "supported_roles": ["player"],
        "player_support": resonate_player_support(hello.formats, hello.buffer_capacity),
    })


def player_update_json(volume: int, muted: bool, playing: bool) -> str:
    """``player/update`` (R's client/state): all three fields are required."""
    return _dump("player/update", {"state": "playing" if playing else "idle",
                                   "volume": max(0, min(100, volume)), "muted": muted})


def _dump(msg_type: str, payload: dict[str, Any]) -> str:
    return json.dumps({"type": msg_type, "payload": payload}, separators=(",", ":"))


# --------------------------------------------------------------------------- server → client


@attrs.frozen
class SessionUpdate:
    """R's ``session/update`` (a delta).  ``playback_state`` reaches controller and
    metadata clients only; a player-only client gets just ``group_id``."""

    group_id: str | None
    playback_state: str | None


ResonateMessage = Union[ServerHello, ServerTime, StreamStart, StreamEnd, SessionUpdate,
                        ServerError, UnknownMessage]
_SHARED = (ServerHello, ServerTime, StreamStart, StreamEnd, ServerError)


def parse_resonate_message(text: str) -> ResonateMessage:
    """Parse one text frame from an R server.

    Same contract as :func:`~resonate_embedded.protocol.messages.parse_server_message`:
    a typed message, :class:`UnknownMessage` for any type R does not define for players,
    or :class:`ProtocolError`.  ``stream/end`` (no payload) ends every role.
    """
    msg = parse_server_message(text)
    if isinstance(msg, _SHARED):
        return msg
    envelope = json.loads(text)  # valid: parse_server_message accepted it
    if envelope["type"] != "session/update":
        return UnknownMessage(envelope["type"])
    payload = envelope.get("payload") or {}
    group_id, state = payload.get("group_id"), payload.get("playback_state")
    if not isinstance(group_id, (str, type(None))) or not isinstance(state, (str, type(None))):
        raise ProtocolError("session/update: group_id/playback_state is not a string")
    return SessionUpdate(group_id, state)


def parse_resonate_audio_frame(frame: bytes) -> AudioChunk | None:
    """One R binary frame: type 1 = audio (9-byte header, unsigned µs timestamp);
    None for media art (2) and visualisation (3) frames.  Raises BinaryFrameError."""
    if len(frame) > MAX_BINARY_FRAME_BYTES:
        raise BinaryFrameError(f"binary frame of {len(frame)} bytes is too large")
    if not frame:
        raise BinaryFrameError("empty binary frame")
    if frame[0] != AUDIO_TYPE_RESONATE:
        return None
    if len(frame) < _HEADER.size:
        raise BinaryFrameError(f"audio frame of {len(frame)} bytes is shorter than its header")
    _, ts = _HEADER.unpack_from(frame, 0)
    return AudioChunk(ts, bytes(frame[_HEADER.size:]))


# --------------------------------------------------------------------------- the fallback


class NoServerHello(Exception):
    """No dialect got a ``server/hello`` on this URL."""


@attrs.frozen
class Spoken:
    """A connection whose hello exchange is done, and in which dialect."""

    conn: Connection
    dialect: Dialect
    hello: ServerHello


async def await_server_hello(conn: Connection, timeout_s: float) -> ServerHello | None:
    """Read until ``server/hello``; None after ``timeout_s``, when the socket closes, or
    on ``server/error``.  Other frames before it are dropped (no server sends any)."""
    with trio.move_on_after(timeout_s):
        try:
            while True:
                received = await conn.receive()
                if not isinstance(received.data, str):
                    continue
                try:
                    msg = parse_server_message(received.data)
                except ProtocolError as exc:
                    log.warning("ignoring malformed message before server/hello: %s", exc)
                    continue
                if isinstance(msg, ServerHello):
                    return msg
                if isinstance(msg, ServerError):
                    log.warning("server refused the hello: %s", msg.reason)
                    return None
        except ConnectionClosed as exc:
            log.info("server closed the connection before server/hello: %s", exc.reason)
    return None


Connector = Callable[[str], AbstractAsyncContextManager[Connection]]


@asynccontextmanager
async def connect_speaking(url: str, hello_json: Callable[[Dialect], str], *,
                           candidates: Sequence[Dialect] | None = None,
                           connector: Connector = connect,
                           fallback_timeout_s: float = FALLBACK_HELLO_TIMEOUT_S,
                           final_timeout_s: float = FINAL_HELLO_TIMEOUT_S
                           ) -> AsyncIterator[Spoken]:
    """Connect to ``url`` and finish the hello exchange in the first dialect that works.

    For each dialect of ``candidates`` (default :func:`dialect_candidates`), open a fresh
    connection, send ``hello_json(dialect)`` and wait for ``server/hello``
    (``fallback_timeout_s`` while another dialect remains, ``final_timeout_s`` for the
    last).  Yields the open connection; it is closed when the block exits.  Raises
    :class:`NoServerHello` if every dialect failed; connection errors (OSError,
    HandshakeError, ConnectionTimeout) propagate at once, since another dialect cannot
    help with them.
    """
    order = tuple(candidates) if candidates else dialect_candidates(url)
    for index, dialect in enumerate(order):
        timeout = final_timeout_s if index == len(order) - 1 else fallback_timeout_s
        async with connector(url) as conn:
            try:
                await conn.send_text(hello_json(dialect))
            except ConnectionClosed:
                continue
            hello = await await_server_hello(conn, timeout)
            if hello is None:
                log.info("%s: no server/hello in the %s dialect", url, dialect)
                continue
            yield Spoken(conn, dialect, hello)
            return
    raise NoServerHello(f"{url}: no server/hello in any of {', '.join(order)}")
