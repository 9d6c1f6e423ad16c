"""Amplifier power through one GPIO line: on before the first sample, off when idle.

Many speaker builds put a class-D amplifier (or a relay in front of a mains amplifier)
behind a GPIO line: its ``SHDN``/``EN``/``MUTE`` pin, or a relay driver.  This module
switches that line so the amplifier only draws power (and only hisses) while there is
something to play.

Guarantees (tests: ``tests/unit/test_amplifier.py``):

- **on before the first sample**: the writer calls :meth:`Amplifier.request` before it
  opens the audio device (media or an announcement) and waits until the returned instant
  (switch-on + ``amp_warmup_ms``) before it writes anything; the warm-up is also added to
  the ``required_lead_time_ms`` the player reports (:attr:`Amplifier.lead_time_ms`), so a
  server schedules the first chunk late enough that the wait costs no audio: no note is
  clipped (if a server ignores the lead, the writer's start alignment skips what is
  already late: the speaker stays in sync rather than playing into a cold amplifier);
- **never toggled while audio flows**: the line goes off only when the writer has
  released the output (device closed, back to idle) and stayed so for ``amp_idle_off_s``;
  a release followed by a new request (track change, reopen) within that time is no
  switching at all;
- **off on shutdown**: :meth:`Amplifier.run` (the supervised task ``amplifier``) switches
  it off when it ends, whatever the reason; :meth:`Amplifier.close` (the player, once
  every task has ended) releases the line.

The GPIO layer is the small :class:`PowerSwitch` protocol: :class:`GpiodSwitch` (the
official libgpiod Python bindings, v2 API from PyPI ``gpiod`` ≥ 2, or the v1 API of
Debian bookworm's ``python3-libgpiod`` 1.6); the test bench's ``resonate_bench.fake_chip``
stands in for it in tests.
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

log = logging.getLogger(__name__)

CONSUMER = "resonate-amplifier"


class AmplifierError(RuntimeError):
    """The GPIO line cannot be used (the message names chip and line)."""


class PowerSwitch(Protocol):
    """One output line: :meth:`on` and :meth:`off` drive it (active level honoured),
    :meth:`close` switches off and releases it."""

    def on(self) -> None: ...

    def off(self) -> None: ...

    def close(self) -> None: ...


def chip_path(chip: str) -> str:
    """``gpiochip0`` → ``/dev/gpiochip0``; an absolute path stays as it is."""
    return chip if chip.startswith("/") else f"/dev/{chip}"


class GpiodSwitch:
    """A GPIO line requested as an output through libgpiod (initially inactive: off)."""

    def __init__(self, chip: str, line: int, active_low: bool = False) -> None:
        self.chip, self.line, self.active_low = chip_path(chip), line, active_low
        try:
            import gpiod
        except ImportError:
            raise AmplifierError("amplifier control needs the libgpiod Python bindings "
                                 "(pip install 'resonate-embedded[gpio]', or Debian's "
                                 "python3-libgpiod)") from None
        self._gpiod = gpiod
        self._v2 = hasattr(gpiod, "request_lines")
        try:
            if self._v2:
                from gpiod.line import Direction, Value

                self._values = (Value.INACTIVE, Value.ACTIVE)
                self._request = gpiod.request_lines(
                    self.chip, consumer=CONSUMER,
                    config={line: gpiod.LineSettings(direction=Direction.OUTPUT,
                                                     output_value=Value.INACTIVE,
                                                     active_low=active_low)})
            else:  # pragma: no cover - libgpiod 1.x (Debian bookworm), not installed here
                self._values = (0, 1)
                self._chip = gpiod.Chip(self.chip)
                self._request = self._chip.get_line(line)
                flags = gpiod.LINE_REQ_FLAG_ACTIVE_LOW if active_low else 0
                self._request.request(consumer=CONSUMER, type=gpiod.LINE_REQ_DIR_OUT,
                                      flags=flags, default_vals=[0])
        except (OSError, ValueError) as exc:
            raise AmplifierError(f"amplifier GPIO {self.chip} line {line}: {exc}") from None

    def _set(self, active: bool) -> None:
        value = self._values[int(active)]
        if self._v2:
            self._request.set_value(self.line, value)
        else:  # pragma: no cover
            self._request.set_value(value)

    def on(self) -> None:
        self._set(True)

    def off(self) -> None:
        self._set(False)

    def close(self) -> None:
        if self._request is None:
            return
        try:
            self.off()
        finally:
            self._request.release()
            self._request = None
            if not self._v2:  # pragma: no cover
                self._chip.close()


class Amplifier:
    """The policy between the writer and a :class:`PowerSwitch` (one per player).

    The writer calls :meth:`request` (sync, from its own task) before it opens the output
    and waits until the instant it returns; :meth:`release` when the output is closed.
    :meth:`run` switches off after ``idle_off_s`` of release, and on exit.
    """

    def __init__(self, switch: PowerSwitch, warmup_ms: int, idle_off_s: int) -> None:
        self._switch = switch
        self.warmup_s = warmup_ms / 1000
        self.idle_off_s = idle_off_s
        self.is_on = False
        self.wanted = False
        self._ready_at = 0.0
        self._released_at = 0.0
        self._changed = trio.Event()
        self.switchings = 0  # for the status / tests

    @property
    def lead_time_ms(self) -> int:
        """What the player adds to its ``required_lead_time_ms``: the warm-up."""
        return round(self.warmup_s * 1000)

    def request(self) -> float:
        """Output is about to start: switch on (if off); the trio time from which audio
        may flow (now, when it is on and warm already)."""
        self.wanted = True
        if not self.is_on:
            self._switch.on()
            self.is_on = True
            self.switchings += 1
            self._ready_at = trio.current_time() + self.warmup_s
            log.info("amplifier on (warm-up %d ms before the first sample)",
                     round(self.warmup_s * 1000))
        self._changed.set()
        return self._ready_at

    def release(self) -> None:
        """Output closed (the writer is idle): the idle timer starts."""
        if self.wanted:
            self.wanted = False
            self._released_at = trio.current_time()
            self._changed.set()

    def _off(self, why: str) -> None:
        if self.is_on:
            self.is_on = False
            self.switchings += 1
            self._switch.off()
            log.info("amplifier off (%s)", why)

    async def run(self) -> None:
        """The supervised task: off after ``idle_off_s`` without output; off and the line
        released when the task ends (shutdown)."""
        try:
            while True:
                self._changed = trio.Event()
                if self.is_on and not self.wanted:
                    with trio.move_on_at(self._released_at + self.idle_off_s):
                        await self._changed.wait()
                        continue
                    if not self.wanted:
                        self._off(f"no audio for {self.idle_off_s} s")
                    continue
                await self._changed.wait()
        finally:
            self._off("player stopping")

    def close(self) -> None:
        """Off, and the line released (the player's last act)."""
        self._off("player stopped")
        self._switch.close()


def open_switch(config) -> PowerSwitch | None:
    """The configured switch, None when no amplifier line is configured; raises
    :class:`AmplifierError` when it is configured but cannot be opened."""
    if config.amp_gpio_line is None:
        return None
    return GpiodSwitch(config.amp_gpio_chip, config.amp_gpio_line, config.amp_active_low)


# Board profile ([amplifier] table) → player settings: what firstboot would copy into the
# player's TOML, like [alsa] device and [latency] output_latency_us.
PROFILE_KEYS = {"gpio_chip": "amp_gpio_chip", "gpio_line": "amp_gpio_line",
                "active_low": "amp_active_low", "warmup_ms": "amp_warmup_ms",
                "idle_off_s": "amp_idle_off_s"}


def settings_from_profile(profile: dict) -> dict:
    """The ``amp_*`` player settings of a board profile's ``[amplifier]`` table (empty
    without one); unknown keys are an error naming them."""
    table = profile.get("amplifier") or {}
    unknown = set(table) - set(PROFILE_KEYS)
    if unknown:
        raise ValueError(f"[amplifier]: unknown keys {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(PROFILE_KEYS)})")
    return {PROFILE_KEYS[k]: v for k, v in table.items()}
