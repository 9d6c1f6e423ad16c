"""Smoke test of the sync benchmark: the --quick path on one tiny case produces the table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from resonate_bench.harness import MISSING_DEPENDENCY, find_server_python, missing_venv_reason

pytestmark = pytest.mark.e2e

BENCH = Path(__file__).resolve().with_name("sync_bench.py")


def test_quick_bench_produces_table(tmp_path):
    pytest.importorskip("matplotlib", reason=f"{MISSING_DEPENDENCY} matplotlib (the test extra)")
    if find_server_python() is None:
        pytest.skip(missing_venv_reason(".venv-server"))
    out = tmp_path / "bench"
    res = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", "clean_+100ppm", "--seconds", "4",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    text = (out / "table.txt").read_text()
    assert "p99 us" in res.stdout  # the table is printed, too
    header = next(line for line in text.splitlines() if line.startswith("case "))
    for col in ("p50 us", "p99 us", "max us", "conv s", "1st ms", "drop/m", "spd %", "xrun",
                "cpu/m", "rss MB"):
        assert col in header
    ours = next(line for line in text.splitlines() if line.startswith("clean_+100ppm  ours"))
    assert "FAILED" not in ours
    assert "Targets" in text and ("PASS" in text or "MISS" in text)
    results = json.loads((out / "results.json").read_text())
    run = next(r for r in results["runs"] if r["player"] == "ours")
    member = run["members"][0]
    assert member["frames"] > 2 * 48000  # at least 2 s of identified audio
    assert member["p99_us"] is not None and member["p99_us"] < 5000  # sane, not a target check
    assert (out / "sync_bench.png").stat().st_size > 10_000
