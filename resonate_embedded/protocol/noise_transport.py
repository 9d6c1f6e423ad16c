"""Encrypted Sendspin: the Noise ``KKpsk2`` handshake and the transport on top of it.

Spec ``connection.md`` §Encryption and ``messaging.md`` (client/init, server/init,
noise/handshake).  The speaker is always the Noise *responder*:

1. we send ``client/init`` (cleartext text frame: our ``client_id`` = static
   public key, ``version`` 1, the suite; ChaCha20-Poly1305 by default because the
   Pi Zero's ARM11 has no AES instructions);
2. the server answers ``server/init`` (its ``server_id`` = static public key),
   then ``noise/handshake`` = Noise message 1, whose payload names the PSK
   (``psk_id`` + ``psk_category``: ``lt`` long-term, ``pr`` pairing, ``sn``
   Sentinel).  The prologue is the exact wire bytes of client/init followed by
   those of server/init;
3. we pick the PSK (a long-term one must belong to *this* ``server_id``), fall
   back to the Sentinel PSK on a lookup miss (initial handshake only), and send
   Noise message 2 with the payload ``{}``.

After that every message is a binary WebSocket frame carrying one Noise
transport message: type byte 0 = JSON text, 1 = fragment, 4 = audio (13-byte
header), …  :class:`SecureConnection` has the interface of
:class:`~resonate_embedded.protocol.connection.Connection` (``send_text``,
``receive`` → :class:`Received`, ``close``) plus ``audio_header_size``, so the
session does not care which one it talks through.  An in-band re-handshake
(server-initiated ``noise/handshake`` inside the channel, e.g. to promote a
session to paired) is handled inside :meth:`SecureConnection.receive`.

aiosendspin 7.x-9.x speak an older variant (message 1 names no ``psk_category``,
fragments typed 2/3, 9-byte audio header): ``noise_variant.py`` says what differs;
it is recognised from message 1 and carried by :class:`SecureConnection`.

Failures after ``client/init`` are *silent*: the connection is closed without
another message (:class:`HandshakeFailed`, :class:`ChannelBroken`).  Key
material (private key, PSKs, session keys) is never logged; log lines carry
ids and reasons only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Callable

import attrs
import trio
from noise.connection import Keypair, NoiseConnection
from trio_websocket import CloseReason, ConnectionClosed

from resonate_embedded.identity import Identity, b64url_decode, b64url_encode, peer_key
from resonate_embedded.pairing import PairingStore, psk_id_for
from resonate_embedded.protocol.connection import Connection, Received
from resonate_embedded.protocol.noise_variant import (
    AUDIO_HEADER_SIZE, CURRENT, QUIET_UNTIL, Message1, Message1Error, Reassembly, fragments,
    parse_message_1,
)

log = logging.getLogger(__name__)

SUITE_CHACHAPOLY = "25519_ChaChaPoly_SHA256"
SUITE_AESGCM = "25519_AESGCM_SHA256"
SUITES = (SUITE_CHACHAPOLY, SUITE_AESGCM)
PROTOCOL_VERSION = 1

SENTINEL_PSK = hashlib.sha256(b"sendspin-sentinel-psk-v1").digest()
SENTINEL_PSK_ID = psk_id_for(SENTINEL_PSK)
_CATEGORY_WORDS = {"lt": "long-term", "pr": "pairing", "sn": "Sentinel"}

HANDSHAKE_TIMEOUT_S = 30.0  # per expected message (spec: "e.g. 30 seconds")
FIRST_REPLY_TIMEOUT_S = 3.0  # a server that says nothing to client/init this long does not speak Noise
MAX_HANDSHAKE_TEXT = 4096  # client/init, server/init and noise/handshake are a few hundred bytes
MAX_NOISE_MESSAGE = 65535
MAX_PLAINTEXT = MAX_NOISE_MESSAGE - 16
MAX_REASSEMBLED = 4 << 20

MSG_JSON = 0
TRANSPORT_TYPES = (1, 2, 3)  # fragments (current: 1, older: 2/3): never application data

_PLACEHOLDER_PSK = bytes(32)


class HandshakeFailed(Exception):
    """The handshake cannot complete; the connection has been closed silently.

    ``server_id`` (None before server/init) and ``seen`` (its server/init) say who failed."""

    server_id: str | None = None
    seen: str = ""


class InitRejected(HandshakeFailed):
    """The server answered ``client/init`` with ``server/error`` (it does speak Noise)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"server rejected client/init: {reason}")
        self.reason = reason


class NotNoiseServer(Exception):
    """The server did not answer ``client/init`` the way a Noise-speaking server does.

    ``silent``: the server said nothing at all; ``still_open``: and the socket was left
    open, so the plaintext hello may follow on it."""

    def __init__(self, why: str, silent: bool = False) -> None:
        super().__init__(why)
        self.silent = silent
        self.still_open = silent


class ChannelBroken(ConnectionClosed):
    """The encrypted channel failed (AEAD failure, cleartext frame, bad framing, …)."""

    def __init__(self, why: str) -> None:
        super().__init__(CloseReason(1000, why))
        self.why = why

    def __str__(self) -> str:
        return f"encrypted channel closed: {self.why}"


@attrs.frozen
class MatchedPsk:
    category: str  # "lt" | "pr" | "sn"
    psk: bytes = attrs.field(repr=False)
    psk_id: str


SENTINEL = MatchedPsk("sn", SENTINEL_PSK, SENTINEL_PSK_ID)

# (psk_id, category, server_id) -> MatchedPsk | None; raises HandshakeFailed on a misbinding.
PskResolver = Callable[[str, str, str], "MatchedPsk | None"]


def make_resolver(identity: Identity, store: PairingStore | None) -> PskResolver:
    """Resolve a message-1 ``psk_id`` among this speaker's PSKs of the declared category."""
    pairing_psk_id = psk_id_for(identity.pairing_psk)

    def resolve(psk_id: str, category: str, server_id: str) -> MatchedPsk | None:
        if category == "sn":
            return SENTINEL if psk_id == SENTINEL_PSK_ID else None
        if category == "pr":
            return MatchedPsk("pr", identity.pairing_psk, psk_id) if psk_id == pairing_psk_id else None
        if store is None:
            return None
        record = store.by_psk_id(psk_id)
        if record is None:
            return None
        if record.server_id != server_id:  # a misbinding, not a miss: never falls back
            raise HandshakeFailed("long-term PSK belongs to another server_id")
        return MatchedPsk("lt", record.psk, psk_id)

    return resolve


# --------------------------------------------------------------------------- Noise (no I/O)


class NoiseResponder:
    """KKpsk2 responder: message 1 in, message 2 out, then transport encrypt/decrypt."""

    def __init__(self, suite: str, local_private: bytes, remote_public: bytes, prologue: bytes) -> None:
        if suite not in SUITES:
            raise ValueError(f"unknown suite {suite!r}")
        conn = NoiseConnection.from_name(f"Noise_KKpsk2_{suite}".encode("ascii"))
        conn.set_as_responder()
        conn.set_keypair_from_private_bytes(Keypair.STATIC, local_private)
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote_public)
        conn.set_prologue(prologue)
        conn.set_psks(psks=[_PLACEHOLDER_PSK])  # the real PSK is known only after message 1
        conn.start_handshake()
        self._conn = conn
        self.suite = suite

    def read_message_1(self, message: bytes) -> bytes:
        try:
            return bytes(self._conn.read_message(message))
        except Exception as exc:  # noqa: BLE001 - Noise*Error, InvalidTag, bad point: all "not authentic"
            raise HandshakeFailed(f"Noise message 1 did not authenticate ({type(exc).__name__})") from None

    def write_message_2(self, psk: bytes, payload: bytes = b"{}") -> bytes:
        self._conn.set_psks(psks=[psk])
        message = bytes(self._conn.write_message(payload))
        if not self._conn.handshake_finished:  # pragma: no cover - KKpsk2 has two messages
            raise HandshakeFailed("handshake not finished after message 2")
        return message

    @property
    def handshake_hash(self) -> bytes:
        return bytes(self._conn.get_handshake_hash())

    def encrypt(self, plaintext: bytes) -> bytes:
        return self._conn.encrypt(bytes(plaintext))

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Raises (NoiseInvalidMessage: bad tag, replay, reordering, oversize) on anything not authentic."""
        return bytes(self._conn.decrypt(bytes(ciphertext)))


# --------------------------------------------------------------------------- wire helpers


def _dump(msg_type: str, payload: dict) -> str:
    return json.dumps({"type": msg_type, "payload": payload}, separators=(",", ":"))


def client_init_json(client_id: str, suite: str) -> str:
    return _dump("client/init", {"client_id": client_id, "version": PROTOCOL_VERSION, "suite": suite})


def handshake_json(message: bytes) -> str:
    return _dump("noise/handshake", {"data": b64url_encode(message)})


def _envelope(text: str) -> tuple[str, dict]:
    """(type, payload) of a JSON message; HandshakeFailed if it is not one."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise HandshakeFailed("not JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise HandshakeFailed("not a typed JSON message")
    payload = obj.get("payload")
    if not isinstance(payload, dict):
        raise HandshakeFailed(f"{obj['type']}: payload is not an object")
    return obj["type"], payload


def _parse_server_init(payload: dict) -> str:
    version = payload.get("version")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise HandshakeFailed(f"server/init version {version!r} is not 1")
    server_id = payload.get("server_id")
    try:
        peer_key(server_id)
    except ValueError as exc:
        raise HandshakeFailed(f"server/init server_id: {exc}") from None
    return server_id


def _handshake_bytes(text: str) -> bytes:
    msg_type, payload = _envelope(text)
    if msg_type != "noise/handshake":
        raise HandshakeFailed(f"expected noise/handshake, got {msg_type!r}")
    data = payload.get("data")
    try:
        message = b64url_decode(data)
    except (ValueError, TypeError):
        raise HandshakeFailed("noise/handshake data is not base64url") from None
    if not message or len(message) > MAX_NOISE_MESSAGE:
        raise HandshakeFailed("noise/handshake message of impossible size")
    return message


def _message_1(responder: NoiseResponder, message_1: bytes) -> Message1:
    try:
        return parse_message_1(responder.read_message_1(message_1))
    except Message1Error as exc:
        raise HandshakeFailed(str(exc)) from None


def _resolve(resolver: PskResolver, m1: Message1, server_id: str) -> MatchedPsk | None:
    """The PSK ``m1`` names, looked up in its category (older variant: in each in turn)."""
    for category in m1.categories():
        matched = resolver(m1.psk_id, category, server_id)
        if matched is not None:
            return matched
    return None


async def _receive_text(conn: Connection, what: str, timeout_s: float) -> str:
    with trio.move_on_after(timeout_s):
        try:
            received = await conn.receive()
        except ConnectionClosed:
            raise HandshakeFailed(f"connection closed while waiting for {what}") from None
        if not isinstance(received.data, str):
            raise HandshakeFailed(f"binary frame while waiting for {what}")
        if len(received.data) > MAX_HANDSHAKE_TEXT:
            raise HandshakeFailed(f"oversized {what} ({len(received.data)} characters)")
        return received.data
    raise HandshakeFailed(f"no {what} within {timeout_s:g} s")


async def _silent_close(conn: Connection) -> None:
    with trio.move_on_after(3) as scope:
        scope.shield = True
        try:
            await conn.close()
        except Exception:  # noqa: BLE001 - closing a broken socket must not mask why
            pass


# --------------------------------------------------------------------------- handshake


async def client_handshake(conn: Connection, identity: Identity, resolver: PskResolver, *,
                           suite: str = SUITE_CHACHAPOLY,
                           first_reply_timeout_s: float = FIRST_REPLY_TIMEOUT_S,
                           timeout_s: float = HANDSHAKE_TIMEOUT_S,
                           keep_open_if_silent: bool = False) -> SecureConnection:
    """Run the responder handshake over a fresh WebSocket; returns the encrypted channel.

    Raises :class:`NotNoiseServer` if the first reply to ``client/init`` is not what a
    Noise-speaking server sends (nothing, a close, or some other message): the caller
    decides whether plaintext is allowed there.  The connection is closed then, except
    when nothing at all came and ``keep_open_if_silent`` (``still_open`` is set).
    Raises :class:`HandshakeFailed` (the connection already closed silently) for
    everything else.
    """
    init_text = client_init_json(identity.client_id, suite)
    await conn.send_text(init_text)
    server_id, first = None, ""
    try:
        first = await _first_reply(conn, first_reply_timeout_s)
        msg_type, payload = _envelope(first)
        if msg_type == "server/error":
            raise InitRejected(str(payload.get("reason", "unspecified")))
        if msg_type != "server/init":
            raise NotNoiseServer(f"answered client/init with {msg_type!r}")
        server_id = _parse_server_init(payload)
        prologue = init_text.encode("utf-8") + first.encode("utf-8")
        responder = NoiseResponder(suite, identity.private_key, peer_key(server_id), prologue)
        message_1 = _handshake_bytes(await _receive_text(conn, "Noise message 1", timeout_s))
        m1 = _message_1(responder, message_1)
        matched = _resolve(resolver, m1, server_id)
        credential_mismatch = matched is None
        if matched is None:
            log.warning("server %s referenced a %s credential this speaker does not hold: "
                        "continuing unpaired (Sentinel PSK); re-pair on the server to restore it",
                        server_id, _CATEGORY_WORDS.get(m1.category, "PSK"))
            matched = SENTINEL
        await conn.send_text(handshake_json(responder.write_message_2(matched.psk)))
    except NotNoiseServer as exc:
        if keep_open_if_silent and exc.still_open:
            raise
        exc.still_open = False
        await _silent_close(conn)
        raise
    except HandshakeFailed as exc:
        exc.server_id, exc.seen = server_id, first[:300]
        await _silent_close(conn)
        raise
    except ConnectionClosed as exc:
        raise HandshakeFailed(f"connection closed during the handshake ({exc})") from None
    return SecureConnection(conn, responder, server_id=server_id, matched=matched,
                            credential_mismatch=credential_mismatch, identity=identity,
                            resolver=resolver, variant=m1.variant)


async def _first_reply(conn: Connection, timeout_s: float) -> str:
    with trio.move_on_after(timeout_s):
        try:
            received = await conn.receive()
        except ConnectionClosed:
            raise NotNoiseServer("closed the connection after client/init") from None
        if not isinstance(received.data, str):
            raise NotNoiseServer("answered client/init with a binary frame")
        if len(received.data) > MAX_HANDSHAKE_TEXT:
            raise HandshakeFailed(f"oversized answer to client/init ({len(received.data)} characters)")
        try:
            _envelope(received.data)
        except HandshakeFailed as exc:
            raise NotNoiseServer(f"answered client/init with {exc}") from None
        return received.data
    raise NotNoiseServer(f"no answer to client/init within {timeout_s:g} s", silent=True)


# --------------------------------------------------------------------------- transport


async def _raw_send_bytes(conn: Connection, data: bytes) -> None:
    send_bytes = getattr(conn, "send_bytes", None)
    if send_bytes is not None:
        await send_bytes(data)
    else:  # Connection exposes text only; its socket sends bytes as a binary frame
        await conn._ws.send_message(data)  # noqa: SLF001


class SecureConnection:
    """The Noise transport channel, with the interface of ``Connection``."""

    encrypted = True

    def __init__(self, raw: Connection, cipher: NoiseResponder, *, server_id: str,
                 matched: MatchedPsk, credential_mismatch: bool, identity: Identity,
                 resolver: PskResolver, variant: str = CURRENT) -> None:
        self._raw = raw
        self.noise_variant = variant
        self.audio_header_size = AUDIO_HEADER_SIZE[variant]
        self._reassembly = Reassembly(variant, MAX_REASSEMBLED)
        self._cipher = cipher
        self.server_id = server_id
        self.matched = matched
        self.credential_mismatch = credential_mismatch
        self.handshake_hash = cipher.handshake_hash
        self.handshakes = 1  # +1 per in-band re-handshake (pairing_index resets with it)
        self._identity = identity
        self._resolver = resolver
        self._send_lock = trio.Lock()
        self._quiet: trio.Event | None = None  # set while a re-handshake bars app messages
        self._broken: ChannelBroken | None = None

    @property
    def psk_category(self) -> str:
        return self.matched.category

    @property
    def suite(self) -> str:
        return self._cipher.suite

    # -- sending ----------------------------------------------------------------------------
    async def send_text(self, text: str) -> None:
        await self._send_plaintext(bytes([MSG_JSON]) + text.encode("utf-8"))

    async def send_binary(self, data: bytes) -> None:
        if not data or data[0] in TRANSPORT_TYPES or data[0] == MSG_JSON:
            raise ValueError("binary application data needs a role type byte")
        await self._send_plaintext(bytes(data))

    async def _send_plaintext(self, plaintext: bytes, *, during_rehandshake: bool = False) -> None:
        if self._broken is not None:
            raise self._broken
        while self._quiet is not None and not during_rehandshake:
            # Spec: no new application message between Noise message 1 and the new
            # server/activate.  Wait (bounded) rather than drop what the caller said.
            quiet = self._quiet
            with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
                await quiet.wait()
                continue
            await self._fail("re-handshake not completed by a server/activate in time")
        if self._broken is not None:  # the re-handshake we waited out failed
            raise self._broken
        frames = ([plaintext] if len(plaintext) <= MAX_PLAINTEXT
                  else fragments(self.noise_variant, plaintext, MAX_PLAINTEXT))
        async with self._send_lock:  # encrypt under the lock: nonce order must be wire order
            for frame in frames:
                await _raw_send_bytes(self._raw, self._cipher.encrypt(frame))

    # -- receiving --------------------------------------------------------------------------
    async def receive(self) -> Received:
        while True:
            if self._broken is not None:
                raise self._broken
            received = await self._raw.receive()
            if isinstance(received.data, str):
                await self._fail("cleartext frame in transport mode")
            try:
                plaintext = self._cipher.decrypt(received.data)
            except Exception:  # noqa: BLE001 - NoiseError, InvalidTag, oversize: all "not authentic"
                await self._fail("a frame failed authentication (tampered, replayed or reordered)")
            message = await self._unframe(plaintext)
            if message is None:
                continue
            if message[0] == MSG_JSON:
                try:
                    text = message[1:].decode("utf-8")
                except UnicodeDecodeError:
                    await self._fail("JSON message that is not UTF-8")
                if '"noise/handshake"' in text and await self._maybe_rehandshake(text):
                    continue
                if self._quiet is not None and _message_type(text) == QUIET_UNTIL[self.noise_variant]:
                    self._end_quiet()
                return Received(text, received.local_us)
            return Received(message, received.local_us)

    async def _unframe(self, plaintext: bytes) -> bytes | None:
        if not plaintext:
            await self._fail("empty transport message")
        try:
            return self._reassembly.feed(plaintext)
        except ValueError as exc:
            await self._fail(str(exc))

    async def _maybe_rehandshake(self, text: str) -> bool:
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            return False
        if not isinstance(obj, dict) or obj.get("type") != "noise/handshake":
            return False
        try:
            message_1 = _handshake_bytes(text)
            responder = NoiseResponder(self.suite, self._identity.private_key,
                                       peer_key(self.server_id), self.handshake_hash)
            self._quiet = self._quiet or trio.Event()
            m1 = _message_1(responder, message_1)
            matched = _resolve(self._resolver, m1, self.server_id)
            if matched is None:  # no Sentinel fallback in a re-handshake
                raise HandshakeFailed(f"re-handshake names a {_CATEGORY_WORDS.get(m1.category, 'PSK')}"
                                      " this speaker does not hold")
            message_2 = responder.write_message_2(matched.psk)
        except HandshakeFailed as exc:
            await self._fail(f"re-handshake failed: {exc}")
        # Message 2 still travels under the old keys; what follows uses the new ones.
        await self._send_plaintext(bytes([MSG_JSON]) + handshake_json(message_2).encode(),
                                   during_rehandshake=True)
        self._cipher = responder
        self.matched = matched
        self.credential_mismatch = False
        self.handshake_hash = responder.handshake_hash
        self.handshakes += 1
        log.info("re-keyed the session with server %s (%s PSK)", self.server_id,
                 _CATEGORY_WORDS[matched.category])
        return True

    def _end_quiet(self) -> None:
        quiet, self._quiet = self._quiet, None
        if quiet is not None:
            quiet.set()

    async def _fail(self, why: str):
        """Silent failure: close without another message and raise ChannelBroken."""
        if self._broken is None:
            self._broken = ChannelBroken(why)
            log.warning("closing the encrypted connection to %s: %s", self.server_id, why)
            self._end_quiet()
            await _silent_close(self._raw)
        raise self._broken

    async def close(self) -> None:
        await self._raw.close()


def _message_type(text: str) -> str | None:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return obj.get("type") if isinstance(obj, dict) else None
