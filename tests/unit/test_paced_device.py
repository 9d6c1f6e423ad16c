"""Tests of the software-paced ALSA PCM (board/pacedpcm) and its log reader.

The device tests open the INSTALLED `paced` PCM through pyalsaaudio; they are
skipped when it is not installed (`make -C board/pacedpcm install`, as root).
The reader tests use synthetic logs and always run.
"""

from __future__ import annotations

import os
import select
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from resonate_bench.harness import MISSING_DEPENDENCY
from resonate_bench.paced_log import PacedLog, read_paced_log

RATE = 48000
CHANNELS = 2
PERIOD = 480
PERIODS = 8
E21 = 10**21

# ----------------------------------------------------------------------------
# helpers


def _raw_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW)


def _F(rate: int, ppm: float) -> int:
    return rate * (10**12 + round(ppm * 1e6))


def _frames_at(dt_ns: int, F: int) -> int:
    return max(0, dt_ns) * F // E21


def _ramp(start: int, n: int, channels: int = CHANNELS) -> np.ndarray:
    """Distinct, position-encoding int16 frames: ch0 = pos & 0x7fff, ch1 = -(pos & 0x7fff)."""
    pos = np.arange(start, start + n, dtype=np.int64)
    v = (pos % 32768).astype(np.int16)
    out = np.empty((n, channels), dtype=np.int16)
    out[:, 0] = v
    for c in range(1, channels):
        out[:, c] = -v + c
    return out


def _device_name(ppm: float = 0, latency_us: int = 0, log: Path | None = None) -> str:
    name = f"paced:PPM={ppm},LATENCY_US={latency_us}"
    if log is not None:
        name += f',LOG="{log}"'
    return name


@pytest.fixture(scope="module")
def alsa():
    alsaaudio = pytest.importorskip("alsaaudio", reason=f"{MISSING_DEPENDENCY} pyalsaaudio")
    try:
        pcm = alsaaudio.PCM(
            alsaaudio.PCM_PLAYBACK,
            alsaaudio.PCM_NONBLOCK,
            device="paced",
            rate=RATE,
            channels=CHANNELS,
            format=alsaaudio.PCM_FORMAT_S16_LE,
            periodsize=PERIOD,
            periods=PERIODS,
        )
    except alsaaudio.ALSAAudioError as e:
        pytest.skip(
            f"{MISSING_DEPENDENCY} the paced ALSA device ({e}); run `make -C board/pacedpcm install` as root"
        )
    pcm.close()
    return alsaaudio


def _open(alsa, device: str, *, fmt=None, nonblock: bool = True, channels: int = CHANNELS, periods: int = PERIODS):
    pcm = alsa.PCM(
        alsa.PCM_PLAYBACK,
        alsa.PCM_NONBLOCK if nonblock else alsa.PCM_NORMAL,
        device=device,
        rate=RATE,
        channels=channels,
        format=alsa.PCM_FORMAT_S16_LE if fmt is None else fmt,
        periodsize=PERIOD,
        periods=periods,
    )
    pcm.set_tstamp_mode(alsa.PCM_TSTAMP_ENABLE)
    pcm.set_tstamp_type(alsa.PCM_TSTAMP_TYPE_MONOTONIC_RAW)
    return pcm


def _buffer_size(pcm) -> int:
    return int(pcm.info()["buffer_size"])


def _epochs(log: PacedLog) -> list[tuple[int, int]]:
    return [(e.t_ns, e.position) for e in log.events if e.kind == "epoch"]


def _stream(alsa, pcm, seconds: float, *, mid_read: Path | None = None):
    """Keep the buffer full for `seconds` of audio; sample htimestamp along the way.

    Returns (observations, written, mid_log) where observations are
    (tstamp_ns, position) with position = written - (buffer - avail).
    """
    buf = _buffer_size(pcm)
    total = int(seconds * RATE)
    written = 0
    obs: list[tuple[int, int]] = []
    mid_log = None
    t_begin = time.monotonic()
    while written < total:
        avail = pcm.avail()
        assert avail >= 0, f"unexpected xrun/error {avail} while streaming"
        if avail >= PERIOD:
            n = pcm.write(_ramp(written, PERIOD).tobytes())
            assert n in (0, PERIOD), n
            written += n
            continue
        if written > 0:
            sec, nsec, av = pcm.htimestamp()
            obs.append((sec * 1_000_000_000 + nsec, written - (buf - av)))
            # tstamp must be CLOCK_MONOTONIC_RAW and fresh
            assert 0 <= _raw_ns() - obs[-1][0] < 200_000_000
        if mid_read is not None and mid_log is None and time.monotonic() - t_begin > 0.6 * seconds:
            mid_log = read_paced_log(mid_read)
            mid_log = (mid_log, obs[-1][1] if obs else 0)
        time.sleep(0.002)
    return obs, written, mid_log


# ----------------------------------------------------------------------------
# device tests


@pytest.mark.parametrize(
    ("ppm", "latency_us"),
    [(0, 0), (100, 0), (-100, 2000), (-37.25, 500)],
)
def test_pacing_htimestamp_and_log(alsa, tmp_path, ppm, latency_us):
    logf = tmp_path / "pace.plog"
    # 16 periods (160 ms) so that a scheduling stall on a loaded box cannot underrun
    pcm = _open(alsa, _device_name(ppm, latency_us, logf), periods=16)
    try:
        obs, written, mid = _stream(alsa, pcm, 2.0, mid_read=logf)
    finally:
        pcm.close()
    log = read_paced_log(logf)
    assert (log.rate, log.channels, log.sample_format) == (RATE, CHANNELS, "S16_LE")
    assert log.ppm == pytest.approx(ppm)
    assert log.latency_ns == latency_us * 1000
    assert log.xruns_ns == []
    epochs = _epochs(log)
    assert len(epochs) == 1 and epochs[0][1] == 0
    t0 = epochs[0][0]
    F = _F(RATE, ppm)
    nominal_period = 1e9 / (RATE * (1 + ppm * 1e-6))

    # --- htimestamp (tstamp, avail) vs the analytical model ---------------
    assert len(obs) > 200
    ts = np.array([o[0] for o in obs], dtype=np.int64)
    pos = np.array([o[1] for o in obs], dtype=np.int64)
    model = np.array([_frames_at(int(t) - t0, F) for t in ts], dtype=np.int64)
    err_frames = model - pos
    assert np.all(np.abs(err_frames) <= 1), np.unique(err_frames, return_counts=True)
    # time residual: tstamp - model time of the reported position, in [0, 1 frame)
    resid_ns = np.array([int(t) - (t0 + int(k) * E21 // F) for t, k in zip(ts, pos)], dtype=np.int64)
    assert resid_ns.min() > -nominal_period and resid_ns.max() < 2 * nominal_period

    # pacing rate from htimestamp: slope of position vs tstamp
    slope = np.polyfit((ts - ts[0]) / 1e9, pos.astype(np.float64), 1)[0]
    measured_ppm = (slope / RATE - 1) * 1e6
    assert measured_ppm == pytest.approx(ppm, abs=25), measured_ppm
    # the independent wall clock agrees too (written - queued grows at ~rate)
    assert ts[-1] - ts[0] > 1.5e9

    # --- the log ------------------------------------------------------------
    assert len(log.spans) == 1
    span = log.spans[0]
    assert span.frame_period_ns == pytest.approx(nominal_period, rel=1e-12)
    # latency shifts the log's play times, but not avail/htimestamp (checked above)
    assert span.first_play_ns - t0 == latency_us * 1000
    times = span.play_times_ns()
    log_rate_ppm = ((span.n_frames - 1) * 1e9 / (times[-1] - times[0]) / RATE - 1) * 1e6
    assert log_rate_ppm == pytest.approx(ppm, abs=0.01)
    # every frame that was written was played in order, bit-exact (close drops
    # the still-queued tail, so the log holds a prefix)
    played = span.samples
    assert span.n_frames >= pos.max()
    assert np.array_equal(played, _ramp(0, span.n_frames))
    assert span.n_frames <= written
    # the log is flushed while running (a reader can follow a live file)
    assert mid is not None
    mid_log, mid_pos = mid
    assert sum(s.n_frames for s in mid_log.spans) >= mid_pos - RATE // 2


def test_latency_does_not_change_avail(alsa):
    """Same timing with and without LATENCY_US: avail is the DMA side only."""
    resid = {}
    for lat in (0, 5000):
        pcm = _open(alsa, _device_name(0, lat), periods=16)
        try:
            obs, _, _ = _stream(alsa, pcm, 0.4)
            # no log here: use the first observations' spread instead
            ts = np.array([o[0] for o in obs], dtype=np.int64)
            pos = np.array([o[1] for o in obs], dtype=np.int64)
            # implied start time of position 0 from each observation
            implied_t0 = ts - pos * 1_000_000_000 // RATE
            resid[lat] = implied_t0 - implied_t0.min()
        finally:
            pcm.close()
    for lat, r in resid.items():
        # the implied start never drifts by more than ~1 frame (no 5 ms jump)
        assert r.max() < 2 * 1e9 / RATE, (lat, r.max())


def test_underrun_reported_logged_and_recovers(alsa, tmp_path):
    logf = tmp_path / "xrun.plog"
    pcm = _open(alsa, _device_name(0, 0, logf))
    part1 = _ramp(0, 3000)
    part2 = _ramp(10_000, 3000)
    try:
        assert pcm.write(part1.tobytes()) == 3000
        time.sleep(0.2)  # 3000 frames = 62.5 ms
        t_check = _raw_ns()
        avail = pcm.avail()
        state = pcm.state()
        assert avail < 0 or state == alsa.PCM_STATE_XRUN, (avail, state)
        assert state == alsa.PCM_STATE_XRUN
        assert avail == -32  # -EPIPE
        # pyalsaaudio reports -EPIPE once and prepares the stream itself
        assert pcm.write(part2.tobytes()) == -32
        assert pcm.state() == alsa.PCM_STATE_PREPARED
        assert pcm.write(part2.tobytes()) == 3000
        assert pcm.state() == alsa.PCM_STATE_RUNNING
        time.sleep(0.01)
        assert pcm.avail() > 0  # playing again
        pcm.drop()
    finally:
        pcm.close()
    log = read_paced_log(logf)
    assert len(log.xruns_ns) >= 1
    epochs = _epochs(log)
    assert len(epochs) == 2
    t0 = epochs[0][0]
    # exact onset: the instant the DAC needed frame 3000
    F = _F(RATE, 0)
    assert log.xruns_ns[0] == t0 + -(-3000 * E21 // F)
    assert log.xruns_ns[0] < t_check
    kinds = [e.kind for e in log.events]
    assert kinds[:5] == ["prepare", "epoch", "xrun", "prepare", "epoch"], kinds
    # normally dropped while still playing; a >50 ms stall of this process may
    # let it underrun a second time first
    assert kinds[5:] in (["stop"], ["xrun"]), kinds
    if kinds[5] == "stop":
        assert log.events[-1].detail == "drop"
    else:
        assert len(log.xruns_ns) == 2
    # first span: all of part1; second span: a prefix of part2 from position 0 of epoch 2
    assert len(log.spans) == 2
    assert np.array_equal(log.spans[0].samples, part1)
    s2 = log.spans[1]
    assert s2.first_position == 0 and s2.first_play_ns == epochs[1][0]
    assert 0.008 * RATE <= s2.n_frames <= 3000
    assert np.array_equal(s2.samples, part2[: s2.n_frames])


@pytest.mark.parametrize("fmt_name", ["S16_LE", "S32_LE", "S24_3LE"])
def test_bit_exact_blocking_drain(alsa, tmp_path, fmt_name):
    logf = tmp_path / f"bits_{fmt_name}.plog"
    fmt = getattr(alsa, f"PCM_FORMAT_{fmt_name}")
    pcm = _open(alsa, _device_name(0, 0, logf), fmt=fmt, nonblock=False)
    rng = np.random.default_rng(1234)
    n = int(0.3 * RATE)
    if fmt_name == "S16_LE":
        data = rng.integers(-(2**15), 2**15, size=(n, CHANNELS), dtype=np.int16)
        raw = data.astype("<i2").tobytes()
    elif fmt_name == "S32_LE":
        data = rng.integers(-(2**31), 2**31, size=(n, CHANNELS), dtype=np.int64).astype(np.int32)
        raw = data.astype("<i4").tobytes()
    else:
        data = rng.integers(-(2**23), 2**23, size=(n, CHANNELS), dtype=np.int32)
        u = data.astype(np.int64) & 0xFFFFFF
        raw = np.stack([u & 0xFF, (u >> 8) & 0xFF, (u >> 16) & 0xFF], axis=-1).astype(np.uint8).tobytes()
    bpf = len(raw) // n
    t_start = time.monotonic()
    try:
        off = 0
        chunk = 1000  # not period aligned; blocking writes wait on the poll fd
        while off < n:
            k = min(chunk, n - off)
            assert pcm.write(raw[off * bpf : (off + k) * bpf]) == k
            off += k
        pcm.drain()
        elapsed = time.monotonic() - t_start
    finally:
        pcm.close()
    assert 0.28 < elapsed < 0.6, elapsed  # paced in real time, drain waited for the tail
    log = read_paced_log(logf)
    assert log.sample_format == fmt_name
    assert log.xruns_ns == []
    assert len(log.spans) == 1
    got = log.spans[0].samples
    assert got.dtype == (np.int16 if fmt_name == "S16_LE" else np.int32)
    assert got.shape == (n, CHANNELS)
    assert np.array_equal(got, data)
    stop = [e for e in log.events if e.kind == "stop"]
    assert len(stop) == 1 and stop[0].detail == "drain" and stop[0].position == n
    # drain stops exactly at the end of the last frame
    t0 = _epochs(log)[0][0]
    assert stop[0].t_ns == t0 + -(-n * E21 // _F(RATE, 0))


def test_poll_descriptors(alsa, tmp_path):
    pcm = _open(alsa, _device_name(0, 0))
    try:
        fds = pcm.polldescriptors()
        assert len(fds) >= 1
        poller = select.poll()
        for fd, ev in fds:
            poller.register(fd, ev)

        def revents_after(timeout_ms: float) -> tuple[int, float]:
            t = time.monotonic()
            ready = poller.poll(timeout_ms)
            dt = time.monotonic() - t
            if not ready:
                return 0, dt
            got = dict(ready)
            return pcm.polldescriptors_revents([(fd, got.get(fd, 0)) for fd, _ in fds]), dt

        # prepared, empty buffer: writable at once
        rev, dt = revents_after(1000)
        assert rev & select.POLLOUT and dt < 0.05
        # fill the buffer (starts the stream)
        written = 0
        while True:
            n = pcm.write(_ramp(written, PERIOD).tobytes())
            if n <= 0:
                break
            written += n
        assert written >= _buffer_size(pcm) - PERIOD
        # full: the fd must become ready (POLLOUT) within about a period
        period_s = PERIOD / RATE
        waited = 0.0
        for _ in range(20):
            rev, dt = revents_after(1000)
            waited += dt
            if rev & select.POLLOUT:
                break
        assert rev & select.POLLOUT
        assert waited < period_s + 0.1, waited
        assert pcm.avail() >= PERIOD
        # several wake-ups in a row, each about a period apart, while we keep it full
        wakes = []
        for _ in range(10):
            while pcm.avail() >= PERIOD:
                assert pcm.write(_ramp(written, PERIOD).tobytes()) == PERIOD
                written += PERIOD
            t = time.monotonic()
            for _ in range(20):
                rev, _dt = revents_after(1000)
                if rev & select.POLLOUT:
                    break
            wakes.append(time.monotonic() - t)
        assert max(wakes) < period_s + 0.1, wakes
        assert np.median(wakes) > 0.3 * period_s, wakes  # it actually waited
        # stop feeding: underrun -> POLLERR
        time.sleep(_buffer_size(pcm) / RATE + 0.05)
        rev, dt = revents_after(1000)
        assert rev & select.POLLERR and dt < 0.05
        assert pcm.state() == alsa.PCM_STATE_XRUN
    finally:
        pcm.close()


def test_nonblocking_drain(alsa, tmp_path):
    """drain() on a non-blocking handle: EAGAIN like the kernel, then poll until done."""
    logf = tmp_path / "nbdrain.plog"
    pcm = _open(alsa, _device_name(0, 0, logf))
    try:
        assert pcm.write(_ramp(0, 3000).tobytes()) == 3000
        with pytest.raises(alsa.ALSAAudioError, match="temporarily unavailable"):
            pcm.drain()
        assert pcm.state() == alsa.PCM_STATE_DRAINING
        fds = pcm.polldescriptors()
        poller = select.poll()
        for fd, ev in fds:
            poller.register(fd, ev)
        deadline = time.monotonic() + 2.0
        while pcm.state() == alsa.PCM_STATE_DRAINING and time.monotonic() < deadline:
            got = dict(poller.poll(500))
            pcm.polldescriptors_revents([(fd, got.get(fd, 0)) for fd, _ in fds])
        assert pcm.state() == alsa.PCM_STATE_SETUP
    finally:
        pcm.close()
    log = read_paced_log(logf)
    assert log.xruns_ns == []
    assert np.array_equal(log.all_samples(), _ramp(0, 3000))
    assert log.events[-1].kind == "stop" and log.events[-1].detail == "drain"


def test_pause_resume(alsa, tmp_path):
    logf = tmp_path / "pause.plog"
    pcm = _open(alsa, _device_name(0, 0, logf))
    data = _ramp(0, 3000)
    try:
        assert pcm.write(data.tobytes()) == 3000
        time.sleep(0.01)
        pcm.pause(1)
        assert pcm.state() == alsa.PCM_STATE_PAUSED
        av1 = pcm.avail()
        time.sleep(0.1)
        assert pcm.avail() == av1  # frozen while paused
        pcm.pause(0)
        time.sleep(0.1)  # remaining < 62.5 ms: plays out, then underruns
        pcm.avail()
    finally:
        pcm.close()
    log = read_paced_log(logf)
    assert len(_epochs(log)) == 2
    assert len(log.spans) == 2
    a, b = log.spans
    assert b.first_position == a.first_position + a.n_frames
    gap_ns = b.first_play_ns - a.end_play_ns
    assert 0.09e9 < gap_ns < 0.5e9
    assert np.array_equal(np.concatenate([a.samples, b.samples]), data)
    assert len(log.xruns_ns) == 1


def test_reopen_appends_to_log(alsa, tmp_path):
    """An app that closes and re-opens the device keeps one history in the log."""
    logf = tmp_path / "reopen.plog"
    for start in (0, 5000):
        pcm = _open(alsa, _device_name(0, 0, logf), nonblock=False)
        try:
            assert pcm.write(_ramp(start, 1000).tobytes()) == 1000
            pcm.drain()
        finally:
            pcm.close()
    log = read_paced_log(logf)
    assert len(log.spans) == 2
    assert np.array_equal(log.spans[0].samples, _ramp(0, 1000))
    assert np.array_equal(log.spans[1].samples, _ramp(5000, 1000))
    assert log.spans[1].first_play_ns > log.spans[0].end_play_ns


def test_log_refuses_foreign_file(alsa, tmp_path):
    f = tmp_path / "precious.txt"
    f.write_text("not a log\n")
    with pytest.raises(alsa.ALSAAudioError):
        _open(alsa, _device_name(0, 0, f))
    assert f.read_text() == "not a log\n"


def test_aplay_like_rates_and_channels(alsa, tmp_path):
    """Other rates/channel counts/formats configure and log correctly."""
    logf = tmp_path / "r.plog"
    pcm = alsa.PCM(
        alsa.PCM_PLAYBACK,
        alsa.PCM_NORMAL,
        device=_device_name(250, 0, logf),
        rate=44100,
        channels=6,
        format=alsa.PCM_FORMAT_S32_LE,
        periodsize=441,
        periods=4,
    )
    n = 4410
    data = np.arange(n * 6, dtype=np.int32).reshape(n, 6) * 65536
    try:
        assert pcm.write(data.tobytes()) == n
        pcm.drain()
    finally:
        pcm.close()
    log = read_paced_log(logf)
    assert (log.rate, log.channels, log.sample_format) == (44100, 6, "S32_LE")
    assert np.array_equal(log.all_samples(), data)
    assert log.spans[0].frame_period_ns == pytest.approx(1e9 / (44100 * (1 + 250e-6)))


# ----------------------------------------------------------------------------
# reader tests (no device needed)


def _synthetic_log(path: Path, *, fmt_code=2, channels=2, rate=48000, ppm=0.0, latency_ns=0, frames=()):
    width = {2: 2, 10: 4, 32: 3}[fmt_code]
    bpf = width * channels
    out = bytearray(b"PACEDLOG" + struct.pack("<II", 1, 0))

    def rec(t, payload):
        out.extend(struct.pack("<II", t, len(payload)) + payload)

    rec(1, struct.pack("<IIIIdqqIIII", fmt_code, channels, rate, bpf, ppm, round(ppm * 1e6), latency_ns, 4, 3840, 480, 0))
    rec(6, struct.pack("<q", 1_000))
    rec(2, struct.pack("<qQ", 5_000_000_000, 0))
    for first, raw in frames:
        rec(3, struct.pack("<QII", first, len(raw) // bpf, 0) + raw)
    rec(4, struct.pack("<qQq", 6_000_000_000, 0, 6_000_001_000))
    path.write_bytes(bytes(out))
    return bytes(out)


def test_reader_merges_and_times_spans(tmp_path):
    f = tmp_path / "s.plog"
    a = _ramp(0, 100)
    b = _ramp(100, 50)
    c = _ramp(200, 10)
    _synthetic_log(
        f, ppm=-12.5, latency_ns=1_500_000,
        frames=[(0, a.tobytes()), (100, b.tobytes()), (200, c.tobytes())],
    )
    log = read_paced_log(f)
    assert log.ppm == -12.5 and log.latency_ns == 1_500_000
    assert len(log.spans) == 2  # 0..150 merged, 200..210 separate (gap)
    s0, s1 = log.spans
    assert np.array_equal(s0.samples, np.concatenate([a, b]))
    assert s0.first_play_ns == 5_000_000_000 + 1_500_000
    period = 1e9 / (48000 * (1 - 12.5e-6))
    assert s0.frame_period_ns == pytest.approx(period, rel=1e-15)
    assert s1.first_position == 200
    assert s1.first_play_ns == 5_000_000_000 + 1_500_000 + round(200 * period)
    t = s0.play_times_ns()
    assert t.dtype == np.int64 and t[0] == s0.first_play_ns
    assert abs(int(t[149]) - (s0.first_play_ns + 149 * period)) <= 1
    assert log.xruns_ns == [6_000_000_000]


def test_reader_s24_sign_extension(tmp_path):
    f = tmp_path / "s24.plog"
    vals = np.array([[0, -1], [0x7FFFFF, -0x800000], [123456, -654321]], dtype=np.int32)
    u = vals.astype(np.int64) & 0xFFFFFF
    raw = np.stack([u & 0xFF, (u >> 8) & 0xFF, (u >> 16) & 0xFF], axis=-1).astype(np.uint8).tobytes()
    _synthetic_log(f, fmt_code=32, frames=[(0, raw)])
    log = read_paced_log(f)
    assert log.sample_format == "S24_3LE"
    assert log.spans[0].samples.dtype == np.int32
    assert np.array_equal(log.spans[0].samples, vals)


def test_reader_truncated_file(tmp_path):
    f = tmp_path / "full.plog"
    frames = [(0, _ramp(0, 100).tobytes()), (100, _ramp(100, 100).tobytes())]
    full = _synthetic_log(f, frames=frames)
    complete = read_paced_log(f)
    assert not complete.truncated and complete.spans[0].n_frames == 200
    cut_f = tmp_path / "cut.plog"
    header_and_format = 16 + 8 + 56
    prev = 0
    for cut in range(header_and_format, len(full)):
        cut_f.write_bytes(full[:cut])
        log = read_paced_log(cut_f)  # never raises on a partial last record
        n = sum(s.n_frames for s in log.spans)
        assert n in (0, 100, 200) and n >= prev
        prev = n
        if n:
            assert np.array_equal(log.all_samples(), _ramp(0, n))
    # cut in the middle of the second FRAMES record
    cut_f.write_bytes(full[: len(full) - 32 - 100 * 4])
    log = read_paced_log(cut_f)
    assert log.truncated and log.all_samples().shape == (100, 2)


def test_reader_rejects_non_log(tmp_path):
    f = tmp_path / "x.wav"
    f.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + os.urandom(64))
    with pytest.raises(ValueError, match="not a paced PCM log"):
        read_paced_log(f)
    f.write_bytes(b"")
    with pytest.raises(ValueError, match="not a paced PCM log"):
        read_paced_log(f)
