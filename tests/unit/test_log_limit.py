"""Input-provoked logging stays bounded."""

from __future__ import annotations

import logging

from resonate_embedded.log_limit import LogLimiter


def test_one_line_per_kind_per_interval_then_a_count(caplog, monkeypatch):
    now = [0]
    monkeypatch.setattr("resonate_embedded.log_limit.local_now_us", lambda: now[0])
    limiter = LogLimiter(logging.getLogger("t"), interval_us=1000, max_kinds=3)
    with caplog.at_level(logging.INFO):
        for _ in range(100):
            limiter.log(logging.ERROR, "bad", "bad input %d", 7)
        now[0] = 2000
        limiter.log(logging.ERROR, "bad", "bad input %d", 8)
        for kind in range(50):
            limiter.log(logging.WARNING, f"type-{kind}", "unknown type")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:2] == ["bad input 7", "bad input 8 (and 99 more like it not logged)"]
    assert lines[2:] == ["unknown type", "unknown type",
                         "more than 3 kinds of bad input: further kinds are not logged"]
