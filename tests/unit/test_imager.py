"""Raspberry Pi Imager's OS customisation files -> the same settings as speaker.txt.

The fixtures are shaped line for line like Imager's generators (raspberrypi/rpi-imager):
``CustomisationGenerator::generateCloudInitUserData`` / ``generateCloudInitNetworkConfig`` /
``generateSystemdScript`` (src/customization_generator.cpp, Imager 2.x), the header and
cmdline additions of ``DownloadThread::_customizeImage`` (src/downloadthread.cpp), and the
Imager 1.8 QML generator (src/OptionsPopup.qml) for the older network-config shape.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from resonate_embedded import firstboot, imager
from resonate_embedded.config import build_config, load_toml

HATS = Path(__file__).resolve().parents[2] / "board" / "hats"
SSID = 'Home "5G" Net'
PSK_HEX = hashlib.pbkdf2_hmac("sha1", b"correct horse battery", SSID.encode(), 4096, 32).hex()
CMDLINE = "console=serial0,115200 console=tty1 root=/dev/mmcblk0p2 rootfstype=ext4 rootwait ro quiet"
HOOK = " systemd.run=/boot/firstrun.sh systemd.run_success_action=reboot " \
       "systemd.unit=kernel-command-line.target"


def ssh_key(kind: str = "ssh-ed25519", comment: str = "alice@laptop", seed: int = 1) -> str:
    blob = len(kind).to_bytes(4, "big") + kind.encode() + (32).to_bytes(4, "big") + bytes([seed]) * 32
    return f"{kind} {base64.b64encode(blob).decode()} {comment}"


KEY1, KEY2 = ssh_key(), ssh_key(comment="bob@desktop", seed=2)

# generateCloudInitUserData (hostname, timezone, keyboard, SSH with a user and keys); Imager
# prefixes "#cloud-config\n"; push() drops empty lines, so there are none.
USER_DATA = f"""#cloud-config
hostname: Kitchen
manage_etc_hosts: true
packages:
- avahi-daemon
apt:
  conf: |
    Acquire {{
      Check-Date "false";
    }};
timezone: Europe/London
keyboard:
  model: pc105
  layout: "gb"
enable_ssh: true
users:
- name: alice
  groups: users,adm,dialout,audio,netdev,video,plugdev,cdrom,games,input,gpio,spi,i2c,render,sudo
  shell: /bin/bash
  lock_passwd: false
  passwd: $y$j9T$G0T2dUuWAbQ5R0Pk0s4Ah1$0n1d1AH6VE4CsNs3Rxw5Xx2sdjnXnQ9y0qJ4oK8b7a3
  ssh_authorized_keys:
    - {KEY1}
    - {KEY2}
  sudo: ALL=(ALL) NOPASSWD:ALL
"""

# generateCloudInitNetworkConfig: the SSID's '"' escaped as \\", the derived PSK
NETWORK_CONFIG = f"""network:
  version: 2
  wifis:
    wlan0:
      dhcp4: true
      regulatory-domain: "GB"
      access-points:
        "Home \\"5G\\" Net":
          password: "{PSK_HEX}"
      optional: true
"""

# Imager 1.8 (OptionsPopup.qml): no "network:" level, renderer, hidden; country on cmdline.txt
NETWORK_CONFIG_18 = f"""version: 2
wifis:
  renderer: networkd
  wlan0:
    dhcp4: true
    optional: true
    access-points:
      "Home \\"5G\\" Net":
        password: "{PSK_HEX}"
        hidden: true
"""

META_DATA = "instance-id: rpi-imager-1764460800000\n"

# generateSystemdScript with hostname, two keys, user, hidden Wi-Fi, timezone and keyboard
FIRSTRUN = f"""#!/bin/sh

set +e

CURRENT_HOSTNAME=$(cat /etc/hostname | tr -d " \\t\\n\\r")
if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then
   /usr/lib/raspberrypi-sys-mods/imager_custom set_hostname Kitchen
else
   echo Kitchen >/etc/hostname
   sed -i "s/127.0.1.1.*$CURRENT_HOSTNAME/127.0.1.1\\tKitchen/g" /etc/hosts
fi
FIRSTUSER=$(getent passwd 1000 | cut -d: -f1)
FIRSTUSERHOME=$(getent passwd 1000 | cut -d: -f6)
if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then
   /usr/lib/raspberrypi-sys-mods/imager_custom enable_ssh -k '{KEY1}' '{KEY2}'
else
   install -o "$FIRSTUSER" -m 700 -d "$FIRSTUSERHOME/.ssh"
cat > "$FIRSTUSERHOME/.ssh/authorized_keys" <<'EOF'
{KEY1}
{KEY2}
EOF
   chown "$FIRSTUSER:$FIRSTUSER" "$FIRSTUSERHOME/.ssh/authorized_keys"
   chmod 600 "$FIRSTUSERHOME/.ssh/authorized_keys"
   echo 'PasswordAuthentication no' >>/etc/ssh/sshd_config
   systemctl enable ssh
fi
if [ -f /usr/lib/userconf-pi/userconf ]; then
   /usr/lib/userconf-pi/userconf 'alice' '$y$j9T$G0T2dUuWAbQ5R0Pk0s4Ah1$0n1d1AH6VE4CsNs3Rxw5Xx2'
else
   echo "$FIRSTUSER:$y$j9T$G0T2dUuWAbQ5R0Pk0s4Ah1$0n1d1AH6VE4CsNs3Rxw5Xx2" | chpasswd -e
   if [ "$FIRSTUSER" != "alice" ]; then
      usermod -l "alice" "$FIRSTUSER"
      usermod -m -d "/home/alice" "alice"
      groupmod -n "alice" "$FIRSTUSER"
   fi
fi
if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then
   /usr/lib/raspberrypi-sys-mods/imager_custom set_wlan  -h 'Home "5G" Net' '{PSK_HEX}' 'GB'
else
cat >/etc/wpa_supplicant/wpa_supplicant.conf <<'WPAEOF'
country=GB
ctrl_interface=DIR=/var/run/wpa_supplicant GROUP=netdev
ap_scan=1

update_config=1
network={{
\tscan_ssid=1
\tssid="Home \\"5G\\" Net"
\tkey_mgmt=WPA-PSK SAE
\tpsk={PSK_HEX}
\tieee80211w=1
}}
WPAEOF
   chmod 600 /etc/wpa_supplicant/wpa_supplicant.conf
   rfkill unblock wifi
   for filename in /var/lib/systemd/rfkill/*:wlan ; do
       echo 0 > $filename
   done
fi
if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then
   /usr/lib/raspberrypi-sys-mods/imager_custom set_keymap 'gb'
   /usr/lib/raspberrypi-sys-mods/imager_custom set_timezone 'Europe/London'
else
   rm -f /etc/localtime
   echo "Europe/London" >/etc/timezone
   dpkg-reconfigure -f noninteractive tzdata
fi
rm -f /boot/firstrun.sh
sed -i 's| systemd.run.*||g' /boot/cmdline.txt
exit 0
"""


@pytest.fixture
def card(tmp_path: Path) -> tuple[Path, Path]:
    boot, data = tmp_path / "boot", tmp_path / "data"
    boot.mkdir()
    data.mkdir()
    (boot / "cmdline.txt").write_text(CMDLINE + "\n")
    return boot, data


def imager_cloudinit(boot: Path, network: str = NETWORK_CONFIG, regdom: str = "GB") -> None:
    """What DownloadThread::_customizeImage leaves for init_format "cloudinit"."""
    (boot / "meta-data").write_text(META_DATA)
    (boot / "user-data").write_text(USER_DATA)
    (boot / "network-config").write_text(network)
    (boot / "cmdline.txt").write_text(CMDLINE + f" cfg80211.ieee80211_regdom={regdom}")


def imager_systemd(boot: Path) -> None:
    """What DownloadThread::_customizeImage leaves for init_format "systemd"."""
    (boot / "firstrun.sh").write_text(FIRSTRUN)
    (boot / "cmdline.txt").write_text(CMDLINE + " cfg80211.ieee80211_regdom=GB" + HOOK)


def apply(card):
    boot, data = card
    return firstboot.apply(boot, data, HATS, Path("/var/lib/resonate-embedded"))


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_applied(card, result) -> None:
    boot, data = card
    assert result.ok, result.problems
    config = build_config(load_toml(data / "config" / "player.toml"), {})
    assert config.name == "Kitchen" and (data / "config" / "hostname").read_text() == "kitchen\n"
    assert result.settings.wifi == firstboot.Wifi(SSID, PSK_HEX, "GB")
    text = (data / "config" / firstboot.NM_KEYFILE).read_text()
    assert f"ssid={SSID}\n" in text and f"psk={PSK_HEX}\n" in text
    keys = data / "ssh" / "authorized_keys"
    assert keys.read_text() == f"{KEY1}\n{KEY2}\n" and keys.stat().st_mode & 0o777 == 0o600
    assert not (boot / firstboot.ERRORS_FILE).exists()


def test_cloudinit_files_are_applied_like_speaker_txt(card):
    boot, _data = card
    imager_cloudinit(boot)
    result = apply(card)
    assert_applied(card, result)
    assert (boot / "cmdline.txt").read_text() == CMDLINE + " cfg80211.ieee80211_regdom=GB"
    assert str(boot / "cmdline.txt") not in result.changed  # already what it should be


def test_imager_18_network_config_takes_the_country_from_cmdline(card):
    boot, _data = card
    imager_cloudinit(boot, network=NETWORK_CONFIG_18)
    assert_applied(card, apply(card))


def test_firstrun_sh_is_parsed_never_run_and_its_hook_removed_once(card):
    boot, _data = card
    imager_systemd(boot)
    result = apply(card)
    assert_applied(card, result)
    assert result.reboot  # this boot ran kernel-command-line.target: start again, once
    assert (boot / "cmdline.txt").read_text() == CMDLINE + " cfg80211.ieee80211_regdom=GB\n"
    again = apply(card)
    assert again.ok and again.changed == [] and not again.reboot


@pytest.mark.parametrize("prepare", [imager_cloudinit, imager_systemd])
def test_second_boot_changes_nothing(card, prepare):
    boot, data = card
    prepare(boot)
    apply(card)
    before = snapshot(boot.parent)
    again = apply(card)
    assert again.ok and again.changed == [] and not again.reboot
    assert snapshot(boot.parent) == before


def test_speaker_txt_wins_key_by_key(card):
    boot, data = card
    imager_cloudinit(boot)
    (boot / "speaker.txt").write_text("name=Living Room\nhat=max98357a\n")
    result = apply(card)
    assert result.ok, result.problems
    assert result.settings.player.name == "Living Room"  # speaker.txt
    assert result.settings.wifi == firstboot.Wifi(SSID, PSK_HEX, "GB")  # Imager's
    assert result.settings.hat.name == "max98357a"


def test_a_network_in_speaker_txt_replaces_imagers_network_and_password(card):
    boot, data = card
    imager_cloudinit(boot)
    (boot / "speaker.txt").write_text("wifi_ssid=Cafe\n")  # open network; country from Imager
    result = apply(card)
    assert result.ok, result.problems
    assert result.settings.wifi == firstboot.Wifi("Cafe", "", "GB")
    assert "wifi-security" not in (data / "config" / firstboot.NM_KEYFILE).read_text()
    (boot / "speaker.txt").write_text("wifi_ssid=Cafe\nwifi_psk=espresso!\nwifi_country=it\n")
    assert apply(card).settings.wifi == firstboot.Wifi("Cafe", "espresso!", "IT")
    assert (boot / "cmdline.txt").read_text().endswith(" cfg80211.ieee80211_regdom=IT\n")


def test_merge_rules():
    speaker = {"name": (1, "A"), "wifi_psk": (2, "secretsecret")}
    from_imager = {"name": ("user-data", "B"), "wifi_ssid": ("network-config", "Net"),
                   "wifi_psk": ("network-config", "x" * 8), "wifi_country": ("cmdline.txt", "GB")}
    assert firstboot.merge(speaker, from_imager) == {
        "name": (1, "A"), "wifi_psk": (2, "secretsecret"), "wifi_country": ("cmdline.txt", "GB")}
    assert firstboot.merge({}, from_imager) == from_imager


@pytest.mark.parametrize("files, fragment", [
    ({"network-config": NETWORK_CONFIG.replace('"GB"', '"GBR"')},
     "network-config (regulatory-domain): wifi_country must be a two-letter"),
    ({"network-config": NETWORK_CONFIG.replace(PSK_HEX, "short")},
     "network-config (password): wifi_psk must be 8 to 63"),
    ({"user-data": USER_DATA.replace(KEY2, "ssh-ed25519 not-base64!")}, "SSH key"),
    ({"user-data": USER_DATA.replace("hostname: Kitchen", "hostname: true")},
     "user-data hostname: expected a text value"),
    ({"user-data": USER_DATA + "\tbad: tab\n"}, "user-data line 26: a tab"),
    ({"network-config": NETWORK_CONFIG.replace(
        "      optional", '        "Second":\n          password: ""\n      optional')},
     "more than one Wi-Fi network"),
    ({"network-config": NETWORK_CONFIG.replace("          password:", "          auth:")},
     "only 'password' and 'hidden'"),
    ({"user-data": USER_DATA.replace("timezone:", "&anchor timezone:")}, "user-data line"),
])
def test_bad_imager_values_are_reported_and_nothing_is_applied(card, files, fragment):
    boot, data = card
    imager_cloudinit(boot)
    assert apply(card).ok
    for name, text in files.items():
        (boot / name).write_text(text)
    before = snapshot(data)
    result = apply(card)
    assert not result.ok and any(fragment in p for p in result.problems), result.problems
    assert snapshot(data) == before
    report = (boot / firstboot.ERRORS_FILE).read_text()
    assert "Raspberry Pi Imager's settings (user-data, network-config) were NOT applied" in report
    assert fragment in report


def test_bad_firstrun_still_loses_its_cmdline_hook(card):
    """A bad value must not keep every boot in kernel-command-line.target."""
    boot, data = card
    imager_systemd(boot)
    (boot / "firstrun.sh").write_text(FIRSTRUN.replace("'GB'", "'Great Britain'"))
    result = apply(card)
    assert not result.ok and result.reboot
    assert any(p.startswith("firstrun.sh line 38: wifi_country") for p in result.problems), \
        result.problems
    assert (boot / "cmdline.txt").read_text() == CMDLINE + " cfg80211.ieee80211_regdom=GB\n"
    assert not (data / "config" / "player.toml").exists()
    assert not apply(card).reboot


def test_ssh_keys_are_added_to_the_existing_ones(card):
    boot, data = card
    (data / "ssh").mkdir(mode=0o700)
    bench = ssh_key("ssh-rsa", "bench", seed=3)
    (data / "ssh" / "authorized_keys").write_text(f"{bench}\n{KEY2}\n")
    imager_cloudinit(boot)
    assert apply(card).ok
    assert (data / "ssh" / "authorized_keys").read_text() == f"{bench}\n{KEY2}\n{KEY1}\n"


def test_nothing_from_imager_reads_nothing(card):
    boot, _data = card
    (boot / "meta-data").write_text(META_DATA)  # Imager writes it even with nothing chosen
    assert not imager.read(boot)


# ---- the parsers on their own ---------------------------------------------------------------

def test_yaml_subset_reads_what_imager_writes():
    doc = imager.parse_yaml(USER_DATA, "user-data")
    assert doc["hostname"] == "Kitchen" and doc["manage_etc_hosts"] is True
    assert doc["packages"] == ["avahi-daemon"]
    assert doc["apt"]["conf"] == 'Acquire {\n  Check-Date "false";\n};\n'
    assert doc["keyboard"] == {"model": "pc105", "layout": "gb"}
    assert doc["users"][0]["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert doc["users"][0]["ssh_authorized_keys"] == [KEY1, KEY2]
    runcmd = imager.parse_yaml(
        'runcmd:\n  - [ rfkill, unblock, wifi ]\n'
        '  - [ sh, -c, "for f in /var/lib/systemd/rfkill/*:wlan; do echo 0 > \\"$f\\"; done" ]\n',
        "user-data")
    assert runcmd["runcmd"][0] == "[ rfkill, unblock, wifi ]"  # opaque, never interpreted


@pytest.mark.parametrize("ssid, written", [
    ('a"b', '"a\\"b"'), ("C:\\net", '"C:\\net"'), ("Caf\u00e9 ;#: x", '"Caf\u00e9 ;#: x"')])
def test_ssids_as_imager_quotes_them(ssid, written):
    """Imager escapes only '"' in the SSID key; any other backslash is the SSID's own."""
    text = f"network:\n  wifis:\n    wlan0:\n      access-points:\n        {written}:\n" \
           '          password: ""\n'
    values = imager.from_network_config(imager.parse_yaml(text, "network-config"))
    assert values["wifi_ssid"][1] == ssid and values["wifi_psk"][1] == ""


def test_firstrun_quoting_and_open_network():
    text = ("   /usr/lib/raspberrypi-sys-mods/imager_custom set_wlan 'It'\"'\"'s mine' '' ''\n"
            "   /usr/lib/raspberrypi-sys-mods/imager_custom enable_ssh\n")
    values, keys = imager.from_firstrun(text)
    assert values == {"wifi_ssid": ("firstrun.sh line 1", "It's mine"),
                      "wifi_psk": ("firstrun.sh line 1", "")}
    assert keys == []


@pytest.mark.parametrize("before, country, after", [
    (CMDLINE + " cfg80211.ieee80211_regdom=GB" + HOOK + "\n", None,
     CMDLINE + " cfg80211.ieee80211_regdom=GB\n"),
    (CMDLINE + HOOK, "DE", CMDLINE + " cfg80211.ieee80211_regdom=DE\n"),
    (CMDLINE + " systemd.unit=rescue.target", None, CMDLINE + " systemd.unit=rescue.target"),
    ("cfg80211.ieee80211_regdom=US " + CMDLINE, "US", CMDLINE + " cfg80211.ieee80211_regdom=US\n"),
    (CMDLINE + "\n", None, CMDLINE + "\n"),
])
def test_edit_cmdline(before, country, after):
    assert imager.edit_cmdline(before, country) == after
    assert imager.edit_cmdline(after, country) == after


def test_check_ssh_key():
    assert imager.check_ssh_key(KEY1) and imager.check_ssh_key(ssh_key("ssh-rsa", ""))
    assert not imager.check_ssh_key(KEY1.replace("ssh-ed25519", "ssh-rsa", 1))  # type mismatch
    assert not imager.check_ssh_key("ssh-ed25519")
    assert not imager.check_ssh_key('command="rm -rf /" ' + KEY1)


# ---- image/imager/make-manifest.py --------------------------------------------------------

def load_make_manifest():
    import importlib.util
    path = Path(__file__).resolve().parents[2] / "image" / "imager" / "make-manifest.py"
    spec = importlib.util.spec_from_file_location("make_manifest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_image(path: Path, fat: bool = True) -> bytes:
    mbr = bytearray(512)
    mbr[446 + 4] = 0x0C if fat else 0x83
    mbr[510:512] = b"\x55\xaa"
    data = bytes(mbr) + bytes(range(256)) * 2 * 2047
    path.write_bytes(data)
    return data


def test_make_manifest_declares_cloudinit_with_checked_sizes_and_hashes(tmp_path):
    import json
    import lzma
    mm = load_make_manifest()
    img = tmp_path / "resonate-armel.img"
    data = tiny_image(img)
    xz = tmp_path / "resonate-armel.img.xz"
    xz.write_bytes(lzma.compress(data, format=lzma.FORMAT_XZ))
    assert mm.main([str(img), "--xz", str(xz), "--url", "https://example.org/r.img.xz",
                    "--release-date", "2026-11-30"]) == 0
    out = json.loads((tmp_path / "resonate-armel.json").read_text())
    entry = out["os_list"][0]
    assert entry["init_format"] == "cloudinit" and entry["devices"] == ["pi1-32bit"]
    assert entry["url"] == "https://example.org/r.img.xz" and entry["release_date"] == "2026-11-30"
    assert (entry["extract_size"], entry["extract_sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert entry["image_download_size"] == xz.stat().st_size
    assert entry["image_download_sha256"] == hashlib.sha256(xz.read_bytes()).hexdigest()
    assert out["imager"]["devices"][0]["tags"] == ["pi1-32bit"]
    # without the .xz Imager downloads the image itself, from a file:// URL by default
    assert mm.main([str(img), "--out", str(tmp_path / "o")]) == 0
    plain = json.loads((tmp_path / "o" / "resonate-armel.json").read_text())["os_list"][0]
    assert plain["url"] == img.as_uri() and plain["image_download_sha256"] == entry["extract_sha256"]


def test_make_manifest_refuses_a_stale_xz_or_a_non_pi_image(tmp_path):
    import lzma
    mm = load_make_manifest()
    img = tmp_path / "resonate-arm64.img"
    tiny_image(img)
    xz = tmp_path / "old.img.xz"
    xz.write_bytes(lzma.compress(b"\0" * 1024, format=lzma.FORMAT_XZ))
    assert mm.main([str(img), "--xz", str(xz)]) == 1
    tiny_image(img, fat=False)
    assert mm.main([str(img)]) == 1
    assert not (tmp_path / "resonate-arm64.json").exists()


def test_ab_image_country_goes_into_the_slot_command_lines(card):
    """The A/B image boots slot-x/cmdline.txt (os_prefix=); Imager writes a root cmdline.txt."""
    boot, _data = card
    (boot / "cmdline.txt").unlink()
    assert apply(card).reboot  # the image's first boot without settings: the default HAT
    imager_systemd(boot)
    (boot / "cmdline.txt").write_text(" cfg80211.ieee80211_regdom=GB" + HOOK)  # readFile was empty
    for slot, root in (("a", 2), ("b", 3)):
        (boot / f"slot-{slot}").mkdir()
        (boot / f"slot-{slot}" / "cmdline.txt").write_text(
            f"console=tty1 root=/dev/mmcblk0p{root} rootwait ro quiet rauc.slot={slot.upper()}\n")
    result = apply(card)
    assert_applied(card, result)
    assert not result.reboot  # the hook is in a file the firmware does not boot
    assert (boot / "cmdline.txt").read_text() == "cfg80211.ieee80211_regdom=GB\n"
    assert (boot / "slot-a" / "cmdline.txt").read_text() == (
        "console=tty1 root=/dev/mmcblk0p2 rootwait ro quiet rauc.slot=A cfg80211.ieee80211_regdom=GB\n")
    assert (boot / "slot-b" / "cmdline.txt").read_text().endswith(
        " rauc.slot=B cfg80211.ieee80211_regdom=GB\n")
    assert apply(card).changed == []
