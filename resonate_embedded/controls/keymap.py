"""The key map: Linux input key / axis names → abstract control actions, validated.

Config (``[player.key_map]`` and ``[player.long_press_map]`` TOML tables)::

    [player.key_map]
    KEY_PLAYPAUSE = "play_pause"
    KEY_NEXTSONG = "next"
    REL_DIAL = "volume"          # a rotary encoder axis: signed volume steps

    [player.long_press_map]
    KEY_PLAYPAUSE = "switch"     # held for long_press_ms

Names are the kernel's (``linux/input-event-codes.h``): ``KEY_*``/``BTN_*`` for keys and
buttons, ``REL_*`` for relative axes (``rotary-encoder`` with ``rotary-encoder,relative-axis``
reports ``REL_X`` by default, a ``linux,axis`` of 7 makes it ``REL_DIAL``).  Actions are
:data:`resonate_embedded.roles.controller.ACTIONS`.

Guarantee: :func:`parse_key_map` either returns a :class:`KeyMap` whose every code is a
real key/axis code and every action a known action, or raises :class:`KeyMapError` naming
the offending entry and what is allowed.  Without the ``evdev`` package (not Linux) the
names are resolved from a built-in table of the common keys.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

import attrs

from resonate_embedded.roles.controller import ACTIONS

try:  # the full kernel table, generated from the headers when python-evdev was built
    from evdev import ecodes as _ecodes
    _KEY_CODES: dict[str, int] = {n: v for n, v in vars(_ecodes).items()
                                  if n.startswith(("KEY_", "BTN_")) and isinstance(v, int)}
    _REL_CODES: dict[str, int] = {n: v for n, v in vars(_ecodes).items()
                                  if n.startswith("REL_") and isinstance(v, int)
                                  and n not in ("REL_MAX", "REL_CNT")}
except ImportError:  # pragma: no cover - non-Linux development machines
    _KEY_CODES = {
        "KEY_ENTER": 28, "KEY_MUTE": 113, "KEY_VOLUMEDOWN": 114, "KEY_VOLUMEUP": 115,
        "KEY_PAUSE": 119, "KEY_STOP": 128, "KEY_MENU": 139, "KEY_NEXTSONG": 163,
        "KEY_PLAYPAUSE": 164, "KEY_PREVIOUSSONG": 165, "KEY_STOPCD": 166, "KEY_PLAYCD": 200,
        "KEY_PAUSECD": 201, "KEY_PLAY": 207, "KEY_SELECT": 0x161, "KEY_OK": 0x160,
        **{f"BTN_{i}": 0x100 + i for i in range(10)},
    }
    _REL_CODES = {"REL_X": 0, "REL_Y": 1, "REL_Z": 2, "REL_HWHEEL": 6, "REL_DIAL": 7,
                  "REL_WHEEL": 8}

KEY_ACTIONS = tuple(a for a in ACTIONS if a != "volume")
AXIS_ACTIONS = ("volume",)
REPEATABLE_ACTIONS = ("volume_up", "volume_down")  # autorepeat (key held) repeats these

DEFAULT_KEY_MAP: Mapping[str, str] = MappingProxyType({
    "KEY_PLAYPAUSE": "play_pause",
    "KEY_PLAYCD": "play",
    "KEY_PLAY": "play",
    "KEY_PAUSECD": "pause",
    "KEY_PAUSE": "pause",
    "KEY_STOPCD": "stop",
    "KEY_STOP": "stop",
    "KEY_NEXTSONG": "next",
    "KEY_PREVIOUSSONG": "previous",
    "KEY_VOLUMEUP": "volume_up",
    "KEY_VOLUMEDOWN": "volume_down",
    "KEY_MUTE": "mute",
    "REL_X": "volume",
    "REL_DIAL": "volume",
})
DEFAULT_LONG_PRESS_MAP: Mapping[str, str] = MappingProxyType({
    "KEY_PLAYPAUSE": "switch",
    "KEY_MUTE": "say_where",  # the encoder's push held: name and IP address spoken
})
DEFAULT_LONG_PRESS_MS = 800
LONG_PRESS_MS_RANGE = (200, 10_000)


class KeyMapError(ValueError):
    """An entry of the key map that cannot be used (the message names it)."""


def key_code(name: str) -> int | None:
    """The EV_KEY code of ``KEY_*``/``BTN_*`` ``name``, None if there is no such key."""
    return _KEY_CODES.get(name)


def axis_code(name: str) -> int | None:
    """The EV_REL code of ``REL_*`` ``name``, None if there is no such axis."""
    return _REL_CODES.get(name)


def key_name(code: int) -> str:
    """A name for EV_KEY ``code`` (for log lines)."""
    for name, value in _KEY_CODES.items():
        if value == code:
            return name
    return f"key {code}"


@attrs.frozen
class KeyMap:
    """A validated key map (codes, not names)."""

    press: Mapping[int, str]  # EV_KEY code → action on press (or on a short press)
    long_press: Mapping[int, str]  # EV_KEY code → action once held for long_press_ms
    axes: Mapping[int, str]  # EV_REL code → axis action ("volume")
    long_press_ms: int = DEFAULT_LONG_PRESS_MS

    def key_codes(self) -> frozenset[int]:
        return frozenset(self.press) | frozenset(self.long_press)

    def axis_codes(self) -> frozenset[int]:
        return frozenset(self.axes)


def _table(value: Any, setting: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise KeyMapError(f"{setting}: must be a table of NAME = \"action\", got {type(value).__name__}")
    return dict(value)


def parse_key_map(key_map: Mapping[str, Any] | None = None,
                  long_press_map: Mapping[str, Any] | None = None,
                  long_press_ms: int = DEFAULT_LONG_PRESS_MS) -> KeyMap:
    """Validate names and actions (defaults for None); raises :class:`KeyMapError`."""
    press: dict[int, str] = {}
    axes: dict[int, str] = {}
    long_press: dict[int, str] = {}
    lo, hi = LONG_PRESS_MS_RANGE
    if isinstance(long_press_ms, bool) or not isinstance(long_press_ms, int) \
            or not lo <= long_press_ms <= hi:
        raise KeyMapError(f"long_press_ms={long_press_ms!r}: must be an integer in {lo}..{hi}")
    for name, action in _table(DEFAULT_KEY_MAP if key_map is None else key_map, "key_map").items():
        if not isinstance(action, str):
            raise KeyMapError(f"key_map.{name}={action!r}: the action must be a string")
        if str(name).startswith("REL_"):
            code = axis_code(name)
            if code is None:
                raise KeyMapError(f"key_map.{name}: no such input axis "
                                  "(relative axes are REL_X, REL_Y, REL_DIAL, REL_WHEEL, ...)")
            if action not in AXIS_ACTIONS:
                raise KeyMapError(f"key_map.{name}={action!r}: an axis maps to one of "
                                  f"{', '.join(AXIS_ACTIONS)}")
            axes[code] = action
            continue
        code = key_code(name)
        if code is None:
            raise KeyMapError(f"key_map.{name}: no such key (names are the kernel's KEY_*/BTN_*"
                              " names, e.g. KEY_PLAYPAUSE, or REL_* for an encoder axis)")
        if action not in KEY_ACTIONS:
            raise KeyMapError(f"key_map.{name}={action!r}: must be one of {', '.join(KEY_ACTIONS)}")
        press[code] = action
    table = DEFAULT_LONG_PRESS_MAP if long_press_map is None else long_press_map
    for name, action in _table(table, "long_press_map").items():
        code = key_code(name)
        if code is None:
            raise KeyMapError(f"long_press_map.{name}: no such key (KEY_*/BTN_* names)")
        if not isinstance(action, str) or action not in KEY_ACTIONS:
            raise KeyMapError(f"long_press_map.{name}={action!r}: must be one of "
                              f"{', '.join(KEY_ACTIONS)}")
        long_press[code] = action
    return KeyMap(press=MappingProxyType(press), long_press=MappingProxyType(long_press),
                  axes=MappingProxyType(axes), long_press_ms=long_press_ms)
