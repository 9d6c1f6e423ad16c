"""The player's configuration: one attrs object from a TOML file plus CLI flags.

Every value is validated on construction; a bad value raises
:class:`ConfigError` naming the setting, the value and what is allowed.
"""

from __future__ import annotations

import ipaddress
import tomllib
import unicodedata
from pathlib import Path
from typing import Any

import attrs

from resonate_embedded.audio.formats import CODECS, StreamFormat


class ConfigError(ValueError):
    """A configuration value that cannot be used."""


ENCRYPTION_MODES = ("auto", "required", "off")


def parse_on_off(text: str) -> bool:
    """``on``/``off`` (also true/false, yes/no, 1/0) for flags like ``--unpaired-access``."""
    value = str(text).strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise ConfigError(f"{text!r}: expected on or off")


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


def _check_plaintext_servers(_inst: Any, _attr: Any, value: Any) -> None:
    from resonate_embedded.protocol.encryption_policy import parse_address

    if not isinstance(value, tuple):
        raise ConfigError(f"plaintext_servers={value!r}: must be a list of \"host\", "
                          "\"host:port\" or \"ws://host:port/path\" entries")
    for entry in value:
        try:
            parse_address(entry)
        except ValueError as exc:
            raise ConfigError(f"plaintext_servers: {exc}") from None


def _is_ws_url(text: str) -> bool:
    from resonate_embedded.protocol.encryption_policy import parse_address

    try:
        parse_address(text)
    except ValueError:
        return False
    return text.startswith(("ws://", "wss://"))


def _in_range(lo: int, hi: int):
    def check(_inst: Any, attribute: attrs.Attribute, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(f"{attribute.name}={value!r}: must be an integer in {lo}..{hi}")
    return check


def _non_empty(_inst: Any, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{attribute.name}: must be a non-empty string")


def _no_control_characters(setting: str, value: str) -> None:
    """A name a person types and a server shows: no control characters (C0, DEL, C1) and
    no lone surrogates, which no display, log line or configuration file carries intact."""
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cs")), None)
    if bad is not None:
        raise ConfigError(f"{setting}={value!r}: must not contain control characters "
                          f"(found U+{ord(bad):04X})")


# --------------------------------------------------------------------------- controls and light


def _to_devices(value: Any) -> Any:
    """``input_devices``: "auto", "none"/"off" (= no device) or a list of paths → tuple."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, str) and value.strip().lower() in ("none", "off", ""):
        return ()
    return value


def _check_devices(_inst: Any, _attr: Any, value: Any) -> None:
    if value == "auto":
        return
    if not isinstance(value, tuple) or not all(isinstance(p, str) and p.startswith("/") for p in value):
        raise ConfigError(f"input_devices={value!r}: must be \"auto\", \"none\" or a list of "
                          "device paths (/dev/input/by-path/..., /dev/input/eventN)")


def _to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _check_led_name(setting: str, name: Any) -> None:
    if not isinstance(name, str) or not name.strip() or "/" in name or name in (".", ".."):
        raise ConfigError(f"{setting}={name!r}: must be an LED name from /sys/class/leds "
                          "(e.g. \"resonate:status\" or \"led0\")")


def _check_leds(inst: Any, _attr: Any, _value: Any) -> None:
    if inst.led_status is not None:
        _check_led_name("led_status", inst.led_status)
    if inst.led_rgb is not None:
        if not isinstance(inst.led_rgb, tuple) or len(inst.led_rgb) != 3:
            raise ConfigError(f"led_rgb={inst.led_rgb!r}: must be three LED names [red, green, blue]")
        for name in inst.led_rgb:
            _check_led_name("led_rgb", name)
    if inst.led_multicolor is not None:
        _check_led_name("led_multicolor", inst.led_multicolor)
        if inst.led_rgb is not None:
            raise ConfigError("led_rgb and led_multicolor: give one or the other")


def _check_key_map(inst: Any, _attr: Any, _value: Any) -> None:
    from resonate_embedded.controls.keymap import KeyMapError, parse_key_map

    try:
        parse_key_map(inst.key_map, inst.long_press_map, inst.long_press_ms)
    except KeyMapError as exc:
        raise ConfigError(str(exc)) from None


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
    period_us: int = attrs.field(default=20_000, validator=_in_range(1_000, 100_000))
    periods: int = attrs.field(default=8, validator=_in_range(2, 64))
    buffer_seconds: int = attrs.field(default=8, validator=_in_range(1, 60))
    formats: tuple[StreamFormat, ...] = attrs.field(default=DEFAULT_FORMATS, validator=_check_formats)
    stats: bool = False
    # Encrypted Sendspin (Noise): "auto" = encrypted first, plaintext only as
    # protocol/encryption_policy.py allows (no downgrade); "required" = never plaintext;
    # "off" = plaintext only (servers before aiosendspin 7).
    encryption: str = "auto"
    # "auto" with a pairing held: the only servers that may still talk plaintext (servers
    # that cannot encrypt), as "host", "host:port" or a ws:// URL; see encryption_policy.py.
    plaintext_servers: tuple[str, ...] = attrs.field(default=(), converter=_to_tuple,
                                                     validator=_check_plaintext_servers)
    # Let servers that have not paired this speaker play on it (unpaired, Sentinel-keyed
    # sessions; the server's operator still has to approve the speaker).
    unpaired_access: bool = True
    # Offer the Dynamic Pairing Code flow, the code spoken through this speaker.
    spoken_pairing_code: bool = True
    # Server-initiated mode (the default without server/discover): the port servers dial.
    listen_port: int = attrs.field(default=8928, validator=_in_range(0, 65535))
    # Client-initiated mode without a server URL: find one by mDNS.
    discover: bool = False
    # Server-initiated mode: also advertise _resonate._tcp for aioresonate servers.
    advertise_resonate: bool = False
    # Offer the announcement role (voice-assistant replies and chimes mixed over the music).
    announcements: bool = True
    # mDNS (advertising and browsing) on the interface with this IPv4 address only, and
    # that address only in the records; default: every interface and address.
    mdns_interface: str | None = None
    # Physical controls (resonate_embedded/controls): key/axis name → action tables (None: the
    # defaults in controls/keymap.py), how long a hold is a long press, the volume step of a
    # key press or encoder detent, and which input devices to read ("auto": every one with a
    # mapped key or axis; "none": no controls).
    key_map: dict[str, str] | None = attrs.field(default=None, validator=_check_key_map)
    long_press_map: dict[str, str] | None = None
    long_press_ms: int = 800
    volume_step: int = attrs.field(default=5, validator=_in_range(1, 25))
    input_devices: tuple[str, ...] | str = attrs.field(default="auto", converter=_to_devices,
                                                       validator=_check_devices)
    # Status light (resonate_embedded/light.py): LED class names under /sys/class/leds.
    led_status: str | None = None
    led_rgb: tuple[str, str, str] | None = attrs.field(default=None, converter=_to_tuple)
    led_multicolor: str | None = attrs.field(default=None, validator=_check_leds)
    # Amplifier power (resonate_embedded/amplifier.py): the GPIO line that switches it (None:
    # no amplifier control), its active level, warm-up before the first sample (added to
    # the lead time the player asks for) and idle time before it is switched off.
    amp_gpio_chip: str = "gpiochip0"
    amp_gpio_line: int | None = attrs.field(default=None,
                                            validator=attrs.validators.optional(_in_range(0, 1023)))
    amp_active_low: bool = False
    amp_warmup_ms: int = attrs.field(default=200, validator=_in_range(0, 5000))
    amp_idle_off_s: int = attrs.field(default=60, validator=_in_range(1, 3600))
    # Say the speaker's name and address through the DAC once, on the first start (the SD
    # image's generated config turns it on; off by default so test runs stay silent).
    say_where_at_first_boot: bool = False

    def keymap(self):
        """The validated :class:`~resonate_embedded.controls.keymap.KeyMap` of these settings."""
        from resonate_embedded.controls.keymap import parse_key_map

        return parse_key_map(self.key_map, self.long_press_map, self.long_press_ms)

    def led_config(self):
        """The :class:`~resonate_embedded.light.LedConfig` of these settings."""
        from resonate_embedded.light import LedConfig

        return LedConfig(status=self.led_status, rgb=self.led_rgb, multicolor=self.led_multicolor)

    def __attrs_post_init__(self) -> None:
        for key in ("server", "client_id", "mdns_interface"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{key}={value!r}: must be a string")
        if not isinstance(self.stats, bool):
            raise ConfigError(f"stats={self.stats!r}: must be true or false")
        _non_empty(self, attrs.fields(Config).name, self.name)
        _no_control_characters("name", self.name)
        _non_empty(self, attrs.fields(Config).device, self.device)
        if self.server is not None and not _is_ws_url(self.server):
            raise ConfigError(f"server={self.server!r}: must be a ws:// or wss:// URL")
        if self.encryption not in ENCRYPTION_MODES:
            raise ConfigError(f"encryption={self.encryption!r}: must be one of {', '.join(ENCRYPTION_MODES)}")
        if not isinstance(self.amp_gpio_chip, str) or not (
                self.amp_gpio_chip.startswith("/dev/")
                or (self.amp_gpio_chip.startswith("gpiochip") and self.amp_gpio_chip[8:].isdigit())):
            raise ConfigError(f"amp_gpio_chip={self.amp_gpio_chip!r}: must be a GPIO chip name "
                              "like \"gpiochip0\" or a path like \"/dev/gpiochip0\"")
        if self.server is not None and self.discover:
            raise ConfigError("discover=true and server: give one or the other")
        if self.mdns_interface is not None:
            try:
                ipaddress.IPv4Address(self.mdns_interface)
            except ValueError:
                raise ConfigError(f"mdns_interface={self.mdns_interface!r}: must be an IPv4 "
                                  "address of this host's interface") from None
        for key in ("unpaired_access", "spoken_pairing_code", "discover", "advertise_resonate",
                    "announcements", "amp_active_low", "say_where_at_first_boot"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key}={getattr(self, key)!r}: must be true or false")


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
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: [player] must be a table")
    unknown = set(data) - _KEYS
    if unknown:
        raise ConfigError(f"config {path}: unknown settings {', '.join(sorted(unknown))}")
    if "formats" in data:
        value = data["formats"]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = ",".join(value)
        if not isinstance(value, str):
            raise ConfigError(f"formats={value!r}: must be a string or a list of strings "
                              "like \"pcm:48000:16:2\"")
        data["formats"] = parse_formats(value)
    if "state_dir" in data:
        if not isinstance(data["state_dir"], str):
            raise ConfigError(f"state_dir={data['state_dir']!r}: must be a path (a string)")
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
