"""The controller role: group state in, ``client/command`` out (spec ``roles/controller/v1.md``).

- :func:`parse_controller` turns the ``controller`` object of ``server/state`` into a frozen
  :class:`ControllerState` (full state each time, as ``messaging.md`` requires; a bad object
  is one :class:`ControllerError` with a one-line reason, unknown commands are dropped).
- :class:`ControllerCommand` builds one ``client/command`` JSON text.
- :func:`commands_for` maps an abstract :class:`Action` (from buttons, the encoder, an IR
  remote) to the commands to send, given the latest controller state and the group's
  ``playback_state`` (``group/update``).  Guarantee: it never returns a command that is
  not in the state's ``supported_commands`` (the spec says the client MUST NOT send one),
  and it returns nothing without a controller state.
- :func:`apply_locally` is what the same action does to the speaker's own volume/mute when
  no server is connected.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

COMMANDS = ("play", "pause", "stop", "next", "previous", "volume", "mute", "repeat_off",
            "repeat_one", "repeat_all", "shuffle", "unshuffle", "switch", "seek", "seek_relative")
REPEAT_MODES = ("off", "one", "all")

# Abstract actions a key, the encoder or an IR remote can be mapped to.
ACTIONS = ("play_pause", "play", "pause", "stop", "next", "previous", "volume_up", "volume_down",
           "mute", "switch", "volume",  # "volume": an encoder axis (signed steps)
           "say_where")
# Actions this speaker carries out itself, never a client/command ("say_where": its name and
# IP address spoken through the DAC, resonate_embedded/audio/spoken_where.py).
LOCAL_ACTIONS = ("say_where",)


class ControllerError(ValueError):
    """A controller object that cannot be used (one-line reason)."""


@attrs.frozen
class Action:
    """An abstract control action; ``steps`` is the signed count for volume actions.

    ``volume_up``/``volume_down`` carry a positive count, ``volume`` (the encoder) a signed one.
    """

    name: str = attrs.field(validator=attrs.validators.in_(ACTIONS))
    steps: int = 1

    def volume_steps(self) -> int:
        """Signed number of volume steps (0 for a non-volume action)."""
        if self.name == "volume_up":
            return abs(self.steps)
        if self.name == "volume_down":
            return -abs(self.steps)
        if self.name == "volume":
            return self.steps
        return 0


@attrs.frozen
class ControllerState:
    """The ``controller`` object of ``server/state``."""

    supported_commands: frozenset[str]
    volume: int
    muted: bool
    repeat: str | None = None
    shuffle: bool | None = None
    seek_max_ms: int | None = None

    def supports(self, command: str) -> bool:
        return command in self.supported_commands

    def after(self, commands: tuple["ControllerCommand", ...]) -> "ControllerState":
        """This state as it will be once ``commands`` are applied (optimistic).

        Keeping this until the server's next ``controller`` state lets quick successive
        presses add up instead of each starting from the same stale group volume.
        """
        state = self
        for c in commands:
            if c.command == "volume" and c.volume is not None:
                state = attrs.evolve(state, volume=c.volume)
            elif c.command == "mute" and c.mute is not None:
                state = attrs.evolve(state, muted=c.mute)
        return state

    def to_dict(self) -> dict[str, Any]:
        return {"supported_commands": sorted(self.supported_commands), "volume": self.volume,
                "muted": self.muted, "repeat": self.repeat, "shuffle": self.shuffle,
                "seek_max_ms": self.seek_max_ms}


def _int(obj: dict, key: str, lo: int, hi: int, required: bool) -> int | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise ControllerError(f"controller.{key} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ControllerError(f"controller.{key} is {type(value).__name__}, not an integer")
    if not lo <= value <= hi:
        raise ControllerError(f"controller.{key}={value} outside {lo}..{hi}")
    return value


def parse_controller(obj: Any) -> ControllerState | None:
    """Parse the ``controller`` value of a ``server/state`` payload.

    Returns None for a ``null`` role object (legacy "role cleared"); raises
    :class:`ControllerError` (one line) for anything unusable.  Unknown command names in
    ``supported_commands`` are dropped (forward compatibility); ``repeat``/``shuffle`` of a
    wrong type are read as unknown rather than refusing the whole state.
    """
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise ControllerError(f"controller is {type(obj).__name__}, not an object")
    commands = obj.get("supported_commands")
    if commands is None:
        raise ControllerError("controller.supported_commands is missing")
    if not isinstance(commands, list) or not all(isinstance(c, str) for c in commands):
        raise ControllerError("controller.supported_commands is not a list of strings")
    volume = _int(obj, "volume", 0, 100, required=True)
    muted = obj.get("muted")
    if not isinstance(muted, bool):
        raise ControllerError("controller.muted is missing or not a boolean")
    repeat = obj.get("repeat")
    shuffle = obj.get("shuffle")
    return ControllerState(
        supported_commands=frozenset(c for c in commands if c in COMMANDS),
        volume=volume,  # type: ignore[arg-type]
        muted=muted,
        repeat=repeat if repeat in REPEAT_MODES else None,
        shuffle=shuffle if isinstance(shuffle, bool) else None,
        seek_max_ms=_int(obj, "seek_max_ms", 0, 1 << 53, required=False),
    )


@attrs.frozen
class ControllerCommand:
    """The ``controller`` object of one ``client/command``."""

    command: str = attrs.field(validator=attrs.validators.in_(COMMANDS))
    volume: int | None = None
    mute: bool | None = None
    position_ms: int | None = None
    offset_ms: int | None = None

    def __attrs_post_init__(self) -> None:
        # Each parameter belongs to exactly one command (spec: "only set if command is ...").
        for key, owner in (("volume", "volume"), ("mute", "mute"), ("position_ms", "seek"),
                           ("offset_ms", "seek_relative")):
            given = getattr(self, key) is not None
            if given != (self.command == owner):
                raise ValueError(f"client/command {self.command!r}: {key} "
                                 f"{'not allowed' if given else 'required'}")
        if self.volume is not None and not 0 <= self.volume <= 100:
            raise ValueError(f"client/command volume={self.volume} outside 0..100")

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"command": self.command}
        for key in ("volume", "mute", "position_ms", "offset_ms"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return {"controller": out}

    def to_json(self) -> str:
        """The whole ``client/command`` message as JSON text."""
        return json.dumps({"type": "client/command", "payload": self.to_payload()},
                          separators=(",", ":"))


def _clamp(value: int) -> int:
    return min(max(value, 0), 100)


def commands_for(action: Action, state: ControllerState | None, playback_state: str | None,
                 volume_step: int) -> tuple[ControllerCommand, ...]:
    """The ``client/command``\\ s that carry out ``action`` (empty: nothing to send).

    - ``play_pause``: ``pause`` while the group is ``playing`` (``stop`` if the server
      offers no ``pause``), otherwise ``play``;
    - volume actions: ``volume`` = group volume + steps × ``volume_step``, clamped to
      0..100; nothing when that is the current volume;
    - ``mute``: toggles the group mute;
    - ``next``/``previous``/``switch``/``play``/``pause``/``stop``: that command.

    Whatever the action, a command not in ``state.supported_commands`` is never returned.
    """
    if state is None or action.name in LOCAL_ACTIONS:
        return ()
    name = action.name
    if name == "play_pause":
        if playback_state == "playing":
            wanted = "pause" if state.supports("pause") else "stop"
        else:
            wanted = "play"
        commands: tuple[ControllerCommand, ...] = (ControllerCommand(wanted),)
    elif name in ("volume_up", "volume_down", "volume"):
        target = _clamp(state.volume + action.volume_steps() * volume_step)
        if target == state.volume:
            return ()
        commands = (ControllerCommand("volume", volume=target),)
    elif name == "mute":
        commands = (ControllerCommand("mute", mute=not state.muted),)
    else:
        commands = (ControllerCommand(name),)
    return tuple(c for c in commands if state.supports(c.command))


def apply_locally(action: Action, volume: int, muted: bool, volume_step: int) -> tuple[int, bool]:
    """``(volume, muted)`` after ``action`` on this speaker alone (no server connected).

    Volume actions move the local volume by steps × ``volume_step`` (clamped 0..100), ``mute``
    toggles; transport actions (play, next, switch, ...) change nothing.
    """
    steps = action.volume_steps()
    if steps:
        return _clamp(volume + steps * volume_step), muted
    if action.name == "mute":
        return volume, not muted
    return volume, muted
