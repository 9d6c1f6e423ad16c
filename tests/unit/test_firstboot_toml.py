"""First boot's player.toml: whatever validate() accepts is read back by tomllib exactly;
a name it must refuse (control characters) is refused with a clear error, nothing written."""

from __future__ import annotations

import tomllib
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from resonate_embedded import firstboot
from resonate_embedded.config import build_config, load_toml

HATS = firstboot.load_hats(Path(__file__).resolve().parents[2] / "board" / "hats")
STATE_DIR = Path("/var/lib/resonate-embedded")


def _settings(**values: str) -> firstboot.Settings:
    return firstboot.validate({key: (n, value) for n, (key, value) in enumerate(values.items(), 1)},
                              HATS, STATE_DIR)


def _has_control(text: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Cs") for c in text)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.text(min_size=1, max_size=40),
       host=st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
       delay=st.integers(-10_000, 10_000))
def test_accepted_settings_round_trip_exactly(name: str, host: str, delay: int) -> None:
    server = f"ws://{host}/sendspin"
    try:
        accepted = _settings(name=name, server=server, output_delay_ms=str(delay))
    except firstboot.FirstbootError as exc:
        if not name.strip() or _has_control(name):
            return
        # else only the delay's range or a server URL the config refuses (no host, bad port)
        assert any("output_delay_ms" in p or "server=" in p for p in exc.problems), exc.problems
        return
    assert name.strip() and not _has_control(name)
    text = firstboot.render_player_toml(accepted)
    assert tomllib.loads(text)["player"] == accepted.player_values
    assert accepted.player_values["name"] == name and accepted.player_values["server"] == server


@given(name=st.text(min_size=1, max_size=20).filter(_has_control))
def test_names_with_control_characters_are_refused_clearly(name: str) -> None:
    with pytest.raises(firstboot.FirstbootError) as caught:
        _settings(name=name)
    why = ("must not contain control characters" if name.strip()
           else "must be a non-empty string")  # only whitespace, e.g. "\r"
    assert any(why in p for p in caught.value.problems), caught.value.problems


def test_a_name_with_delete_leaves_the_speaker_as_it_was(tmp_path: Path) -> None:
    boot, data = tmp_path / "boot", tmp_path / "data"
    boot.mkdir()
    data.mkdir()
    (boot / firstboot.SPEAKER_FILE).write_text("name=Kitchen\n")
    assert firstboot.apply(boot, data, Path(__file__).resolve().parents[2] / "board" / "hats",
                           STATE_DIR).ok
    before = (data / "config" / "player.toml").read_bytes()
    (boot / firstboot.SPEAKER_FILE).write_text("name=Kit\x7fchen\n")
    result = firstboot.apply(boot, data, Path(__file__).resolve().parents[2] / "board" / "hats",
                             STATE_DIR)
    assert not result.ok
    assert any("U+007F" in p for p in result.problems)
    assert "U+007F" in (boot / firstboot.ERRORS_FILE).read_text()
    assert (data / "config" / "player.toml").read_bytes() == before
    assert load_toml(data / "config" / "player.toml")["name"] == "Kitchen"


def test_unusual_but_valid_names_are_written_and_loaded() -> None:
    for name in ('Tom\'s "Den" \\ 🎵', "Café ☕", "a\u2028b", "👨‍👩‍👧"):
        accepted = _settings(name=name)
        data = tomllib.loads(firstboot.render_player_toml(accepted))["player"]
        assert build_config({**data, "state_dir": Path(data["state_dir"])}, {}).name == name


def _nm_ssid_bytes(keyfile: str) -> bytes:
    """The SSID as NetworkManager's keyfile plugin reads the ``ssid=`` line: a list of
    byte values ``72;105;`` or else the text itself."""
    [line] = [line for line in keyfile.splitlines() if line.startswith("ssid=")]
    value = line[len("ssid="):]
    if value.endswith(";") and all(p.isdigit() for p in value[:-1].split(";")):
        return bytes(int(p) for p in value[:-1].split(";"))
    return value.encode()


@settings(max_examples=300)
@given(ssid=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=32))
def test_an_accepted_ssid_reaches_the_wifi_keyfile_byte_for_byte(ssid: str) -> None:
    try:
        accepted = _settings(wifi_ssid=ssid, wifi_psk="correct horse", wifi_country="GB")
    except firstboot.FirstbootError as exc:
        assert len(ssid.encode()) > 32 and any("longer than 32 bytes" in p for p in exc.problems)
        return
    keyfile = firstboot.render_nm_keyfile(accepted.wifi, accepted.hostname)
    assert _nm_ssid_bytes(keyfile) == ssid.encode()
