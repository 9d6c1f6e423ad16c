"""The player's configuration: one attrs object from a TOML file plus CLI flags.

Every value is validated on construction; a bad value raises
:class:`ConfigError` naming the setting, the value and what is allowed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import attrs

from resonate_embedded.audio.formats import CODECS, StreamFormat


class ConfigError(ValueError):
    """A configuration value that cannot be used."""


DEFAULT_FORMATS = (
    StreamFormat("pcm", 48000, 2, 16),
    StreamFormat("flac", 48000, 2, 16),
    StreamFormat("pcm", 44100, 2, 16),
    StreamFormat("flac", 44100, 2, 16),
    StreamFormat("pcm", 48000, 2, 24),
    StreamFormat("flac", 48000, 2, 24),
    StreamFormat("opus", 48000, 2, 16),
)


def parse_formats(text: str) -> tuple[StreamFormat, ...]:
    """Parse ``codec:rate:bits:channels,...`` (the ``--formats`` flag)."""
    formats = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        parts = item.split(":")
        if len(parts) != 4:
            raise ConfigError(f"format {item!r}: expected codec:rate:bits:channels")
        codec, rate, bits, channels = parts
        try:
            fmt = StreamFormat(codec, int(rate), int(channels), int(bits))
        except ValueError:
            raise ConfigError(f"format {item!r}: rate, bits and channels must be integers") from None
        formats.append(fmt)
    if not formats:
        raise ConfigError("formats: the list is empty")
    return tuple(formats)


def _check_formats(_inst: Any, _attr: Any, formats: tuple[StreamFormat, ...]) -> None:
    for f in formats:
        if f.codec not in CODECS:
            raise ConfigError(f"format codec {f.codec!r} is not one of {', '.join(CODECS)}")
        if not 8000 <= f.sample_rate <= 192000:
            raise ConfigError(f"format rate {f.sample_rate} outside 8000..192000")
        if f.bit_depth not in (16, 24):
            raise ConfigError(f"format bit depth {f.bit_depth} is not 16 or 24")
        if not 1 <= f.channels <= 8:
            raise ConfigError(f"format channels {f.channels} outside 1..8")
        if f.codec == "opus" and f.bit_depth != 16:
            raise ConfigError("opus decodes to 16 bits only")


def _in_range(lo: int, hi: int):
    def check(_inst: Any, attribute: attrs.Attribute, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(f"{attribute.name}={value!r}: must be an integer in {lo}..{hi}")
    return check


def _non_empty(_inst: Any, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{attribute.name}: must be a non-empty string")


@attrs.frozen
class Config:
    server: str | None = None
    device: str = "default"
    name: str = "Resonate Speaker"
    client_id: str | None = None
    state_dir: Path = Path("/var/lib/resonate-embedded")
    volume: int | None = attrs.field(default=None, validator=attrs.validators.optional(_in_range(0, 100)))
    dac_latency_us: int = attrs.field(default=0, validator=_in_range(0, 1_000_000))
    output_delay_ms: int | None = attrs.field(default=None, validator=attrs.validators.optional(_in_range(0, 5000)))
    period_us: int = attrs.field(default=10_000, validator=_in_range(1_000, 100_000))
    periods: int = attrs.field(default=8, validator=_in_range(2, 64))
    buffer_seconds: int = attrs.field(default=8, validator=_in_range(1, 60))
    formats: tuple[StreamFormat, ...] = attrs.field(default=DEFAULT_FORMATS, validator=_check_formats)
    stats: bool = False

    def __attrs_post_init__(self) -> None:
        _non_empty(self, attrs.fields(Config).name, self.name)
        _non_empty(self, attrs.fields(Config).device, self.device)
        if self.server is not None and not self.server.startswith(("ws://", "wss://")):
            raise ConfigError(f"server={self.server!r}: must be a ws:// or wss:// URL")


_KEYS = {f.name for f in attrs.fields(Config)}


def load_toml(path: Path) -> dict[str, Any]:
    """Read a TOML config file into Config keyword arguments."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: {exc}") from None
    data = data.get("player", data)
    unknown = set(data) - _KEYS
    if unknown:
        raise ConfigError(f"config {path}: unknown settings {', '.join(sorted(unknown))}")
    if "formats" in data:
        value = data["formats"]
        data["formats"] = parse_formats(",".join(value) if isinstance(value, list) else str(value))
    if "state_dir" in data:
        data["state_dir"] = Path(data["state_dir"])
    return data


def build_config(file_values: dict[str, Any], flag_values: dict[str, Any]) -> Config:
    """Flags override the file; None flags are 'not given'."""
    merged = dict(file_values)
    merged.update({k: v for k, v in flag_values.items() if v is not None})
    try:
        return Config(**merged)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
