"""Log lines a peer can provoke, bounded: at most one line per kind per interval, and a
bounded number of kinds, so a flood of bad input cannot flood the journal or the SD card."""

from __future__ import annotations

import logging

from resonate_embedded.clock.local import local_now_us

INTERVAL_US = 10_000_000
MAX_KINDS = 32


class LogLimiter:
    def __init__(self, logger: logging.Logger, interval_us: int = INTERVAL_US,
                 max_kinds: int = MAX_KINDS) -> None:
        self._log = logger
        self._interval_us = interval_us
        self._max_kinds = max_kinds
        self._last: dict[str, int] = {}  # kind → when it was last logged
        self._suppressed: dict[str, int] = {}
        self._overflowed = False

    def log(self, level: int, kind: str, text: str, *args: object) -> None:
        """Log ``text % args`` unless ``kind`` was logged within the interval (then count
        it, and say how many were left out the next time it is logged)."""
        now = local_now_us()
        last = self._last.get(kind)
        if last is None and len(self._last) >= self._max_kinds:
            if not self._overflowed:
                self._overflowed = True
                self._log.warning("more than %d kinds of bad input: further kinds are not logged",
                                  self._max_kinds)
            return
        if last is not None and now - last < self._interval_us:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        left_out = self._suppressed.pop(kind, 0)
        if left_out:
            text += f" (and {left_out} more like it not logged)"
        self._log.log(level, text, *args)
