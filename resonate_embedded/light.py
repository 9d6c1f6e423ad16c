"""The status light: the kernel LED class (``/sys/class/leds``) showing the player's state.

LEDs come from device-tree overlays (``gpio-leds``, ``pwm-leds``, a multicolor
``leds-group-multicolor``/PWM RGB; see ``board/controls``).  Configured by name:

- ``led_status``: one LED (any colour) that blinks the pattern;
- ``led_rgb``: three LED names (red, green, blue), or ``led_multicolor``: one multicolor LED
  (``multi_index``/``multi_intensity``): the pattern in its state's colour, and in
  ``playing`` the colour the server sends with the color role (when there is one).

Patterns (one cycle; level 1 = ``max_brightness``; colours for RGB LEDs):

========== ======================================== ==========================================
state      pattern                                  RGB colour
========== ======================================== ==========================================
booting    fast blink, 100 ms on / 100 ms off       white
waiting    slow blink, 1 s on / 1 s off             amber: no server connected
pairing    double blink (150 on, 150 off, 150 on,   blue: a pairing code is being spoken
           850 off)
idle       short blip, 100 ms on every 3 s          white: connected, nothing playing
playing    steady on                                the track's colour (color role), else green
muted      steady on, 100 ms dark every 2 s         orange
error      blink, 250 ms on / 250 ms off            red
========== ======================================== ==========================================

Guarantees: writing is a plain file write per change (no threads, nothing written when the
value is unchanged); an LED that is missing or refuses writes costs one log line (then it is
left alone until it works again) and never stops the player; with no LED configured
:meth:`StatusLight.run` does nothing (it sleeps until cancelled).  On cancellation the LEDs
are switched off.
"""

from __future__ import annotations

import enum
import logging
import math
from pathlib import Path
from typing import Callable

import attrs
import trio

log = logging.getLogger(__name__)

RGB = tuple[int, int, int]
LEDS_ROOT = Path("/sys/class/leds")
STATE_POLL_S = 0.1  # how soon a state or colour change shows


class LightState(enum.Enum):
    BOOTING = "booting"
    WAITING = "waiting"  # no server connected
    PAIRING = "pairing"  # a pairing code is being spoken
    IDLE = "idle"  # connected, not playing
    PLAYING = "playing"
    MUTED = "muted"
    ERROR = "error"


@attrs.frozen
class Pattern:
    segments: tuple[tuple[int, float], ...]  # (duration ms, level 0..1), repeated
    color: RGB

    @property
    def period_ms(self) -> int:
        return sum(d for d, _ in self.segments)


PATTERNS: dict[LightState, Pattern] = {
    LightState.BOOTING: Pattern(((100, 1.0), (100, 0.0)), (255, 255, 255)),
    LightState.WAITING: Pattern(((1000, 1.0), (1000, 0.0)), (255, 140, 0)),
    LightState.PAIRING: Pattern(((150, 1.0), (150, 0.0), (150, 1.0), (850, 0.0)), (0, 60, 255)),
    LightState.IDLE: Pattern(((100, 1.0), (2900, 0.0)), (255, 255, 255)),
    LightState.PLAYING: Pattern(((1000, 1.0),), (0, 255, 0)),
    LightState.MUTED: Pattern(((1900, 1.0), (100, 0.0)), (255, 80, 0)),
    LightState.ERROR: Pattern(((250, 1.0), (250, 0.0)), (255, 0, 0)),
}


def frame(state: LightState, elapsed_ms: float, track_color: RGB | None = None
          ) -> tuple[float, RGB, float]:
    """``(level, colour, ms until the next change)`` ``elapsed_ms`` into ``state``'s pattern."""
    pattern = PATTERNS[state]
    t = elapsed_ms % pattern.period_ms
    for duration, level in pattern.segments:
        if t < duration:
            color = track_color if state is LightState.PLAYING and track_color else pattern.color
            return level, color, duration - t
        t -= duration
    return pattern.segments[-1][1], pattern.color, 1.0  # unreachable (float edge)


@attrs.frozen
class LedConfig:
    """Which LEDs to drive (names under ``root``); all None: no light."""

    status: str | None = None
    rgb: tuple[str, str, str] | None = None
    multicolor: str | None = None
    root: Path = LEDS_ROOT

    @property
    def configured(self) -> bool:
        return bool(self.status or self.rgb or self.multicolor)


class _SysfsLed:
    """One LED class directory; writes only changed values, logs one line per failure episode."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.max_brightness = 1
        self.ok = False
        self._written: dict[str, str] = {}
        self._failing = False

    def open(self) -> bool:
        try:
            self.max_brightness = max(1, int((self.path / "max_brightness").read_text().strip()))
        except (OSError, ValueError) as exc:
            self._fail(f"cannot read max_brightness: {exc}")
            return False
        trigger = self.path / "trigger"
        if trigger.exists():  # e.g. "[heartbeat]" from the overlay: we drive it ourselves
            self._write("trigger", "none")
        self.ok = True
        return True

    def _fail(self, reason: str) -> None:
        if not self._failing:
            log.warning("LED %s: %s", self.path.name, reason)
            self._failing = True

    def _write(self, name: str, value: str) -> None:
        if self._written.get(name) == value:
            return
        try:
            with open(self.path / name, "w") as f:
                f.write(value)
        except OSError as exc:
            self._fail(f"cannot write {name}: {exc.strerror or exc}")
            self._written.pop(name, None)
            return
        if self._failing:
            log.info("LED %s works again", self.path.name)
            self._failing = False
        self._written[name] = value

    def set_level(self, level: float) -> None:
        """Brightness for ``level`` in 0..1 (any non-zero level lights at least 1)."""
        value = 0 if level <= 0 else max(1, math.ceil(min(level, 1.0) * self.max_brightness))
        self._write("brightness", str(value))


class _MulticolorLed(_SysfsLed):
    def open(self) -> bool:
        if not super().open():
            return False
        try:
            self.channels = (self.path / "multi_index").read_text().split()
        except OSError as exc:
            self._fail(f"not a multicolor LED (no multi_index): {exc.strerror or exc}")
            self.ok = False
            return False
        return True

    def set_color(self, level: float, rgb: RGB) -> None:
        by_name = {"red": rgb[0], "green": rgb[1], "blue": rgb[2], "white": min(rgb)}
        intensities = [by_name.get(name, 0) * self.max_brightness // 255 for name in self.channels]
        self._write("multi_intensity", " ".join(str(v) for v in intensities))
        self.set_level(level)


class StatusLight:
    """Drives the configured LEDs; :meth:`run` is the task, :meth:`show` one frame."""

    def __init__(self, config: LedConfig) -> None:
        self.config = config
        self.status = _SysfsLed(config.root / config.status) if config.status else None
        self.rgb = tuple(_SysfsLed(config.root / n) for n in config.rgb) if config.rgb else None
        self.multicolor = _MulticolorLed(config.root / config.multicolor) \
            if config.multicolor else None
        self._opened = False

    def _leds(self) -> list[_SysfsLed]:
        return [led for led in (self.status, self.multicolor, *(self.rgb or ())) if led is not None]

    def open(self) -> None:
        """Read each LED's ``max_brightness`` and set its ``trigger`` to ``none``."""
        for led in self._leds():
            led.open()
        self._opened = True

    def show(self, level: float, rgb: RGB) -> None:
        """Light every configured LED at ``level`` (0..1); RGB ones in ``rgb``."""
        if not self._opened:
            self.open()
        for led in self._leds():
            if not led.ok:
                led.open()  # retried: the LED may appear later (overlay loaded late)
        if self.status and self.status.ok:
            self.status.set_level(level)
        if self.multicolor and self.multicolor.ok:
            self.multicolor.set_color(level, rgb)
        if self.rgb:
            for led, component in zip(self.rgb, rgb):
                if led.ok:
                    led.set_level(level * component / 255)

    def off(self) -> None:
        for led in self._leds():
            if led.ok:
                led.set_level(0.0)

    async def run(self, get_state: Callable[[], LightState],
                  get_color: Callable[[], RGB | None] = lambda: None) -> None:
        """Show ``get_state()``'s pattern until cancelled (LEDs off at the end).

        ``get_state`` and ``get_color`` are read at every pattern step and at least every
        :data:`STATE_POLL_S`; a new state restarts its pattern from the beginning.
        ``get_color`` (e.g. ``ColorTimeline.rgb_at``) is only asked in ``playing``.
        """
        if not self.config.configured:
            await trio.sleep_forever()
        self.open()
        state: LightState | None = None
        since = 0.0
        try:
            while True:
                new_state = get_state()
                now = trio.current_time()
                if new_state is not state:
                    state, since = new_state, now
                color = get_color() if state is LightState.PLAYING and self._has_rgb() else None
                level, rgb, left_ms = frame(state, (now - since) * 1000, color)
                self.show(level, rgb)
                await trio.sleep(min(left_ms / 1000, STATE_POLL_S))
        finally:
            with trio.CancelScope(shield=True):
                self.off()

    def _has_rgb(self) -> bool:
        return bool(self.rgb or self.multicolor)
