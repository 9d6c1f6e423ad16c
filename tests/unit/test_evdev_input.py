"""Input events → actions: recorded sequences through the decoder the device reader uses,
and the trio reader itself on a fake device (a pipe's fd, python-evdev's read() shape)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from resonate_bench.harness import MISSING_DEPENDENCY
from resonate_embedded.controls import evdev_input
from resonate_embedded.controls.evdev_input import (
    EV_KEY, EV_REL, EV_SYN, SYN_DROPPED, EventDecoder, InputReader, decode_recorded,
)
from resonate_embedded.controls.keymap import (
    DEFAULT_KEY_MAP, KeyMapError, axis_code, key_code, parse_key_map,
)
from resonate_embedded.roles.controller import Action

KM = parse_key_map()  # defaults: KEY_PLAYPAUSE short = play_pause, long = switch
PLAYPAUSE, NEXT, VOLUP, VOLDOWN, MUTE = (key_code(n) for n in (
    "KEY_PLAYPAUSE", "KEY_NEXTSONG", "KEY_VOLUMEUP", "KEY_VOLUMEDOWN", "KEY_MUTE"))
REL_X, REL_DIAL = axis_code("REL_X"), axis_code("REL_DIAL")
MS = 1000


def key(code, value, t_ms):
    """A key event followed by its SYN_REPORT, as the kernel sends them."""
    return [(EV_KEY, code, value, t_ms * MS), (EV_SYN, 0, 0, t_ms * MS)]


def rel(code, value, t_ms):
    return [(EV_REL, code, value, t_ms * MS), (EV_SYN, 0, 0, t_ms * MS)]


def test_default_map_resolves():
    assert KM.press[NEXT] == "next" and KM.long_press[PLAYPAUSE] == "switch"
    assert KM.axes == {REL_X: "volume", REL_DIAL: "volume"}
    assert set(DEFAULT_KEY_MAP) >= {"KEY_PLAYPAUSE", "KEY_MUTE", "REL_DIAL"}


@pytest.mark.parametrize("key_map, long_map, text", [
    ({"KEY_PLAYPAUZE": "play_pause"}, None, "key_map.KEY_PLAYPAUZE: no such key"),
    ({"REL_SPIN": "volume"}, None, "key_map.REL_SPIN: no such input axis"),
    ({"KEY_MUTE": "explode"}, None, "key_map.KEY_MUTE='explode'"),
    ({"KEY_MUTE": "volume"}, None, "key_map.KEY_MUTE='volume'"),
    ({"REL_X": "next"}, None, "key_map.REL_X='next'"),
    ({"KEY_MUTE": 3}, None, "action must be a string"),
    (None, {"KEY_NOPE": "switch"}, "long_press_map.KEY_NOPE: no such key"),
    (None, {"KEY_MUTE": "volume"}, "long_press_map.KEY_MUTE='volume'"),
    ([], None, "key_map: must be a table"),
])
def test_bad_map_entries_name_the_key(key_map, long_map, text):
    with pytest.raises(KeyMapError) as info:
        parse_key_map(key_map, long_map)
    assert text in str(info.value)


def test_press_release_acts_on_press():
    events = key(NEXT, 1, 0) + key(NEXT, 0, 80) + key(MUTE, 1, 500) + key(MUTE, 0, 560)
    assert decode_recorded(KM, events) == [Action("next"), Action("mute")]


def test_autorepeat_repeats_volume_keys_only():
    events = key(VOLUP, 1, 0) + key(VOLUP, 2, 250) + key(VOLUP, 2, 283) + key(VOLUP, 2, 316) \
        + key(VOLUP, 0, 330) + key(NEXT, 1, 1000) + key(NEXT, 2, 1250) + key(NEXT, 2, 1283) \
        + key(NEXT, 0, 1300)
    assert decode_recorded(KM, events) == [Action("volume_up")] * 4 + [Action("next")]


def test_short_press_of_a_long_press_key_acts_on_release():
    events = key(PLAYPAUSE, 1, 0) + key(PLAYPAUSE, 0, 300)
    decoder = EventDecoder(KM)
    assert decoder.process(events[:2], now_us=100 * MS) == []  # nothing while held
    assert decoder.process(events[2:], now_us=300 * MS) == [Action("play_pause")]


def test_long_press_fires_once_while_held_and_release_does_nothing():
    events = key(PLAYPAUSE, 1, 0) + key(PLAYPAUSE, 2, 250) + key(PLAYPAUSE, 2, 283) \
        + key(PLAYPAUSE, 2, 900) + key(PLAYPAUSE, 0, 2000)
    assert decode_recorded(KM, events) == [Action("switch")]
    # the reader's timer: fires at 800 ms with no event at all
    decoder = EventDecoder(KM)
    decoder.process(key(PLAYPAUSE, 1, 0), now_us=0)
    assert decoder.next_deadline_us() == 800 * MS
    assert decoder.expire(799 * MS) == []
    assert decoder.expire(800 * MS) == [Action("switch")]
    assert decoder.next_deadline_us() is None
    assert decoder.process(key(PLAYPAUSE, 0, 900)) == []


def test_configurable_long_press_and_key_without_short_action():
    km = parse_key_map({"KEY_NEXTSONG": "next"}, {"KEY_NEXTSONG": "previous", "KEY_MUTE": "switch"},
                       long_press_ms=300)
    events = key(NEXT, 1, 0) + key(NEXT, 0, 200) + key(NEXT, 1, 1000) + key(NEXT, 0, 1400) \
        + key(MUTE, 1, 2000) + key(MUTE, 0, 2100) + key(MUTE, 1, 3000) + key(MUTE, 0, 3500)
    assert decode_recorded(km, events) == [Action("next"), Action("previous"), Action("switch")]


def test_encoder_bursts_are_coalesced():
    # one quick flick of 4 detents clockwise, a pause, then 2 back
    events = rel(REL_X, 1, 0) + rel(REL_X, 1, 8) + rel(REL_X, 1, 15) + rel(REL_X, 1, 22) \
        + rel(REL_X, -1, 500) + rel(REL_X, -1, 510)
    assert decode_recorded(KM, events) == [Action("volume", 4), Action("volume", -2)]


def test_long_turn_acts_at_least_every_max_latency():
    events = []
    for i in range(30):  # 30 detents 10 ms apart: 300 ms of turning
        events += rel(REL_DIAL, 1, i * 10)
    actions = decode_recorded(KM, events)
    assert sum(a.steps for a in actions) == 30
    assert len(actions) == 3  # 120 ms latency cap: 0-120, 130-250, 260-290


def test_back_and_forth_within_a_burst_cancels_out():
    events = rel(REL_X, 1, 0) + rel(REL_X, -1, 10)
    assert decode_recorded(KM, events) == []


def test_unmapped_axes_and_keys_are_ignored():
    events = rel(axis_code("REL_WHEEL"), 3, 0) + key(key_code("KEY_A"), 1, 10) + key(key_code("KEY_A"), 0, 20)
    assert decode_recorded(KM, events) == []


def test_syn_dropped_forgets_held_keys():
    events = key(PLAYPAUSE, 1, 0) + [(EV_SYN, SYN_DROPPED, 0, 100 * MS)] + key(PLAYPAUSE, 0, 2000)
    assert decode_recorded(KM, events) == []


# --------------------------------------------------------------------------- the trio reader


class FakeDevice:
    """python-evdev's InputDevice surface the reader uses, over a pipe's read end."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = "fake gpio-keys"
        self.fd, self._w = os.pipe()
        os.set_blocking(self.fd, False)
        self.queue: list = []
        self.closed = False
        self.gone = False

    def push(self, events) -> None:
        for ev_type, code, value, ts in events:
            self.queue.append(SimpleNamespace(type=ev_type, code=code, value=value,
                                              sec=ts // 1_000_000, usec=ts % 1_000_000))
        os.write(self._w, b"x")

    def read(self):
        if self.gone:
            raise OSError(19, "No such device")
        try:
            os.read(self.fd, 4096)
        except BlockingIOError:
            pass
        if not self.queue:
            raise BlockingIOError
        out, self.queue = self.queue, []
        return iter(out)

    def capabilities(self, absinfo=False):
        return {EV_KEY: [PLAYPAUSE, NEXT], EV_REL: [REL_X]}

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
            os.close(self._w)
            self.closed = True


def test_reader_reads_a_device_without_threads(monkeypatch):
    evdev = pytest.importorskip("evdev", reason=f"{MISSING_DEPENDENCY} python-evdev")
    devices: dict[str, FakeDevice] = {}

    def open_device(path):
        devices[path] = FakeDevice(path)
        return devices[path]

    monkeypatch.setattr(evdev, "InputDevice", open_device)
    monkeypatch.setattr(evdev_input, "_use_monotonic_clock", lambda fd: True)
    got: list[Action] = []

    async def main() -> None:
        send, receive = trio.open_memory_channel(10)
        reader = InputReader(KM, ("/dev/input/by-path/fake-event",), send)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            await trio.sleep(0.05)
            dev = devices["/dev/input/by-path/fake-event"]
            import time
            t0 = time.monotonic_ns() // 1000
            dev.push([(EV_KEY, NEXT, 1, t0), (EV_SYN, 0, 0, t0)])
            got.append(await receive.receive())
            t1 = time.monotonic_ns() // 1000
            dev.push([(EV_KEY, PLAYPAUSE, 1, t1), (EV_SYN, 0, 0, t1)])
            with trio.fail_after(3):  # the long press fires from the timer, no more events
                got.append(await receive.receive())
            t2 = time.monotonic_ns() // 1000
            dev.push([(EV_REL, REL_X, 1, t2), (EV_REL, REL_X, 1, t2 + 5000)])
            with trio.fail_after(3):
                got.append(await receive.receive())
            nursery.cancel_scope.cancel()
        assert dev.closed

    trio.run(main)
    assert got == [Action("next"), Action("switch"), Action("volume", 2)]


def test_reader_survives_a_lost_device_and_reopens(monkeypatch, caplog):
    evdev = pytest.importorskip("evdev", reason=f"{MISSING_DEPENDENCY} python-evdev")
    opened: list[FakeDevice] = []

    def open_device(path):
        if len(opened) == 1 and opened[0].gone and not getattr(open_device, "back", False):
            open_device.back = True
            raise FileNotFoundError(2, "No such file or directory")
        opened.append(FakeDevice(path))
        return opened[-1]

    monkeypatch.setattr(evdev, "InputDevice", open_device)
    monkeypatch.setattr(evdev_input, "_use_monotonic_clock", lambda fd: True)

    async def main() -> None:
        send, receive = trio.open_memory_channel(10)
        reader = InputReader(KM, ("/dev/input/event7",), send)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            await trio.sleep(0.1)
            opened[0].gone = True
            opened[0].push([])  # wakes the reader: read() fails like an unplugged device
            while len(opened) < 2:
                await trio.sleep(1)
            await trio.sleep(0.1)
            opened[1].push([(EV_KEY, NEXT, 1, 1), (EV_SYN, 0, 0, 1)])
            assert await receive.receive() == Action("next")
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.01))
    assert any("lost" in r.getMessage() for r in caplog.records)
    assert opened[0].closed


def test_auto_mode_picks_devices_with_mapped_keys(monkeypatch):
    evdev = pytest.importorskip("evdev", reason=f"{MISSING_DEPENDENCY} python-evdev")

    class Keyboard(FakeDevice):
        def capabilities(self, absinfo=False):
            return {EV_KEY: [key_code("KEY_A")]}

    made: dict[str, FakeDevice] = {}

    def open_device(path):
        made.setdefault(path, [])
        dev = (Keyboard if path.endswith("0") else FakeDevice)(path)
        made[path].append(dev)
        return dev

    monkeypatch.setattr(evdev, "InputDevice", open_device)
    monkeypatch.setattr(evdev, "list_devices", lambda: ["/dev/input/event0", "/dev/input/event1"])
    monkeypatch.setattr(evdev_input, "_use_monotonic_clock", lambda fd: True)

    async def main() -> None:
        send, _receive = trio.open_memory_channel(10)
        reader = InputReader(KM, "auto", send)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            await trio.sleep(0.1)
            assert reader.open_paths == {"/dev/input/event1"}
            nursery.cancel_scope.cancel()

    trio.run(main)
    for devs in made.values():
        for dev in devs:
            dev.close()


# --------------------------------------------------------------------------- config and profiles

from pathlib import Path  # noqa: E402

from resonate_embedded.config import Config, ConfigError, build_config, load_toml  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_config_file_tables_become_a_key_map(tmp_path):
    path = tmp_path / "speaker.toml"
    path.write_text('[player]\nvolume_step = 2\nlong_press_ms = 500\ninput_devices = ["/dev/input/event3"]\n'
                    '[player.key_map]\nKEY_NEXTSONG = "next"\nREL_DIAL = "volume"\n'
                    '[player.long_press_map]\nKEY_NEXTSONG = "switch"\n')
    config = build_config(load_toml(path), {})
    km = config.keymap()
    assert km.press == {NEXT: "next"} and km.axes == {REL_DIAL: "volume"}
    assert km.long_press == {NEXT: "switch"} and km.long_press_ms == 500
    assert config.input_devices == ("/dev/input/event3",) and config.volume_step == 2


def test_config_error_names_the_unknown_key(tmp_path):
    path = tmp_path / "speaker.toml"
    path.write_text('[player.key_map]\nKEY_PLAY_PAUSE = "play_pause"\n')
    with pytest.raises(ConfigError, match="key_map.KEY_PLAY_PAUSE: no such key"):
        build_config(load_toml(path), {})
    assert Config(input_devices="none").input_devices == ()


@pytest.mark.parametrize("profile", sorted((REPO / "board/controls").glob("*.toml")), ids=lambda p: p.stem)
def test_board_control_profiles_are_valid(profile):
    import tomllib

    data = tomllib.loads(profile.read_text())
    assert data["controls"]["name"] == profile.stem
    for source in data["overlay"]["sources"]:
        assert (REPO / source).is_file(), source
    config = Config(**data["player"])
    keymap = config.keymap()
    assert config.led_config().configured
    assert "say_where" in keymap.long_press.values()  # every wiring can make the speaker say where it is
