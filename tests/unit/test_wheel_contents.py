"""The wheel a speaker installs holds only what a speaker runs: no test bench, no fakes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEST_ONLY = ("bench", "paced", "demo", "harness", "FakeNetwork", "fake_network", "tests/")


def test_the_speaker_wheel_has_no_test_code(tmp_path: Path):
    src = tmp_path / "src"
    shutil.copytree(REPO / "resonate_embedded", src / "resonate_embedded",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True)
    (wheel,) = (tmp_path / "dist").glob("resonate_embedded-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        sources = {n: whl.read(n).decode("utf-8", "replace") for n in names if n.endswith(".py")}
    assert "resonate_embedded/player.py" in names
    assert [n for n in names if any(t in n for t in TEST_ONLY)] == []
    assert [n for n, text in sources.items() if "class Fake" in text] == []
    # the two source-checkout conveniences import the bench lazily, and say so when it is absent
    assert sorted(n for n, text in sources.items() if "from resonate_bench" in text) == [
        "resonate_embedded/cli.py", "resonate_embedded/setup/web.py"]
