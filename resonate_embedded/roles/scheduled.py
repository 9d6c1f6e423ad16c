"""Current state plus at most one pending scheduled update (metadata and color roles).

The spec (``roles/metadata/v1.md``, ``roles/color/v1.md``, "Scheduled ... updates") says a
client keeps a **current** state and at most one **pending** update.  An object whose
``timestamp``, translated to the local clock with the time filter's current estimate, is
still in the future becomes the pending update (replacing any held one); one whose
translated timestamp is in the past or present is applied at once and discards the
pending update.

Guarantees of :class:`Scheduled`:

- it is pure bookkeeping: every method takes the local time (``now_us``, the player's
  CLOCK_MONOTONIC_RAW µs) as an argument, so tests need no clock;
- the pending update's due time is recomputed through ``server_to_local_us`` at every
  query, so a clock estimate that improves while an update waits moves its due time with it;
- while the clock is not synchronised (``server_to_local_us`` returns None) nothing can be
  scheduled: an update is applied at once (the spec says not to wait for convergence, and
  an unplaceable timestamp cannot be waited for);
- a pending update never overtakes the current state: :meth:`current_at` applies it only
  when ``now_us`` has reached its due time.
"""

from __future__ import annotations

from typing import Callable, Generic, Protocol, TypeVar

ServerToLocal = Callable[[int], "int | None"]


class Timestamped(Protocol):
    @property
    def timestamp_us(self) -> int: ...


T = TypeVar("T", bound=Timestamped)


class Scheduled(Generic[T]):
    """Current state + one pending update of one role (see the module docstring)."""

    def __init__(self, server_to_local_us: ServerToLocal) -> None:
        self._to_local = server_to_local_us
        self.current: T | None = None
        self.pending: T | None = None
        self.generation = 0  # bumped whenever ``current`` changes

    def local_time_of(self, state: T) -> int | None:
        """The local time ``state`` takes effect at, or None while the clock is unsynchronised."""
        try:
            return self._to_local(state.timestamp_us)
        except (ArithmeticError, ValueError):  # a timestamp so extreme the mapping overflows
            return None

    def offer(self, state: T, now_us: int) -> bool:
        """Take one received role object; True when it became the current state now."""
        due = self.local_time_of(state)
        if due is not None and due > now_us:
            self.pending = state
            return False
        self.pending = None
        self._set_current(state)
        return True

    def clear(self) -> None:
        """Forget current and pending (role removed, null role object, transport lost)."""
        self.pending = None
        if self.current is not None:
            self._set_current(None)

    def due_local_us(self) -> int | None:
        """When the pending update is due (local µs), None without one.

        A pending update whose time cannot be mapped any more (clock reset) is due now:
        callers get ``-1``, which is in everyone's past.
        """
        if self.pending is None:
            return None
        due = self.local_time_of(self.pending)
        return -1 if due is None else due

    def current_at(self, now_us: int) -> T | None:
        """The current state at ``now_us``, applying the pending update first if it is due."""
        due = self.due_local_us()
        if due is not None and due <= now_us:
            state, self.pending = self.pending, None
            self._set_current(state)
        return self.current

    def _set_current(self, state: T | None) -> None:
        self.current = state
        self.generation += 1
