#!/usr/bin/env python3
"""What the Raspberry Pi firmware would boot from this SD image, for the QEMU boot test.

QEMU's ``raspi0`` machine has no GPU firmware: it boots the kernel, initrd, DTB and command
line it is handed (nor has ``raspi3b`` for the Zero 2 W). This script makes that choice the
way the firmware does on a Pi Zero W (``--board pi0w``) or Zero 2 W (``--board pi02``), from
the image's own FAT files (read with mtools, no mount): ``config.txt`` (``tryboot.txt``
when the previous boot asked for ``reboot "0 tryboot"``), ``include`` files, the ``[all]``,
``[pi0]``/``[pi0w]`` (or ``[pi02]``) and ``[tryboot]`` sections, ``os_prefix=`` prepended to the kernel,
initramfs, device tree and ``cmdline.txt``. It extracts the four files into OUTDIR and prints
one shell-readable line per choice (PREFIX=, CONFIG=, KERNEL=, INITRD=, DTB=, CMDLINE=).

    qemu-firmware.py IMAGE FAT_OFFSET OUTDIR [--tryboot] [--board pi0w|pi02]
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

# per board: the config.txt sections it obeys, and the device tree it loads by default
BOARDS = {
    "pi0w": ({"all", "pi0", "pi0w"}, "bcm2835-rpi-zero-w.dtb"),
    "pi02": ({"all", "pi02"}, "bcm2837-rpi-zero-2-w.dtb"),
}


def fat_read(image: str, offset: int, name: str) -> str:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    done = subprocess.run(["mtype", "-i", f"{image}@@{offset}", f"::/{name}"],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"qemu-firmware: {name} not on the FAT partition: {done.stderr.strip()}")
    return done.stdout


def fat_copy(image: str, offset: int, name: str, dest: str) -> None:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    done = subprocess.run(["mcopy", "-o", "-i", f"{image}@@{offset}", f"::/{name}", dest],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"qemu-firmware: cannot read {name}: {done.stderr.strip()}")


def settings(image: str, offset: int, name: str, tryboot: bool, sections: set[str],
             into: dict[str, str] | None = None) -> dict[str, str]:
    """The key=value settings of a config file as a board obeying `sections` reads them
    (last one wins)."""
    values = {} if into is None else into
    active = True
    for raw in fat_read(image, offset, name).splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            active = section in sections or (section == "tryboot" and tryboot)
        elif not active:
            continue
        elif line.startswith("include "):
            settings(image, offset, line.split(None, 1)[1], tryboot, sections, values)
        elif line.startswith("initramfs "):
            values["initramfs"] = line.split()[1]
        elif "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("offset", type=int)
    parser.add_argument("outdir")
    parser.add_argument("--tryboot", action="store_true")
    parser.add_argument("--board", choices=sorted(BOARDS), default="pi0w")
    args = parser.parse_args()
    sections, default_dtb = BOARDS[args.board]
    config = "tryboot.txt" if args.tryboot else "config.txt"
    values = settings(args.image, args.offset, config, args.tryboot, sections)
    prefix = values.get("os_prefix", "")
    chosen = {
        "KERNEL": prefix + values.get("kernel", "kernel.img"),
        "INITRD": prefix + values["initramfs"] if "initramfs" in values else "",
        "DTB": prefix + values.get("device_tree", default_dtb),
        "CMDLINE": prefix + values.get("cmdline", "cmdline.txt"),
    }
    print(f"PREFIX={shlex.quote(prefix)}")
    print(f"CONFIG={config}")
    for key, name in chosen.items():
        if not name:
            continue
        dest = os.path.join(args.outdir, key.lower())
        fat_copy(args.image, args.offset, name, dest)
        print(f"{key}={shlex.quote(dest)}  # {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
