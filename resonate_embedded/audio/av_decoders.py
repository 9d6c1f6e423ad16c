"""FLAC and Opus through PyAV (FFmpeg), imported only when such a stream starts.

Kept apart from :mod:`resonate_embedded.audio.decoders` so that a speaker that
only ever plays PCM never loads FFmpeg (about 17 MB of resident memory).
Guarantees as stated there: bit-exact FLAC or a DecodeError; Opus at 48 kHz.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import av
import numpy as np

from resonate_embedded.audio.decoders import (
    FLAC_HEADER_PREFIX, FLAC_STREAMINFO_BLOCK_TYPE, FLAC_STREAMINFO_BYTES, LAYOUTS,
    OPUS_HEAD_BYTES, OPUS_HEAD_MAGIC, OPUS_OUTPUT_RATE, OPUS_RATES, DecodeError,
)
from resonate_embedded.audio.formats import PcmShape, StreamFormat

FrameConverter = Callable[[av.AudioFrame], np.ndarray]


class PyAvDecoder:
    """One PyAV decoding context, reused for every packet of a stream.

    ``frame_format`` is the sample format the codec must produce and
    ``convert`` turns such a frame into ``(frames, channels)`` PCM of ``shape``.
    """

    def __init__(
        self,
        codec_name: str,
        shape: PcmShape,
        frame_format: str,
        convert: FrameConverter,
        extradata: bytes | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        self.shape = shape
        self._frame_format = frame_format
        self._convert = convert
        self._context = av.CodecContext.create(codec_name, "r")
        self._context.sample_rate = shape.sample_rate
        self._context.layout = LAYOUTS[shape.channels]
        if extradata is not None:
            self._context.extradata = extradata
        if options:
            self._context.options = options

    def decode(self, payload: bytes) -> np.ndarray:
        """The frames the codec returns for this packet, concatenated (maybe none)."""
        if not payload:
            # An empty packet is a flush to ffmpeg: it would end the stream.
            raise DecodeError("empty payload")
        try:
            frames = self._context.decode(av.Packet(payload))
        except av.error.FFmpegError as error:
            raise DecodeError(f"{self._context.name}: {error}") from error
        blocks = [self._checked_convert(frame) for frame in frames]
        if len(blocks) == 1:
            return blocks[0]
        if not blocks:
            return np.empty((0, self.shape.channels), dtype=self.shape.dtype)
        return np.concatenate(blocks)

    def _checked_convert(self, frame: av.AudioFrame) -> np.ndarray:
        got = (frame.format.name, frame.sample_rate, frame.layout.nb_channels)
        want = (self._frame_format, self.shape.sample_rate, self.shape.channels)
        if got != want:
            raise DecodeError(f"{self._context.name} produced {got}, expected {want}")
        return self._convert(frame)


def _packed_frame(frame: av.AudioFrame) -> np.ndarray:
    """A packed (interleaved) frame as (frames, channels); PyAV already copied it."""
    return frame.to_ndarray().reshape(frame.samples, -1)


def _top_aligned_s32_frame(frame: av.AudioFrame) -> np.ndarray:
    """Packed s32 with the sample in the top 24 bits, as sign-extended 24-bit int32."""
    samples = _packed_frame(frame)
    samples >>= 8
    return samples


def _planar_float_frame(frame: av.AudioFrame) -> np.ndarray:
    """Planar float in [-1, 1] as int16, rounded and clipped (float ops: native Opus only)."""
    scaled = np.rint(frame.to_ndarray().T * 32768.0)
    np.clip(scaled, -32768, 32767, out=scaled)
    return scaled.astype(np.int16, order="C")


@attrs.frozen
class FlacStreamInfo:
    """The STREAMINFO fields a decoder needs."""

    sample_rate: int
    channels: int
    bits: int


def parse_flac_header(codec_header: bytes) -> tuple[bytes, FlacStreamInfo]:
    """The bare 34-byte STREAMINFO from a ``fLaC`` codec header, and what it says."""
    streaminfo_end = 8 + FLAC_STREAMINFO_BYTES
    if len(codec_header) < streaminfo_end or not codec_header.startswith(FLAC_HEADER_PREFIX):
        raise DecodeError(f"FLAC codec_header is not 'fLaC' + STREAMINFO: {codec_header[:8]!r}")
    block_type = codec_header[4] & 0x7F
    block_length = int.from_bytes(codec_header[5:8], "big")
    if block_type != FLAC_STREAMINFO_BLOCK_TYPE or block_length != FLAC_STREAMINFO_BYTES:
        raise DecodeError(f"FLAC first metadata block is type {block_type}, {block_length} bytes")
    streaminfo = codec_header[8:streaminfo_end]
    # Bytes 10..13: sample rate (20 bits), channels − 1 (3), bits per sample − 1 (5), ...
    packed = int.from_bytes(streaminfo[10:14], "big")
    info = FlacStreamInfo(
        sample_rate=packed >> 12,
        channels=((packed >> 9) & 0x7) + 1,
        bits=((packed >> 4) & 0x1F) + 1,
    )
    return streaminfo, info


def flac_decoder(fmt: StreamFormat, codec_header: bytes | None) -> PyAvDecoder:
    """A FLAC decoder whose ``shape`` is the STREAMINFO's.

    The header's rate and channels must match ``fmt``; its bit depth wins over
    ``fmt.bit_depth`` (older servers fall back to 16-bit), up to 24 bits.
    """
    if codec_header is None:
        raise DecodeError("FLAC stream without a codec_header")
    streaminfo, info = parse_flac_header(codec_header)
    if (info.sample_rate, info.channels) != (fmt.sample_rate, fmt.channels):
        raise DecodeError(
            f"FLAC STREAMINFO says {info.sample_rate} Hz × {info.channels}, "
            f"stream/start says {fmt.sample_rate} Hz × {fmt.channels}"
        )
    if info.bits > 24 or info.channels not in LAYOUTS:
        raise DecodeError(f"unsupported FLAC stream: {info.bits}-bit, {info.channels} channels")
    shape = PcmShape(info.sample_rate, info.channels, 16 if info.bits <= 16 else 24)
    # ffmpeg outputs s16 up to 16 bits, else s32 with the sample in the top bits.
    if shape.bits == 16:
        frame_format, convert = "s16", _packed_frame
    else:
        frame_format, convert = "s32", _top_aligned_s32_frame
    crc_checked = {"err_detect": "crccheck+explode"}
    return PyAvDecoder("flac", shape, frame_format, convert, streaminfo, crc_checked)


def check_opus_head(codec_header: bytes, channels: int) -> None:
    """Reject an OpusHead that is malformed or disagrees with the stream's channel count.

    Only validated: pre-skip is handled by the server's timestamps, and the
    output gain (0 from every known server) is not applied.
    """
    if len(codec_header) < OPUS_HEAD_BYTES or not codec_header.startswith(OPUS_HEAD_MAGIC):
        raise DecodeError(f"Opus codec_header is not an OpusHead: {codec_header[:8]!r}")
    version, head_channels, mapping_family = codec_header[8], codec_header[9], codec_header[18]
    if version >> 4 != 0 or head_channels != channels or mapping_family != 0:
        raise DecodeError(
            f"unsupported OpusHead: version {version}, {head_channels} channels, "
            f"mapping family {mapping_family} (stream has {channels} channels)"
        )


def opus_decoder(fmt: StreamFormat, codec_header: bytes | None, codec_name: str) -> PyAvDecoder:
    """An Opus decoder (``libopus`` or ``opus``) producing 16-bit PCM at 48 kHz.

    The OpusHead is validated but not given to ffmpeg, which would otherwise
    drop the pre-skip samples from the first packet.
    """
    if fmt.channels not in LAYOUTS or fmt.sample_rate not in OPUS_RATES:
        raise DecodeError(f"unsupported Opus stream: {fmt.sample_rate} Hz × {fmt.channels}")
    if codec_header is not None:
        check_opus_head(codec_header, fmt.channels)
    shape = PcmShape(OPUS_OUTPUT_RATE, fmt.channels, 16)
    if codec_name == "libopus":
        return PyAvDecoder(codec_name, shape, "s16", _packed_frame)
    return PyAvDecoder(codec_name, shape, "fltp", _planar_float_frame)


def _has_decoder(codec_name: str) -> bool:
    try:
        av.Codec(codec_name, "r")
    except av.codec.codec.UnknownCodecError:
        return False
    return True


def _probe_opus_codec() -> str | None:
    return next((name for name in ("libopus", "opus") if _has_decoder(name)), None)


OPUS_CODEC = _probe_opus_codec()
HAS_FLAC = _has_decoder("flac")


def make_av_decoder(fmt: StreamFormat, codec_header: bytes | None):
    """A FLAC or Opus decoder; raises DecodeError if this FFmpeg build lacks the codec."""
    if fmt.codec == "flac" and HAS_FLAC:
        return flac_decoder(fmt, codec_header)
    if fmt.codec == "opus" and OPUS_CODEC is not None:
        return opus_decoder(fmt, codec_header, OPUS_CODEC)
    raise DecodeError(f"this FFmpeg build has no {fmt.codec} decoder")


