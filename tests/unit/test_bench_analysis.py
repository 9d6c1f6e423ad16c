"""The HIL bench's analysis (board/bench) on synthetic recordings with known truth.

A synthetic "recording" renders the bench test signal in continuous time at each board's
own clock, so fractional offsets and drift are exact (no interpolation in the synthesis):
board X plays stream time tau at recording time ``t0_X + tau / (1 + rho_X)``.
Requirement (issue 6): offset within ±20 µs, drift within ±1 ppm.
"""

from __future__ import annotations

import json
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from board.bench import analysis as an  # noqa: E402
from board.bench import hil  # noqa: E402
from board.bench import testsignal as ts  # noqa: E402

OFFSET_TOL_US = 20.0
DRIFT_TOL_PPM = 1.0


def board_output(t: np.ndarray, t0: float, rho: float = 0.0, first_event: int = 0) -> np.ndarray:
    """What a board's line output carries at recording times `t`: silence until `t0`, then
    the stream from event `first_event` on, played with clock error `rho` (fraction)."""
    tau = (t - t0) * (1.0 + rho)
    out = np.zeros_like(t)
    on = tau >= 0
    out[on] = ts.render(tau[on] + first_event * ts.PERIOD_S)
    return out


def record(rng, seconds, fs, *, t0=0.05, offset_us=0.0, drift_ppm=0.0, gains=(1.0, 1.0),
           dcs=(0.0, 0.0), noise_rms=1e-3, invert_b=False, first_event=0, bits=16):
    """Two-channel synthetic recording; returns (rec, true_offset_us(n)).

    B starts `offset_us` after A and its clock runs so that B falls behind by `drift_ppm`
    µs per second. The recording is quantised to `bits` like a real interface."""
    t = np.arange(int(seconds * fs)) / fs
    rho_b = 1.0 / (1.0 + drift_ppm * 1e-6) - 1.0
    t0b = t0 + offset_us * 1e-6
    a = gains[0] * board_output(t, t0, 0.0, first_event) + dcs[0]
    b = gains[1] * board_output(t, t0b, rho_b, first_event) + dcs[1]
    if invert_b:
        b = 2 * dcs[1] - b
    rec = np.stack([a, b], axis=1) + noise_rms * rng.standard_normal((t.size, 2))
    q = float(1 << (bits - 1))
    rec = np.clip(np.rint(rec * q), -q, q - 1) / q

    def true_offset_us(n: np.ndarray) -> np.ndarray:
        # event n's chirp centre (the part the correlation sees) in each channel
        tau = (np.asarray(n) - first_event) * ts.PERIOD_S + ts.CHIRP_S / 2
        return (t0b + tau / (1.0 + rho_b) - (t0 + tau)) * 1e6

    return rec, true_offset_us


def check(r: an.SyncResult, truth, expect_events: int) -> float:
    assert r.index.size >= expect_events
    err = r.offset_us - truth(r.index)
    assert np.max(np.abs(err)) <= OFFSET_TOL_US, err
    return float(np.max(np.abs(err)))


# --------------------------------------------------------------------------------------
# offsets
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset_us", [13.7, -13.7, 0.0, 0.4, 250.3, -1234.56, 20833.3])
def test_fractional_offsets_both_signs(offset_us):
    rng = np.random.default_rng(1)
    rec, truth = record(rng, 8.0, 48000, offset_us=offset_us, gains=(0.9, 0.35),
                        dcs=(0.02, -0.05), noise_rms=2e-3)
    r = an.analyse_sync(rec, 48000)
    check(r, truth, expect_events=15)
    assert abs(r.median_us - offset_us) < 2.0
    assert r.p99_abs_us < abs(offset_us) + 2.0
    assert abs(r.drift_ppm) < DRIFT_TOL_PPM
    assert r.undecoded_a == r.undecoded_b == 0


@pytest.mark.parametrize("fs", [44100, 96000])
def test_other_recording_rates(fs):
    rng = np.random.default_rng(2)
    rec, truth = record(rng, 6.0, fs, offset_us=-37.9, gains=(0.5, 1.0), bits=24)
    r = an.analyse_sync(rec, fs)
    check(r, truth, expect_events=11)


def test_low_snr_small_gain_and_dc():
    """Chirp peak at -26 dBFS on B against -50 dBFS noise (about 24 dB SNR) and big DC."""
    rng = np.random.default_rng(3)
    rec, truth = record(rng, 8.0, 48000, offset_us=13.7, gains=(1.0, 0.1),
                        dcs=(-0.2, 0.3), noise_rms=3e-3)
    r = an.analyse_sync(rec, 48000)
    check(r, truth, expect_events=15)


def test_inverted_polarity_of_one_channel():
    rng = np.random.default_rng(4)
    rec, truth = record(rng, 6.0, 48000, offset_us=-13.7, invert_b=True, dcs=(0.0, 0.1))
    r = an.analyse_sync(rec, 48000)
    check(r, truth, expect_events=11)
    assert np.all(r.coef < 0)
    assert any("inverted" in n for n in r.notes)


def test_offset_beyond_a_period_is_paired_by_index():
    """B 0.7 s late (more than half a 0.5 s period) and the recording starts mid-stream:
    pairing by the decoded index, not by proximity, gives the true offset."""
    rng = np.random.default_rng(5)
    rec, truth = record(rng, 8.0, 48000, offset_us=700_012.5, first_event=4321)
    r = an.analyse_sync(rec, 48000)
    check(r, truth, expect_events=13)
    assert r.index[0] >= 4321
    assert abs(r.median_us - 700_012.5) < 2.0


# --------------------------------------------------------------------------------------
# drift
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("drift_ppm", [3.0, -3.0, 50.0, -50.0])
def test_drift_over_60_s(drift_ppm):
    rng = np.random.default_rng(6)
    rec, truth = record(rng, 60.0, 48000, offset_us=13.7, drift_ppm=drift_ppm,
                        gains=(0.8, 0.4), dcs=(0.01, -0.01), noise_rms=2e-3)
    r = an.analyse_sync(rec, 48000)
    check(r, truth, expect_events=118)
    assert abs(r.drift_ppm - drift_ppm) <= DRIFT_TOL_PPM
    assert abs(r.drift_ppm - drift_ppm) <= 0.05  # what it actually achieves
    assert abs(r.rate_ppm_b - (-drift_ppm)) < 1.0
    assert abs(r.rate_ppm_a) < 1.0


def test_outlier_event_does_not_bias_drift():
    """One event of B corrupted (a burst of loud noise over the chirp): the fit ignores it."""
    rng = np.random.default_rng(7)
    fs = 48000
    rec, truth = record(rng, 20.0, fs, offset_us=5.0, drift_ppm=-3.0)
    s = int((0.05 + 10 * ts.PERIOD_S) * fs)
    rec[s:s + 600, 1] += 0.3 * rng.standard_normal(600)
    r = an.analyse_sync(rec, fs)
    assert abs(r.drift_ppm + 3.0) <= DRIFT_TOL_PPM
    good = np.abs(r.offset_us - truth(r.index)) <= OFFSET_TOL_US
    assert good.sum() >= r.index.size - 1


# --------------------------------------------------------------------------------------
# one channel: boot-to-first-sound, gaps, clicks
# --------------------------------------------------------------------------------------


def test_first_sound_ignores_power_on_pop():
    rng = np.random.default_rng(8)
    fs = 48000
    t = np.arange(int(5.0 * fs)) / fs
    x = 0.7 * board_output(t, 2.3) + 3e-4 * rng.standard_normal(t.size)
    x[fs:fs + 48] += 0.4  # 1 ms DAC power-on pop at 1.0 s
    fsd = an.first_sound(x, fs)
    assert fsd.sound_s is not None and abs(fsd.sound_s - 2.3) < 0.003
    assert fsd.chirp_s is not None and abs(fsd.chirp_s - 2.3) < 20e-6
    assert fsd.chirp_index == 0


def test_first_sound_none_in_silence():
    x = 1e-4 * np.random.default_rng(9).standard_normal(48000)
    fsd = an.first_sound(x, 48000)
    assert fsd.sound_s is None and fsd.chirp_s is None


def test_glitch_detection():
    rng = np.random.default_rng(10)
    fs = 48000
    t = np.arange(int(10.0 * fs)) / fs
    clean = 0.8 * board_output(t, 0.1) + 5e-4 * rng.standard_normal(t.size) + 0.01
    g = an.find_glitches(clean, fs)
    assert g.ok, (g.gaps, g.clicks)
    # a 30 ms dropout (underrun/mute) in the pilot-only part of a period
    x = clean.copy()
    g0 = int((0.1 + 8 * ts.PERIOD_S + 0.3) * fs)
    x[g0:g0 + int(0.030 * fs)] = 0.01
    # and a skip: 100 samples of audio missing (a discontinuity) 2 periods later
    s0 = int((0.1 + 12 * ts.PERIOD_S + 0.25) * fs) + 37
    x = np.concatenate([x[:s0], x[s0 + 100:]])
    g = an.find_glitches(x, fs)
    assert len(g.gaps) == 1
    start, dur = g.gaps[0]
    assert abs(start - g0 / fs) < 0.002 and abs(dur - 0.030) < 0.003
    assert any(abs(tc - s0 / fs) < 0.001 for tc, _ in g.clicks)
    # the dropout's edges are steps too; nothing else is reported
    assert all(abs(tc - s0 / fs) < 0.001 or abs(tc - g0 / fs) < 0.002
               or abs(tc - (g0 / fs + 0.030)) < 0.002 for tc, _ in g.clicks)


# --------------------------------------------------------------------------------------
# test signal, WAV I/O, CLI
# --------------------------------------------------------------------------------------


def test_signal_is_chunking_invariant_and_in_range():
    whole = ts.pcm(1000, 30000, 48000, 24, 2)
    parts = np.concatenate([ts.pcm(1000, 1200, 48000, 24, 2), ts.pcm(2200, 28800, 48000, 24, 2)])
    assert np.array_equal(whole, parts)
    assert np.array_equal(whole[:, 0], whole[:, 1])
    # 5.8 h in, the chirp + pilot part of a period is still sample-exact
    late = ts.pcm(41667 * 24000, 24000, 48000, 16, 1)
    assert np.array_equal(late[:1400], ts.pcm(0, 1400, 48000, 16, 1))
    assert np.abs(ts.pcm(0, 96000, 48000, 16, 1)).max() < 0.56 * 32767
    assert np.abs(late).max() < 0.56 * 32767


def test_code_roundtrip():
    fs = 48000
    for n in (0, 1, 255, 256, 4321, 65535):
        x = ts.render(n * ts.PERIOD_S + np.arange(int(0.2 * fs)) / fs)
        assert an.decode_index(x, fs, 0.0) == (n, True)


def test_wav_roundtrip_and_cli(tmp_path, capsys):
    rng = np.random.default_rng(11)
    fs = 48000
    rec, _ = record(rng, 4.0, fs, offset_us=-13.7, drift_ppm=0.0)
    path = tmp_path / "rec.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(fs)
        w.writeframes(np.clip(np.rint(rec * 32768), -32768, 32767).astype("<i2").tobytes())
    back, rate = an.read_wav(path)
    assert rate == fs and np.allclose(back, rec, atol=1 / 32768)
    assert an.main([str(path), "--json", "--boot", "0", "--glitches", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert abs(out["sync"]["median_us"] + 13.7) < 2.0
    assert out["sync"]["paired"] >= 7
    assert out["glitches_ch1"]["gaps"] == [] and out["glitches_ch1"]["clicks"] == []
    assert abs(out["first_sound"]["chirp_s"] - 0.05) < 1e-4
    assert an.main([str(path)]) == 0
    assert "offset B-A: median" in capsys.readouterr().out


def test_signal_wav_writer(tmp_path):
    path = tmp_path / "sig.wav"
    ts.write_wav(str(path), 2.0, 48000, 24, 2)
    x, fs = an.read_wav(path)
    assert fs == 48000 and x.shape == (96000, 2)
    assert np.allclose(x[:, 0], ts.pcm(0, 96000, 48000, 24, 1)[:, 0] / 2**23)


# --------------------------------------------------------------------------------------
# HIL plugin pieces that run without hardware
# --------------------------------------------------------------------------------------


def test_bench_config_parsing(tmp_path):
    cfg = tmp_path / "bench.toml"
    cfg.write_text(
        '[server]\nhost = "192.168.7.1"\nport = 8927\n'
        '[capture]\ndevice = "hw:CARD=Interface"\nrate = 96000\n'
        '[[boards]]\nname = "a"\nssh = "pi@speaker-a.local"\nchannel = 0\n'
        'power_cycle = "usbrelay R1=0; sleep 3; usbrelay R1=1"\n'
        '[[boards]]\nname = "b"\nssh = "pi@speaker-b.local"\nchannel = 1\n')
    c = hil.load_config(cfg)
    assert c.server.host == "192.168.7.1" and c.server.port == 8927
    assert c.capture.rate == 96000 and c.capture.device == "hw:CARD=Interface"
    assert [b.name for b in c.boards] == ["a", "b"] and c.boards[1].channel == 1
    assert c.boards[0].power_cycle.startswith("usbrelay")
    assert c.boards[1].power_cycle is None
    assert c.boards[0].service == "resonate-embedded.service"
    assert c.thresholds.sync_median_us == 1000.0
    bad = tmp_path / "bad.toml"
    bad.write_text('[capture]\ndevice = "hw:0"\n[[boards]]\nname = "a"\n')
    with pytest.raises(hil.BenchConfigError, match="ssh"):
        hil.load_config(bad)
    example = hil.load_config(ROOT / "board" / "bench" / "bench.example.toml")
    assert len(example.boards) == 2 and example.thresholds.drift_ppm == 0.83
