"""The Pi Zero 2 W image (arm64): its boot files and a QEMU boot into the self-test.

Gated twice: RESONATE_IMAGE_TESTS=1 and RESONATE_IMAGE_ARM64=path/to/resonate-arm64.img (its
base stage alone takes over an hour under qemu-user, so no test builds it). Build it with
``bash image/build.sh --arch arm64``. The boot runs on QEMU's ``raspi3b`` (the Zero 2 W's
BCM2837 with 1 GiB) with the Zero 2 W device tree, chosen from config.txt's ``[pi02]`` section
as the firmware would (image/qemu-firmware.py --board pi02).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "image" / "out"
HATS = ("hifiberry-dac", "hifiberry-dacplus", "max98357a")
BOARD = "bcm2837-rpi-zero-2-w"


def fdtget(dtb: Path, node: str, prop: str) -> str:
    return subprocess.run(["fdtget", str(dtb), node, prop], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_boot_files_for_the_zero_2_w(arm64_fat, tmp_path):
    fat = arm64_fat
    config = fat.read("config.txt")
    assert "arm_64bit=1" in config.splitlines() and "os_prefix=slot-a/" in config.splitlines()
    assert f"device_tree=resonate-hifiberry-dac-{BOARD}.dtb" in fat.read("resonate-hat.txt")
    names = set(fat.names("slot-a"))
    assert f"{BOARD}.dtb" in names
    for hat in HATS:
        dtb = tmp_path / f"{hat}.dtb"
        fat.copy(f"slot-a/resonate-{hat}-{BOARD}.dtb", dtb)
        # the overlay landed: the card, and the I2S controller it switched on
        assert fdtget(dtb, "/sound", "simple-audio-card,name") == "ResonateDAC"
        assert fdtget(dtb, fdtget(dtb, "/__symbols__", "i2s"), "status") == "okay"


def test_qemu_boot_selftest(arm64_image):
    image = arm64_image
    log = OUT / "qemu-boot-arm64.log"
    result = subprocess.run(["bash", str(REPO / "image" / "qemu-boot-test.sh"), str(image), str(log)],
                            capture_output=True, text=True, timeout=1800)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("boot 1: pi02 config.txt -> slot-a/ (rauc.slot=A)")
    console = log.read_text(errors="replace")
    assert "RESONATE-SELFTEST-OK aarch64" in console
    for bad in ("Failed to mount", "Dependency failed for Local File Systems", "emergency mode"):
        assert bad not in console, bad
