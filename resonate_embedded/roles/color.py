"""The color role: colours for the current audio, kept from ``server/state`` (``roles/color/v1.md``).

:func:`parse_color` turns a ``color`` object into a frozen :class:`Colors`; :class:`ColorTimeline`
keeps the current colours plus at most one scheduled update (see
:mod:`resonate_embedded.roles.scheduled`) and answers "which RGB now?" for the status light.

Semantics (``messaging.md``, ``server/state``): every ``color`` object is the full state
(no merging; absent and ``null`` fields are both "not given"); a ``null`` role object
clears the current state and the pending update; ``timestamp`` (server µs) is required and
a future one schedules the update.  A field that is not ``[R, G, B]`` with integers 0-255
is dropped with one problem line naming it; an object without a usable ``timestamp`` is
refused with one problem line.  Nothing here raises on bad input.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import attrs

from resonate_embedded.clock.local import local_now_us
from resonate_embedded.roles.scheduled import Scheduled, ServerToLocal

log = logging.getLogger(__name__)

RGB = tuple[int, int, int]
COLOR_FIELDS = ("background_dark", "background_light", "primary", "accent", "on_dark", "on_light")
# What an LED shows, best first: the dominant colour, then its complement, then the rest.
LED_PREFERENCE = ("primary", "accent", "on_dark", "background_dark", "background_light", "on_light")


@attrs.frozen
class Colors:
    """One full ``color`` state (None: not given)."""

    timestamp_us: int
    background_dark: RGB | None = None
    background_light: RGB | None = None
    primary: RGB | None = None
    accent: RGB | None = None
    on_dark: RGB | None = None
    on_light: RGB | None = None

    def led_rgb(self) -> RGB | None:
        """The colour a single RGB LED shows (see :data:`LED_PREFERENCE`), None if none given."""
        for name in LED_PREFERENCE:
            value = getattr(self, name)
            if value is not None:
                return value
        return None


def _rgb(value: Any) -> RGB | None:
    if (isinstance(value, list) and len(value) == 3
            and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)):
        return (value[0], value[1], value[2])
    return None


def parse_color(obj: Any) -> tuple[Colors | None, tuple[str, ...]]:
    """Parse a ``color`` object: ``(colors or None, problems)``; never raises.

    None with no problems means a ``null`` role object (clear).
    """
    if obj is None:
        return None, ()
    if not isinstance(obj, dict):
        return None, (f"color is {type(obj).__name__}, not an object: ignored",)
    timestamp = obj.get("timestamp")
    if timestamp is None:
        return None, ("color without timestamp: ignored",)
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) \
            or not -(1 << 62) <= timestamp <= 1 << 62:
        return None, (f"color.timestamp={str(timestamp)[:40]} is not a usable integer: ignored",)
    problems: list[str] = []
    values: dict[str, RGB | None] = {}
    for key in COLOR_FIELDS:
        raw = obj.get(key)
        values[key] = None if raw is None else _rgb(raw)
        if raw is not None and values[key] is None:
            problems.append(f"color.{key}={str(raw)[:40]} is not [R, G, B] in 0-255: ignored")
    return Colors(timestamp_us=timestamp, **values), tuple(problems)


class ColorTimeline:
    """The color role's current colours and pending update.

    The session calls :meth:`receive` for every ``server/state`` carrying ``color`` and
    :meth:`clear` when the role is removed or the connection is lost; the light reads
    :meth:`rgb_at`.  A scheduled update takes effect at the first query at or after its
    time (the light polls often enough, see :mod:`resonate_embedded.light`).
    """

    def __init__(self, server_to_local_us: ServerToLocal,
                 now_us: Callable[[], int] = local_now_us) -> None:
        self._state: Scheduled[Colors] = Scheduled(server_to_local_us)
        self._now_us = now_us

    def receive(self, obj: Any, now_us: int | None = None) -> tuple[str, ...]:
        """Take the ``color`` value of a ``server/state`` payload; returns (and logs) the problems."""
        colors, problems = parse_color(obj)
        for problem in problems:
            log.warning("%s", problem)
        if colors is None:
            if not problems:
                self._state.clear()
        else:
            self._state.offer(colors, self._now_us() if now_us is None else now_us)
        return problems

    def clear(self) -> None:
        """Forget current and pending colours."""
        self._state.clear()

    def current(self, now_us: int | None = None) -> Colors | None:
        """The colours in effect at ``now_us`` (a due pending update is applied first)."""
        return self._state.current_at(self._now_us() if now_us is None else now_us)

    @property
    def pending(self) -> Colors | None:
        return self._state.pending

    def pending_due_local_us(self) -> int | None:
        """When the pending update takes effect (local µs), None without one."""
        return self._state.due_local_us()

    def rgb_at(self, now_us: int | None = None) -> RGB | None:
        """The LED colour in effect at ``now_us``, None when the server gave none."""
        colors = self.current(now_us)
        return None if colors is None else colors.led_rgb()

    def snapshot(self, now_us: int | None = None) -> dict[str, Any] | None:
        """The status view: every colour as ``#rrggbb`` (None: not given), or None."""
        colors = self.current(now_us)
        if colors is None:
            return None
        return {name: None if getattr(colors, name) is None else
                "#%02x%02x%02x" % getattr(colors, name) for name in COLOR_FIELDS}
