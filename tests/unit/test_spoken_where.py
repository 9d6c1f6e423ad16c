"""'Where is my speaker?': the address rendered by the pairing code's offline renderer,
the say_where action, and the first-boot flag."""

from __future__ import annotations

import numpy as np
import pytest
import trio

from resonate_embedded.audio import spoken_where
from resonate_embedded.audio.announcement import AnnouncementAudio, AnnouncementEnd, AnnouncementStart
from resonate_embedded.audio.formats import PcmShape
from resonate_embedded.audio.spoken_code import digit_clip
from resonate_embedded.audio.spoken_where import (
    address_items, render_items, spell, where_items, word_clip,
)
from resonate_embedded.config import Config
from resonate_embedded.controls.keymap import parse_key_map, key_code
from resonate_embedded.roles.controller import ACTIONS, Action, ControllerState, commands_for


def test_address_is_digits_and_dots():
    assert address_items("192.168.1.23") == ["1", "9", "2", "dot", "1", "6", "8", "dot", "1",
                                             "dot", "2", "3"]
    with pytest.raises(ValueError):
        address_items("192.168.1")


def test_rendering_192_168_1_23_to_segments_through_the_digit_clips():
    shape = PcmShape(16000, 1, 16)
    pcm, segments = render_items(where_items("192.168.1.23", repeats=1), shape)
    assert [s.item for s in segments] == ["chime"] + address_items("192.168.1.23")
    assert pcm.dtype == np.int16 and pcm.shape[1] == 1
    for seg in segments:
        part = pcm[seg.start:seg.end, 0]
        assert np.abs(part).max() > 5000, seg  # audible
        if seg.item.isdigit():  # the very clips the pairing code speaks
            np.testing.assert_array_equal(part, np.rint(digit_clip(int(seg.item), 16000)))
        elif seg.item == "dot":
            np.testing.assert_array_equal(part, np.rint(word_clip("dot", 16000)))
    # silence between items, ordered, and around the whole message
    for a, b in zip(segments, segments[1:]):
        assert b.start - a.end >= int(0.2 * 16000)
        assert not pcm[a.end:b.start].any()
    assert not pcm[:segments[0].start].any() and not pcm[segments[-1].end:].any()


def test_the_name_is_spelled_and_the_address_said_twice():
    items = where_items("10.0.0.7", "Küche 2")
    assert items[:items.index("beep") + 1] == ["chime", "k", "u", "c", "h", "e", "", "2", "beep"]
    assert items.count("|") == 1 and items.count("dot") == 6
    pcm, segments = render_items(items, PcmShape(48000, 2, 24))
    assert pcm.dtype == np.int32 and pcm.shape[1] == 2
    assert spell("!!") == [] and len(spell("x" * 100)) == spoken_where.MAX_NAME_CHARS


def test_say_where_is_an_action_a_long_press_maps_to_and_never_a_server_command():
    assert "say_where" in ACTIONS
    km = parse_key_map()
    assert km.long_press[key_code("KEY_MUTE")] == "say_where"
    state = ControllerState(frozenset({"play", "pause", "switch"}), 50, False)
    assert commands_for(Action("say_where"), state, "playing", 5) == ()


def _player(tmp_path, **kw):
    from resonate_embedded.player import Player

    kw.setdefault("say_where_at_first_boot", True)
    return Player(Config(state_dir=tmp_path, input_devices="none", name="Den", **kw))


def _drain(player) -> list:
    out = []
    while True:
        try:
            out.append(player.writer._commands.receive_nowait())
        except trio.WouldBlock:
            return out


def test_say_where_queues_an_announcement_and_logs_the_address(tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO")
    monkeypatch.setattr(spoken_where, "local_ipv4", lambda prefer=None: "192.168.1.23")
    player = _player(tmp_path)

    async def main():
        return await player.say_where("control say_where")

    result = trio.run(main)
    assert "192.168.1.23" in result
    start, audio, end = _drain(player)
    assert isinstance(start, AnnouncementStart) and isinstance(audio, AnnouncementAudio)
    assert isinstance(end, AnnouncementEnd)
    assert start.volume >= 50 and audio.shape == start.shape and np.abs(audio.pcm).max() > 5000
    assert "saying name 'Den' and address 192.168.1.23" in caplog.text


def test_first_boot_says_it_once(tmp_path, monkeypatch):
    monkeypatch.setattr(spoken_where, "local_ipv4", lambda prefer=None: "10.1.2.3")
    player = _player(tmp_path)
    trio.run(player._say_where_at_first_boot)
    assert (tmp_path / "where-spoken").exists()
    assert len(_drain(player)) == 3
    trio.run(_player(tmp_path)._say_where_at_first_boot)  # second start: nothing
    again = _player(tmp_path)
    trio.run(again._say_where_at_first_boot)
    assert _drain(again) == []

    assert not Config().say_where_at_first_boot  # off unless configured (the image does)
    off = _player(tmp_path / "off", say_where_at_first_boot=False)
    trio.run(off._say_where_at_first_boot)
    assert _drain(off) == [] and not (tmp_path / "off" / "where-spoken").exists()
