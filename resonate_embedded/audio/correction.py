"""Inaudible drift correction: a PI rate controller and single-frame insert/drop.

Units: error in µs (positive = the speaker is playing later than the server
asked), correction rate in ppm of frames (positive = consume more input than we
output, i.e. drop frames to catch up).

Guarantees:
- the rate never exceeds ``max_ppm`` (default 2000 ppm = 0.2 %, well inside the
  0.5 % audibility budget), so the speed deviation over any window is bounded;
- the rate mismatch measured directly (DAC position reports against the local
  clock, and the server clock's drift from the Kalman filter) is fed forward, so
  the error does not have to grow before drift is corrected;
- inside the dead band (|error| ≤ ``deadband_us``) the proportional term is off
  and the learned residual is held, so with a stable clock no frames are touched;
- frames not at a correction point are passed through bit-exact; a correction
  point replaces two neighbours by their mean (drop) or adds their mean between
  them (insert), using integer arithmetic on those frames only (:func:`correct_into`
  writes into a caller's buffer: nothing is allocated).
"""

from __future__ import annotations

import attrs
import numpy as np

PPM = 1_000_000


@attrs.define
class RateController:
    """PI control of the correction rate from the smoothed measured error."""

    kp_ppm_per_us: float = 2.0
    ki_per_s: float = 0.5
    smoothing_us: int = 200_000
    deadband_us: int = 16
    max_ppm: int = 2000
    integral_ppm: float = 0.0
    smoothed_us: float | None = None
    ppm: int = 0

    def update(self, error_us: float, dt_us: int, feed_forward_ppm: float = 0.0,
                uncertainty_us: int = 0) -> int:
        """Feed one error measurement taken ``dt_us`` after the previous one; returns ppm.

        ``feed_forward_ppm`` is the correction the known rate mismatch needs (DAC
        crystal against server clock); the PI part only trims what is left.
        ``uncertainty_us`` (the clock estimate's own error) widens the dead band to
        half of it: chasing an estimate that is not yet better than that only
        moves audio back and forth.
        """
        if self.smoothed_us is None:
            self.smoothed_us = float(error_us)
        else:
            self.smoothed_us += (error_us - self.smoothed_us) * dt_us / (self.smoothing_us + dt_us)
        error = self.smoothed_us
        if abs(error) <= max(self.deadband_us, uncertainty_us // 2):
            proportional = 0.0
        else:
            proportional = self.kp_ppm_per_us * error
            self.integral_ppm += self.kp_ppm_per_us * self.ki_per_s * error * dt_us / PPM
            self.integral_ppm = max(-self.max_ppm, min(self.max_ppm, self.integral_ppm))
        total = feed_forward_ppm + proportional + self.integral_ppm
        self.ppm = int(max(-self.max_ppm, min(self.max_ppm, total)))
        return self.ppm

    def reset(self, keep_drift: bool = True) -> None:
        if not keep_drift:
            self.integral_ppm = 0.0
        self.smoothed_us = None
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
    """``block`` with ``corrections`` frames dropped (>0) or inserted (<0), spread evenly
    (at most half the block's frames; ``block`` itself when there is nothing to do)."""
    n = block.shape[0]
    k = min(abs(corrections), n // 2) if n >= 2 else 0
    if k == 0:
        return block
    out = np.empty((n - k if corrections > 0 else n + k, block.shape[1]), dtype=block.dtype)
    correct_into(block, k if corrections > 0 else -k, out)
    return out


def correct_into(src: np.ndarray, corrections: int, out: np.ndarray) -> None:
    """Write ``src`` with ``corrections`` frames dropped (>0) or inserted (<0) into ``out``,
    which holds ``len(src) - corrections`` frames; ``|corrections| <= len(src) // 2``.

    The correction points lie strictly inside ``src``, evenly spread; a drop replaces the
    two frames at a point by their mean, an insert puts their mean between them.  Only
    slices are copied and only the blended frames are computed (integers, no block-sized
    temporary).
    """
    n = src.shape[0]
    k = abs(corrections)
    drop = corrections > 0
    o = s = 0  # next frame of out to write, next frame of src to copy
    for i in range(k):
        p = 1 + (2 * i + 1) * (n - 1) // (2 * k)  # the point: between src[p - 1] and src[p]
        head = p - 1 - s if drop else p - s
        out[o:o + head] = src[s:s + head]
        o += head
        for c in range(src.shape[1]):
            out[o, c] = (int(src[p - 1, c]) + int(src[p, c])) >> 1
        o += 1
        s = p + 1 if drop else p
    out[o:] = src[s:]


@attrs.define
class DacRateEstimator:
    """The DAC's rate error against the local clock, from its own position reports.

    Fits frames-played against report time by least squares over the last
    ``window_s`` seconds (decimated to one point per ``step_ms``), so the
    one-frame quantisation of each report averages out.  ``ppm`` is None until
    ``min_span_s`` of reports exist.
    """

    rate: int
    window_s: float = 30.0
    step_ms: int = 50
    min_span_s: float = 0.5
    refit_every: int = 20  # points, i.e. once a second
    points: list = attrs.field(factory=list)
    ppm: float | None = None
    _since_fit: int = 0

    def add(self, tstamp_local_ns: int, frames_played: int) -> None:
        if self.points and tstamp_local_ns - self.points[-1][0] < self.step_ms * 1_000_000:
            return
        self.points.append((tstamp_local_ns, frames_played))
        horizon = tstamp_local_ns - int(self.window_s * 1e9)
        while self.points[0][0] < horizon:
            self.points.pop(0)
        self._since_fit += 1
        span_s = (tstamp_local_ns - self.points[0][0]) / 1e9
        due = self.ppm is None or self._since_fit >= self.refit_every
        if due and span_s >= self.min_span_s and len(self.points) >= 5:
            self.ppm = self._fit()
            self._since_fit = 0

    def _fit(self) -> float:
        t0, p0 = self.points[0]
        ts = np.array([(t - t0) / 1e9 for t, _ in self.points])
        ps = np.array([p - p0 for _, p in self.points], dtype=np.float64)
        slope = np.polyfit(ts, ps, 1)[0]
        return (slope / self.rate - 1.0) * PPM

    def reset(self) -> None:
        self.points.clear()
        self.ppm = None
        self._since_fit = 0
