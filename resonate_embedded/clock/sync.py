"""The clock-sync task: bursts of 4-timestamp exchanges into the Kalman filter.

Each burst sends ``BURST`` sequential ``client/time`` messages and feeds only
the exchange with the smallest round trip to the filter (queueing delay only
ever adds to a round trip, so the fastest exchange is the most symmetric one).
Bursts come every 0.2 s for the first ``FAST_UPDATES``, then every 1 s until
the filter has converged, then every ``STEADY_INTERVAL_S``.

The local clock is :func:`local_now_us` (CLOCK_MONOTONIC_RAW), the same clock
the ALSA device timestamps in; the server's clock is never imitated.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import attrs
import trio

from resonate_embedded.clock.local import local_now_us
from resonate_embedded.clock.time_filter import ClockMapping, TimeFilter, measurement_from_exchange
from resonate_embedded.protocol.messages import ServerTime, client_time_json

log = logging.getLogger(__name__)

BURST = 8
REPLY_TIMEOUT_S = 0.5
FAST_INTERVAL_S = 0.2
CONVERGING_INTERVAL_S = 1.0
STEADY_INTERVAL_S = 3.0
CONVERGED_ERROR_US = 200
DRIFT_TRUSTED_AFTER = 10
FAST_UPDATES = 20


@attrs.frozen
class TimeReply:
    """A server/time reply and the local time it was received at (T4)."""

    message: ServerTime
    received_local_us: int


class ClockSync:
    """Owns the filter; ``mapping`` is the latest snapshot for the writer."""

    def __init__(self) -> None:
        self.filter = TimeFilter()
        self.updates = 0
        self.last_rtt_us: int | None = None

    @property
    def mapping(self) -> ClockMapping | None:
        """The latest mapping; its drift is held at 0 until ``DRIFT_TRUSTED_AFTER`` updates."""
        mapping = self.filter.mapping()
        if mapping is not None and self.updates < DRIFT_TRUSTED_AFTER:
            return attrs.evolve(mapping, drift=0.0)
        return mapping

    def reset(self) -> None:
        self.filter.reset()
        self.updates = 0

    def interval_s(self) -> float:
        if self.updates < FAST_UPDATES:
            return FAST_INTERVAL_S
        error = self.filter.error_us
        if self.updates < 2 * FAST_UPDATES or error is None or error > CONVERGED_ERROR_US:
            return CONVERGING_INTERVAL_S
        return STEADY_INTERVAL_S

    async def run(self, send_text: Callable[[str], Awaitable[None]],
                  replies: trio.MemoryReceiveChannel) -> None:
        """Run bursts forever (until cancelled with the connection)."""
        while True:
            best: tuple[int, int, int] | None = None
            for _ in range(BURST):
                sent_us = local_now_us()
                await send_text(client_time_json(sent_us))
                reply = await self._reply_for(replies, sent_us)
                if reply is None:
                    continue
                m = reply.message
                offset, max_error = measurement_from_exchange(
                    m.client_transmitted_us, m.server_received_us, m.server_transmitted_us,
                    reply.received_local_us)
                if best is None or max_error < best[1]:
                    best = (offset, max_error, reply.received_local_us)
            if best is not None:
                self.filter.update(*best)
                self.updates += 1
                self.last_rtt_us = 2 * best[1]
            await trio.sleep(self.interval_s())

    @staticmethod
    async def _reply_for(replies: trio.MemoryReceiveChannel, sent_us: int) -> TimeReply | None:
        with trio.move_on_after(REPLY_TIMEOUT_S):
            async for reply in replies:
                if reply.message.client_transmitted_us == sent_us:
                    return reply
        return None
