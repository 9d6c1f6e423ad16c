"""Server-clock estimation: the Sendspin 2-state Kalman time filter.

The filter tracks ``offset`` (server − local, µs) and ``drift`` (µs per µs)
from NTP-style exchanges, with the parameter set of aiosendspin 10 / the C++
``time-filter`` (PROTOCOL.md §4, "S10 / C++ time-filter (current)"):

- measurement standard deviation ``0.5·max_error``;
- no offset process noise, drift process noise ``(1e-11)²`` per µs;
- forgetting (covariances × ``2.0²``) when ``|residual| > 3·max_error``, once
  100 samples have been taken;
- second-sample drift variance ``(Poo + R) / dt²``;
- samples whose local time is not after the previous one are ignored;
- drift is used in conversions only while ``drift² > 4·Pdd`` (SNR gate);
- the innovation variance is floored at ``1e-9``.

One addition: ``max_error`` is floored at 1 µs.  The timestamps are integer
µs, so no measurement is better than that, and a zero measurement variance
collapses the covariance to zero, after which rounding drives it negative
(sqrt fails, the state goes to ±inf).

Floats are fine here: the filter runs a few times per second, not per sample.
What the audio path sees is an immutable :class:`ClockMapping` whose
conversions return integers.
"""

from __future__ import annotations

import math

import attrs

MAX_ERROR_SCALE = 0.5
OFFSET_PROCESS_VARIANCE = 0.0
DRIFT_PROCESS_VARIANCE = 1e-11**2
FORGET_VARIANCE_FACTOR = 2.0**2
FORGET_RESIDUAL_CUTOFF = 3.0
MIN_SAMPLES_FOR_FORGETTING = 100
DRIFT_SNR_SQUARED = 2.0**2
MIN_INNOVATION_VARIANCE = 1e-9
MIN_MAX_ERROR_US = 1


def measurement_from_exchange(
    client_transmitted_us: int,
    server_received_us: int,
    server_transmitted_us: int,
    client_received_us: int,
) -> tuple[int, int]:
    """One ``(offset_us, max_error_us)`` measurement from a time exchange.

    ``offset = round(((T2−T1) + (T3−T4)) / 2)`` is server minus local and
    ``max_error = round(((T4−T1) − (T3−T2)) / 2)`` is half the round trip
    spent outside the server; ``round`` is Python's (halves to even), as in the
    aiosendspin client.
    """
    outbound_us = server_received_us - client_transmitted_us
    inbound_us = server_transmitted_us - client_received_us
    round_trip_us = client_received_us - client_transmitted_us
    server_hold_us = server_transmitted_us - server_received_us
    return round((outbound_us + inbound_us) / 2), round((round_trip_us - server_hold_us) / 2)


@attrs.frozen
class ClockMapping:
    """Immutable snapshot the audio writer uses; conversions are pure integer-returning functions.

    ``server = local + round(offset + drift·(local − anchor))`` and
    ``local_from_server`` is its inverse; a round trip through both returns
    within 1 µs of the start.
    """

    anchor_local_us: int
    offset_us: float
    drift: float
    error_us: int

    def server_from_local(self, local_us: int) -> int:
        """The server-clock time corresponding to ``local_us``."""
        return local_us + round(self.offset_us + self.drift * (local_us - self.anchor_local_us))

    def local_from_server(self, server_us: int) -> int:
        """The local-clock time corresponding to ``server_us``.

        Solved relative to the anchor, so the rounding acts on a small number
        and precision does not depend on the clocks' epochs.
        """
        since_anchor = (server_us - self.offset_us - self.anchor_local_us) / (1.0 + self.drift)
        return self.anchor_local_us + round(since_anchor)


class TimeFilter:
    """Kalman filter of (offset, drift) fed by ``update``; see the module docstring."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything (on disconnect); the filter is unsynchronized until two new samples."""
        self._count = 0
        self._last_local_us = 0
        self._offset_us = 0.0
        self._drift = 0.0
        self._p_oo = math.inf
        self._p_od = 0.0
        self._p_dd = 0.0
        self._mapping: ClockMapping | None = None

    @property
    def synchronized(self) -> bool:
        """True once two samples have been taken and the offset variance is finite."""
        return self._count >= 2 and math.isfinite(self._p_oo)

    @property
    def error_us(self) -> int | None:
        """``round(sqrt(Poo))``: the offset's standard deviation, or None until synchronized."""
        return _error_us(self._p_oo) if self.synchronized else None

    @property
    def drift_ppm(self) -> float:
        """The estimated drift in parts per million, whether or not the SNR gate passes it."""
        return self._drift * 1e6

    def mapping(self) -> ClockMapping | None:
        """The latest published mapping, or None until synchronized."""
        return self._mapping

    def update(self, offset_us: int, max_error_us: int, local_us: int) -> None:
        """Fold in one measurement taken at ``local_us`` (T4); older or equal times are ignored."""
        if self._count > 0 and local_us <= self._last_local_us:
            return
        dt_us = float(local_us - self._last_local_us)
        self._last_local_us = local_us
        max_error_us = max(max_error_us, MIN_MAX_ERROR_US)
        measurement_variance = (MAX_ERROR_SCALE * max_error_us) ** 2
        if self._count == 0:
            self._first_sample(offset_us, measurement_variance)
        elif self._count == 1:
            self._second_sample(offset_us, measurement_variance, dt_us)
        else:
            self._kalman_step(offset_us, max_error_us, measurement_variance, dt_us)
        self._publish()

    def _first_sample(self, offset_us: int, measurement_variance: float) -> None:
        self._offset_us = float(offset_us)
        self._p_oo = measurement_variance
        self._drift = 0.0
        self._count = 1

    def _second_sample(self, offset_us: int, measurement_variance: float, dt_us: float) -> None:
        self._drift = (offset_us - self._offset_us) / dt_us
        self._offset_us = float(offset_us)
        self._p_dd = (self._p_oo + measurement_variance) / (dt_us * dt_us)
        self._p_oo = measurement_variance
        self._count = 2

    def _kalman_step(
        self, offset_us: int, max_error_us: int, measurement_variance: float, dt_us: float
    ) -> None:
        predicted_offset_us = self._offset_us + self._drift * dt_us
        p_dd = self._p_dd + DRIFT_PROCESS_VARIANCE * dt_us
        p_od = self._p_od + self._p_dd * dt_us
        p_oo = (
            self._p_oo
            + 2.0 * self._p_od * dt_us
            + self._p_dd * dt_us * dt_us
            + OFFSET_PROCESS_VARIANCE * dt_us
        )
        residual_us = offset_us - predicted_offset_us
        if self._count < MIN_SAMPLES_FOR_FORGETTING:
            self._count += 1
        elif abs(residual_us) > FORGET_RESIDUAL_CUTOFF * max_error_us:
            p_oo *= FORGET_VARIANCE_FACTOR
            p_od *= FORGET_VARIANCE_FACTOR
            p_dd *= FORGET_VARIANCE_FACTOR
        innovation_variance = max(p_oo + measurement_variance, MIN_INNOVATION_VARIANCE)
        offset_gain = p_oo / innovation_variance
        drift_gain = p_od / innovation_variance
        self._offset_us = predicted_offset_us + offset_gain * residual_us
        self._drift += drift_gain * residual_us
        self._p_dd = p_dd - drift_gain * p_od
        self._p_od = p_od - drift_gain * p_oo
        self._p_oo = p_oo - offset_gain * p_oo

    def _publish(self) -> None:
        if not self.synchronized:
            self._mapping = None
            return
        drift_significant = self._drift * self._drift > DRIFT_SNR_SQUARED * self._p_dd
        self._mapping = ClockMapping(
            anchor_local_us=self._last_local_us,
            offset_us=self._offset_us,
            drift=self._drift if drift_significant else 0.0,
            error_us=_error_us(self._p_oo),
        )


def _error_us(p_oo: float) -> int:
    return round(math.sqrt(p_oo))
