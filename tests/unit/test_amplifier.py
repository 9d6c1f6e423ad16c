"""Amplifier power (resonate_embedded/amplifier.py) with a fake GPIO chip and trio's MockClock.

The real writer task decides when the output opens; only the device is faked (its open
is recorded) and the playing of a segment is scripted (it "plays" for the segment's
length while the test samples the amplifier line), so the ordering guarantees are those
of the writer's own code: amplifier on, warm-up waited out, then the device opens.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import trio
import trio.testing

from resonate_bench.fake_chip import FakeChip
from resonate_embedded import amplifier as amp_mod
from resonate_embedded.amplifier import (
    Amplifier, AmplifierError, GpiodSwitch, settings_from_profile,
)
from resonate_embedded.audio import writer as writer_mod
from resonate_embedded.audio.alsa_output import OutputConfig
from resonate_embedded.audio.commands import EndStream, PcmChunk
from resonate_embedded.audio.formats import PcmShape
from resonate_embedded.audio.writer import Writer
from resonate_bench.harness import MISSING_DEPENDENCY
from resonate_embedded.config import Config, ConfigError, build_config
from resonate_embedded.protocol.session import REQUIRED_LEAD_TIME_MS

SHAPE = PcmShape(48000, 2, 16)
WARMUP_MS = 400
IDLE_S = 10


class _NoClock:
    mapping = None


class FakeOutput:
    """Stands in for AlsaOutput: records when it was opened and with the amplifier how."""

    opened: list[tuple[float, bool]] = []

    def __init__(self, config, shape) -> None:
        FakeOutput.opened.append((trio.current_time(), FakeOutput.chip.level))

    def close(self) -> None:
        pass


class ScriptedWriter(Writer):
    """The real writer, except that playing a segment is "the audio flows for as long as
    the queue holds it" while the amplifier line is sampled every 10 ms."""

    samples: list[tuple[float, bool]]

    async def _play_segment(self, out, seg) -> None:
        frames = sum(c.pcm.shape[0] for c in seg.chunks) if seg.chunks else 0
        end = trio.current_time() + frames / seg.shape.sample_rate
        while trio.current_time() < end:
            self.samples.append((trio.current_time(), FakeOutput.chip.level))
            await trio.sleep(0.01)
            self._drain_commands()
            if self._interrupted:
                break
        self._queue.clear()


@pytest.fixture
def rig(monkeypatch):
    monkeypatch.setattr(writer_mod, "AlsaOutput", FakeOutput)
    FakeOutput.opened = []
    chip = FakeChip()
    FakeOutput.chip = chip
    return chip


def chunk(ts_us: int, seconds: float) -> PcmChunk:
    pcm = np.full((int(seconds * 48000), 2), 1000, dtype=np.int16)
    return PcmChunk(ts_us, pcm, SHAPE, pcm.nbytes)


async def start_writer(nursery, chip: FakeChip):
    send, recv = trio.open_memory_channel(4096)
    ev_send, _ev_recv = trio.open_memory_channel(64)
    w = ScriptedWriter(OutputConfig("fake", 20000, 8), 0, _NoClock(), recv, ev_send)
    w.output_proven.set()  # the start-up silence (amplifier off) is not what is tested here
    w.samples = []
    amp = Amplifier(chip, WARMUP_MS, IDLE_S)
    w.power = amp
    nursery.start_soon(amp.run)
    nursery.start_soon(w.run)
    await trio.sleep(0.1)
    return w, amp, send


def run(main):
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def events(chip: FakeChip, kind: str) -> list[float]:
    return [t for t, what in chip.transitions if what == kind]


def test_on_before_the_first_sample_including_the_warm_up(rig):
    async def main():
        async with trio.open_nursery() as nursery:
            w, amp, send = await start_writer(nursery, rig)
            assert rig.transitions == [] and not rig.level  # nothing to play: off
            t0 = trio.current_time()
            await send.send(chunk(0, 2.0))
            await trio.sleep(5)
            [on] = events(rig, "on")
            assert on - t0 < 0.01  # switched on as soon as audio arrived
            [(opened, level)] = FakeOutput.opened
            assert level, "the device opened with the amplifier off"
            assert opened - on >= WARMUP_MS / 1000 - 1e-9, "the device opened during the warm-up"
            assert w.samples and all(level for _, level in w.samples)
            assert w.samples[0][0] >= on + WARMUP_MS / 1000 - 1e-9
            nursery.cancel_scope.cancel()

    run(main)


def test_off_after_the_idle_time_and_never_toggled_while_audio_flows(rig):
    async def main():
        async with trio.open_nursery() as nursery:
            w, amp, send = await start_writer(nursery, rig)
            await send.send(chunk(0, 2 * IDLE_S))  # longer than the idle time: still on
            await trio.sleep(WARMUP_MS / 1000 + 2 * IDLE_S + 1)
            assert events(rig, "off") == []
            assert all(level for _, level in w.samples)
            # a new stream 5 s after the first ended: no switching at all
            await trio.sleep(4)
            await send.send(chunk(0, 3.0))
            await trio.sleep(10)
            assert len(events(rig, "on")) == 1 and events(rig, "off") == []
            assert len(FakeOutput.opened) == 2 and all(level for _, level in FakeOutput.opened)
            stream_end = w.samples[-1][0]
            await trio.sleep(IDLE_S)
            [off] = events(rig, "off")
            assert IDLE_S - 0.1 <= off - stream_end <= IDLE_S + 0.1
            assert all(t < off for t, _ in w.samples)
            # and on again (with warm-up) for the next stream
            await send.send(chunk(0, 1.0))
            await trio.sleep(3)
            on2 = events(rig, "on")[1]
            assert FakeOutput.opened[-1][0] - on2 >= WARMUP_MS / 1000 - 1e-9
            nursery.cancel_scope.cancel()

    run(main)


def test_a_stream_ended_during_the_warm_up_opens_nothing(rig):
    async def main():
        async with trio.open_nursery() as nursery:
            w, amp, send = await start_writer(nursery, rig)
            await send.send(chunk(0, 1.0))
            await trio.sleep(WARMUP_MS / 2000)
            await send.send(EndStream())
            await trio.sleep(2)
            assert FakeOutput.opened == []
            assert rig.level  # still on: off only after the idle time
            await trio.sleep(IDLE_S)
            assert not rig.level
            nursery.cancel_scope.cancel()

    run(main)


def test_off_on_shutdown_even_while_playing(rig):
    async def main():
        async with trio.open_nursery() as nursery:
            w, amp, send = await start_writer(nursery, rig)
            await send.send(chunk(0, 20.0))
            await trio.sleep(5)
            assert rig.level
            nursery.cancel_scope.cancel()
        assert not rig.level and rig.transitions[-1][1] == "off"
        amp.close()
        assert rig.closed and rig.transitions[-1][1] == "close"

    run(main)


def test_lead_time_reported_includes_the_warm_up(tmp_path, monkeypatch):
    from resonate_embedded import player as player_mod
    from resonate_embedded.player import Player

    chip = FakeChip(clock=lambda: 0.0)
    monkeypatch.setattr(player_mod, "open_switch",
                        lambda config: chip if config.amp_gpio_line is not None else None)
    player = Player(Config(state_dir=tmp_path, amp_gpio_line=17, amp_warmup_ms=750,
                           input_devices="none"))
    assert player.amplifier is not None and player.writer.power is player.amplifier
    session = player._new_session(object(), None)
    assert session._player_object().required_lead_time_ms == REQUIRED_LEAD_TIME_MS + 750

    plain = Player(Config(state_dir=tmp_path / "b", input_devices="none"))
    assert plain.amplifier is None
    assert plain._new_session(object(), None)._player_object().required_lead_time_ms \
        == REQUIRED_LEAD_TIME_MS


def test_a_gpio_that_cannot_be_opened_is_one_error_and_no_amplifier(tmp_path, caplog):
    from resonate_embedded.player import Player

    caplog.set_level(logging.ERROR)
    player = Player(Config(state_dir=tmp_path, amp_gpio_chip="gpiochip99", amp_gpio_line=5,
                           input_devices="none"))
    assert player.amplifier is None
    assert "amplifier power control off" in caplog.text and "gpiochip99" in caplog.text
    assert player._new_session(object(), None)._player_object().required_lead_time_ms \
        == REQUIRED_LEAD_TIME_MS


def test_gpiod_switch_names_chip_and_line_when_missing():
    pytest.importorskip("gpiod", reason=f"{MISSING_DEPENDENCY} gpiod (the gpio extra)")
    with pytest.raises(AmplifierError, match=r"/dev/gpiochip99 line 3"):
        GpiodSwitch("gpiochip99", 3)


@pytest.mark.parametrize("key, value, message", [
    ("amp_warmup_ms", 6000, "amp_warmup_ms=6000: must be an integer in 0..5000"),
    ("amp_warmup_ms", -1, "amp_warmup_ms=-1"),
    ("amp_idle_off_s", 0, "amp_idle_off_s=0: must be an integer in 1..3600"),
    ("amp_idle_off_s", 3601, "amp_idle_off_s=3601"),
    ("amp_idle_off_s", "60", "amp_idle_off_s='60'"),
    ("amp_gpio_line", -2, "amp_gpio_line=-2"),
    ("amp_gpio_line", True, "amp_gpio_line=True"),
    ("amp_gpio_chip", "gpio0", "amp_gpio_chip='gpio0'"),
    ("amp_gpio_chip", "gpiochip", "amp_gpio_chip='gpiochip'"),
    ("amp_active_low", "yes", "amp_active_low='yes': must be true or false"),
])
def test_bad_amplifier_settings_name_key_and_value(key, value, message):
    with pytest.raises(ConfigError) as err:
        build_config({key: value}, {})
    assert message in str(err.value)


def test_good_settings_and_toml(tmp_path):
    from resonate_embedded.config import load_toml

    path = tmp_path / "p.toml"
    path.write_text('[player]\namp_gpio_chip = "/dev/gpiochip0"\namp_gpio_line = 18\n'
                    'amp_active_low = true\namp_warmup_ms = 0\namp_idle_off_s = 3600\n')
    cfg = build_config(load_toml(path), {})
    assert (cfg.amp_gpio_chip, cfg.amp_gpio_line, cfg.amp_active_low, cfg.amp_warmup_ms,
            cfg.amp_idle_off_s) == ("/dev/gpiochip0", 18, True, 0, 3600)
    assert amp_mod.chip_path("gpiochip0") == "/dev/gpiochip0"


def test_board_profile_amplifier_table():
    profile = {"hat": {"name": "x"}, "amplifier": {"gpio_line": 4, "active_low": True,
                                                   "warmup_ms": 300}}
    values = settings_from_profile(profile)
    assert values == {"amp_gpio_line": 4, "amp_active_low": True, "amp_warmup_ms": 300}
    assert build_config(values, {}).amp_gpio_line == 4
    assert settings_from_profile({"hat": {}}) == {}
    with pytest.raises(ValueError, match="unknown keys pin"):
        settings_from_profile({"amplifier": {"pin": 4}})
