"""Analysis of a two-channel bench recording (numpy only).

Two boards' line outputs go into the left and right inputs of ONE USB audio interface, so
both channels share one sample clock and their difference needs no other reference. The
boards play the indexed chirp signal of :mod:`board.bench.testsignal`.

Pipeline (``analyse_sync``):

1. **Detect** every chirp in each channel with a normalised matched filter (correlation
   coefficient against the chirp template, so gain does not matter; the template and the
   local variance are mean-free, so DC does not matter), threshold 0.5, one peak per
   cluster.
2. **Decode** each event's index n from its FSK code (energy at 2 kHz vs 3 kHz per bit, so
   gain/DC/polarity do not matter; 8 check bits). Events are paired across channels by n,
   which removes any period ambiguity; an event whose code fails is given the index its
   timing implies (``decoded`` False).
3. **Offset** per paired event: cross-correlation of the two channels' windows around the
   chirp (band 400 Hz .. 13 kHz, which drops DC, mains hum and the pilot), upsampled x16 by
   zero-padding the cross-spectrum, then parabolic interpolation of the peak. Offset
   = t_B - t_A (positive: B plays later). Polarity inversion of one channel is tolerated.
4. **Summary**: median (signed), p99 and max of |offset|, and drift in ppm = slope of a
   least-squares line of offset (µs) against time (s), after rejecting outliers.

Also :func:`first_sound` (boot-to-first-sound) and :func:`find_glitches` (gaps/dropouts and
clicks in one channel).

CLI: ``python -m board.bench.analysis rec.wav [--json] [--a 0 --b 1] [--boot CH] [--glitches CH]``
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

try:  # package import (python -m board.bench.analysis, tests)
    from . import testsignal as ts
except ImportError:  # pragma: no cover - run as a plain script from board/bench
    import testsignal as ts  # type: ignore[no-redef]

DETECT_THRESHOLD = 0.5
XCORR_BAND_HZ = (400.0, 13000.0)
UPSAMPLE = 16
MARGIN_S = 0.004  # window margin around the chirp (and taper length)
MAX_FINE_LAG_SAMPLES = 8.0


# ---------------------------------------------------------------------------------------
# WAV input (PCM 16/24/32-bit integer, 32/64-bit float, WAVE_FORMAT_EXTENSIBLE)
# ---------------------------------------------------------------------------------------


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Return ``(samples, rate)``: samples as float64 (frames, channels), full scale 1.0."""
    data = Path(path).read_bytes()
    if data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        raise ValueError(f"{path}: not a RIFF/WAVE file")
    pos, fmt, payload = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        if cid == b"fmt ":
            fmt = body
        elif cid == b"data":
            if size == 0xFFFFFFFF or pos + 8 + size > len(data):  # streamed/unfinished
                body = data[pos + 8:]
            payload = body
            break
        pos += 8 + size + (size & 1)
    if fmt is None or payload is None:
        raise ValueError(f"{path}: no fmt or data chunk")
    tag, channels, rate = struct.unpack("<HHI", fmt[:8])
    bits = struct.unpack("<H", fmt[14:16])[0]
    if tag == 0xFFFE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]
    width = bits // 8
    usable = len(payload) - len(payload) % (width * channels)
    raw = payload[:usable]
    if tag == 3:
        x = np.frombuffer(raw, dtype="<f4" if bits == 32 else "<f8").astype(np.float64)
    elif tag == 1 and bits == 16:
        x = np.frombuffer(raw, dtype="<i2") / 32768.0
    elif tag == 1 and bits == 32:
        x = np.frombuffer(raw, dtype="<i4") / 2147483648.0
    elif tag == 1 and bits == 24:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = np.where(v & 0x800000, v - (1 << 24), v) / 8388608.0
    else:
        raise ValueError(f"{path}: unsupported WAV format tag {tag}, {bits} bits")
    return x.reshape(-1, channels), int(rate)


# ---------------------------------------------------------------------------------------
# Cross-correlation with sub-sample interpolation
# ---------------------------------------------------------------------------------------


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(np.ceil(np.log2(max(n, 1)))))


def xcorr_lag(a: np.ndarray, b: np.ndarray, fs: float, band: tuple[float, float] = XCORR_BAND_HZ,
              up: int = UPSAMPLE, max_lag: float = MAX_FINE_LAG_SAMPLES) -> tuple[float, float]:
    """Delay of `b` against `a` in samples, ``b(t) ≈ g * a(t - lag)``, and the peak's
    normalised correlation (signed: negative = inverted polarity).

    Band-limits the cross-spectrum to `band`, upsamples the correlation `up` times by
    zero-padding the spectrum, searches |lag| <= `max_lag` and refines the peak with a
    parabola through its three neighbours (residual bias << 0.01 sample at up=16).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n = max(a.size, b.size)
    nfft = _next_pow2(2 * n)
    A = np.fft.rfft(a - a.mean(), nfft)
    B = np.fft.rfft(b - b.mean(), nfft)
    f = np.fft.rfftfreq(nfft, 1.0 / fs)
    keep = (f >= band[0]) & (f <= band[1])
    A = np.where(keep, A, 0)
    B = np.where(keep, B, 0)
    m = nfft * up
    r = np.fft.irfft(np.conj(A) * B, m) * up  # same scale as an nfft-point correlation
    ea = np.fft.irfft(np.abs(A) ** 2, nfft)[0]
    eb = np.fft.irfft(np.abs(B) ** 2, nfft)[0]
    kmax = int(np.floor(max_lag * up))
    idx = np.r_[np.arange(0, kmax + 1), np.arange(m - kmax, m)]
    lags = np.r_[np.arange(0, kmax + 1), np.arange(-kmax, 0)]
    j = int(np.argmax(np.abs(r[idx])))
    k, sign = int(idx[j]), float(np.sign(r[idx[j]]) or 1.0)
    y0, y1, y2 = (sign * r[(k - 1) % m], sign * r[k], sign * r[(k + 1) % m])
    den = y0 - 2.0 * y1 + y2
    delta = 0.5 * (y0 - y2) / den if den < 0 else 0.0
    coef = float(r[k] / np.sqrt(ea * eb)) if ea > 0 and eb > 0 else 0.0
    return (float(lags[j]) + delta) / up, coef


# ---------------------------------------------------------------------------------------
# Event detection and index decoding (one channel)
# ---------------------------------------------------------------------------------------


@dataclass
class Events:
    """The chirps found in one channel (arrays of equal length, sorted by time)."""

    rate: int
    pos: np.ndarray        # int: sample where the chirp starts (coarse)
    t_s: np.ndarray        # float: fine chirp start, seconds from the recording start
    coef: np.ndarray       # matched-filter correlation coefficient (signed)
    index: np.ndarray      # int: event index n (absolute)
    decoded: np.ndarray    # bool: index read from the code (else inferred from timing)

    def __len__(self) -> int:
        return int(self.pos.size)


def chirp_template(fs: float) -> np.ndarray:
    L = int(np.ceil(ts.CHIRP_S * fs))
    return ts.chirp(np.arange(L) / fs)


def matched_filter(x: np.ndarray, tpl: np.ndarray, block: int = 1 << 18) -> np.ndarray:
    """Normalised correlation coefficient of `tpl` with `x` at every start position
    (length ``len(x) - len(tpl) + 1``); both sides mean-free, so immune to DC and gain."""
    x = np.asarray(x, dtype=np.float64)
    tpl = np.asarray(tpl, dtype=np.float64) - np.mean(tpl)
    L = tpl.size
    N = x.size
    out = np.zeros(max(N - L + 1, 0))
    if out.size == 0:
        return out
    tn = float(np.sqrt(np.sum(tpl * tpl)))
    nfft = _next_pow2(block + L - 1)
    T = np.conj(np.fft.rfft(tpl, nfft))
    for s in range(0, N - L + 1, block):
        seg = x[s:s + block + L - 1]
        seg = seg - seg.mean()  # numerics only: results are mean-invariant
        m = seg.size - L + 1
        c = np.fft.irfft(np.fft.rfft(seg, nfft) * T, nfft)[:m]
        c1 = np.concatenate(([0.0], np.cumsum(seg)))
        c2 = np.concatenate(([0.0], np.cumsum(seg * seg)))
        s1 = c1[L:L + m] - c1[:m]
        s2 = c2[L:L + m] - c2[:m]
        var = s2 - s1 * s1 / L
        floor = 1e-14 * L
        out[s:s + m] = np.where(var > floor, c / (tn * np.sqrt(np.maximum(var, floor))), 0.0)
    return out


def _pick_peaks(rho: np.ndarray, threshold: float, min_sep: int) -> np.ndarray:
    cand = np.flatnonzero(np.abs(rho) > threshold)
    if cand.size == 0:
        return cand
    breaks = np.flatnonzero(np.diff(cand) > min_sep) + 1
    peaks = [g[np.argmax(np.abs(rho[g]))] for g in np.split(cand, breaks)]
    return np.asarray(peaks, dtype=np.int64)


def decode_index(x: np.ndarray, fs: float, start: float) -> tuple[int, bool]:
    """Read the 24-bit code of the event whose chirp starts at sample `start` (float).

    Returns ``(n16, ok)``: the 16-bit index and whether the check bits match."""
    half = int(0.375 * ts.BIT_S * fs)  # central 3 ms of each 4 ms bit
    centres = start + (ts.CODE_START_S + (np.arange(ts.CODE_BITS) + 0.5) * ts.BIT_S) * fs
    c = np.rint(centres).astype(np.int64)
    if c[0] - half < 0 or c[-1] + half + 1 > x.size:
        return -1, False
    off = np.arange(-half, half + 1)
    seg = x[c[:, None] + off[None, :]]
    seg = seg - seg.mean(axis=1, keepdims=True)
    t = off / fs
    e1 = np.abs(seg @ np.exp(-2j * np.pi * ts.F_ONE * t))
    e0 = np.abs(seg @ np.exp(-2j * np.pi * ts.F_ZERO * t))
    bits = (e1 > e0).astype(np.int64)
    word = int(np.sum(bits << np.arange(ts.CODE_BITS - 1, -1, -1)))
    n16, chk = word >> ts.CHECK_BITS, word & 0xFF
    return n16, chk == ts.check_byte(n16)


def detect_events(x: np.ndarray, fs: int, threshold: float = DETECT_THRESHOLD) -> Events:
    """Find, time and index every chirp of the test signal in one channel."""
    x = np.asarray(x, dtype=np.float64)
    tpl = chirp_template(fs)
    L = tpl.size
    rho = matched_filter(x, tpl)
    pos = _pick_peaks(rho, threshold, min_sep=2 * L)
    margin = int(round(MARGIN_S * fs))
    period = ts.PERIOD_S * fs
    keep, t_s, coef, n16, ok = [], [], [], [], []
    taper = _taper(L + 2 * margin, margin)
    ref = ts.chirp((np.arange(L + 2 * margin) - margin) / fs) * taper
    for p in pos:
        lo, hi = p - margin, p + L + margin
        if lo < 0 or hi > x.size:
            continue
        lag, _ = xcorr_lag(ref, x[lo:hi] * taper, fs)
        start = p + lag
        n, good = decode_index(x, fs, start)
        keep.append(p)
        t_s.append(start / fs)
        coef.append(rho[p])
        n16.append(n)
        ok.append(good)
    pos = np.asarray(keep, dtype=np.int64)
    t = np.asarray(t_s, dtype=np.float64)
    n16a = np.asarray(n16, dtype=np.int64)
    oka = np.asarray(ok, dtype=bool)
    index = np.full(pos.size, -1, dtype=np.int64)
    if oka.any():
        # absolute index: unwrap the 16-bit code against timing (matters after 9.1 h)
        slot = np.rint(t * fs / period).astype(np.int64)
        base = int(np.bincount((n16a[oka] - slot[oka]) % 65536).argmax())
        base = (base + 32768) % 65536 - 32768  # recording starts near stream time 0: small
        guess = slot + base
        index = np.where(oka, guess + ((n16a - guess + 32768) % 65536 - 32768), guess)
        first = int(index[np.flatnonzero(oka)[0]])
        index += 65536 * (-(first // 65536))  # the first decoded event is its own n16
    else:
        oka[:] = False
    return Events(int(fs), pos, t, np.asarray(coef, dtype=np.float64), index, oka)


def _taper(n: int, edge: int) -> np.ndarray:
    w = np.ones(n)
    if edge > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(edge) + 0.5) / edge)
        w[:edge] = ramp
        w[n - edge:] = ramp[::-1]
    return w


# ---------------------------------------------------------------------------------------
# Two-channel sync analysis
# ---------------------------------------------------------------------------------------


@dataclass
class SyncResult:
    rate: int
    index: np.ndarray       # event n of every paired event
    t_s: np.ndarray         # channel A's chirp time (s from recording start)
    offset_us: np.ndarray   # t_B - t_A per event (positive: B later)
    coef: np.ndarray        # normalised A/B correlation at the peak (negative: inverted)
    inlier: np.ndarray      # bool: used for the drift fit
    median_us: float
    p99_abs_us: float
    max_abs_us: float
    std_us: float
    drift_ppm: float        # d(offset)/dt: +1 ppm = B falls behind A by 1 µs per second
    fit_offset_us: float    # fitted offset at t = 0 of the recording
    fit_residual_rms_us: float
    rate_ppm_a: float       # channel A's event rate against the recorder's clock (+ = fast)
    rate_ppm_b: float
    events_a: int
    events_b: int
    undecoded_a: int
    undecoded_b: int
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if not isinstance(v, np.ndarray)}
        d["paired"] = int(self.index.size)
        return d

    def lines(self) -> list[str]:
        s = [f"events: A {self.events_a} ({self.undecoded_a} undecoded), "
             f"B {self.events_b} ({self.undecoded_b} undecoded), paired {self.index.size}",
             f"offset B-A: median {self.median_us:+.2f} us, p99 |offset| {self.p99_abs_us:.2f} us, "
             f"max |offset| {self.max_abs_us:.2f} us, std {self.std_us:.2f} us",
             f"drift: {self.drift_ppm:+.3f} ppm ({self.drift_ppm * 60:+.1f} us/min), "
             f"fit residual rms {self.fit_residual_rms_us:.2f} us",
             f"rate vs recorder clock: A {self.rate_ppm_a:+.2f} ppm, B {self.rate_ppm_b:+.2f} ppm"]
        return s + [f"note: {n}" for n in self.notes]


def _rate_ppm(ev: Events) -> float:
    if len(ev) < 3:
        return float("nan")
    slope = np.polyfit(ev.index.astype(np.float64), ev.t_s, 1)[0]
    return float((ts.PERIOD_S / slope - 1.0) * 1e6)


def _robust_line(t: np.ndarray, y: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Least-squares line y = a*t + b after rejecting residuals beyond 6 MAD (min 5 µs)."""
    inl = np.ones(t.size, dtype=bool)
    if t.size < 2:
        return 0.0, float(y[0]) if y.size else float("nan"), inl
    for _ in range(3):
        a, b = np.polyfit(t[inl], y[inl], 1)
        res = y - (a * t + b)
        mad = float(np.median(np.abs(res[inl] - np.median(res[inl]))))
        new = np.abs(res) <= max(6 * 1.4826 * mad, 5.0)
        if new.sum() < 2 or np.array_equal(new, inl):
            break
        inl = new
    a, b = np.polyfit(t[inl], y[inl], 1)
    return float(a), float(b), inl


def analyse_sync(rec: np.ndarray, fs: int, a: int = 0, b: int = 1,
                 threshold: float = DETECT_THRESHOLD) -> SyncResult:
    """Per-event offset of channel `b` against channel `a`, with median/p99/drift."""
    rec = np.asarray(rec, dtype=np.float64)
    xa, xb = rec[:, a], rec[:, b]
    ea, eb = detect_events(xa, fs, threshold), detect_events(xb, fs, threshold)
    notes: list[str] = []
    # pair by index; prefer decoded events when one index occurs twice
    def table(ev: Events) -> dict[int, int]:
        d: dict[int, int] = {}
        for i in np.argsort(~ev.decoded, kind="stable"):
            d.setdefault(int(ev.index[i]), int(i))
        return d
    ta, tb = table(ea), table(eb)
    common = sorted(set(ta) & set(tb))
    L = chirp_template(fs).size
    margin = int(round(MARGIN_S * fs))
    taper = _taper(L + 2 * margin, margin)
    idx, t_s, off, coef = [], [], [], []
    for n in common:
        ia, ib = ta[n], tb[n]
        pa, pb = int(ea.pos[ia]), int(eb.pos[ib])
        wa = xa[pa - margin:pa + L + margin]
        wb = xb[pb - margin:pb + L + margin]
        if wa.size != taper.size or wb.size != taper.size:
            continue
        lag, c = xcorr_lag(wa * taper, wb * taper, fs)
        idx.append(n)
        t_s.append(ea.t_s[ia])
        off.append((pb - pa + lag) / fs * 1e6)
        coef.append(c)
    index = np.asarray(idx, dtype=np.int64)
    t = np.asarray(t_s, dtype=np.float64)
    o = np.asarray(off, dtype=np.float64)
    cf = np.asarray(coef, dtype=np.float64)
    if o.size == 0:
        notes.append("no event found in both channels")
        nan = float("nan")
        return SyncResult(fs, index, t, o, cf, np.zeros(0, bool), nan, nan, nan, nan, nan, nan,
                          nan, _rate_ppm(ea), _rate_ppm(eb), len(ea), len(eb),
                          int((~ea.decoded).sum()), int((~eb.decoded).sum()), notes)
    weak = int((np.abs(cf) < 0.5).sum())
    if weak:
        notes.append(f"{weak} events with A/B correlation < 0.5 (distorted or glitched)")
    if np.median(cf) < 0:
        notes.append("channel B is polarity-inverted against A")
    slope, icpt, inl = _robust_line(t, o)
    if (~inl).any():
        notes.append(f"{int((~inl).sum())} outlier events excluded from the drift fit")
    res = o[inl] - (slope * t[inl] + icpt)
    return SyncResult(
        rate=int(fs), index=index, t_s=t, offset_us=o, coef=cf, inlier=inl,
        median_us=float(np.median(o)), p99_abs_us=float(np.percentile(np.abs(o), 99)),
        max_abs_us=float(np.max(np.abs(o))), std_us=float(np.std(o)),
        drift_ppm=slope, fit_offset_us=icpt,
        fit_residual_rms_us=float(np.sqrt(np.mean(res * res))) if res.size else float("nan"),
        rate_ppm_a=_rate_ppm(ea), rate_ppm_b=_rate_ppm(eb), events_a=len(ea), events_b=len(eb),
        undecoded_a=int((~ea.decoded).sum()), undecoded_b=int((~eb.decoded).sum()), notes=notes)


# ---------------------------------------------------------------------------------------
# One channel: boot-to-first-sound, gaps and clicks
# ---------------------------------------------------------------------------------------


def _moving_rms(x: np.ndarray, win: int, hop: int) -> np.ndarray:
    """RMS (mean-free) of windows of `win` samples every `hop` samples."""
    c1 = np.concatenate(([0.0], np.cumsum(x)))
    c2 = np.concatenate(([0.0], np.cumsum(x * x)))
    starts = np.arange(0, max(x.size - win + 1, 0), hop)
    s1 = c1[starts + win] - c1[starts]
    s2 = c2[starts + win] - c2[starts]
    return np.sqrt(np.maximum(s2 / win - (s1 / win) ** 2, 0.0))


@dataclass
class FirstSound:
    sound_s: float | None   # first sustained sound above the threshold (s from recording start)
    chirp_s: float | None   # first chirp of the test signal
    chirp_index: int | None  # its event index n (0 = the stream's first period)
    threshold_rms: float


def first_sound(x: np.ndarray, fs: int, threshold_dbfs: float = -50.0,
                sustain_ms: float = 20.0) -> FirstSound:
    """When sound starts in one channel: the first time the 1 ms RMS stays above
    `threshold_dbfs` for `sustain_ms` (a power-on pop is shorter and is ignored), and the
    first detected chirp of the test signal with its index."""
    x = np.asarray(x, dtype=np.float64)
    win = max(1, int(round(fs * 0.001)))
    rms = _moving_rms(x, win, win)
    thr = 10.0 ** (threshold_dbfs / 20.0)
    need = max(1, int(round(sustain_ms)))
    above = rms > thr
    sound = None
    if above.size >= need:
        run = np.convolve(above.astype(np.int64), np.ones(need, dtype=np.int64), "valid")
        hit = np.flatnonzero(run == need)
        if hit.size:
            sound = float(hit[0] * win / fs)
    ev = detect_events(x, fs)
    chirp_s = float(ev.t_s[0]) if len(ev) else None
    chirp_n = int(ev.index[0]) if len(ev) else None
    return FirstSound(sound, chirp_s, chirp_n, thr)


@dataclass
class Glitches:
    gaps: list[tuple[float, float]]    # (start s, duration s): level dropped below `ratio`
    clicks: list[tuple[float, float]]  # (time s, |step| full scale) outside the events
    level_rms: float                   # reference (median) RMS over one pilot period

    @property
    def ok(self) -> bool:
        return not self.gaps and not self.clicks


def find_glitches(x: np.ndarray, fs: int, ratio: float = 0.3, min_gap_ms: float = 3.0,
                  click_sigma: float = 12.0, events: Events | None = None,
                  start_s: float | None = None, end_s: float | None = None) -> Glitches:
    """Dropouts and clicks in one channel playing the test signal.

    * gap: the RMS over one pilot period (hop 0.5 ms) falls below `ratio` x its median for
      at least `min_gap_ms` (mute, underrun, stall; the pilot never stops in the signal);
    * click: a sample step (first difference) above `click_sigma` robust sigmas and above
      4x the pilot's largest step, outside the chirp/code part of each event (a skip or
      repeat of audio, a discontinuity).

    Searched between `start_s` and `end_s` (default: from the first to the end of the last
    detected event, so a recording's silent lead-in/out is not a gap).
    """
    x = np.asarray(x, dtype=np.float64)
    x = x - np.median(x)
    if events is None:
        events = detect_events(x, fs)
    if start_s is None:
        start_s = float(events.t_s[0]) if len(events) else 0.0
    if end_s is None:
        end_s = (float(events.t_s[-1]) + ts.PERIOD_S) if len(events) else x.size / fs
    end_s = min(end_s, x.size / fs)
    win = max(1, int(round(fs / ts.PILOT_HZ)))
    hop = max(1, int(round(fs * 0.0005)))
    rms = _moving_rms(x, win, hop)
    tc = (np.arange(rms.size) * hop + win / 2) / fs
    inside = (tc >= start_s) & (tc <= end_s - win / fs)
    gaps: list[tuple[float, float]] = []
    level = float(np.median(rms[inside])) if inside.any() else 0.0
    if inside.any() and level > 0:
        low = (rms < ratio * level) & inside
        edges = np.diff(np.r_[0, low.astype(np.int8), 0])
        for s, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
            t0 = s * hop / fs
            dur = (e - s - 1) * hop / fs + win / fs
            if dur >= min_gap_ms / 1000.0:
                # the window straddles the edges: the gap itself is win shorter
                gaps.append((t0 + win / fs / 2, max(dur - win / fs, 0.0)))
    d = np.abs(np.diff(x))
    td = (np.arange(d.size) + 0.5) / fs
    mask = (td >= start_s) & (td <= end_s)
    for t in events.t_s:  # chirps and code bursts are legitimately steep
        mask &= ~((td >= t - 0.001) & (td <= t + ts.EVENT_END_S + 0.001))
    clicks: list[tuple[float, float]] = []
    if mask.any():
        dm = d[mask]
        sigma = 1.4826 * float(np.median(np.abs(dm - np.median(dm))))
        pilot_step = 2 * np.pi * ts.PILOT_HZ / fs * np.sqrt(2) * level
        thr = max(click_sigma * sigma, 4 * pilot_step, 1e-4)
        hits = np.flatnonzero(mask & (d > thr))
        if hits.size:
            groups = np.split(hits, np.flatnonzero(np.diff(hits) > int(0.002 * fs)) + 1)
            clicks = [(float(td[g[np.argmax(d[g])]]), float(d[g].max())) for g in groups]
    return Glitches(gaps, clicks, level)


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m board.bench.analysis",
                                description="Inter-channel sync of a bench recording.")
    p.add_argument("wav", help="recording (WAV, 2+ channels, PCM int or float)")
    p.add_argument("--a", type=int, default=0, help="reference channel (default 0)")
    p.add_argument("--b", type=int, default=1, help="compared channel (default 1)")
    p.add_argument("--boot", type=int, metavar="CH", help="also report first sound in CH")
    p.add_argument("--glitches", type=int, metavar="CH", action="append", default=[],
                   help="also report gaps and clicks in CH (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.add_argument("--series", action="store_true", help="also print the per-event offsets")
    args = p.parse_args(argv)
    try:
        rec, fs = read_wav(args.wav)
    except (OSError, ValueError) as exc:
        p.error(str(exc))
    out: dict = {"file": args.wav, "rate": fs, "seconds": rec.shape[0] / fs}
    text = [f"{args.wav}: {rec.shape[1]} ch, {fs} Hz, {rec.shape[0] / fs:.1f} s"]
    if rec.shape[1] > max(args.a, args.b):
        r = analyse_sync(rec, fs, args.a, args.b)
        out["sync"] = r.summary()
        text += r.lines()
        if args.series:
            out["series"] = [{"n": int(n), "t_s": float(t), "offset_us": float(o)}
                             for n, t, o in zip(r.index, r.t_s, r.offset_us)]
            text += [f"  n={n:6d} t={t:9.4f} s offset={o:+9.2f} us"
                     for n, t, o in zip(r.index, r.t_s, r.offset_us)]
    if args.boot is not None:
        fsd = first_sound(rec[:, args.boot], fs)
        out["first_sound"] = asdict(fsd)
        text.append(f"ch{args.boot}: first sound {fsd.sound_s} s, first chirp {fsd.chirp_s} s "
                    f"(event {fsd.chirp_index})")
    for ch in args.glitches:
        g = find_glitches(rec[:, ch], fs)
        out[f"glitches_ch{ch}"] = asdict(g)
        text.append(f"ch{ch}: {len(g.gaps)} gaps, {len(g.clicks)} clicks "
                    f"(pilot rms {g.level_rms:.4f})")
        text += [f"  gap at {s:.4f} s for {d * 1000:.1f} ms" for s, d in g.gaps]
        text += [f"  click at {s:.4f} s, step {v:.4f}" for s, v in g.clicks]
    if args.json:
        print(json.dumps(out, default=float))
    else:
        print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
