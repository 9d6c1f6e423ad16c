"""The metadata role: what is playing, kept from ``server/state`` (spec ``roles/metadata/v1.md``).

Parsing (:func:`parse_metadata`) turns the ``metadata`` object into a frozen
:class:`Metadata`.  Semantics, as the current spec (``messaging.md``, ``server/state``) has it:

- every ``metadata`` object is the **full** state: it replaces the previous one wholesale,
  there is no field-by-field merging; an optional field that is absent is unknown (it does
  not keep the previous track's value);
- a field sent as JSON ``null`` means the same as an absent field (servers talking to
  pre-spec-#175 clients send every unset field as null, which is full state too);
- omitting ``progress`` clears the position;
- a ``metadata`` role object that is itself ``null`` (what aiosendspin sends unencrypted
  clients when the role is deactivated) clears the current state and the pending update;
- ``timestamp`` (server µs) is required; a future one schedules the update (at most one
  pending update, see :mod:`resonate_embedded.roles.scheduled`).

Bad input never raises out of :class:`NowPlaying`: a wrong-typed or out-of-range field is
dropped with one problem line naming it (the rest of the object is kept); an object
without a usable ``timestamp`` or that is not an object is refused with one problem line.
Strings are cut to :data:`MAX_TEXT_CHARS`.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import attrs
import trio

from resonate_embedded.clock.local import local_now_us
from resonate_embedded.roles.scheduled import Scheduled, ServerToLocal

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 256
TEXT_FIELDS = ("title", "artist", "album_artist", "album", "artwork_url")
MAX_WAIT_S = 0.5  # a pending update's due time is re-mapped at least this often


@attrs.frozen
class Progress:
    """Playback position at the metadata's ``timestamp``."""

    track_progress_ms: int
    track_duration_ms: int  # 0: unknown / unlimited (live streams)
    playback_speed: int  # × 1000; 0 = paused

    def at(self, elapsed_us: int) -> int:
        """Position (ms) ``elapsed_us`` after the timestamp, clamped as the spec says."""
        position = self.track_progress_ms + (elapsed_us * self.playback_speed) // 1_000_000
        if self.track_duration_ms != 0:
            position = min(position, self.track_duration_ms)
        return max(position, 0)


@attrs.frozen
class Metadata:
    """One full ``metadata`` state (None: not given by the server)."""

    timestamp_us: int
    title: str | None = None
    artist: str | None = None
    album_artist: str | None = None
    album: str | None = None
    artwork_url: str | None = None
    year: int | None = None
    track: int | None = None
    progress: Progress | None = None

    def identity(self) -> tuple:
        """What makes a different track (progress and artwork do not)."""
        return (self.title, self.artist, self.album_artist, self.album, self.track)

    def describe(self) -> str:
        """One line for the journal: ``"Title" by Artist from Album (1999), track 3, 3:45``."""
        if all(v is None for v in self.identity()):
            return "now playing: (no track information)"
        parts = [f'"{self.title}"' if self.title is not None else "(untitled)"]
        if self.artist is not None:
            parts.append(f"by {self.artist}")
        if self.album is not None:
            album = self.album + (f" ({self.year})" if self.year is not None else "")
            parts.append(f"from {album}")
            if self.album_artist is not None and self.album_artist != self.artist:
                parts.append(f"[{self.album_artist}]")
        tail = []
        if self.track is not None:
            tail.append(f"track {self.track}")
        if self.progress is not None and self.progress.track_duration_ms > 0:
            tail.append(format_ms(self.progress.track_duration_ms))
        return "now playing: " + " ".join(parts) + (", " + ", ".join(tail) if tail else "")


def format_ms(ms: int) -> str:
    """``m:ss`` (or ``h:mm:ss``) for a position or duration."""
    seconds = max(ms, 0) // 1000
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_field(obj: dict, key: str, lo: int, hi: int, problems: list[str], where: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if not _is_int(value):
        problems.append(f"{where}.{key} is {type(value).__name__}, not an integer: ignored")
        return None
    if not lo <= value <= hi:
        problems.append(f"{where}.{key}={value} outside {lo}..{hi}: ignored")
        return None
    return value


def _parse_progress(value: Any, problems: list[str]) -> Progress | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append(f"metadata.progress is {type(value).__name__}, not an object: ignored")
        return None
    before = len(problems)
    big = 1 << 53
    position = _int_field(value, "track_progress", 0, big, problems, "metadata.progress")
    duration = _int_field(value, "track_duration", 0, big, problems, "metadata.progress")
    speed = _int_field(value, "playback_speed", 0, 1_000_000, problems, "metadata.progress")
    missing = [k for k, v in (("track_progress", position), ("track_duration", duration),
                              ("playback_speed", speed)) if v is None]
    if len(problems) > before:
        return None  # each bad member already named
    if missing:
        problems.append(f"metadata.progress lacks {', '.join(missing)}: progress ignored")
        return None
    return Progress(position, duration, speed)


def parse_metadata(obj: Any) -> tuple[Metadata | None, tuple[str, ...]]:
    """Parse a ``metadata`` object: ``(metadata or None, problems)``; never raises.

    None with no problems means a ``null`` role object (clear); None with problems means
    the object was refused.
    """
    if obj is None:
        return None, ()
    if not isinstance(obj, dict):
        return None, (f"metadata is {type(obj).__name__}, not an object: ignored",)
    problems: list[str] = []
    timestamp = obj.get("timestamp")
    if timestamp is None:
        return None, ("metadata without timestamp: ignored",)
    if not _is_int(timestamp) or not -(1 << 62) <= timestamp <= 1 << 62:
        return None, (f"metadata.timestamp={str(timestamp)[:40]} is not a usable integer: ignored",)
    texts: dict[str, str | None] = {}
    for key in TEXT_FIELDS:
        value = obj.get(key)
        if value is not None and not isinstance(value, str):
            problems.append(f"metadata.{key} is {type(value).__name__}, not a string: ignored")
            value = None
        texts[key] = value[:MAX_TEXT_CHARS] if value is not None else None
    year = _int_field(obj, "year", 0, 9999, problems, "metadata")
    track = _int_field(obj, "track", 1, 1 << 31, problems, "metadata")
    progress = _parse_progress(obj.get("progress"), problems)
    return Metadata(timestamp_us=timestamp, year=year, track=track, progress=progress,
                    **texts), tuple(problems)


class NowPlaying:
    """Keeps the metadata role's current state and pending update.

    Feed it with :meth:`receive` (the session, for every ``server/state`` carrying
    ``metadata``), :meth:`clear` it when the role is removed or the connection is lost, read
    it with :meth:`current` / :meth:`progress_ms` / :meth:`snapshot`, and run :meth:`run` as a
    task: it applies scheduled updates at their time and sends one line per track change
    on a channel (the player logs them).  All methods are synchronous except :meth:`run`.
    """

    def __init__(self, server_to_local_us: ServerToLocal,
                 now_us: Callable[[], int] = local_now_us) -> None:
        self._state: Scheduled[Metadata] = Scheduled(server_to_local_us)
        self._now_us = now_us
        self._announced: tuple | None = None  # identity last described (None: nothing)
        self._wake = trio.Event()

    # -- input
    def receive(self, obj: Any, now_us: int | None = None) -> tuple[str, ...]:
        """Take the ``metadata`` value of a ``server/state`` payload; returns the problems.

        Each problem is also logged (one warning line each).  Never raises.
        """
        now = self._now_us() if now_us is None else now_us
        metadata, problems = parse_metadata(obj)
        for problem in problems:
            log.warning("%s", problem)
        if metadata is None:
            if not problems:
                self.clear()
        else:
            self._state.offer(metadata, now)
        self._wake.set()
        return problems

    def clear(self) -> None:
        """Forget current and pending state (role deactivated, connection lost)."""
        self._state.clear()
        self._wake.set()

    # -- output
    def current(self, now_us: int | None = None) -> Metadata | None:
        """The current state at ``now_us`` (a due pending update is applied first)."""
        return self._state.current_at(self._now_us() if now_us is None else now_us)

    @property
    def pending(self) -> Metadata | None:
        """The scheduled update not yet in effect (a 'coming up' display may show it)."""
        return self._state.pending

    def progress_ms(self, now_us: int | None = None) -> int | None:
        """The track position at local time ``now_us`` (spec formula), None without progress."""
        now = self._now_us() if now_us is None else now_us
        metadata = self._state.current_at(now)
        if metadata is None or metadata.progress is None:
            return None
        anchor = self._state.local_time_of(metadata)
        if anchor is None:  # clock unsynchronised: the position as sent
            return metadata.progress.at(0)
        return metadata.progress.at(now - anchor)

    def take_track_change(self, now_us: int | None = None) -> str | None:
        """One line describing the current track if it changed since the last call, else None.

        Clearing (or a state without any track information) after a track reports
        ``now playing: nothing`` once.
        """
        metadata = self.current(now_us)
        identity = None if metadata is None or all(v is None for v in metadata.identity()) \
            else metadata.identity()
        if identity == self._announced:
            return None
        self._announced = identity
        return "now playing: nothing" if metadata is None or identity is None else metadata.describe()

    def snapshot(self, now_us: int | None = None) -> dict[str, Any] | None:
        """The status view (``resonate-embedded status``), None when nothing is known."""
        now = self._now_us() if now_us is None else now_us
        metadata = self.current(now)
        if metadata is None:
            return None
        progress = metadata.progress
        pending = self._state.pending
        return {
            "title": metadata.title, "artist": metadata.artist, "album": metadata.album,
            "album_artist": metadata.album_artist, "year": metadata.year, "track": metadata.track,
            "artwork_url": metadata.artwork_url,
            "position_ms": self.progress_ms(now),
            "duration_ms": progress.track_duration_ms if progress else None,
            "playback_speed": progress.playback_speed if progress else None,
            "next_title": pending.title if pending else None,
        }

    # -- task
    async def run(self, track_changes: trio.MemorySendChannel) -> None:
        """Apply scheduled updates on time and send a line per track change; runs until cancelled.

        Wakes when :meth:`receive`/:meth:`clear` is called or a pending update falls due
        (its due time re-mapped at least every :data:`MAX_WAIT_S`).
        """
        while True:
            self._wake = trio.Event()
            line = self.take_track_change()
            if line is not None:
                await track_changes.send(line)
            due = self._state.due_local_us()
            timeout = math.inf if due is None else \
                min(max(0.0, (due - self._now_us()) / 1e6), MAX_WAIT_S)
            with trio.move_on_after(timeout):
                await self._wake.wait()
