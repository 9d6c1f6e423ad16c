"""Linux input devices (buttons, rotary encoder, IR remote) → control actions, in trio.

Buttons, a rotary encoder and an IR receiver wired to GPIO become input devices through
the kernel's ``gpio-keys``, ``rotary-encoder`` and ``gpio-ir`` overlays (``board/controls``),
so this module reads one kind of source: evdev event devices.

Two layers:

- :class:`EventDecoder` is pure: plain ``(type, code, value, timestamp_us)`` tuples in,
  :class:`~resonate_embedded.roles.controller.Action`\\ s out (:meth:`EventDecoder.process`).
  The device reader and the tests (recorded sequences) go through exactly this path.
- :class:`InputReader` is the trio task: for each device it waits with
  ``trio.lowlevel.wait_readable(fd)`` (no threads), reads every queued event with
  python-evdev, feeds the decoder and sends the actions on a memory channel.  Devices that
  fail or disappear are reopened every :data:`REOPEN_S` (one log line per episode); with
  ``"auto"`` the event devices are rescanned so a hot-plugged remote is picked up.

Decoding rules (times are the kernel's event timestamps):

- a key mapped only in ``key_map`` acts on **press**; autorepeat (value 2) repeats it only
  for :data:`~resonate_embedded.controls.keymap.REPEATABLE_ACTIONS` (volume keys);
- a key with a ``long_press_map`` entry acts on **release** if released before
  ``long_press_ms`` (its ``key_map`` action, if any) and fires the long action once when
  held that long (while still held); its autorepeat is ignored;
- relative-axis events of a mapped axis are summed into one ``volume`` action per burst:
  a burst ends :data:`ENCODER_SETTLE_MS` after its last event, or at the latest
  :data:`ENCODER_MAX_LATENCY_MS` after its first (long turns still act as they go);
- ``SYN_DROPPED`` (the kernel queue overflowed) forgets held keys and the burst.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import time
from typing import Iterable, Sequence

import attrs
import trio

from resonate_embedded.controls.keymap import REPEATABLE_ACTIONS, KeyMap
from resonate_embedded.roles.controller import Action

log = logging.getLogger(__name__)

EV_SYN, EV_KEY, EV_REL = 0, 1, 2
SYN_DROPPED = 3
KEY_RELEASE, KEY_PRESS, KEY_REPEAT = 0, 1, 2
ENCODER_SETTLE_MS = 40
ENCODER_MAX_LATENCY_MS = 120
REOPEN_S = 2.0
RESCAN_S = 5.0
# ioctl EVIOCSCLOCKID = _IOW('E', 0xa0, int): have the device stamp events in CLOCK_MONOTONIC.
EVIOCSCLOCKID = 0x400445A0

RawEvent = tuple[int, int, int, int]  # (type, code, value, timestamp_us)


@attrs.define
class _Held:
    pressed_us: int
    long_fired: bool = False


class EventDecoder:
    """Turns one device's events into actions (see the module docstring for the rules)."""

    def __init__(self, keymap: KeyMap, settle_ms: int = ENCODER_SETTLE_MS,
                 max_latency_ms: int = ENCODER_MAX_LATENCY_MS) -> None:
        self.keymap = keymap
        self._long_us = keymap.long_press_ms * 1000
        self._settle_us = settle_ms * 1000
        self._max_latency_us = max_latency_ms * 1000
        self._held: dict[int, _Held] = {}
        self._burst_steps = 0
        self._burst_first_us: int | None = None
        self._burst_last_us = 0

    def reset(self) -> None:
        """Forget held keys and any encoder burst (device lost, events dropped)."""
        self._held.clear()
        self._burst_steps = 0
        self._burst_first_us = None

    def next_deadline_us(self) -> int | None:
        """The next time :meth:`expire` has something to do (event-clock µs), or None."""
        deadlines = [h.pressed_us + self._long_us for h in self._held.values() if not h.long_fired]
        if self._burst_first_us is not None:
            deadlines.append(min(self._burst_last_us + self._settle_us,
                                 self._burst_first_us + self._max_latency_us))
        return min(deadlines) if deadlines else None

    def expire(self, now_us: int) -> list[Action]:
        """Actions that time alone produces by ``now_us``: long presses, finished bursts."""
        out: list[Action] = []
        for code, held in self._held.items():
            if not held.long_fired and now_us - held.pressed_us >= self._long_us:
                held.long_fired = True
                out.append(Action(self.keymap.long_press[code]))
        if self._burst_first_us is not None and (
                now_us - self._burst_last_us >= self._settle_us
                or now_us - self._burst_first_us >= self._max_latency_us):
            if self._burst_steps:
                out.append(Action("volume", steps=self._burst_steps))
            self._burst_steps = 0
            self._burst_first_us = None
        return out

    def feed(self, ev_type: int, code: int, value: int, timestamp_us: int) -> list[Action]:
        """One event (call :meth:`expire` with its timestamp first; :meth:`process` does)."""
        if ev_type == EV_KEY:
            return self._key(code, value, timestamp_us)
        if ev_type == EV_REL and code in self.keymap.axes:
            if self._burst_first_us is None:
                self._burst_first_us = timestamp_us
            self._burst_last_us = timestamp_us
            self._burst_steps += value
        elif ev_type == EV_SYN and code == SYN_DROPPED:
            log.info("input events dropped by the kernel: held keys forgotten")
            self.reset()
        return []

    def _key(self, code: int, value: int, ts: int) -> list[Action]:
        km = self.keymap
        if code in km.long_press:
            if value == KEY_PRESS:
                self._held[code] = _Held(ts)
            elif value == KEY_RELEASE:
                held = self._held.pop(code, None)
                if held is not None and not held.long_fired and code in km.press:
                    return [Action(km.press[code])]
            return []
        action = km.press.get(code)
        if action is None:
            return []
        if value == KEY_PRESS or (value == KEY_REPEAT and action in REPEATABLE_ACTIONS):
            return [Action(action)]
        return []

    def process(self, events: Iterable[RawEvent], now_us: int | None = None) -> list[Action]:
        """Decode a batch: expire up to each event's time, feed it; then expire up to ``now_us``."""
        out: list[Action] = []
        for ev_type, code, value, ts in events:
            out += self.expire(ts)
            out += self.feed(ev_type, code, value, ts)
        if now_us is not None:
            out += self.expire(now_us)
        return out


def decode_recorded(keymap: KeyMap, events: Sequence[RawEvent], end_us: int | None = None) -> list[Action]:
    """Decode a recorded sequence as the reader would (with every timer run in between).

    ``end_us`` (default: the last timestamp + 1 s) is the time the recording ends, so held
    keys and bursts still open at the end are resolved.
    """
    decoder = EventDecoder(keymap)
    out: list[Action] = []
    for event in events:
        while (deadline := decoder.next_deadline_us()) is not None and deadline <= event[3]:
            out += decoder.expire(deadline)
        out += decoder.process([event])
    end = end_us if end_us is not None else (events[-1][3] + 1_000_000 if events else 0)
    while (deadline := decoder.next_deadline_us()) is not None and deadline <= end:
        out += decoder.expire(deadline)
    return out


# --------------------------------------------------------------------------- devices


def _matches(device, keymap: KeyMap) -> bool:
    """Whether ``device`` (python-evdev) has any key or axis the key map uses."""
    caps = device.capabilities(absinfo=False)
    return bool(keymap.key_codes() & set(caps.get(EV_KEY, ()))
                or keymap.axis_codes() & set(caps.get(EV_REL, ())))


def _use_monotonic_clock(fd: int) -> bool:
    """Ask the kernel for CLOCK_MONOTONIC event stamps (default: CLOCK_REALTIME)."""
    try:
        fcntl.ioctl(fd, EVIOCSCLOCKID, struct.pack("i", time.CLOCK_MONOTONIC))
        return True
    except OSError:
        return False


class InputReader:
    """Reads input devices and sends :class:`Action`\\ s on ``actions``; run :meth:`run` as a task.

    ``devices`` is a tuple of event device paths (``/dev/input/by-path/...`` names are
    stable), or ``"auto"``: every ``/dev/input/event*`` device having a key or axis the map
    uses (rescanned every :data:`RESCAN_S`).  Nothing to read is not an error: with no
    device the task idles.
    """

    def __init__(self, keymap: KeyMap, devices: tuple[str, ...] | str,
                 actions: trio.MemorySendChannel) -> None:
        self.keymap = keymap
        self.devices = devices
        self.actions = actions
        self.open_paths: set[str] = set()

    async def run(self) -> None:
        try:
            import evdev  # noqa: F401
        except ImportError:
            log.warning("input devices not read: the 'evdev' package is not installed")
            await trio.sleep_forever()
        async with trio.open_nursery() as nursery:
            if self.devices == "auto":
                await self._auto(nursery)
            else:
                for path in self.devices:
                    nursery.start_soon(self._device_loop, path, True)
                await trio.sleep_forever()

    async def _auto(self, nursery: trio.Nursery) -> None:
        import evdev

        told_none = False
        while True:
            for path in evdev.list_devices():
                if path in self.open_paths:
                    continue
                try:
                    device = evdev.InputDevice(path)
                except OSError:
                    continue  # not ours to read (permissions) or gone
                try:
                    wanted = _matches(device, self.keymap)
                finally:
                    device.close()
                if wanted:
                    self.open_paths.add(path)
                    nursery.start_soon(self._device_loop, path, False)
            if not self.open_paths and not told_none:
                log.info("no input device with mapped keys or encoder axes (yet)")
                told_none = True
            await trio.sleep(RESCAN_S)

    async def _device_loop(self, path: str, keep_trying: bool) -> None:
        """Read ``path`` until it fails; retry (explicit paths) or hand it back to the scan."""
        import evdev

        failing = False
        try:
            while True:
                try:
                    device = evdev.InputDevice(path)
                except OSError as exc:
                    if not keep_trying:
                        return
                    if not failing:
                        log.warning("input device %s: %s (retrying every %.0f s)", path,
                                    exc.strerror or exc, REOPEN_S)
                        failing = True
                    await trio.sleep(REOPEN_S)
                    continue
                failing = False
                log.info("reading input device %s (%s)", path, device.name)
                try:
                    await self._read(device)
                except OSError as exc:
                    log.warning("input device %s lost: %s", path,
                                os.strerror(exc.errno) if exc.errno else exc)
                if not keep_trying:
                    return
                await trio.sleep(REOPEN_S)
        finally:
            self.open_paths.discard(path)

    async def _read(self, device) -> None:
        fd = device.fd
        monotonic = _use_monotonic_clock(fd)
        clock = time.monotonic_ns if monotonic else time.time_ns
        decoder = EventDecoder(self.keymap)
        try:
            while True:
                deadline = decoder.next_deadline_us()
                timeout = float("inf") if deadline is None else \
                    max(0.0, (deadline - clock() // 1000) / 1e6)
                with trio.move_on_after(timeout):
                    await trio.lowlevel.wait_readable(fd)
                events: list[RawEvent] = []
                try:
                    for ev in device.read():
                        events.append((ev.type, ev.code, ev.value, ev.sec * 1_000_000 + ev.usec))
                except BlockingIOError:
                    pass
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EINTR):
                        raise
                for action in decoder.process(events, clock() // 1000):
                    log.debug("input %s → %s", device.path, action)
                    await self.actions.send(action)
        finally:
            trio.lowlevel.notify_closing(fd)
            device.close()
