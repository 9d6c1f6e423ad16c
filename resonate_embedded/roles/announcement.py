"""The ``announcement@v1`` role, protocol side: what it offers in ``client/hello``, how its
``stream/start`` / type-24 chunks / ``stream/end`` become writer commands, and the
``announcement`` object of ``client/state``.

Guarantees: a malformed announcement object is one log line and ignored; chunks outside
an active announcement are dropped; the decoded audio goes to the writer in arrival
order on the same channel as the media (so the media's order is untouched); the
announcement is stopped (ducking released) when the session ends, never resumed.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

import attrs

from resonate_embedded.audio.announcement import (
    AnnouncementAudio, AnnouncementEnd, AnnouncementStart, AnnouncementStop,
)
from resonate_embedded.audio.decoders import DecodeError, Decoder, open_decoder
from resonate_embedded.audio.formats import CODECS, StreamFormat

log = logging.getLogger(__name__)

ROLE = "announcement@v1"
BINARY_TYPE = 24
REQUIRED_LEAD_TIME_MS = 300
# Cheap to decode on a second pipeline: mono 16-bit first (spec advice), PCM and FLAC.
FORMATS = (
    StreamFormat("pcm", 48000, 1, 16), StreamFormat("pcm", 24000, 1, 16),
    StreamFormat("pcm", 16000, 1, 16), StreamFormat("flac", 48000, 1, 16),
    StreamFormat("pcm", 48000, 2, 16), StreamFormat("pcm", 44100, 2, 16),
)
BUFFER_CAPACITY = 1 << 20


class AnnouncementError(ValueError):
    """A malformed ``announcement`` object."""


def support_object(formats: tuple[StreamFormat, ...] = FORMATS) -> dict[str, Any]:
    return {"supported_formats": [attrs.asdict(f) for f in formats],
            "buffer_capacity": BUFFER_CAPACITY}


def _int(obj: dict, key: str, lo: int, hi: int, default: int | None = None) -> int | None:
    value = obj.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise AnnouncementError(f"{key}={value!r}: must be an integer in {lo}..{hi}")
    return value


def parse_start(obj: Any) -> tuple[StreamFormat, bytes | None, AnnouncementStart]:
    """The ``announcement`` object of ``stream/start``; raises AnnouncementError."""
    if not isinstance(obj, dict):
        raise AnnouncementError("the announcement object is not an object")
    codec = obj.get("codec")
    if codec not in CODECS:
        raise AnnouncementError(f"codec={codec!r}: must be one of {', '.join(CODECS)}")
    fmt = StreamFormat(codec, _int(obj, "sample_rate", 8000, 192000),
                       _int(obj, "channels", 1, 8), _int(obj, "bit_depth", 16, 24, 16))
    header_b64 = obj.get("codec_header")
    try:
        header = base64.b64decode(header_b64, validate=True) if header_b64 else None
    except (binascii.Error, ValueError, TypeError):
        raise AnnouncementError("codec_header is not base64") from None
    start = AnnouncementStart(
        fmt.pcm_shape(), _int(obj, "start_timestamp", -(1 << 62), 1 << 62),
        media_duck_db=_int(obj, "media_duck_db", 0, 1000, 0),
        duck_ramp_ms=_int(obj, "duck_ramp_ms", 0, 2000, 100),
        volume=_int(obj, "volume", 0, 100))
    return fmt, header, start


class AnnouncementRole:
    """One session's announcement stream: decoder and what the server was told."""

    def __init__(self, formats: tuple[StreamFormat, ...] = FORMATS) -> None:
        self._formats = formats
        self._decoder: Decoder | None = None
        self._server_stream = False  # the server's announcement is on (until reported idle)
        self.state = "idle"

    async def on_stream_start(self, obj: Any) -> AnnouncementStart | None:
        """A writer command for ``stream/start``'s announcement object (None: ignored)."""
        try:
            fmt, header, start = parse_start(obj)
        except AnnouncementError as exc:
            log.error("ignoring announcement stream/start: %s", exc)
            return None
        if self._decoder is not None:  # an update of the running one
            return attrs.evolve(start, shape=self._decoder.shape)
        if fmt not in self._formats:
            log.error("ignoring an announcement in %s:%d:%d:%d, which we did not offer",
                      fmt.codec, fmt.sample_rate, fmt.bit_depth, fmt.channels)
            return None
        try:
            self._decoder = await open_decoder(fmt, header)
        except DecodeError as exc:
            log.error("ignoring an announcement we cannot decode: %s", exc)
            return None
        self._server_stream = True
        return attrs.evolve(start, shape=self._decoder.shape)

    def on_chunk(self, frame: bytes) -> AnnouncementAudio | None:
        """A type-24 binary frame (type byte included) as decoded audio, or None."""
        if self._decoder is None:
            log.debug("dropping an announcement chunk outside an announcement")
            return None
        try:
            pcm = self._decoder.decode(bytes(frame[1:]))
        except DecodeError as exc:
            log.error("dropping an undecodable announcement chunk: %s", exc)
            return None
        return AnnouncementAudio(pcm, self._decoder.shape) if pcm.shape[0] else None

    def on_stream_end(self) -> AnnouncementEnd | None:
        if self._decoder is None:
            return None
        self._decoder = None
        return AnnouncementEnd()

    def stop(self) -> AnnouncementStop:
        """Transport lost (or role deactivated)."""
        self._decoder = None
        self._server_stream = False
        return AnnouncementStop()

    def writer_state(self, state: str) -> bool:
        """The writer's announcement state; True when the server is to be told (not for a
        local announcement, such as the speaker saying its address)."""
        if not self._server_stream or state == self.state:
            return False
        self.state = state
        if state == "idle":
            self._server_stream = False
        return True

    def state_object(self) -> dict[str, Any]:
        """The ``announcement`` object of ``client/state``."""
        return {"state": self.state, "required_lead_time_ms": REQUIRED_LEAD_TIME_MS}
