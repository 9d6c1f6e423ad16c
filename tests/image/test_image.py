"""The SD image: build it, inspect it without mounting, boot it under QEMU (raspi0).

Gated: runs only with RESONATE_IMAGE_TESTS=1 (about 20 min on 2 cores, root, network to
Debian's mirror and PyPI). One command:

    RESONATE_IMAGE_TESTS=1 .venv/bin/python -m pytest -q tests/image

RESONATE_IMAGE=path/to/resonate-armel.img tests an existing image instead of building one.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "image" / "out"


def test_partitions(parts, image):
    assert [p["type"] for p in parts] == ["c", "83", "83", "83"]  # boot, root A, root B, data
    assert parts[0].get("bootable") is True
    assert all(p["offset"] % (4 << 20) == 0 for p in parts)  # aligned for SD erase blocks
    assert parts[0]["bytes"] == 256 << 20 and parts[3]["bytes"] == 448 << 20
    assert parts[1]["bytes"] == parts[2]["bytes"]  # symmetric slots
    print(f"image {image.stat().st_size / 2**20:.0f} MiB; root slots {parts[1]['bytes'] / 2**20:.0f} MiB each")


def test_boot_partition(fat):
    names = set(fat.names())
    for required in ("bootcode.bin", "start.elf", "fixup.dat", "config.txt", "tryboot.txt",
                     "speaker.txt", "resonate-hat.txt"):
        assert required in names, f"{required} missing from the FAT partition"
    assert not [n for n in names if n.startswith(("vmlinuz", "initrd.img")) or n.endswith(".dtb")]
    slot_a = set(fat.names("slot-a"))
    assert {"vmlinuz", "initrd.img", "cmdline.txt"} <= slot_a
    for hat in ("hifiberry-dac", "hifiberry-dacplus", "max98357a"):
        for board in ("bcm2835-rpi-zero", "bcm2835-rpi-zero-w"):
            assert f"resonate-{hat}-{board}.dtb" in slot_a
    assert fat.names("slot-b") == [] or set(fat.names("slot-b")) <= {".", ".."}
    config = fat.read("config.txt")
    assert "include resonate-hat.txt" in config and "upstream_kernel=1" in config
    assert re.findall(r"^os_prefix=.*$", config, re.M) == ["os_prefix=slot-a/"]
    assert "kernel=vmlinuz" in config.splitlines() and "initramfs initrd.img followkernel" in config
    assert fat.read("tryboot.txt") == config  # no trial armed
    cmdline = fat.read("slot-a/cmdline.txt").split()
    assert "ro" in cmdline and "rw" not in cmdline
    assert "root=/dev/mmcblk0p2" in cmdline and "rauc.slot=A" in cmdline
    hat = fat.read("resonate-hat.txt")
    assert "[pi0w]" in hat and "device_tree=resonate-hifiberry-dac-bcm2835-rpi-zero-w.dtb" in hat
    # the shipped speaker.txt is all comments: valid, and means "defaults"
    assert all(not line.strip() or line.lstrip().startswith("#")
               for line in fat.read("speaker.txt").splitlines())


def test_imager_manifest(image):
    manifest = json.loads((image.parent / "resonate-armel.json").read_text())
    entry = manifest["os_list"][0]
    assert entry["init_format"] == "cloudinit" and entry["devices"] == ["pi1-32bit"]
    assert entry["extract_size"] == image.stat().st_size
    assert entry["extract_sha256"] == (image.parent / (image.name + ".sha256")).read_text().split()[0]


def test_update_system(root):
    conf = root.read("/etc/rauc/system.conf")
    for line in ("compatible=resonate-embedded-armel", "bootloader=custom", "bundle-formats=-plain",
                 "device=/dev/mmcblk0p2", "device=/dev/mmcblk0p3", "bootname=A", "bootname=B",
                 "bootloader-custom-backend=/usr/lib/resonate-embedded/rauc-bootloader"):
        assert line in conf.splitlines(), line
    assert "BEGIN CERTIFICATE" in root.read("/etc/rauc/keyring.pem")
    assert root.mode("/usr/lib/resonate-embedded/rauc-bootloader") & 0o111
    assert {"vmlinuz", "initrd.img", "cmdline.txt.in"} <= set(root.ls("/usr/lib/resonate-embedded/boot"))
    release = dict(line.split("=", 1) for line in root.read("/etc/resonate-image-release").split())
    assert {"VERSION", "ARCH", "KERNEL", "BUILT"} <= set(release) and release["ARCH"] == "armel"
    kver = release["KERNEL"]
    assert "rpi-tryboot.ko" in root.ls(f"/usr/lib/modules/{kver}/updates/resonate")
    assert "rpi-tryboot" in root.read("/etc/modules-load.d/rpi-tryboot.conf")
    wants = root.ls("/etc/systemd/system/multi-user.target.wants")
    assert {"resonate-update-check.service", "resonate-update-confirm.service"} <= set(wants)
    assert "rauc.service" in root.ls("/usr/lib/systemd/system")  # rauc-service (D-Bus)


def test_player_unit(root):
    unit = root.read("/etc/systemd/system/resonate-embedded.service")
    for line in ("Type=notify", "Restart=always", "User=resonate", "SupplementaryGroups=audio",
                 "StateDirectory=resonate-embedded", "NoNewPrivileges=yes"):
        assert line in unit.splitlines(), line
    assert re.search(r"^WatchdogSec=\d+", unit, re.M)
    wants = root.ls("/etc/systemd/system/multi-user.target.wants")
    for name in ("resonate-embedded.service", "resonate-firstboot.service", "avahi-daemon.service",
                 "NetworkManager.service"):
        assert name in wants, name
    # the setup hotspot starts with a Wi-Fi radio, not with multi-user.target
    assert "resonate-setup.service" in root.ls("/etc/systemd/system/sys-subsystem-net-devices-wlan0.device.wants")
    passwd = root.read("/etc/passwd")
    entry = next(line for line in passwd.splitlines() if line.startswith("resonate:"))
    assert entry.endswith(":/usr/sbin/nologin")
    audio = next(line for line in root.read("/etc/group").splitlines() if line.startswith("audio:"))
    assert "resonate" in audio.split(":")[3].split(",")


def test_read_only_root_and_volatile_logs(root):
    fstab = [line.split() for line in root.read("/etc/fstab").splitlines()
             if line.strip() and not line.startswith("#")]
    by_mount = {f[1]: f for f in fstab}
    assert "/" not in by_mount  # the root slot comes from root= (read-only: "ro" on the cmdline)
    assert "ro" in by_mount["/boot/firmware"][3].split(",")
    assert by_mount["/var/lib/resonate-embedded"][0] == "/data/player"
    for tmp in ("/tmp", "/var/log", "/var/lib/systemd"):
        assert by_mount[tmp][2] == "tmpfs"
        root.stat(tmp)  # the mount point exists in the image (else emergency mode)
    root.stat("/var/lib/resonate-embedded")
    root.stat("/data")
    assert "Storage=volatile" in root.read("/etc/systemd/journald.conf.d/volatile.conf")
    assert "RuntimeWatchdogSec=10s" in root.read("/etc/systemd/system.conf.d/watchdog.conf")


def test_no_password_login(root):
    shadow = {line.split(":")[0]: line.split(":")[1] for line in root.read("/etc/shadow").splitlines()}
    assert shadow["root"].startswith(("!", "*"))
    assert not [u for u, pw in shadow.items() if pw and not pw.startswith(("!", "*"))]
    sshd = root.read("/etc/ssh/sshd_config.d/resonate.conf")
    assert "PasswordAuthentication no" in sshd
    assert not [n for n in root.ls("/etc/ssh") if n.startswith("ssh_host_")]  # made per speaker


def test_python_stack_files(root):
    assert root.mode("/opt/resonate-embedded/bin/resonate-embedded") & 0o111
    assert root.link("/usr/local/bin/resonate-embedded") == "/opt/resonate-embedded/bin/resonate-embedded"
    site = "/opt/resonate-embedded/lib/python3.11/site-packages"
    names = root.ls(site)
    assert any(n.startswith("alsaaudio") and n.endswith(".so") for n in names)
    assert any(n.startswith("pyalsaaudio-0.11") for n in names)
    assert "resonate_embedded" in names
    assert "include-system-site-packages = true" in root.read("/opt/resonate-embedded/pyvenv.cfg")
    assert any(n.startswith("numpy") for n in root.ls("/usr/lib/python3/dist-packages"))
    assert root.mode("/usr/local/sbin/resonate-selftest") & 0o7777 == 0o755
    # the self-test unit ships but is not enabled (the boot test adds it with systemd.wants=)
    assert "resonate-selftest.service" in root.ls("/etc/systemd/system")
    assert "resonate-selftest.service" not in root.ls("/etc/systemd/system/multi-user.target.wants")


def test_codec_modules_and_profiles(root):
    kver = [n for n in root.ls("/usr/lib/modules") if n[0].isdigit()][0]
    mods = root.ls(f"/usr/lib/modules/{kver}/updates/resonate")
    for mod in ("snd-soc-pcm5102a.ko", "snd-soc-pcm512x.ko", "snd-soc-pcm512x-i2c.ko",
                "snd-soc-max98357a.ko", "snd-soc-simple-card.ko"):
        assert mod in mods, mod
    assert "snd-soc-pcm5102a" in root.read(f"/usr/lib/modules/{kver}/modules.dep") or \
        "pcm5102a" in root.read(f"/usr/lib/modules/{kver}/modules.alias")
    assert {"hifiberry-dac.toml", "hifiberry-dacplus.toml", "max98357a.toml"} <= set(
        root.ls("/usr/share/resonate-embedded/hats"))


def test_data_partition(data, root):
    uid = int(next(line for line in root.read("/etc/passwd").splitlines()
                   if line.startswith("resonate:")).split(":")[2])
    assert data.owner("/player")[0] == uid and data.mode("/player") & 0o777 == 0o700
    toml = data.read("/config/player.toml")
    assert 'device = "hw:CARD=ResonateDAC,DEV=0"' in toml and 'name = "Resonate Speaker"' in toml
    assert data.mode("/config/nm-connections") & 0o777 == 0o700  # Wi-Fi profiles hold keys
    assert data.owner("/config/nm-connections") == (0, 0)


def test_qemu_boot_selftest(image):
    log = OUT / "qemu-boot.log"
    result = subprocess.run(["bash", str(REPO / "image" / "qemu-boot-test.sh"), str(image), str(log)],
                            capture_output=True, text=True, timeout=1200)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    console = log.read_text(errors="replace")
    assert "RESONATE-SELFTEST-OK armv6l" in console
    assert "reboot: Power down" in console
    for bad in ("Failed to mount", "Dependency failed for Local File Systems", "emergency mode"):
        assert bad not in console, bad
