"""speaker.txt -> player TOML, NetworkManager Wi-Fi keyfile, HAT selection; a bad file never bricks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from resonate_embedded import firstboot
from resonate_embedded.config import build_config, load_toml

HATS = Path(__file__).resolve().parents[2] / "board" / "hats"
KEYFILE = Path("config") / firstboot.NM_KEYFILE

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


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def keyfile(data: Path) -> dict[str, dict[str, str]]:
    """The keyfile as {section: {key: value}} (and its exact text is checked elsewhere)."""
    sections: dict[str, dict[str, str]] = {}
    for line in (data / KEYFILE).read_text().splitlines():
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            current[key] = value
    return sections


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
    assert (data / KEYFILE).stat().st_mode & 0o777 == 0o600
    assert not (data / "config" / "wpa_supplicant-wlan0.conf").exists()
    expected = hashlib.pbkdf2_hmac("sha1", b"correct horse battery", b'My "Home" Net', 4096, 32).hex()
    assert keyfile(data) == {
        "connection": {"id": "resonate-wifi", "uuid": firstboot.WIFI_UUID, "type": "wifi",
                       "interface-name": "wlan0", "autoconnect": "true"},
        "wifi": {"mode": "infrastructure", "ssid": 'My "Home" Net', "hidden": "true"},
        "wifi-security": {"key-mgmt": "wpa-psk", "psk": expected},
        "ipv4": {"dhcp-hostname": "living-room", "method": "auto"},
        "ipv6": {"addr-gen-mode": "default", "dhcp-hostname": "living-room", "method": "auto"}}
    assert "correct horse" not in (data / KEYFILE).read_text()
    assert (data / "config" / "hostname").read_text() == "living-room\n"
    hat_txt = (boot / firstboot.HAT_FILE).read_text()
    assert "device_tree=resonate-hifiberry-dacplus-bcm2835-rpi-zero-w.dtb" in hat_txt
    assert result.reboot  # the HAT changed
    assert not (boot / firstboot.ERRORS_FILE).exists()


def test_a_hat_profile_with_an_amplifier_line_configures_the_amplifier(card, tmp_path):
    boot, data = card
    hats = tmp_path / "hats"
    hats.mkdir()
    profile = (HATS / "max98357a.toml").read_text()
    (hats / "amp-board.toml").write_text(profile.replace('name = "max98357a"', 'name = "amp-board"')
                                         + "\n[amplifier]\ngpio_line = 26\nactive_low = true\n"
                                           "warmup_ms = 300\n")
    (boot / firstboot.SPEAKER_FILE).write_text("hat=amp-board\n")
    assert firstboot.apply(boot, data, hats, Path("/var/lib/resonate-embedded")).ok
    config = build_config(load_toml(data / "config" / "player.toml"), {})
    assert (config.amp_gpio_line, config.amp_active_low, config.amp_warmup_ms) == (26, True, 300)
    assert config.amp_gpio_chip == "gpiochip0"  # the player's default
    run(card, GOOD)  # a board without one: no amplifier line
    assert build_config(load_toml(data / "config" / "player.toml"), {}).amp_gpio_line is None


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
    assert not (data / KEYFILE).exists()
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
    before = snapshot(data)
    hat_before = (boot / firstboot.HAT_FILE).read_bytes()
    result = run(card, text)
    if text.startswith("name=   "):
        # an empty name means "the default name", which is valid
        assert result.ok
        return
    assert not result.ok and not result.reboot
    assert any(fragment in p for p in result.problems), result.problems
    assert snapshot(data) == before and (boot / firstboot.HAT_FILE).read_bytes() == hat_before
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
    assert "wifi-security" not in keyfile(data)  # an open network: no security section
    hexpsk = "AB" * 32
    assert run(card, f"wifi_ssid=cafe\nwifi_psk={hexpsk}\nwifi_country=FR\n").ok
    assert keyfile(data)["wifi-security"] == {"key-mgmt": "wpa-psk", "psk": hexpsk.lower()}


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


@pytest.mark.parametrize("ssid, written", [
    ("Home", "Home"),
    ('My "Home" Net #2', 'My "Home" Net #2'),
    ("a;b", "97;59;98;"),                       # ';' would be a list separator
    ("back\\slash", "98;97;99;107;92;115;108;97;115;104;"),
    (" edge", "32;101;100;103;101;"),           # GLib drops a leading space
    ("Caf\u00e9", "67;97;102;195;169;"),        # UTF-8 bytes, as NetworkManager writes them
    ("16;17;", "49;54;59;49;55;59;"),          # never read back as a byte list by mistake
])
def test_keyfile_ssid_round_trips_through_networkmanagers_rules(ssid, written):
    assert firstboot.keyfile_ssid(ssid) == written
    if written.endswith(";"):
        assert bytes(int(b) for b in written.rstrip(";").split(";")) == ssid.encode()


def test_keyfile_for_a_special_ssid_and_wifi_country_in_cmdline(card):
    boot, data = card
    (boot / "cmdline.txt").write_text("console=tty1 root=/dev/mmcblk0p2 rootwait ro quiet\n")
    result = run(card, "wifi_ssid=Caf\u00e9;Gast\nwifi_psk=12345678\nwifi_country=de\n")
    assert result.ok, result.problems
    assert keyfile(data)["wifi"]["ssid"] == "".join(f"{b};" for b in "Caf\u00e9;Gast".encode())
    assert (boot / "cmdline.txt").read_text() == (
        "console=tty1 root=/dev/mmcblk0p2 rootwait ro quiet cfg80211.ieee80211_regdom=DE\n")
    changed = run(card, "wifi_ssid=x\nwifi_psk=12345678\nwifi_country=FR\n")
    assert not changed.reboot  # a new country takes effect at the next start, no extra reboot
    assert (boot / "cmdline.txt").read_text().endswith(" quiet cfg80211.ieee80211_regdom=FR\n")
    again = run(card, "wifi_ssid=x\nwifi_psk=12345678\nwifi_country=FR\n")
    assert again.changed == [] and not again.reboot


def test_no_wifi_leaves_the_country_in_cmdline_alone(card):
    boot, _data = card
    line = "console=tty1 rootwait cfg80211.ieee80211_regdom=GB ro\n"
    (boot / "cmdline.txt").write_text(line)
    assert run(card, "name=Kitchen\n").ok
    assert (boot / "cmdline.txt").read_text() == line
