"""Software volume in integer fixed point, with a short linear ramp.

Gain is Q15 (32768 = unity).  amplitude = (volume/100)^1.5; mute is a separate
flag.  Guarantee: at unity gain with no ramp in progress, :meth:`apply`
returns its input unchanged (bit-exact); every other path uses integer numpy
only (the Pi Zero's numpy is soft-float).
"""

from __future__ import annotations

import numpy as np

UNITY_Q15 = 1 << 15


def gain_q15(volume: int, muted: bool) -> int:
    """Target gain for a volume 0..100 and a mute flag."""
    if muted or volume <= 0:
        return 0
    return int(round(UNITY_Q15 * (min(volume, 100) / 100.0) ** 1.5))


class VolumeStage:
    """Applies the current gain, ramping linearly to a new one over ``ramp_frames``
    (across as many blocks as it takes; the target is reached exactly)."""

    def __init__(self, ramp_frames: int) -> None:
        self._ramp_frames = max(1, ramp_frames)
        self._gain = UNITY_Q15
        self._target = UNITY_Q15
        self._from = UNITY_Q15  # where the ramp in progress started
        self._done = 0  # frames of it already applied
        self._scratch: np.ndarray | None = None

    @property
    def target_q15(self) -> int:
        return self._target

    @property
    def current_q15(self) -> int:
        """The gain of the last frame scaled (the ramp's position)."""
        return self._gain

    def set_target(self, gain: int, immediate: bool = False) -> None:
        if immediate:
            self._gain = gain
        if gain != self._target or immediate:
            self._from, self._done = self._gain, 0
        self._target = gain

    def set_ramp_frames(self, ramp_frames: int) -> None:
        self._ramp_frames = max(1, ramp_frames)

    def apply(self, block: np.ndarray) -> np.ndarray:
        """Scale a (frames, channels) int16/int32 block; returns a new array or ``block``."""
        if block.shape[0] == 0 or self.at_unity:
            return block
        out = block.copy()
        self.apply_in_place(out)
        return out

    @property
    def at_unity(self) -> bool:
        """Unity gain and no ramp: blocks pass bit-exact."""
        return self._gain == self._target == UNITY_Q15

    def apply_in_place(self, block: np.ndarray) -> None:
        """Scale ``block`` (frames, channels, int16/int32) in place.  At a steady gain
        nothing is allocated (the products go through a scratch buffer kept here)."""
        n = block.shape[0]
        if n == 0 or self.at_unity:
            return
        if self._gain == self._target:
            gain: int | np.ndarray = self._gain
        else:
            step = self._target - self._from
            k = np.arange(self._done + 1, self._done + n + 1, dtype=np.int64)
            ramp = self._from + (step * np.minimum(k, self._ramp_frames)) // self._ramp_frames
            self._done += n
            self._gain = int(ramp[-1])
            gain = ramp[:, None]
        wide = self._wide(block)
        np.copyto(wide, block)
        np.multiply(wide, gain, out=wide, casting="unsafe")
        np.right_shift(wide, 15, out=wide)
        np.copyto(block, wide, casting="unsafe")

    def _wide(self, block: np.ndarray) -> np.ndarray:
        """Scratch of ``block``'s shape wide enough for sample × Q15 gain (int16: int32,
        24-bit in int32: int64), reused from block to block."""
        dtype = np.int32 if block.dtype == np.int16 else np.int64
        if (self._scratch is None or self._scratch.dtype != dtype
                or self._scratch.shape[0] < block.shape[0]
                or self._scratch.shape[1] != block.shape[1]):
            self._scratch = np.empty(block.shape, dtype=dtype)
        return self._scratch[:block.shape[0]]
