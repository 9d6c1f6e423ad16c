"""The supervisor: failing tasks restart with backoff without disturbing their siblings,
requested restarts are not failures, and a task that keeps failing ends the process."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from resonate_embedded.supervisor import GaveUp, Supervisor


def test_a_failing_task_restarts_with_backoff_and_its_sibling_keeps_running(caplog):
    starts: list[float] = []
    ticks = 0

    async def flaky() -> None:
        starts.append(trio.current_time())
        if len(starts) < 4:
            raise ValueError(f"bug #{len(starts)}")
        await trio.sleep_forever()

    async def steady() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.1)

    async def main() -> None:
        sup = Supervisor(backoff_min_s=0.5, backoff_max_s=1.5)
        sup.add("flaky", flaky)
        sup.add("steady", steady)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.run)
            await trio.sleep(10)
            assert sup.running("flaky") and sup.running("steady")
            sup.stop()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    gaps = [round(b - a, 3) for a, b in zip(starts, starts[1:])]
    assert gaps == [0.5, 1.0, 1.5]  # doubling, capped
    assert ticks >= 99  # never paused by its sibling's failures
    assert "task flaky failed" in caplog.text and "ValueError: bug #3" in caplog.text


def test_a_requested_restart_is_immediate_and_not_a_failure():
    runs = 0

    async def task() -> None:
        nonlocal runs
        runs += 1
        await trio.sleep_forever()

    async def main() -> None:
        sup = Supervisor(max_failures=0)  # any failure would end run() with GaveUp
        sup.add("task", task)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.run)
            await trio.sleep(1)
            for _ in range(5):
                sup.restart("task")
                await trio.sleep(0)
                await trio.sleep(0)
            await trio.sleep(1)
            sup.stop()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert runs == 6


def test_a_finished_task_is_not_restarted():
    runs = 0

    async def once() -> None:
        nonlocal runs
        runs += 1

    async def main() -> None:
        sup = Supervisor()
        sup.add("once", once)
        sup.add("idle", trio.sleep_forever)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.run)
            await trio.sleep(60)
            assert not sup.running("once") and sup.running("idle")
            sup.stop()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert runs == 1


def test_too_many_failures_give_up_so_that_systemd_restarts_the_process():
    async def broken() -> None:
        raise OSError("device on fire")

    async def main() -> None:
        sup = Supervisor(backoff_min_s=0.1, backoff_max_s=0.1, max_failures=3, window_s=60)
        sup.add("broken", broken)
        sup.add("idle", trio.sleep_forever)
        await sup.run()

    with pytest.raises(BaseExceptionGroup) as info:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert info.group_contains(GaveUp, match="4 task failures within 60 s")
