"""Binary frames: audio chunks with a 9-byte or 13-byte header.

Header: byte 0 = message type, bytes 1..8 = big-endian int64 timestamp (server
clock, µs, when the first sample must leave the speaker), and in the 13-byte
form bytes 9..12 = uint32 ``send_ahead``.  Which form a server uses is a
property of the connection (encrypted/current clients get 13 bytes), so the
caller says which one it expects.
"""

from __future__ import annotations

import struct

import attrs

AUDIO_TYPE_SENDSPIN = 4
AUDIO_TYPE_RESONATE = 1
MAX_BINARY_FRAME_BYTES = 4 << 20

_HEADER9 = struct.Struct(">Bq")
_SEND_AHEAD = struct.Struct(">I")


class BinaryFrameError(ValueError):
    """A binary frame that cannot be an audio chunk."""


@attrs.frozen
class AudioChunk:
    server_ts_us: int
    payload: bytes
    send_ahead_us: int | None = None


def parse_audio_frame(frame: bytes, header_size: int = 9,
                      audio_type: int = AUDIO_TYPE_SENDSPIN) -> AudioChunk | None:
    """Parse one binary frame; None for non-audio types (artwork, visualiser)."""
    if len(frame) > MAX_BINARY_FRAME_BYTES:
        raise BinaryFrameError(f"binary frame of {len(frame)} bytes is too large")
    if not frame:
        raise BinaryFrameError("empty binary frame")
    if frame[0] != audio_type:
        return None
    if len(frame) < header_size:
        raise BinaryFrameError(f"audio frame of {len(frame)} bytes is shorter than its header")
    _, ts = _HEADER9.unpack_from(frame, 0)
    send_ahead = _SEND_AHEAD.unpack_from(frame, 9)[0] if header_size == 13 else None
    return AudioChunk(ts, bytes(frame[header_size:]), send_ahead)
