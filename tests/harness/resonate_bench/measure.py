"""Ground truth: which frame left the paced DAC when, against when the server said.

Inputs are the paced device's play log (CLOCK_MONOTONIC_RAW ns per frame) and
the test server's chunk log (server clock = CLOCK_MONOTONIC_RAW µs on the same
host).  The index test signal lets every played frame name its own index K, so
each frame's error is ``play time − server time of frame K`` (signed, positive =
late) without trusting anything the player says about itself.
"""

from __future__ import annotations

import attrs
import numpy as np

from resonate_bench.harness import decode_frame_index, index_samples_for
from resonate_bench.paced_log import PacedLog


@attrs.frozen
class ChunkTable:
    """The server's chunk log as sorted arrays (one row per committed chunk)."""

    first_frame: np.ndarray
    frames: np.ndarray
    server_ts_us: np.ndarray
    rate: np.ndarray

    @classmethod
    def from_events(cls, events: list[dict]) -> ChunkTable:
        rows = sorted((e["first_frame"], e["frames"], e["server_ts_us"], e["format"]["sample_rate"])
                      for e in events if e.get("event") == "chunk")
        cols = np.array(rows, dtype=np.int64).reshape(-1, 4)
        return cls(cols[:, 0], cols[:, 1], cols[:, 2], cols[:, 3])

    def server_ns(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Server time (ns) of frames K, and a mask of the K that some chunk covers."""
        idx = np.searchsorted(self.first_frame, k, side="right") - 1
        ok = idx >= 0
        idx = np.clip(idx, 0, None)
        ok &= k < self.first_frame[idx] + self.frames[idx]
        offset = k - self.first_frame[idx]
        ns = self.server_ts_us[idx] * 1000 + offset * 1_000_000_000 // self.rate[idx]
        return ns, ok


@attrs.frozen
class Matched:
    """Every played, identified frame: its index, play time, server time and error."""

    k: np.ndarray
    play_ns: np.ndarray
    server_ns: np.ndarray
    bit_exact: np.ndarray  # bool per frame
    silent_frames: int
    unidentified_frames: int

    @property
    def error_us(self) -> np.ndarray:
        return (self.play_ns - self.server_ns) / 1000.0


def _bits(log: PacedLog) -> int:
    return 16 if log.sample_format == "S16_LE" else 32


def match(log: PacedLog, chunks: ChunkTable, stream_bits: int = 16) -> Matched:
    """Identify every played frame of the index signal (unity volume)."""
    parts: list[tuple[np.ndarray, ...]] = []
    silent = unidentified = 0
    bits = _bits(log)
    for span in log.spans:
        samples = span.samples
        nonzero = samples.any(axis=1)
        silent += int((~nonzero).sum())
        k = decode_frame_index(samples, bits).astype(np.int64)
        server_ns, ok = chunks.server_ns(k)
        ok &= nonzero
        expected = _expected(k, stream_bits, bits, samples.shape[1], samples.dtype)
        exact = (samples == expected).all(axis=1)
        # a frame is identified if it is exactly frame K, or a blended correction
        # frame between two exact ones (its K then decodes to a neighbour)
        neighbours = np.zeros_like(exact)
        neighbours[1:-1] = exact[:-2] & exact[2:]
        ok &= exact | neighbours
        unidentified += int((nonzero & ~ok).sum())
        sel = np.flatnonzero(ok)
        parts.append((k[sel], span.play_times_ns()[sel], server_ns[sel], exact[sel]))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return Matched(empty, empty, empty, np.zeros(0, bool), silent, unidentified)
    cols = [np.concatenate(c) for c in zip(*parts)]
    return Matched(cols[0], cols[1], cols[2], cols[3], silent, unidentified)


def _expected(k: np.ndarray, stream_bits: int, device_bits: int, channels: int, dtype) -> np.ndarray:
    """What the device should have played for frames K of a ``stream_bits`` index signal."""
    rows = index_samples_for(k, stream_bits, channels)
    return (rows << (device_bits - stream_bits)).astype(dtype)


@attrs.frozen
class ErrorSummary:
    frames: int
    median_abs_us: float
    p99_abs_us: float
    max_abs_us: float
    mean_us: float

    def line(self) -> str:
        return (f"{self.frames} frames: median |err| {self.median_abs_us:.1f} us, "
                f"p99 {self.p99_abs_us:.1f} us, max {self.max_abs_us:.1f} us, mean {self.mean_us:+.1f} us")


def summarize(error_us: np.ndarray) -> ErrorSummary:
    if error_us.size == 0:
        return ErrorSummary(0, float("nan"), float("nan"), float("nan"), float("nan"))
    a = np.abs(error_us)
    return ErrorSummary(int(error_us.size), float(np.median(a)), float(np.percentile(a, 99)),
                        float(a.max()), float(error_us.mean()))
