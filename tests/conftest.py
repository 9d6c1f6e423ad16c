"""Suite-wide rule: with RESONATE_REQUIRE_ALL=1 in the environment (the README's test command,
which .ci/run runs), a test skipped because something it needs is missing — a skip reason that
starts with "missing server venv:" or "missing dependency:" — is reported as failed, so a green
run means every end-to-end test ran. Other skips (the image tests' RESONATE_IMAGE_TESTS gate,
hardware-only cases) stay skips."""

from __future__ import annotations

import os

import pytest

from resonate_bench.harness import MISSING_DEPENDENCY, MISSING_VENV

pytest_plugins = ["pytester"]

REQUIRE_ALL = "RESONATE_REQUIRE_ALL"


def skip_reason(report: pytest.TestReport) -> str:
    """The reason of a skipped test's report ("" when pytest did not record one)."""
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        return report.longrepr[2].removeprefix("Skipped: ")
    return ""


def missing_requirement(report: pytest.TestReport) -> str | None:
    """The skip reason when `report` is a skip for a missing dependency, else None."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return None
    reason = skip_reason(report)
    return reason if reason.startswith((MISSING_VENV, MISSING_DEPENDENCY)) else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    if os.environ.get(REQUIRE_ALL) != "1":
        return
    reason = missing_requirement(report)
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_ALL}=1 and this test would be skipped: {reason}"
