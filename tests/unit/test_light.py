"""Status light on a fake /sys/class/leds tree."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing

from resonate_embedded.light import PATTERNS, LedConfig, LightState, StatusLight, frame


def make_led(root: Path, name: str, max_brightness: int = 255, multi: str | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "max_brightness").write_text(f"{max_brightness}\n")
    (d / "brightness").write_text("0\n")
    (d / "trigger").write_text("[heartbeat] none timer\n")
    if multi:
        (d / "multi_index").write_text(multi + "\n")
        (d / "multi_intensity").write_text("0 0 0\n")
    return d


def read(d: Path, name: str = "brightness") -> str:
    return (d / name).read_text().strip()


def test_every_state_has_a_pattern_and_frames_cycle():
    assert set(PATTERNS) == set(LightState)
    assert frame(LightState.BOOTING, 50)[0] == 1.0
    assert frame(LightState.BOOTING, 150)[0] == 0.0
    assert frame(LightState.BOOTING, 250)[0] == 1.0  # repeats
    level, _, left = frame(LightState.PAIRING, 320)
    assert level == 1.0 and left == pytest.approx(130)
    assert frame(LightState.PLAYING, 12345)[:2] == (1.0, (0, 255, 0))
    assert frame(LightState.PLAYING, 0, (1, 2, 3))[1] == (1, 2, 3)
    assert frame(LightState.ERROR, 0, (1, 2, 3))[1] == (255, 0, 0)  # track colour only in playing


def test_single_led_levels_and_trigger(tmp_path):
    led = make_led(tmp_path, "resonate:status", max_brightness=1)
    light = StatusLight(LedConfig(status="resonate:status", root=tmp_path))
    light.show(1.0, (0, 0, 0))
    assert read(led, "trigger") == "none" and read(led) == "1"
    light.show(0.1, (0, 0, 0))
    assert read(led) == "1"  # any non-zero level lights a GPIO LED
    light.show(0.0, (0, 0, 0))
    assert read(led) == "0"


def test_unchanged_values_are_not_rewritten(tmp_path):
    led = make_led(tmp_path, "s")
    light = StatusLight(LedConfig(status="s", root=tmp_path))
    light.show(1.0, (0, 0, 0))
    (led / "brightness").write_text("sentinel")
    light.show(1.0, (0, 0, 0))
    assert read(led) == "sentinel"


def test_three_led_rgb(tmp_path):
    r, g, b = (make_led(tmp_path, n, 255) for n in ("red", "green", "blue"))
    light = StatusLight(LedConfig(rgb=("red", "green", "blue"), root=tmp_path))
    light.show(1.0, (255, 128, 0))
    assert (read(r), read(g), read(b)) == ("255", "128", "0")
    light.show(0.5, (255, 128, 0))
    assert (read(r), read(g), read(b)) == ("128", "64", "0")


def test_multicolor_led_uses_multi_index_order(tmp_path):
    d = make_led(tmp_path, "rgb:status", 100, multi="green red blue")
    light = StatusLight(LedConfig(multicolor="rgb:status", root=tmp_path))
    light.show(1.0, (255, 0, 51))
    assert read(d, "multi_intensity") == "0 100 20"
    assert read(d) == "100"


def test_missing_led_is_one_log_line_and_no_exception(tmp_path, caplog):
    light = StatusLight(LedConfig(status="nope", root=tmp_path))
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            light.show(1.0, (1, 1, 1))
    assert len([r for r in caplog.records if "nope" in r.getMessage()]) == 1
    make_led(tmp_path, "nope")  # the overlay appears late: picked up
    light.show(1.0, (1, 1, 1))
    assert read(tmp_path / "nope") == "255"


def test_no_led_configured_is_a_noop(tmp_path):
    """With no LED configured, run() waits until cancelled without asking for the state
    or touching any LED, even one that exists under the root."""
    present = make_led(tmp_path, "resonate:status")
    asked: list[LightState] = []

    def get_state() -> LightState:
        asked.append(LightState.ERROR)
        return LightState.ERROR

    async def main() -> bool:
        with trio.move_on_after(1) as scope:
            await StatusLight(LedConfig(root=tmp_path)).run(get_state)
        return scope.cancelled_caught

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))  # still waiting
    assert asked == []
    assert (read(present), read(present, "trigger")) == ("0", "[heartbeat] none timer")


def test_run_follows_the_state_and_the_track_colour(tmp_path):
    status = make_led(tmp_path, "status", 1)
    d = make_led(tmp_path, "rgb", 255, multi="red green blue")
    light = StatusLight(LedConfig(status="status", multicolor="rgb", root=tmp_path))
    state = [LightState.WAITING]
    colour: list = [None]
    seen: list[tuple[float, str, str, str]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(light.run, lambda: state[0], lambda: colour[0])
            start = trio.current_time()
            for step in range(40):  # 4 s sampled every 100 ms
                await trio.sleep(0.1)
                t = trio.current_time() - start
                if step == 20:
                    state[0] = LightState.PLAYING
                if step == 30:
                    colour[0] = (10, 20, 30)
                seen.append((t, read(status), read(d), read(d, "multi_intensity")))
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    waiting = [s for s in seen if s[0] < 2.0]
    assert {s[1] for s in waiting} == {"0", "1"}  # blinking
    assert all(s[3] == "255 140 0" for s in waiting if s[1] == "1")  # amber
    playing = [s for s in seen if 2.2 < s[0] < 3.0]
    assert all(s[1] == "1" and s[3] == "0 255 0" for s in playing)  # steady, default green
    coloured = [s for s in seen if s[0] > 3.3]
    assert all(s[3] == "10 20 30" for s in coloured)
    # cancelled: LEDs off
    assert read(status) == "0" and read(d) == "0"
