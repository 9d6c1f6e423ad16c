"""tests/conftest.py's CI rule, on a throw-away suite run by pytest itself: under
RESONATE_REQUIRE_ALL=1 a skip for a missing venv or dependency fails the run; other skips
(and every skip without the variable) stay skips."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"
SUITE = '''
import pytest
from resonate_bench.harness import MISSING_DEPENDENCY, missing_venv_reason, requires_venv

@requires_venv(None, ".venv-sendspin9")
def test_needs_a_venv():
    pass

def test_needs_a_tool():
    pytest.skip(f"{MISSING_DEPENDENCY} rauc")

@pytest.mark.skip(reason="image tests are slow: set RESONATE_IMAGE_TESTS=1")
def test_gated():
    pass

def test_runs():
    pass
'''


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def test_without_the_variable_missing_things_skip(suite, monkeypatch):
    monkeypatch.delenv("RESONATE_REQUIRE_ALL", raising=False)
    result = suite.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines(["*missing server venv: .venv-sendspin9 (run *setup_legacy_venvs.sh)"])


def test_with_the_variable_missing_things_fail_and_gates_still_skip(suite, monkeypatch):
    monkeypatch.setenv("RESONATE_REQUIRE_ALL", "1")
    result = suite.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=1, errors=1, failed=1)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*RESONATE_REQUIRE_ALL=1 and this test would be skipped: "
                                 "missing dependency: rauc*"])
