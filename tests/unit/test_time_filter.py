"""The Kalman time filter against simulated NTP-style exchanges."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import attrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resonate_embedded.clock.time_filter import (
    ClockMapping,
    TimeFilter,
    measurement_from_exchange,
)

TRUE_OFFSET_US = 1_234_000
START_LOCAL_US = 5_000_000_000


@attrs.frozen
class Network:
    """One-sided delays: a floor plus exponential queueing, and rare huge stalls."""

    base_us: float = 1_500.0
    queueing_us: float = 800.0
    outlier_probability: float = 0.02
    outlier_us: float = 250_000.0

    def one_way_us(self, rng: np.random.Generator) -> float:
        delay_us = self.base_us + rng.exponential(self.queueing_us)
        if rng.random() < self.outlier_probability:
            delay_us += rng.uniform(0.2, 1.0) * self.outlier_us
        return delay_us


@attrs.frozen
class Sample:
    offset_us: int
    max_error_us: int
    local_us: int


@attrs.define
class SimulatedServer:
    """A server clock ``offset + local·(1 + drift)``, with the offset changeable mid-run."""

    offset_us: float
    drift: float

    def server_us(self, local_us: float) -> float:
        return self.offset_us + local_us * (1.0 + self.drift)

    def true_offset_us(self, local_us: float) -> float:
        return self.server_us(local_us) - local_us


def exchanges(
    server: SimulatedServer,
    rng: np.random.Generator,
    count: int,
    start_local_us: float = START_LOCAL_US,
    interval_us: float = 1_000_000.0,
    network: Network = Network(),
) -> Iterator[Sample]:
    """``count`` client/time exchanges, one every ``interval_us`` of local time."""
    hold_us = 150.0
    for k in range(count):
        t1 = start_local_us + k * interval_us
        arrive = t1 + network.one_way_us(rng)
        t4 = arrive + hold_us + network.one_way_us(rng)
        offset_us, max_error_us = measurement_from_exchange(
            round(t1),
            round(server.server_us(arrive)),
            round(server.server_us(arrive + hold_us)),
            round(t4),
        )
        yield Sample(offset_us, max_error_us, round(t4))


def feed(time_filter: TimeFilter, samples: Iterator[Sample]) -> Sample:
    last = None
    for sample in samples:
        time_filter.update(sample.offset_us, sample.max_error_us, sample.local_us)
        last = sample
    assert last is not None
    return last


def offset_error_us(time_filter: TimeFilter, server: SimulatedServer, local_us: int) -> float:
    mapping = time_filter.mapping()
    assert mapping is not None
    return mapping.server_from_local(local_us) - server.server_us(local_us)


def test_measurement_from_exchange_symmetric_path() -> None:
    # Server is 1000 µs ahead; 300 µs each way; server holds 50 µs.
    t1 = 10_000
    t2 = t1 + 300 + 1000
    t3 = t2 + 50
    t4 = t1 + 300 + 50 + 300
    assert measurement_from_exchange(t1, t2, t3, t4) == (1000, 300)


def test_measurement_from_exchange_rounds_halves_to_even() -> None:
    assert measurement_from_exchange(0, 1, 1, 1) == (0, 0)  # 1/2 -> 0, 1/2 -> 0
    assert measurement_from_exchange(0, 2, 2, 1) == (2, 0)  # 3/2 -> 2, 1/2 -> 0
    assert measurement_from_exchange(0, 0, 0, 5) == (-2, 2)  # -5/2 -> -2, 5/2 -> 2


@pytest.mark.parametrize("drift_ppm", [-500.0, -100.0, 0.0, 100.0, 500.0])
def test_converges_on_offset_and_drift(drift_ppm: float) -> None:
    rng = np.random.default_rng(1234 + int(drift_ppm))
    server = SimulatedServer(TRUE_OFFSET_US, drift_ppm * 1e-6)
    time_filter = TimeFilter()
    last = feed(time_filter, exchanges(server, rng, 300))

    assert time_filter.synchronized
    error_us = time_filter.error_us
    assert error_us is not None and error_us < 200
    # Queueing delays are one-sided, so the estimate is only as good as their
    # asymmetry: within half a millisecond now and 10 s later.
    assert abs(offset_error_us(time_filter, server, last.local_us)) < 500
    assert abs(offset_error_us(time_filter, server, last.local_us + 10_000_000)) < 500
    assert time_filter.drift_ppm == pytest.approx(drift_ppm, abs=2.0)


def test_large_drift_passes_the_snr_gate() -> None:
    server = SimulatedServer(TRUE_OFFSET_US, 100e-6)
    time_filter = TimeFilter()
    feed(time_filter, exchanges(server, np.random.default_rng(7), 100))
    mapping = time_filter.mapping()
    assert mapping is not None
    assert mapping.drift == pytest.approx(100e-6, abs=2e-6)


def test_insignificant_drift_is_not_used() -> None:
    # Two noisy samples 1 ms apart give a wild drift estimate with a huge variance.
    time_filter = TimeFilter()
    time_filter.update(1000, 2000, 1_000_000)
    time_filter.update(1500, 2000, 1_001_000)
    assert time_filter.drift_ppm == pytest.approx(500_000.0)
    mapping = time_filter.mapping()
    assert mapping is not None
    assert mapping.drift == 0.0


def test_offset_step_triggers_forgetting_and_reconverges() -> None:
    rng = np.random.default_rng(99)
    lan = Network(base_us=400.0, queueing_us=150.0)
    server = SimulatedServer(TRUE_OFFSET_US, 100e-6)
    time_filter = TimeFilter()
    last = feed(time_filter, exchanges(server, rng, 200, network=lan))
    settled_error_us = time_filter.error_us
    assert settled_error_us is not None

    server.offset_us += 40_000.0  # e.g. the server's clock was stepped
    start_us = last.local_us + 1_000_000
    steps = exchanges(server, rng, 80, start_local_us=start_us, network=lan)
    first = next(steps)
    time_filter.update(first.offset_us, first.max_error_us, first.local_us)
    stepped_error_us = time_filter.error_us
    # Forgetting inflated the covariance; without it Poo could only shrink.
    assert stepped_error_us is not None and stepped_error_us > settled_error_us

    last = feed(time_filter, itertools.islice(steps, 10))
    assert abs(offset_error_us(time_filter, server, last.local_us)) < 2_000
    last = feed(time_filter, steps)
    assert abs(offset_error_us(time_filter, server, last.local_us)) < 300
    assert time_filter.drift_ppm == pytest.approx(100.0, abs=5.0)


def test_unsynchronized_until_two_samples() -> None:
    time_filter = TimeFilter()
    assert not time_filter.synchronized
    assert time_filter.mapping() is None
    assert time_filter.error_us is None
    time_filter.update(500, 100, 1_000_000)
    assert not time_filter.synchronized
    assert time_filter.mapping() is None
    time_filter.update(520, 100, 2_000_000)
    assert time_filter.synchronized
    assert time_filter.error_us == 50  # sigma_z = 0.5 * max_error
    assert time_filter.mapping() == ClockMapping(2_000_000, 520.0, 0.0, 50)


def test_duplicate_and_old_timestamps_are_ignored() -> None:
    time_filter = TimeFilter()
    time_filter.update(500, 100, 1_000_000)
    time_filter.update(520, 100, 2_000_000)
    time_filter.update(540, 100, 3_000_000)
    before = time_filter.mapping()
    time_filter.update(99_999, 100, 3_000_000)
    time_filter.update(99_999, 100, 2_500_000)
    assert time_filter.mapping() == before


def test_reset_forgets_everything() -> None:
    time_filter = TimeFilter()
    feed(time_filter, exchanges(SimulatedServer(TRUE_OFFSET_US, 0.0), np.random.default_rng(3), 5))
    time_filter.reset()
    assert not time_filter.synchronized
    assert time_filter.mapping() is None
    # Older local times are accepted again after a reset.
    time_filter.update(10, 100, 1)
    time_filter.update(10, 100, 2)
    assert time_filter.synchronized


@settings(max_examples=50, deadline=None, derandomize=True)
@given(
    anchor_local_us=st.integers(0, 2**50),
    offset_us=st.floats(-(2.0**50), 2.0**50),
    drift=st.floats(-1e-3, 1e-3),
    local_us=st.integers(0, 2**50),
)
def test_mapping_round_trips_within_one_us(
    anchor_local_us: int, offset_us: float, drift: float, local_us: int
) -> None:
    mapping = ClockMapping(anchor_local_us, offset_us, drift, 0)
    server_us = mapping.server_from_local(local_us)
    assert abs(mapping.local_from_server(server_us) - local_us) <= 1
    assert abs(mapping.server_from_local(mapping.local_from_server(server_us)) - server_us) <= 1


def test_conversions_return_ints() -> None:
    mapping = ClockMapping(1_000, 10.6, 1e-4, 3)
    assert isinstance(mapping.server_from_local(5_000), int)
    assert isinstance(mapping.local_from_server(5_000), int)
    assert mapping.server_from_local(1_000) == 1_011


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**32 - 1),
    offset_us=st.integers(-(2**40), 2**40),
    drift_ppm=st.floats(-1000.0, 1000.0),
    interval_us=st.integers(1, 5_000_000),
    base_us=st.floats(0.0, 50_000.0),
    queueing_us=st.floats(0.0, 50_000.0),
    outlier_probability=st.floats(0.0, 0.5),
)
def test_random_runs_stay_finite(
    seed: int,
    offset_us: int,
    drift_ppm: float,
    interval_us: int,
    base_us: float,
    queueing_us: float,
    outlier_probability: float,
) -> None:
    rng = np.random.default_rng(seed)
    server = SimulatedServer(float(offset_us), drift_ppm * 1e-6)
    network = Network(base_us, queueing_us, outlier_probability)
    time_filter = TimeFilter()
    for sample in exchanges(server, rng, 150, interval_us=interval_us, network=network):
        time_filter.update(sample.offset_us, sample.max_error_us, sample.local_us)
        mapping = time_filter.mapping()
        assert (mapping is not None) == time_filter.synchronized
        if mapping is not None:
            assert math.isfinite(mapping.offset_us) and math.isfinite(mapping.drift)
            assert mapping.error_us >= 0
            assert isinstance(mapping.server_from_local(sample.local_us), int)
        error_us = time_filter.error_us
        assert error_us is None or error_us >= 0
        assert math.isfinite(time_filter.drift_ppm)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(
    samples=st.lists(
        st.tuples(st.integers(-(2**45), 2**45), st.integers(-10, 2**30), st.integers(0, 2**45)),
        max_size=30,
    )
)
def test_arbitrary_measurements_never_raise_or_go_nan(samples: list[tuple[int, int, int]]) -> None:
    time_filter = TimeFilter()
    for offset_us, max_error_us, local_us in samples:
        time_filter.update(offset_us, max_error_us, local_us)
        mapping = time_filter.mapping()
        if mapping is not None:
            assert not math.isnan(mapping.offset_us) and not math.isnan(mapping.drift)
            assert mapping.error_us >= 0


def test_zero_and_tiny_max_errors_keep_the_covariance_valid() -> None:
    # A zero measurement variance would collapse the covariance to zero and
    # let rounding drive it negative; max_error is floored at 1 µs.
    rng = np.random.default_rng(5)
    for _ in range(20):
        time_filter = TimeFilter()
        local_us = 0
        for _ in range(300):
            local_us += int(rng.integers(1, 3))
            time_filter.update(int(rng.integers(-1000, 1000)), int(rng.integers(-2, 5)), local_us)
        mapping = time_filter.mapping()
        assert mapping is not None
        assert math.isfinite(mapping.offset_us) and math.isfinite(mapping.drift)
        assert mapping.error_us >= 0
