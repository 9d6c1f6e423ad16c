"""Reader for the log written by the software-paced ALSA PCM (``board/pacedpcm``).

The device (``paced:LOG=/path``) records every frame it "played" together with the
exact timeline it played it on.  This module turns that log into spans of
contiguous frames with their CLOCK_MONOTONIC_RAW play times, which is the ground
truth for sync tests.

File layout (all little endian)::

    header   8s  magic b"PACEDLOG", u32 version (1), u32 reserved
    record   u32 type, u32 payload_len, payload[payload_len]

    1 FORMAT  u32 alsa_format (2=S16_LE, 10=S32_LE, 32=S24_3LE), u32 channels,
              u32 rate, u32 bytes_per_frame, f64 ppm, i64 ppm_micro (round(ppm*1e6)),
              i64 latency_ns, u32 clock_id (4 = CLOCK_MONOTONIC_RAW),
              u32 buffer_size, u32 period_size, u32 reserved
    2 EPOCH   i64 t0_raw_ns, u64 base_position      (stream start / pause release)
    3 FRAMES  u64 first_position, u32 n_frames, u32 reserved, n_frames * bpf bytes
    4 XRUN    i64 onset_raw_ns, u64 position, i64 detected_raw_ns
    5 STOP    i64 t_raw_ns, u64 position, u32 reason, u32 reserved
              (reason 0 drop, 1 drain done, 2 pause, 3 close, 4 prepare)
    6 PREPARE i64 t_raw_ns                          (positions restart at 0)

Positions count frames since the last PREPARE (the ALSA hw_ptr, unwrapped).  In
an epoch ``(t0, base)`` the frame at position ``k`` leaves the DAC at
``t0 + latency_ns + (k - base) * 1e21 / F`` ns with ``F = rate * (1e12 + ppm_micro)``,
i.e. ``(k - base) * 1e9 / (rate * (1 + ppm * 1e-6))``.
"""

from __future__ import annotations

import os
import struct
from typing import Literal

import attrs
import numpy as np

__all__ = ["PacedEvent", "PacedLog", "PlayedSpan", "read_paced_log", "MAGIC"]

MAGIC = b"PACEDLOG"
SUPPORTED_VERSION = 1

_FORMATS: dict[int, tuple[str, int]] = {
    2: ("S16_LE", 2),
    10: ("S32_LE", 4),
    32: ("S24_3LE", 3),
}

REC_FORMAT = 1
REC_EPOCH = 2
REC_FRAMES = 3
REC_XRUN = 4
REC_STOP = 5
REC_PREPARE = 6

STOP_REASONS = {0: "drop", 1: "drain", 2: "pause", 3: "close", 4: "prepare"}

_E21 = 10**21

_HDR = struct.Struct("<8sII")
_REC = struct.Struct("<II")
_FORMAT = struct.Struct("<IIIIdqqIIII")
_EPOCH = struct.Struct("<qQ")
_FRAMES = struct.Struct("<QII")
_XRUN = struct.Struct("<qQq")
_STOP = struct.Struct("<qQII")
_PREPARE = struct.Struct("<q")


@attrs.frozen
class PlayedSpan:
    """Contiguous frames played within one epoch."""

    first_play_ns: int  # CLOCK_MONOTONIC_RAW ns at which the first frame left the DAC (latency included)
    frame_period_ns: float  # 1e9 / (rate * (1 + ppm * 1e-6))
    samples: np.ndarray  # (n_frames, channels); int16 (S16_LE) or int32 (S32_LE, S24_3LE sign-extended)
    first_position: int = 0  # stream position (frames since prepare) of the first frame

    @property
    def n_frames(self) -> int:
        return int(self.samples.shape[0])

    @property
    def end_play_ns(self) -> int:
        """Play time of the frame that would follow this span."""
        return self.first_play_ns + round(self.n_frames * self.frame_period_ns)

    def play_times_ns(self) -> np.ndarray:
        """CLOCK_MONOTONIC_RAW play time of every frame (int64, within 1 ns)."""
        offsets = np.rint(np.arange(self.n_frames, dtype=np.float64) * self.frame_period_ns)
        return np.int64(self.first_play_ns) + offsets.astype(np.int64)


@attrs.frozen
class PacedEvent:
    kind: Literal["epoch", "xrun", "stop", "prepare"]
    t_ns: int  # CLOCK_MONOTONIC_RAW ns (DAC input side, latency not included)
    position: int  # stream position (frames since the last prepare)
    detail: str = ""  # stop reason


@attrs.frozen
class PacedLog:
    rate: int
    channels: int
    sample_format: str  # "S16_LE" | "S32_LE" | "S24_3LE"
    ppm: float
    latency_ns: int
    spans: list[PlayedSpan]  # adjacent frames in one epoch merged into one span
    xruns_ns: list[int]  # CLOCK_MONOTONIC_RAW ns at which the DAC input ran dry (add latency_ns for the audible gap)
    events: list[PacedEvent] = attrs.field(factory=list)
    truncated: bool = False  # the last record was incomplete (file still being written)

    def all_samples(self) -> np.ndarray:
        """All played samples in order, concatenated over spans."""
        if not self.spans:
            dtype = np.int16 if self.sample_format == "S16_LE" else np.int32
            return np.zeros((0, self.channels), dtype=dtype)
        return np.concatenate([s.samples for s in self.spans])


def _decode_samples(raw: bytes, fmt: str, channels: int) -> np.ndarray:
    if fmt == "S16_LE":
        return np.frombuffer(raw, dtype="<i2").astype(np.int16).reshape(-1, channels)
    if fmt == "S32_LE":
        return np.frombuffer(raw, dtype="<i4").astype(np.int32).reshape(-1, channels)
    b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
    v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
    v = (v << 8) >> 8  # sign-extend 24 -> 32 bit
    return v.astype(np.int32).reshape(-1, channels)


def _round_div(num: int, den: int) -> int:
    return (2 * num + den) // (2 * den)


def read_paced_log_sections(path: str | os.PathLike[str]) -> list[PacedLog]:
    """Parse a paced-PCM log into one PacedLog per stream format, in order."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _HDR.size or data[:8] != MAGIC:
        raise ValueError(f"{os.fspath(path)!r} is not a paced PCM log (bad magic)")
    _magic, version, _reserved = _HDR.unpack_from(data, 0)
    if version != SUPPORTED_VERSION:
        raise ValueError(f"{os.fspath(path)!r}: unsupported paced log version {version}")

    fmt_info: tuple | None = None  # (fmt, channels, rate, bpf, ppm, ppm_u, latency_ns)
    F = 0
    epoch: tuple[int, int] | None = None  # (t0, base)
    epoch_id = 0
    spans: list[PlayedSpan] = []
    xruns: list[int] = []
    events: list[PacedEvent] = []
    # current span being accumulated
    cur_chunks: list[bytes] = []
    cur_first = 0
    cur_end = -1
    cur_epoch = -1
    truncated = False

    def flush_span() -> None:
        nonlocal cur_chunks
        if not cur_chunks:
            return
        assert fmt_info is not None and epoch_spans_t0 is not None
        fmt, ch, *_rest = fmt_info
        latency_ns = fmt_info[6]
        t0, base = epoch_spans_t0
        first_play = t0 + latency_ns + _round_div((cur_first - base) * _E21, F)
        spans.append(
            PlayedSpan(
                first_play_ns=first_play,
                frame_period_ns=_E21 / F,
                samples=_decode_samples(b"".join(cur_chunks), fmt, ch),
                first_position=cur_first,
            )
        )
        cur_chunks = []

    epoch_spans_t0: tuple[int, int] | None = None
    sections: list[PacedLog] = []
    off = _HDR.size
    n = len(data)
    while off < n:
        if off + _REC.size > n:
            truncated = True
            break
        rtype, plen = _REC.unpack_from(data, off)
        body = off + _REC.size
        if body + plen > n:
            truncated = True
            break
        off = body + plen
        if rtype == REC_FORMAT:
            if plen < _FORMAT.size:
                raise ValueError(f"corrupt paced log: short FORMAT record at {body - 8}")
            afmt, ch, rate, bpf, ppm, ppm_u, lat, _clk, _bs, _ps, _r = _FORMAT.unpack_from(data, body)
            if afmt not in _FORMATS:
                raise ValueError(f"paced log: unsupported ALSA format code {afmt}")
            name, width = _FORMATS[afmt]
            if bpf != width * ch:
                raise ValueError("corrupt paced log: bytes_per_frame mismatch")
            new = (name, ch, rate, bpf, ppm, ppm_u, lat)
            if fmt_info is not None and new != fmt_info and (spans or cur_chunks):
                flush_span()
                sections.append(_section(fmt_info, spans, xruns, events, False))
                spans, xruns, events = [], [], []
            fmt_info = new
            F = rate * (10**12 + ppm_u)
        elif rtype == REC_EPOCH:
            t0, base = _EPOCH.unpack_from(data, body)
            epoch = (t0, base)
            epoch_id += 1
            events.append(PacedEvent("epoch", t0, base))
        elif rtype == REC_FRAMES:
            if fmt_info is None or epoch is None:
                raise ValueError("corrupt paced log: FRAMES before FORMAT/EPOCH")
            first, nfr, _r = _FRAMES.unpack_from(data, body)
            raw = data[body + _FRAMES.size : body + plen]
            if len(raw) != nfr * fmt_info[3]:
                raise ValueError(f"corrupt paced log: FRAMES size mismatch at {body - 8}")
            if cur_chunks and cur_epoch == epoch_id and first == cur_end:
                cur_chunks.append(raw)
            else:
                flush_span()
                cur_chunks = [raw]
                cur_first = first
                cur_epoch = epoch_id
                epoch_spans_t0 = epoch
            cur_end = first + nfr
        elif rtype == REC_XRUN:
            onset, pos, _detected = _XRUN.unpack_from(data, body)
            xruns.append(onset)
            events.append(PacedEvent("xrun", onset, pos))
        elif rtype == REC_STOP:
            t, pos, reason, _r = _STOP.unpack_from(data, body)
            events.append(PacedEvent("stop", t, pos, STOP_REASONS.get(reason, str(reason))))
        elif rtype == REC_PREPARE:
            (t,) = _PREPARE.unpack_from(data, body)
            events.append(PacedEvent("prepare", t, 0))
        # unknown record types are skipped (forward compatible)
    flush_span()

    if fmt_info is None:
        raise ValueError(f"{os.fspath(path)!r}: paced log has no FORMAT record (device never configured)")
    sections.append(_section(fmt_info, spans, xruns, events, truncated))
    return sections


def _section(fmt_info: tuple, spans: list, xruns: list, events: list, truncated: bool) -> PacedLog:
    name, ch, rate, _bpf, ppm, _ppm_u, lat = fmt_info
    return PacedLog(rate=rate, channels=ch, sample_format=name, ppm=ppm, latency_ns=lat,
                    spans=spans, xruns_ns=xruns, events=events, truncated=truncated)


def read_paced_log(path: str | os.PathLike[str]) -> PacedLog:
    """Parse a paced-PCM log written in one format.  A truncated last record is ignored."""
    sections = read_paced_log_sections(path)
    if len(sections) > 1:
        raise ValueError(f"{os.fspath(path)!r}: the stream format changed mid-file; "
                         "use read_paced_log_sections")
    return sections[0]
