"""Drift correction arithmetic: controller bounds, scheduler exactness, block surgery."""

import numpy as np
from hypothesis import given, settings, strategies as st

from resonate_embedded.audio.correction import (
    CorrectionScheduler, RateController, corrected_block,
)


def test_deadband_touches_nothing():
    c = RateController()
    for _ in range(1000):
        assert c.update(10, 10_000) == 0


def test_rate_is_capped():
    c = RateController()
    for _ in range(1000):
        ppm = c.update(1_000_000, 10_000)
        assert abs(ppm) <= c.max_ppm


def test_integral_learns_a_constant_drift():
    """Simulated plant: error grows at +100 ppm, correction removes it."""
    c = RateController()
    error_us, dt_us = 0.0, 10_000
    for _ in range(3000):  # 30 s
        ppm = c.update(error_us, dt_us)
        error_us += (100 - ppm) * dt_us / 1e6
    assert abs(error_us) <= c.deadband_us + 5
    assert 80 <= c.ppm <= 120


def test_scheduler_is_exact_over_time():
    s = CorrectionScheduler()
    total = sum(s.frames_for(480, 250) for _ in range(10_000))
    assert total == 480 * 10_000 * 250 // 1_000_000


def test_scheduler_negative_rate_inserts():
    s = CorrectionScheduler()
    assert sum(s.frames_for(1000, -1000) for _ in range(100)) == -100


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 2000), st.integers(-3, 3), st.sampled_from([np.int16, np.int32]))
def test_block_length_and_untouched_frames(n, k, dtype):
    rng = np.random.default_rng(n)
    info = np.iinfo(np.int16 if dtype == np.int16 else np.int32)
    lo, hi = (info.min, info.max) if dtype == np.int16 else (-(1 << 23), (1 << 23) - 1)
    block = rng.integers(lo, hi, size=(n, 2), endpoint=True).astype(dtype)
    out = corrected_block(block, k)
    k_eff = min(abs(k), n // 2) if n >= 2 else 0
    assert out.shape[0] == n - (k_eff if k > 0 else -k_eff)
    assert out.dtype == block.dtype
    if k == 0:
        assert out is block
    # the head before the first correction point is bit-exact
    first = 1 + (n - 1) // (2 * k_eff) if k_eff else n
    assert np.array_equal(out[:first - 1], block[:first - 1])
    assert out.min() >= lo and out.max() <= hi


def test_insert_puts_the_mean_between_neighbours():
    block = np.array([[0, 0], [10, -10], [20, -20], [30, -30]], dtype=np.int16)
    out = corrected_block(block, -1)
    assert out.shape == (5, 2)
    assert out.tolist() == [[0, 0], [10, -10], [15, -15], [20, -20], [30, -30]]


def test_drop_blends_the_removed_frame_into_its_neighbour():
    block = np.array([[0, 0], [10, -10], [20, -20], [30, -30]], dtype=np.int16)
    out = corrected_block(block, 1)
    assert out.tolist() == [[0, 0], [15, -15], [30, -30]]


def test_dac_rate_estimator_sees_through_frame_quantisation():
    from resonate_embedded.audio.correction import DacRateEstimator

    rng = np.random.default_rng(7)
    est = DacRateEstimator(48000)
    t_ns = 1_000_000_000
    for _ in range(600):  # 6 s of reports every ~10 ms, jittery
        t_ns += int(rng.integers(5_000_000, 15_000_000))
        played = int((t_ns - 1_000_000_000) * 48000 * (1 + 100e-6) // 1_000_000_000)
        est.add(t_ns, played)
    assert est.ppm is not None and abs(est.ppm - 100) < 5
