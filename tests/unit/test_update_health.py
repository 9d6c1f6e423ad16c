"""The trial slot's commit condition: READY, then a healthy period of the same player.

systemd is replaced by :class:`FakeUnit` (what ``systemctl show`` prints for the player's
unit, scripted over a fake CLOCK_MONOTONIC that only the watch's own sleeps advance): no
real time passes, every outcome is decided by the script.
"""

from __future__ import annotations

import attrs
import pytest

from resonate_embedded.system_commands import CommandResult
from resonate_embedded.update_health import (
    PROPERTIES, PlayerWatch, Unhealthy, UnitState, parse_timespan_us,
)

S = 1_000_000  # µs


@attrs.define
class FakeUnit:
    """The player's unit: ``script`` maps a time (s since the watch started) to property
    changes; while ``pinging``, WATCHDOG=1 arrives every ``ping_s`` after READY."""

    script: dict[float, dict[str, object]] = attrs.field(factory=dict)
    ping_s: float = 5.0
    start_us: int = 100 * S
    now_us: int = 100 * S
    props: dict[str, object] = attrs.field(factory=lambda: {
        "ActiveState": "active", "SubState": "running", "MainPID": 321, "NRestarts": 0,
        "InvocationID": "0f1e", "ActiveEnterTimestampMonotonic": 98 * S,
        "WatchdogTimestampMonotonic": 0, "WatchdogUSec": "30s", "pinging": True})
    reads: int = 0

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now_us += round(seconds * S)

    def __call__(self, argv) -> CommandResult:
        assert argv == ["systemctl", "show", f"--property={','.join(PROPERTIES)}",
                        "resonate-embedded.service"]
        self.reads += 1
        for at_s in sorted(self.script):
            if self.start_us + at_s * S <= self.now_us:
                self.props.update(self.script.pop(at_s))
        ready_us = int(self.props["ActiveEnterTimestampMonotonic"])
        if self.props["pinging"] and ready_us and self.props["ActiveState"] == "active":
            pings = (self.now_us - ready_us) // round(self.ping_s * S)
            if pings > 0:
                self.props["WatchdogTimestampMonotonic"] = ready_us + pings * round(self.ping_s * S)
        return CommandResult(0, "".join(f"{k}={v}\n" for k, v in self.props.items()
                                        if k in PROPERTIES))


def watch(unit: FakeUnit) -> PlayerWatch:
    return PlayerWatch(run=unit, now_us=lambda: unit.now_us, sleep=unit.sleep)


def test_healthy_for_the_period_after_ready():
    unit = FakeUnit()
    line = watch(unit).wait_healthy(healthy_s=60)
    assert line == "the player (pid 321) has been ready and healthy for 60 s"
    assert unit.now_us - 98 * S >= 60 * S


def test_waits_for_ready_then_counts_the_period_from_it():
    unit = FakeUnit(script={12: {"ActiveState": "active", "SubState": "running",
                                 "ActiveEnterTimestampMonotonic": 112 * S}})
    unit.props.update(ActiveState="activating", SubState="start", ActiveEnterTimestampMonotonic=0)
    watch(unit).wait_healthy(healthy_s=30)
    assert unit.now_us >= 142 * S


def test_crash_on_the_first_stream_during_the_period_is_never_committed():
    """A restart (new PID and invocation: Restart=always brought it back) at 20 s."""
    unit = FakeUnit(script={20: {"MainPID": 400, "InvocationID": "77aa", "NRestarts": 1,
                                 "ActiveEnterTimestampMonotonic": 121 * S}})
    with pytest.raises(Unhealthy, match=r"restarted during its healthy period \(pid 321 -> 400"):
        watch(unit).wait_healthy(healthy_s=60)
    assert unit.now_us < 160 * S  # said at once, not at the end of the period


def test_a_player_that_restarted_before_ready_is_not_committed():
    unit = FakeUnit()
    unit.props["NRestarts"] = 2
    with pytest.raises(Unhealthy, match="restarted 2 times"):
        watch(unit).wait_healthy()


def test_a_crash_loop_never_ready_is_reported_not_waited_out():
    unit = FakeUnit()
    unit.props.update(ActiveState="activating", SubState="auto-restart", NRestarts=1,
                      ActiveEnterTimestampMonotonic=0)
    with pytest.raises(Unhealthy, match="restarted 1 times before it was ready"):
        watch(unit).wait_healthy()


def test_no_ready_within_the_timeout():
    unit = FakeUnit()
    unit.props.update(ActiveState="activating", SubState="start", ActiveEnterTimestampMonotonic=0)
    with pytest.raises(Unhealthy, match="did not report READY within 90 s"):
        watch(unit).wait_healthy(ready_timeout_s=90)


def test_a_stalled_watchdog_is_seen_before_systemd_kills_it():
    """The writer hangs at 10 s: pings stop; the watch notices once WatchdogSec has passed."""
    unit = FakeUnit(script={10: {"pinging": False}})
    with pytest.raises(Unhealthy, match=r"watchdog was not fed for 3\d\.\d s \(WatchdogSec 30 s\)"):
        watch(unit).wait_healthy(healthy_s=60)


def test_the_period_is_extended_until_a_watchdog_ping_was_seen():
    unit = FakeUnit(ping_s=25.0)
    watch(unit).wait_healthy(healthy_s=5)
    assert unit.now_us >= 98 * S + 25 * S


def test_a_player_that_stopped_is_unhealthy():
    unit = FakeUnit(script={3: {"ActiveState": "deactivating", "SubState": "stop-sigterm"}})
    with pytest.raises(Unhealthy, match="the player is deactivating/stop-sigterm"):
        watch(unit).wait_healthy(healthy_s=60)


def test_systemctl_failing_is_a_clear_error():
    w = PlayerWatch(run=lambda argv: CommandResult(1, "", "Failed to connect to bus\n"),
                    now_us=lambda: 0, sleep=lambda s: None)
    with pytest.raises(Unhealthy, match="cannot read the player's unit state: systemctl show .* "
                                        "failed \\(1\\): Failed to connect to bus"):
        w.wait_healthy()


@pytest.mark.parametrize("text,us", [("30s", 30 * S), ("1min 30s", 90 * S), ("500ms", 500_000),
                                     ("2.5s", 2_500_000), ("0", 0), ("infinity", 0), ("", 0),
                                     ("1h 2min 3s 4ms 5us", 3_723_004_005)])
def test_timespans_as_systemctl_prints_them(text, us):
    assert parse_timespan_us(text) == us


def test_an_unreadable_state_is_unhealthy():
    with pytest.raises(Unhealthy, match="cannot read"):
        UnitState.parse("ActiveState=active\nSubState=running\nMainPID=x\n")
    with pytest.raises(Unhealthy, match="cannot read"):
        UnitState.parse("ActiveState=active\nSubState=running\nMainPID=1\nWatchdogUSec=soon\n")
