"""pytest plugin for the HIL bench: ``hil`` marker, ``--hil``/``--hil-config`` options,
fixtures. Loaded by board/bench/conftest.py (or elsewhere with ``-p board.bench.plugin``).

HIL tests are skipped unless ``--hil`` is given or ``RESONATE_HIL=1`` is set, **and** a
bench config file exists (``--hil-config``, ``$RESONATE_HIL_CONFIG``, default
board/bench/bench.toml). CI runs neither, so they are always skipped there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE.parents[1]) not in sys.path:  # make `board.bench` importable under any rootdir
    sys.path.insert(0, str(HERE.parents[1]))

from board.bench import hil  # noqa: E402

MARKER = "hil: needs the hardware-in-the-loop bench (boards, USB interface); run with --hil"


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("hil", "hardware-in-the-loop bench (board/bench)")
    g.addoption("--hil", action="store_true", default=False,
                help="run tests marked hil (also: RESONATE_HIL=1)")
    g.addoption("--hil-config", default=None,
                help="bench config TOML (default $RESONATE_HIL_CONFIG or board/bench/bench.toml)")
    g.addoption("--hil-results", default=None,
                help="keep recordings and JSON results here (default: pytest's tmp_path)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)


def _config_path(config: pytest.Config) -> Path:
    return Path(config.getoption("--hil-config") or os.environ.get("RESONATE_HIL_CONFIG")
                or hil.DEFAULT_CONFIG)


def hil_enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("--hil")) or os.environ.get("RESONATE_HIL") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = None
    if not hil_enabled(config):
        reason = "HIL bench disabled (pass --hil or set RESONATE_HIL=1)"
    elif not _config_path(config).is_file():
        reason = f"HIL bench config {_config_path(config)} not found (see board/bench/README.md)"
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "hil" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def bench_config(pytestconfig: pytest.Config) -> hil.BenchConfig:
    return hil.load_config(_config_path(pytestconfig))


@pytest.fixture(scope="session")
def boards(bench_config: hil.BenchConfig) -> list[hil.Board]:
    """Every configured board, checked reachable over ssh with its player service active."""
    out = [hil.Board(b) for b in bench_config.boards]
    for b in out:
        if not b.reachable():
            pytest.fail(f"board {b.name} ({b.cfg.ssh}) is not reachable over ssh")
        if not b.is_active():
            b.restart_service()
    return out


@pytest.fixture
def two_boards(boards: list[hil.Board]) -> list[hil.Board]:
    if len(boards) < 2:
        pytest.skip("needs two boards in the bench config")
    return boards[:2]


@pytest.fixture
def results_dir(pytestconfig: pytest.Config, request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    base = pytestconfig.getoption("--hil-results")
    if not base:
        return tmp_path
    d = Path(base) / request.node.name.replace("/", "_")
    d.mkdir(parents=True, exist_ok=True)
    return d
