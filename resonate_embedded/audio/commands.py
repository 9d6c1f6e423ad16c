"""What flows one way from the protocol side to the audio writer, in order.

Audio and control travel on the same memory channel so that, for example, a
``Flush`` takes effect exactly between the chunks sent before and after it.
"""

from __future__ import annotations

from typing import Union

import attrs
import numpy as np

from resonate_embedded.audio.formats import PcmShape


@attrs.frozen
class PcmChunk:
    server_ts_us: int
    pcm: np.ndarray = attrs.field(eq=False)
    shape: PcmShape
    payload_bytes: int


@attrs.frozen
class Flush:
    """Drop everything buffered and keep playing what follows (stream/clear)."""


@attrs.frozen
class EndStream:
    """Stop output and drop everything buffered (stream/end)."""


@attrs.frozen
class SetVolume:
    volume: int
    muted: bool


@attrs.frozen
class SetOutputDelay:
    """Latency after our DAC (amplifier, AVR, Bluetooth): we play earlier by this much."""

    delay_us: int


WriterCommand = Union[PcmChunk, Flush, EndStream, SetVolume, SetOutputDelay]
