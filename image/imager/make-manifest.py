#!/usr/bin/env python3
"""Write the Raspberry Pi Imager repository JSON (OS list) for a built speaker image.

    python3 image/imager/make-manifest.py image/out/resonate-armel.img \\
        [--xz image/out/resonate-armel.img.xz] [--url https://example.org/resonate-armel.img.xz] \\
        [--arch armel|arm64] [--release-date YYYY-MM-DD] [--icon URL] [--out DIR]

writes ``resonate-<arch>.json`` (next to the image unless ``--out``), which Imager opens with
App Options -> Content repository -> "Use custom file" (2.x), the repository URL setting, or
``rpi-imager --repo resonate-armel.json``. Its entry declares ``"init_format": "cloudinit"``:
Imager (1.8 and 2.x) then offers OS customisation and writes ``user-data``,
``network-config`` and ``meta-data`` to the FAT partition, which the speaker's first boot
reads (resonate_embedded/imager.py). Without such an entry Imager 2.x treats a local image
as ``"none"`` and offers no customisation (rpi-imager doc/os_customisation_formats.md).

Fields (rpi-imager doc/json-schema/os-list-schema.json): ``url`` (default: a file:// URL of
the .xz if given, else of the .img), ``extract_size``/``extract_sha256`` of the .img,
``image_download_size``/``image_download_sha256`` of what ``url`` serves, ``release_date``
(default: the image's modification date, UTC), ``devices`` (Imager's board tags) and a
matching ``imager.devices`` list so the board chooser works with this repository alone.

Checks before writing: the image is a whole number of 512-byte sectors (Imager refuses
others) with an MBR whose first partition is FAT; the .xz is an xz stream that unpacks to
exactly the image (so Imager's extract_sha256 check cannot fail after the download).
Standard library only. Exit status 0 on success, 1 on a failed check, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import lzma
import re
import sys
from pathlib import Path
from typing import Any, BinaryIO, Iterator

CHUNK = 4 * 1024 * 1024
XZ_MAGIC = b"\xfd7zXZ\x00"
FAT_TYPES = {0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E}
# Imager's board tags (its own OS list: "Raspberry Pi Zero" -> pi1-32bit, "Raspberry Pi Zero
# 2 W" -> pi3-64bit) and what the image boots on (see image/README.md and board/).
BOARDS: dict[str, dict[str, Any]] = {
    "armel": {"name": "Raspberry Pi Zero / Zero W", "tags": ["pi1-32bit"],
              "description": "Pi Zero and Zero W (ARMv6), with a DAC HAT"},
    "arm64": {"name": "Raspberry Pi Zero 2 W", "tags": ["pi3-64bit"],
              "description": "Pi Zero 2 W (64-bit), with a DAC HAT"},
}


class CheckFailed(Exception):
    """The image or its .xz is not what the manifest would promise."""


def chunks(f: BinaryIO) -> Iterator[bytes]:
    while block := f.read(CHUNK):
        yield block


def digest(path: Path) -> tuple[int, str]:
    """(size, sha256 hex) of a file."""
    sha, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        for block in chunks(f):
            sha.update(block)
            size += len(block)
    return size, sha.hexdigest()


def check_image(path: Path) -> None:
    """A whole number of sectors, an MBR (0x55AA) whose first partition is FAT."""
    size = path.stat().st_size
    if size == 0 or size % 512:
        raise CheckFailed(f"{path}: {size} bytes is not a whole number of 512-byte sectors")
    with path.open("rb") as f:
        mbr = f.read(512)
    if mbr[510:512] != b"\x55\xaa":
        raise CheckFailed(f"{path}: no MBR boot signature")
    if mbr[446 + 4] not in FAT_TYPES:
        raise CheckFailed(f"{path}: partition 1 is type {mbr[446 + 4]:#04x}, not FAT "
                          "(Imager writes its customisation files there)")


def xz_digest(path: Path) -> tuple[int, str]:
    """(size, sha256) of what the .xz unpacks to."""
    with path.open("rb") as f:
        if f.read(len(XZ_MAGIC)) != XZ_MAGIC:
            raise CheckFailed(f"{path}: not an xz file")
    sha, size = hashlib.sha256(), 0
    try:
        with lzma.open(path, "rb") as f:
            for block in chunks(f):
                sha.update(block)
                size += len(block)
    except lzma.LZMAError as exc:
        raise CheckFailed(f"{path}: {exc}") from None
    return size, sha.hexdigest()


def manifest(image: Path, xz: Path | None, url: str | None, arch: str, release_date: str,
             icon: str) -> dict[str, Any]:
    """The OS list for ``image``; raises :class:`CheckFailed` if a check fails."""
    check_image(image)
    extract_size, extract_sha256 = digest(image)
    download, download_size, download_sha256 = image, extract_size, extract_sha256
    if xz is not None:
        if xz_digest(xz) != (extract_size, extract_sha256):
            raise CheckFailed(f"{xz} does not unpack to {image} (rebuild or recompress it)")
        download, (download_size, download_sha256) = xz, digest(xz)
    board = BOARDS[arch]
    entry = {
        "name": f"Resonate speaker ({board['name']})",
        "description": "Sendspin multi-room audio speaker. OS customisation: hostname (the "
                       "speaker's name), Wi-Fi, SSH public keys.",
        "icon": icon,
        "url": url or download.resolve().as_uri(),
        "extract_size": extract_size,
        "extract_sha256": extract_sha256,
        "image_download_size": download_size,
        "image_download_sha256": download_sha256,
        "release_date": release_date,
        "init_format": "cloudinit",
        "devices": board["tags"],
    }
    device = {**board, "icon": icon, "default": True, "matching_type": "inclusive"}
    return {"imager": {"devices": [device]}, "os_list": [entry]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("image", type=Path, help="the built image, image/out/resonate-<arch>.img")
    p.add_argument("--xz", type=Path, help="its xz-compressed copy (what Imager downloads)")
    p.add_argument("--url", help="where Imager downloads it (default: a file:// URL)")
    p.add_argument("--arch", choices=sorted(BOARDS), help="default: from the image's name")
    p.add_argument("--release-date", help="YYYY-MM-DD (default: the image's date, UTC)")
    p.add_argument("--icon", default="", help="icon URL shown in Imager's lists")
    p.add_argument("--out", type=Path, help="directory for resonate-<arch>.json")
    args = p.parse_args(argv)
    match = re.search(r"resonate-(armel|arm64)\.img$", args.image.name)
    arch = args.arch or (match[1] if match else None)
    if arch is None:
        p.error("--arch is needed: the image is not named resonate-<arch>.img")
    release_date = args.release_date or datetime.datetime.fromtimestamp(
        args.image.stat().st_mtime, datetime.timezone.utc).date().isoformat()
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", release_date):
        p.error("--release-date must be YYYY-MM-DD")
    try:
        data = manifest(args.image, args.xz, args.url, arch, release_date, args.icon)
    except (CheckFailed, OSError) as exc:
        print(f"make-manifest: {exc}", file=sys.stderr)
        return 1
    out = (args.out or args.image.parent) / f"resonate-{arch}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
