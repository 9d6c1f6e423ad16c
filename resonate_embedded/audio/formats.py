"""Audio format descriptions shared by the protocol, decoders and the writer."""

from __future__ import annotations

import attrs

CODECS = ("pcm", "flac", "opus")


@attrs.frozen
class StreamFormat:
    """A format on the wire: what the server sends (codec + PCM shape)."""

    codec: str
    sample_rate: int
    channels: int
    bit_depth: int

    def pcm_shape(self) -> PcmShape:
        """The shape of the PCM this stream decodes to."""
        return PcmShape(self.sample_rate, self.channels, 16 if self.bit_depth <= 16 else 24)


@attrs.frozen
class PcmShape:
    """Decoded PCM: rate, channels and significant bits.

    Decoded audio is a C-contiguous numpy array of shape (frames, channels):
    int16 for 16-bit, int32 holding sign-extended 24-bit values for 24-bit.
    """

    sample_rate: int
    channels: int
    bits: int

    @property
    def dtype(self) -> str:
        return "int16" if self.bits == 16 else "int32"
