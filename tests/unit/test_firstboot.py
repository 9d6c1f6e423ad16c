"""speaker.txt -> player TOML, Wi-Fi config, HAT selection; a bad file never bricks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from resonate_embedded import firstboot
from resonate_embedded.config import build_config, load_toml

HATS = Path(__file__).resolve().parents[2] / "board" / "hats"

GOOD = """\
# my speaker
wifi_ssid = My "Home" Net
wifi_psk=correct horse battery
wifi_country=gb
name=Living Room
server=ws://192.168.1.10:8927/sendspin
hat=hifiberry-dacplus
output_delay_ms=25
"""


@pytest.fixture
def card(tmp_path: Path) -> tuple[Path, Path]:
    boot, data = tmp_path / "boot", tmp_path / "data"
    boot.mkdir()
    data.mkdir()
    return boot, data


def run(card, text: str | bytes | None):
    boot, data = card
    if text is not None:
        path = boot / firstboot.SPEAKER_FILE
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return firstboot.apply(boot, data, HATS, Path("/var/lib/resonate-embedded"))


def test_profiles_are_valid_data():
    hats = firstboot.load_hats(HATS)
    names = {h.name for h in hats.values()}
    assert {"hifiberry-dac", "hifiberry-dacplus", "max98357a"} <= names
    for hat in hats.values():
        assert hat.card == "ResonateDAC" and hat.device == "hw:CARD=ResonateDAC,DEV=0"
        assert 1_000 <= hat.period_us <= 100_000 and 2 <= hat.periods <= 64
        assert 0 <= hat.output_latency_us < 1_000_000
    assert hats["pcm5102a"].name == "hifiberry-dac"  # aliases


def test_good_file_writes_player_config_wifi_and_hat(card):
    boot, data = card
    result = run(card, GOOD)
    assert result.ok and not result.problems, result.problems
    values = load_toml(data / "config" / "player.toml")
    config = build_config(values, {})
    assert config.name == "Living Room"
    assert config.server == "ws://192.168.1.10:8927/sendspin"
    assert config.output_delay_ms == 25
    assert config.device == "hw:CARD=ResonateDAC,DEV=0"
    assert config.period_us == 20_000 and config.periods == 8
    assert str(config.state_dir) == "/var/lib/resonate-embedded"
    wpa = (data / "config" / "wpa_supplicant-wlan0.conf")
    assert wpa.stat().st_mode & 0o777 == 0o600
    text = wpa.read_text()
    assert "country=GB" in text
    assert "ssid=" + 'My "Home" Net'.encode().hex() in text
    expected = hashlib.pbkdf2_hmac("sha1", b"correct horse battery", b'My "Home" Net', 4096, 32).hex()
    assert f"psk={expected}" in text and "correct horse" not in text
    assert (data / "config" / "hostname").read_text() == "living-room\n"
    hat_txt = (boot / firstboot.HAT_FILE).read_text()
    assert "device_tree=resonate-hifiberry-dacplus-bcm2835-rpi-zero-w.dtb" in hat_txt
    assert result.reboot  # the HAT changed
    assert not (boot / firstboot.ERRORS_FILE).exists()


def test_second_run_changes_nothing(card):
    run(card, GOOD)
    again = run(card, GOOD)
    assert again.ok and again.changed == [] and not again.reboot


def test_fat_file_modes_do_not_count_as_changes(card):
    boot, _data = card
    run(card, GOOD)
    (boot / firstboot.HAT_FILE).chmod(0o755)  # vfat mounted with fmask=0022
    again = run(card, GOOD)
    assert again.changed == [] and not again.reboot


def test_hat_change_reboots_once_never_in_a_loop(card):
    boot, _data = card
    assert run(card, GOOD).reboot
    (boot / firstboot.HAT_FILE).write_text("something the firmware rewrote\n")
    again = run(card, GOOD)  # the same HAT choice again: rewrite, but no second reboot
    assert not again.reboot and str(boot / firstboot.HAT_FILE) in again.changed


def test_no_file_first_boot_writes_defaults_then_keeps_them(card):
    boot, data = card
    result = run(card, None)
    assert result.ok
    config = build_config(load_toml(data / "config" / "player.toml"), {})
    assert config.name == firstboot.DEFAULT_NAME and config.server is None
    assert not (data / "config" / "wpa_supplicant-wlan0.conf").exists()
    assert "resonate-hifiberry-dac-" in (boot / firstboot.HAT_FILE).read_text()
    run(card, GOOD)
    (boot / firstboot.SPEAKER_FILE).unlink()
    kept = run(card, None)
    assert kept.ok and kept.changed == []
    assert build_config(load_toml(data / "config" / "player.toml"), {}).name == "Living Room"


@pytest.mark.parametrize("text, fragment", [
    ("wifi_ssid=x\nwifi_psk=short\nwifi_country=GB\n", "wifi_psk must be 8 to 63"),
    ("wifi_ssid=x\nwifi_psk=longenough\n", "wifi_country must be a two-letter"),
    ("wifi_ssid=x\nwifi_psk=longenough\nwifi_country=GBR\n", "line 3: wifi_country"),
    ("wifi_psk=longenough\n", "wifi_ssid is missing"),
    ("wifi_ssid=" + "x" * 33 + "\n", "longer than 32 bytes"),
    ("hat=nonexistent\n", "hat 'nonexistent' is not known"),
    ("server=http://example\n", "line 1: server="),
    ("output_delay_ms=abc\n", "output_delay_ms must be a whole number"),
    ("output_delay_ms=99999\n", "output_delay_ms=99999"),
    ("name=   \n", ""),
    ("colour=blue\n", "unknown setting 'colour'"),
    ("name=a\nname=b\n", "line 2: name is set twice"),
    ("just some words\n", "line 1: expected key=value"),
])
def test_bad_file_keeps_previous_settings_and_reports(card, text, fragment):
    boot, data = card
    assert run(card, GOOD).ok
    before = {p.name: p.read_bytes() for p in (data / "config").iterdir()}
    hat_before = (boot / firstboot.HAT_FILE).read_bytes()
    result = run(card, text)
    if text.startswith("name=   "):
        # an empty name means "the default name", which is valid
        assert result.ok
        return
    assert not result.ok and not result.reboot
    assert any(fragment in p for p in result.problems), result.problems
    after = {p.name: p.read_bytes() for p in (data / "config").iterdir()}
    assert after == before and (boot / firstboot.HAT_FILE).read_bytes() == hat_before
    report = (boot / firstboot.ERRORS_FILE).read_text()
    assert "NOT applied" in report and fragment in report
    # fixing the file clears the report
    assert run(card, GOOD).ok and not (boot / firstboot.ERRORS_FILE).exists()


def test_bad_file_on_first_boot_leaves_no_config(card):
    boot, data = card
    result = run(card, "hat=nope\n")
    assert not result.ok
    assert not (data / "config" / "player.toml").exists()
    assert (boot / firstboot.ERRORS_FILE).exists()


def test_tolerates_bom_crlf_quotes_comments_and_case(card):
    text = '\ufeff# comment\r\nWIFI_SSID = "  Spaced  "\r\nWifi_Psk="12345678"\r\nwifi_country=de\r\n\r\nHat=PCM5102A\r\n'
    result = run(card, text)
    assert result.ok, result.problems
    assert result.settings.wifi.ssid == "  Spaced  "
    assert result.settings.hat.name == "hifiberry-dac"


def test_open_network_and_hex_psk(card):
    boot, data = card
    assert run(card, "wifi_ssid=cafe\nwifi_country=FR\n").ok
    assert "key_mgmt=NONE" in (data / "config" / "wpa_supplicant-wlan0.conf").read_text()
    hexpsk = "ab" * 32
    assert run(card, f"wifi_ssid=cafe\nwifi_psk={hexpsk}\nwifi_country=FR\n").ok
    assert f"psk={hexpsk}" in (data / "config" / "wpa_supplicant-wlan0.conf").read_text()


def test_non_utf8_file_is_read_as_windows_text(card):
    result = run(card, "name=Caf\xe9\n".encode("cp1252"))
    assert result.ok and result.settings.player.name == "Café"


def test_huge_file_is_refused(card):
    result = run(card, "#" * (firstboot.MAX_FILE_BYTES + 1))
    assert not result.ok and "larger than" in result.problems[0]


def test_toml_escaping_round_trips(card):
    boot, data = card
    name = 'Kid\'s "Room" \\ ünï'
    assert run(card, f"name={name}\n").ok
    assert build_config(load_toml(data / "config" / "player.toml"), {}).name == name


@pytest.mark.parametrize("name, label", [
    ("Living Room", "living-room"), ("Küche", "k-che"), ("!!!", "resonate-speaker"),
    ("a" * 80, "a" * 63)])
def test_hostname(name, label):
    assert firstboot.hostname_for(name) == label


def test_main_never_fails(card, tmp_path):
    boot, data = card
    (boot / firstboot.SPEAKER_FILE).write_text("hat=nope\n")
    assert firstboot.main(["--boot", str(boot), "--data", str(data), "--hats", str(HATS)]) == 0
    # an internal failure (hats dir missing) is logged, not raised
    assert firstboot.main(["--boot", str(boot), "--data", str(data),
                           "--hats", str(tmp_path / "missing")]) == 0
