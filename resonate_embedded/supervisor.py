"""The top of the process: one trio nursery that owns every long-lived task.

Guarantees:

* every task runs inside the supervisor's nursery; nothing outlives :meth:`Supervisor.run`;
* a task that raises is logged with its cause and started again after a backoff
  (``backoff_min_s`` doubling to ``backoff_max_s``; back to the minimum once a run has
  lasted ``stable_s``); its siblings keep running, so a session's bug does not close the
  audio device and a writer's bug does not drop the server;
* :meth:`Supervisor.restart` ends a task on purpose (a reload): it starts again at once
  and this is not counted as a failure;
* more than ``max_failures`` failures within ``window_s`` (all tasks together) is a fault
  the supervisor cannot handle: :class:`GaveUp` ends :meth:`run`, and the process exits
  non-zero so that systemd restarts it (crash-only);
* a task that returns is finished and is not restarted (e.g. the systemd notifier
  without systemd); :meth:`stop` ends them all.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable

import attrs
import trio

log = logging.getLogger(__name__)


class GaveUp(RuntimeError):
    """Tasks kept failing: the process should end and be restarted from scratch."""


@attrs.define(eq=False)
class _Task:
    name: str
    fn: Callable[[], Awaitable[None]]
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    restarting: bool = False
    running: bool = False


@attrs.define(eq=False)
class Supervisor:
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    stable_s: float = 10.0
    max_failures: int = 10
    window_s: float = 60.0
    _tasks: dict[str, _Task] = attrs.field(factory=dict, init=False)
    _failures: deque[float] = attrs.field(factory=deque, init=False)
    _scope: trio.CancelScope | None = attrs.field(default=None, init=False)

    def add(self, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        """Register a task (before :meth:`run`)."""
        self._tasks[name] = _Task(name, fn)

    def running(self, name: str) -> bool:
        """Whether ``name`` is running now (not finished, not waiting out a backoff)."""
        task = self._tasks.get(name)
        return task is not None and task.running

    def restart(self, name: str) -> None:
        """End ``name`` now; it starts again at once (not a failure)."""
        task = self._tasks[name]
        task.restarting = True
        task.scope.cancel()

    def stop(self) -> None:
        """End every task; :meth:`run` returns."""
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> None:
        """Run every task until :meth:`stop`; raises :class:`GaveUp`."""
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            for task in self._tasks.values():
                nursery.start_soon(self._keep, task, name=f"supervised:{task.name}")

    async def _keep(self, task: _Task) -> None:
        backoff = self.backoff_min_s
        while True:
            task.scope, task.restarting = trio.CancelScope(), False
            started = trio.current_time()
            failed = False
            task.running = True
            try:
                with task.scope:
                    await task.fn()
                    return  # finished by itself
            except Exception:  # noqa: BLE001 - crash-only: log the cause, start again
                log.exception("task %s failed", task.name)
                failed = True
            finally:
                task.running = False
            if task.restarting and not failed:
                log.info("task %s restarted on request", task.name)
                continue
            self._count_failure(task.name)
            if trio.current_time() - started > self.stable_s:
                backoff = self.backoff_min_s
            log.warning("restarting task %s in %.1f s", task.name, backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max_s)

    def _count_failure(self, name: str) -> None:
        now = trio.current_time()
        self._failures.append(now)
        while self._failures and now - self._failures[0] > self.window_s:
            self._failures.popleft()
        if len(self._failures) > self.max_failures:
            raise GaveUp(f"{len(self._failures)} task failures within {self.window_s:.0f} s "
                         f"(last: {name}): giving up so that the service is restarted")
