"""Decoders from wire payloads (PROTOCOL.md §3) to PCM numpy arrays.

Every decoder returns a new, writable, C-contiguous array of shape
``(frames, channels)`` in its ``shape``'s dtype: int16 for 16-bit, int32
holding sign-extended 24-bit values for 24-bit.  Bad input raises
:class:`DecodeError` and leaves the decoder usable for the next payload.

- PCM is integer numpy only (the Pi Zero's floats are software-emulated).
- FLAC goes through PyAV's ``flac`` decoder with the bare STREAMINFO as
  extradata and CRC checking on, so output is bit-exact or an error.
- Opus goes through ffmpeg's ``libopus`` decoder (s16 output) when the build
  has it, else the native ``opus`` decoder, whose float output is rounded and
  clipped to int16.  Opus always decodes at 48 kHz, whatever rate the stream
  was encoded at, and every packet's output (priming included) is returned, so
  the caller can place it at the packet's timestamp.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Protocol

import attrs
import numpy as np
import trio

from resonate_embedded.audio.formats import PcmShape, StreamFormat

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
OPUS_OUTPUT_RATE = 48000
FLAC_HEADER_PREFIX = b"fLaC"
FLAC_STREAMINFO_BYTES = 34
FLAC_STREAMINFO_BLOCK_TYPE = 0
OPUS_HEAD_MAGIC = b"OpusHead"
OPUS_HEAD_BYTES = 19
LAYOUTS = {1: "mono", 2: "stereo"}
AV_CODECS = ("flac", "opus")  # decoded through PyAV
AV_MODULE = "resonate_embedded.audio.av_decoders"


class DecodeError(Exception):
    """A payload or stream format this build cannot decode; the message says why."""


class Decoder(Protocol):
    """Turns one wire payload into PCM of ``shape``."""

    @property
    def shape(self) -> PcmShape:
        """What ``decode`` returns: rate, channels and significant bits."""
        ...

    def decode(self, payload: bytes) -> np.ndarray:
        """Decoded frames, possibly none; raises DecodeError on bad input."""
        ...


@attrs.frozen
class PcmDecoder:
    """Interleaved little-endian PCM: 16-bit, or 24-bit packed 3 bytes per sample."""

    shape: PcmShape

    def decode(self, payload: bytes) -> np.ndarray:
        """Whole frames only; a partial trailing frame raises DecodeError."""
        sample_bytes = 2 if self.shape.bits == 16 else 3
        frame_bytes = sample_bytes * self.shape.channels
        if len(payload) % frame_bytes:
            raise DecodeError(
                f"PCM payload of {len(payload)} bytes is not whole {frame_bytes}-byte frames"
            )
        if self.shape.bits == 16:
            samples = np.frombuffer(payload, dtype="<i2").astype(np.int16)
        else:
            samples = _unpack_s24le(payload)
        return samples.reshape(-1, self.shape.channels)


def _unpack_s24le(payload: bytes) -> np.ndarray:
    """Packed 3-byte little-endian samples as sign-extended int32, integer ops only.

    With one byte prepended, the little-endian int32 starting one byte before
    each sample holds that sample in its top 24 bits; an arithmetic shift
    right by 8 sign-extends it.  One strided pass over the payload.
    """
    padded = b"\0" + payload
    windows = np.ndarray((len(payload) // 3,), dtype="<i4", buffer=padded, strides=(3,))
    return (windows >> 8).astype(np.int32, copy=False)


def decodable_formats() -> list[tuple[str, int]]:
    """The (codec, bit_depth) pairs this installation decodes (FLAC/Opus need PyAV)."""
    formats = [("pcm", 16), ("pcm", 24)]
    if importlib.util.find_spec("av") is not None:
        formats += [("flac", 16), ("flac", 24), ("opus", 16)]
    return formats


async def open_decoder(fmt: StreamFormat, codec_header: bytes | None) -> Decoder:
    """:func:`make_decoder`, loading FFmpeg (PyAV) only when a stream needs it.

    The first FLAC or Opus stream imports it in a worker thread (a good fraction of a
    second), so the event loop, and with it the writer playing what is queued, never
    waits on the import; a speaker that only ever plays PCM never loads it.
    """
    if (fmt.codec in AV_CODECS and AV_MODULE not in sys.modules
            and importlib.util.find_spec("av") is not None):
        await trio.to_thread.run_sync(importlib.import_module, AV_MODULE)
    return make_decoder(fmt, codec_header)


def make_decoder(fmt: StreamFormat, codec_header: bytes | None) -> Decoder:
    """A decoder for ``fmt``; raises DecodeError if this build cannot decode it.

    The decoder's ``shape`` is authoritative for what it outputs: FLAC takes
    its bit depth from STREAMINFO and Opus always outputs 48 kHz.
    """
    pcm_ok = fmt.bit_depth in (16, 24) and fmt.channels > 0 and fmt.sample_rate > 0
    if fmt.codec == "pcm" and pcm_ok:
        return PcmDecoder(fmt.pcm_shape())
    if fmt.codec in AV_CODECS and importlib.util.find_spec("av") is not None:
        from resonate_embedded.audio.av_decoders import make_av_decoder

        return make_av_decoder(fmt, codec_header)
    raise DecodeError(
        f"cannot decode {fmt.codec} {fmt.bit_depth}-bit {fmt.sample_rate} Hz × {fmt.channels}"
    )
