"""Controller role: parsing server/state, building client/command, mapping actions."""

from __future__ import annotations

import json

import pytest

from resonate_embedded.roles.controller import (
    COMMANDS, Action, ControllerCommand, ControllerError, ControllerState, apply_locally,
    commands_for, parse_controller,
)

ALL = list(COMMANDS)


def state(commands=ALL, volume=50, muted=False) -> ControllerState:
    return parse_controller({"supported_commands": list(commands), "volume": volume,
                             "muted": muted, "repeat": "off", "shuffle": False})


def test_parse_full_state_drops_unknown_commands():
    s = parse_controller({"supported_commands": ["play", "teleport", "volume"], "volume": 30,
                          "muted": True, "repeat": "all", "shuffle": True, "seek_max_ms": 1000})
    assert s.supported_commands == frozenset({"play", "volume"})
    assert (s.volume, s.muted, s.repeat, s.shuffle, s.seek_max_ms) == (30, True, "all", True, 1000)
    assert parse_controller(None) is None  # legacy null role object: cleared


@pytest.mark.parametrize("obj, text", [
    ("x", "not an object"),
    ({"volume": 1, "muted": False}, "supported_commands is missing"),
    ({"supported_commands": "play", "volume": 1, "muted": False}, "not a list of strings"),
    ({"supported_commands": [], "muted": False}, "volume is missing"),
    ({"supported_commands": [], "volume": 101, "muted": False}, "outside 0..100"),
    ({"supported_commands": [], "volume": True, "muted": False}, "not an integer"),
    ({"supported_commands": [], "volume": 1}, "muted is missing"),
])
def test_bad_objects_raise_one_line(obj, text):
    with pytest.raises(ControllerError, match=text):
        parse_controller(obj)


def test_command_json():
    msg = json.loads(ControllerCommand("volume", volume=35).to_json())
    assert msg == {"type": "client/command", "payload": {"controller": {"command": "volume", "volume": 35}}}
    assert json.loads(ControllerCommand("next").to_json())["payload"] == {"controller": {"command": "next"}}
    assert ControllerCommand("mute", mute=False).to_payload() == {"controller": {"command": "mute", "mute": False}}


@pytest.mark.parametrize("kwargs", [dict(command="volume"), dict(command="next", volume=3),
                                    dict(command="mute"), dict(command="volume", volume=101),
                                    dict(command="jump")])
def test_command_parameters_are_checked(kwargs):
    with pytest.raises(ValueError):
        ControllerCommand(**kwargs)


def names(cmds):
    return [(c.command, c.volume, c.mute) for c in cmds]


def test_play_pause_toggles_from_group_state():
    assert names(commands_for(Action("play_pause"), state(), "playing", 5)) == [("pause", None, None)]
    assert names(commands_for(Action("play_pause"), state(), "stopped", 5)) == [("play", None, None)]
    assert names(commands_for(Action("play_pause"), state(), None, 5)) == [("play", None, None)]
    no_pause = state([c for c in ALL if c != "pause"])
    assert names(commands_for(Action("play_pause"), no_pause, "playing", 5)) == [("stop", None, None)]


def test_volume_steps_clamp_and_skip_no_change():
    assert names(commands_for(Action("volume_up"), state(volume=50), None, 5)) == [("volume", 55, None)]
    assert names(commands_for(Action("volume_down", 2), state(volume=50), None, 5)) == [("volume", 40, None)]
    assert names(commands_for(Action("volume", -3), state(volume=10), None, 5)) == [("volume", 0, None)]
    assert names(commands_for(Action("volume", 4), state(volume=98), None, 5)) == [("volume", 100, None)]
    assert commands_for(Action("volume_up"), state(volume=100), None, 5) == ()


def test_mute_toggles_and_others_pass_through():
    assert names(commands_for(Action("mute"), state(muted=False), None, 5)) == [("mute", None, True)]
    assert names(commands_for(Action("mute"), state(muted=True), None, 5)) == [("mute", None, False)]
    for action in ("next", "previous", "switch", "play", "pause", "stop"):
        assert names(commands_for(Action(action), state(), None, 5)) == [(action, None, None)]


@pytest.mark.parametrize("action", ["play_pause", "play", "pause", "stop", "next", "previous",
                                    "volume_up", "volume_down", "mute", "switch"])
def test_unsupported_commands_are_never_returned(action):
    assert commands_for(Action(action), state([]), "playing", 5) == ()
    assert commands_for(Action(action), None, "playing", 5) == ()
    # with everything else supported but not the command this action needs
    for cmds in (ALL,):
        result = commands_for(Action(action), state(cmds), "playing", 5)
        needed = {c.command for c in result}
        reduced = state([c for c in cmds if c not in needed])
        assert all(c.command in reduced.supported_commands
                   for c in commands_for(Action(action), reduced, "playing", 5))


def test_optimistic_state_accumulates_quick_presses():
    s = state(volume=50)
    for _ in range(3):
        cmds = commands_for(Action("volume_up"), s, None, 5)
        s = s.after(cmds)
    assert s.volume == 65
    s = s.after(commands_for(Action("mute"), s, None, 5))
    assert s.muted is True


def test_apply_locally():
    assert apply_locally(Action("volume_up", 2), 50, False, 5) == (60, False)
    assert apply_locally(Action("volume", -30), 50, True, 5) == (0, True)
    assert apply_locally(Action("mute"), 50, False, 5) == (50, True)
    assert apply_locally(Action("next"), 50, False, 5) == (50, False)


def test_unknown_action_name_is_refused():
    with pytest.raises(ValueError):
        Action("self_destruct")
