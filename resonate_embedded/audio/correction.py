"""Inaudible drift correction: a PI rate controller and single-frame insert/drop.

Units: error in µs (positive = the speaker is playing later than the server
asked), correction rate in ppm of frames (positive = consume more input than we
output, i.e. drop frames to catch up).

Guarantees:
- the rate never exceeds ``max_ppm`` (default 2000 ppm = 0.2 %, well inside the
  0.5 % audibility budget), so the speed deviation over any window is bounded;
- inside the dead band (|error| ≤ ``deadband_us``) the proportional term is off
  and the learned drift is held, so with a stable clock no frames are touched;
- frames not at a correction point are passed through bit-exact; a correction
  point replaces two neighbours by their mean (drop) or adds their mean between
  them (insert), using integer arithmetic only.
"""

from __future__ import annotations

import attrs
import numpy as np

PPM = 1_000_000


@attrs.define
class RateController:
    """PI control of the correction rate from the measured error."""

    kp_ppm_per_us: float = 1.0
    ki_per_s: float = 0.25
    deadband_us: int = 30
    max_ppm: int = 2000
    integral_ppm: float = 0.0
    ppm: int = 0

    def update(self, error_us: float, dt_us: int) -> int:
        """Feed one error measurement taken ``dt_us`` after the previous one; returns ppm."""
        if abs(error_us) <= self.deadband_us:
            proportional = 0.0
        else:
            proportional = self.kp_ppm_per_us * error_us
            self.integral_ppm += self.kp_ppm_per_us * self.ki_per_s * error_us * dt_us / PPM
            self.integral_ppm = max(-self.max_ppm, min(self.max_ppm, self.integral_ppm))
        total = proportional + self.integral_ppm
        self.ppm = int(max(-self.max_ppm, min(self.max_ppm, total)))
        return self.ppm

    def reset(self, keep_drift: bool = True) -> None:
        if not keep_drift:
            self.integral_ppm = 0.0
        self.ppm = 0


@attrs.define
class CorrectionScheduler:
    """Turns a ppm rate into whole-frame corrections with an exact accumulator."""

    accumulator: int = 0  # in frame·ppm units

    def frames_for(self, output_frames: int, ppm: int) -> int:
        """Corrections due over the next ``output_frames``: >0 drop, <0 insert."""
        self.accumulator += output_frames * ppm
        due = int(self.accumulator / PPM)  # truncates toward zero
        self.accumulator -= due * PPM
        return due

    def reset(self) -> None:
        self.accumulator = 0


def corrected_block(block: np.ndarray, corrections: int) -> np.ndarray:
    """``block`` with ``corrections`` frames dropped (>0) or inserted (<0), spread evenly."""
    n = block.shape[0]
    k = abs(corrections)
    if k == 0 or n < 2:
        return block
    k = min(k, n // 2)
    # correction points strictly inside the block: 1 .. n-1
    points = 1 + (np.arange(k, dtype=np.int64) * 2 + 1) * (n - 1) // (2 * k)
    wide = block.astype(np.int32) if block.dtype == np.int16 else block.astype(np.int64)
    means = ((wide[points - 1] + wide[points]) >> 1).astype(block.dtype)
    if corrections > 0:
        out = block.copy()
        out[points - 1] = means
        return np.delete(out, points, axis=0)
    return np.insert(block, points, means, axis=0)
