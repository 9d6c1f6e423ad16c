"""Fixtures of the SD image tests: the image (built once per session, or RESONATE_IMAGE), its
partition table, and read-only views of its FAT and ext4 partitions (mtools, debugfs: no mount).

Gated: every test here runs only with RESONATE_IMAGE_TESTS=1 (root, network to Debian's mirror
and PyPI for a build; QEMU boots take minutes).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "image" / "out"

def sh(*args: str, timeout: float = 300, check: bool = True) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result.stdout


@pytest.fixture(scope="session")
def image() -> Path:
    given = os.environ.get("RESONATE_IMAGE")
    if given:
        return Path(given)
    log = OUT / "build-armel.log"
    OUT.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        rc = subprocess.run(["bash", str(REPO / "image" / "build.sh"), "--arch", "armel"],
                            stdout=f, stderr=subprocess.STDOUT, timeout=3600).returncode
    assert rc == 0, f"image/build.sh failed, see {log}:\n" + "".join(log.read_text().splitlines(True)[-40:])
    return OUT / "resonate-armel.img"


def partitions(image: Path) -> list[dict]:
    """The image's partitions (sfdisk's fields) with their byte ``offset`` and size ``bytes``."""
    table = json.loads(sh("sfdisk", "-J", str(image)))["partitiontable"]
    sector = table.get("sectorsize", 512)
    return [{**p, "offset": p["start"] * sector, "bytes": p["size"] * sector} for p in table["partitions"]]


@pytest.fixture(scope="session")
def parts(image: Path) -> list[dict]:
    return partitions(image)


class Fat:
    def __init__(self, image: Path, offset: int) -> None:
        self.spec = f"{image}@@{offset}"

    def names(self, directory: str = "") -> list[str]:
        listing = sh("mdir", "-b", "-i", self.spec, f"::/{directory}").split()
        return [line.removeprefix("::/").removeprefix(f"{directory}/") for line in listing]

    def read(self, name: str) -> str:
        return sh("mtype", "-i", self.spec, f"::/{name}")

    def copy(self, name: str, dest: Path) -> None:
        sh("mcopy", "-i", self.spec, f"::/{name}", str(dest))


class Ext4:
    def __init__(self, image: Path, offset: int) -> None:
        self.spec = f"{image}?offset={offset}"

    def cmd(self, request: str) -> str:
        return sh("debugfs", "-R", request, self.spec)

    def read(self, path: str) -> str:
        return self.cmd(f"cat {path}")

    def stat(self, path: str) -> str:
        out = self.cmd(f"stat {path}")
        assert "Inode:" in out, f"{path} not in the image"
        return out

    def mode(self, path: str) -> int:
        return int(re.search(r"Mode:\s+(\d+)", self.stat(path)).group(1), 8)

    def owner(self, path: str) -> tuple[int, int]:
        m = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", self.stat(path))
        return int(m.group(1)), int(m.group(2))

    def link(self, path: str) -> str:
        m = re.search(r'Fast link dest: "([^"]*)"', self.stat(path))
        return m.group(1) if m else self.read(path)

    def ls(self, path: str) -> list[str]:
        return [line.split()[-1] for line in self.cmd(f"ls -l {path}").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def fat(image, parts) -> Fat:
    return Fat(image, parts[0]["offset"])


@pytest.fixture(scope="session")
def arm64_image() -> Path:
    """The Zero 2 W image: never built by a test (its base stage alone takes over an hour)."""
    given = os.environ.get("RESONATE_IMAGE_ARM64")
    if not given:
        pytest.skip("set RESONATE_IMAGE_ARM64=path/to/resonate-arm64.img (bash image/build.sh --arch arm64)")
    return Path(given)


@pytest.fixture(scope="session")
def arm64_fat(arm64_image) -> Fat:
    return Fat(arm64_image, partitions(arm64_image)[0]["offset"])


@pytest.fixture(scope="session")
def root(image, parts) -> Ext4:
    return Ext4(image, parts[1]["offset"])


@pytest.fixture(scope="session")
def data(image, parts) -> Ext4:
    return Ext4(image, parts[3]["offset"])




def pytest_collection_modifyitems(config, items):
    if os.environ.get("RESONATE_IMAGE_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="image tests are slow: set RESONATE_IMAGE_TESTS=1 (see image/build.sh)")
    for item in items:
        if "tests/image/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)
