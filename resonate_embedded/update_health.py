"""Whether the player has earned a trial slot's commit: READY, then a healthy period.

The player runs as ``resonate-embedded.service`` (``Type=notify``, ``WatchdogSec=``): systemd
calls it active only once the player sent READY=1 (its audio device took audio and its
connection is up or waiting), and records every WATCHDOG=1.  :meth:`PlayerWatch.wait_healthy`
reads the unit with ``systemctl show`` and says yes only when, for ``healthy_s`` after READY,
the same process (same invocation, same PID, never restarted since boot) stayed
active/running with its watchdog fed (at least one ping since READY, and never a gap longer
than ``WatchdogSec``).  A player that crashes, hangs or restarts before or during that
time — on its first stream, say — never gets its slot committed.

Every ``*Monotonic`` timestamp is CLOCK_MONOTONIC in µs, the clock of :attr:`PlayerWatch.now_us`.
"""

from __future__ import annotations

import re
import time
from typing import Callable

import attrs

from resonate_embedded.system_commands import Runner, run_command

PLAYER_UNIT = "resonate-embedded.service"
HEALTHY_S = 60.0  # default: how long the player must stay healthy after READY
READY_TIMEOUT_S = 180.0  # default: how long to wait for READY
POLL_S = 1.0
PROPERTIES = ("ActiveState", "SubState", "MainPID", "NRestarts", "InvocationID",
              "ActiveEnterTimestampMonotonic", "WatchdogTimestampMonotonic", "WatchdogUSec")
_SPAN_UNITS_US = {"us": 1, "ms": 1_000, "s": 1_000_000, "min": 60_000_000, "h": 3_600_000_000,
                  "d": 86_400_000_000, "w": 604_800_000_000}
_SPAN_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|min|h|d|w)")


class Unhealthy(Exception):
    """The player did not earn the commit (the message says why, in one line)."""


def parse_timespan_us(text: str) -> int:
    """A systemd time span as ``systemctl show`` prints it (``30s``, ``1min 30s``, ``500ms``,
    ``0``, a bare number of µs) in µs; 0 for ``infinity`` or empty (no watchdog)."""
    text = text.strip()
    if text in ("", "infinity"):
        return 0
    if text.isdigit():
        return int(text)
    parts = text.replace(" ", "")
    matches = list(_SPAN_PART.finditer(parts))
    if not matches or "".join(m.group(0) for m in matches) != parts:
        raise ValueError(f"not a systemd time span: {text!r}")
    return round(sum(float(m.group(1)) * _SPAN_UNITS_US[m.group(2)] for m in matches))


@attrs.frozen
class UnitState:
    """The player's unit as systemd sees it at one instant."""

    active_state: str
    sub_state: str
    main_pid: int
    restarts: int
    invocation: str
    ready_us: int  # ActiveEnterTimestampMonotonic: when READY=1 made it active (0: never)
    watchdog_ping_us: int  # the last WATCHDOG=1 (0: none yet)
    watchdog_us: int  # WatchdogSec (0: no watchdog)

    @property
    def ready(self) -> bool:
        return self.active_state == "active" and self.sub_state == "running"

    @classmethod
    def parse(cls, text: str) -> "UnitState":
        """From ``systemctl show --property=...`` (``Key=value`` lines)."""
        values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        try:
            return cls(values["ActiveState"], values["SubState"], int(values["MainPID"]),
                       int(values.get("NRestarts") or 0), values.get("InvocationID", ""),
                       int(values.get("ActiveEnterTimestampMonotonic") or 0),
                       int(values.get("WatchdogTimestampMonotonic") or 0),
                       parse_timespan_us(values.get("WatchdogUSec", "")))
        except (KeyError, ValueError) as exc:
            raise Unhealthy(f"cannot read the player's unit state ({exc})") from None


def _problem(first: UnitState, now: UnitState, now_us: int) -> str | None:
    """Why ``now`` is no longer the healthy continuation of ``first`` (None: it is)."""
    if (now.invocation, now.main_pid, now.restarts) != (first.invocation, first.main_pid,
                                                         first.restarts):
        return (f"the player restarted during its healthy period (pid {first.main_pid} -> "
                f"{now.main_pid}, {now.restarts} restarts since boot)")
    if not now.ready:
        return f"the player is {now.active_state}/{now.sub_state}"
    fed_us = max(now.watchdog_ping_us, now.ready_us)
    if now.watchdog_us and now_us - fed_us > now.watchdog_us:
        return (f"the player's watchdog was not fed for {(now_us - fed_us) / 1e6:.1f} s "
                f"(WatchdogSec {now.watchdog_us / 1e6:g} s)")
    return None


@attrs.define
class PlayerWatch:
    """Reads the player's unit; ``now_us`` and ``sleep`` are injectable for tests."""

    run: Runner = run_command
    now_us: Callable[[], int] = attrs.field(default=lambda: time.monotonic_ns() // 1000)
    sleep: Callable[[float], None] = time.sleep
    unit: str = PLAYER_UNIT

    def read(self) -> UnitState:
        argv = ["systemctl", "show", f"--property={','.join(PROPERTIES)}", self.unit]
        done = self.run(argv)
        if done.returncode != 0:
            raise Unhealthy(f"cannot read the player's unit state: {done.failure(argv)}")
        return UnitState.parse(done.stdout)

    def wait_healthy(self, healthy_s: float = HEALTHY_S,
                     ready_timeout_s: float = READY_TIMEOUT_S) -> str:
        """Return once the player has been healthy for ``healthy_s`` after READY (one line
        saying so); raise :class:`Unhealthy` as soon as it is not, or if READY does not
        come within ``ready_timeout_s``."""
        first = self._wait_ready(ready_timeout_s)
        if first.restarts:
            raise Unhealthy(f"the player restarted {first.restarts} times since boot")
        while True:
            state, now_us = self.read(), self.now_us()
            problem = _problem(first, state, now_us)
            if problem is not None:
                raise Unhealthy(problem)
            pinged = not state.watchdog_us or state.watchdog_ping_us > state.ready_us
            healthy_us = now_us - state.ready_us
            if pinged and healthy_us >= healthy_s * 1e6:
                return (f"the player (pid {state.main_pid}) has been ready and healthy for "
                        f"{healthy_us / 1e6:.0f} s")
            self.sleep(POLL_S)

    def _wait_ready(self, timeout_s: float) -> UnitState:
        start_us = self.now_us()
        while True:
            state = self.read()
            if state.ready and state.ready_us:
                return state
            if state.restarts:
                raise Unhealthy(f"the player restarted {state.restarts} times before it was "
                                f"ready (it is {state.active_state}/{state.sub_state})")
            if self.now_us() - start_us > timeout_s * 1e6:
                raise Unhealthy(f"the player did not report READY within {timeout_s:g} s "
                                f"(it is {state.active_state}/{state.sub_state})")
            self.sleep(POLL_S)
