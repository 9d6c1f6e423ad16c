"""The setup hotspot on the SD image, under QEMU with two virtual radios (mac80211_hwsim).

Gated like ``test_image.py``: RESONATE_IMAGE_TESTS=1, and RESONATE_IMAGE=path/to/resonate-armel.img
(an image is not built here). One boot of about 6-10 minutes on 2 cores:

    RESONATE_IMAGE_TESTS=1 RESONATE_IMAGE=image/out/resonate-armel.img \\
        .venv/bin/python -m pytest -q tests/image/test_hotspot_qemu.py

The guest runs ``resonate-selftest-hotspot`` (image/rootfs/usr/local/sbin): a speaker without
Wi-Fi opens its hotspot, a second radio plays the phone (scan, WPA2 association, DHCP lease,
the page over HTTP) and then the home network the form is submitted for, which the speaker
joins over the radio.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.environ.get("RESONATE_IMAGE_TESTS") != "1" or not os.environ.get("RESONATE_IMAGE"),
    reason="QEMU image tests are slow: set RESONATE_IMAGE_TESTS=1 and RESONATE_IMAGE=<image>")

SPEAKER_TXT = """\
# injected by tests/image/test_hotspot_qemu.py: no Wi-Fi, so the setup hotspot opens
name=QemuSpeaker
hat=hifiberry-dac
"""

PROOFS = (
    "ok: hotspot up on wlan0",
    "ok: AP named after the speaker: Speaker-QemuSpeaker-setup",
    "ok: phone's scan shows 'Speaker-QemuSpeaker-setup:WPA2'",
    "ok: phone associated and leased 192.168.4.",
    "ok: speaker's dnsmasq: DHCPACK(wlan0) 192.168.4.",
    "ok: captive DNS: connectivitycheck.gstatic.com -> 192.168.4.1",
    "ok: setup page fetched from 192.168.4.",
    "ok: form accepted: 'Joining TestHome'",
    "ok: speaker joined 'TestHome' over the radio",
    "ok: hotspot closed",
    "ok: speaker.txt on the FAT partition has wifi_ssid=TestHome",
    "ok: regulatory country GB set (nl80211)",
    "ok: player still active",
)


def test_setup_hotspot_with_virtual_radios(tmp_path: Path) -> None:
    speaker_txt = tmp_path / "speaker.txt"
    speaker_txt.write_text(SPEAKER_TXT)
    # The speaker gets an address here (its own hotspot), so at first boot the player would say
    # where it is through the DAC: QEMU's raspi0 has no I2S, and opening it wedges the emulator.
    # The flag file marks that as done.
    spoken = tmp_path / "where-spoken"
    spoken.write_text("")
    log = tmp_path / "qemu-hotspot.log"
    env = {**os.environ, "SELFTEST_UNIT": "resonate-selftest-hotspot.service",
           "SPEAKER_TXT": str(speaker_txt), "DATA_FILES": f"{spoken}=/player/where-spoken",
           "QEMU_TIMEOUT": "1200"}
    result = subprocess.run(["bash", str(REPO / "image" / "qemu-boot-test.sh"),
                             os.environ["RESONATE_IMAGE"], str(log)],
                            capture_output=True, text=True, timeout=1800, env=env)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    console = log.read_text(errors="replace")
    assert "RESONATE-SELFTEST-OK hotspot" in console
    missing = [proof for proof in PROOFS if proof not in console]
    assert not missing, missing
