"""Smoke test of the resource budget benchmark: --quick runs both codecs and prints the figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from resonate_bench.harness import find_server_python

pytestmark = pytest.mark.e2e

BENCH = Path(__file__).resolve().with_name("budget_bench.py")


def test_quick_budget_bench_prints_cpu_and_rss(tmp_path):
    if find_server_python() is None:
        pytest.skip("no test server venv (aiosendspin 10.x)")
    res = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--no-reference", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "cpu s/min" in res.stdout and "peak MB" in res.stdout and "load average" in res.stdout
    rows = {line.split()[0]: line.split() for line in res.stdout.splitlines()
            if line.startswith(("pcm ", "flac ")) and line.split()[1] == "ours"}
    assert set(rows) == {"pcm", "flac"}
    assert rows["pcm"][2] == "pcm" and rows["flac"][2] == "flac"  # what the server streamed
    for cols in rows.values():
        assert float(cols[4]) > 0 and float(cols[5]) > 0  # cpu s/min, peak MB: measured
    assert (tmp_path / "budget.txt").read_text() in res.stdout
