#!/usr/bin/env python3
"""The aiosendspin 10 test server plus the bench test signal (``"signal": "bench"``).

Runs ``tests/harness/resonate_bench/sendspin_test_server.py`` unchanged (same flags, commands
and events, see tests/harness/resonate_bench/README.md) with one more signal: the indexed chirps
of ``board/bench/testsignal.py``, a pure function of the frame index K like ``index``, so
chunking, clears and late joins do not change it. Run with the server venv's Python
(``.venv-server/bin/python``); it never imports resonate_embedded::

    .venv-server/bin/python board/bench/bench_server.py --port 8927 --host 192.168.7.1 \
        --advertise --discover-clients
    {"cmd": "start", "format": {"sample_rate": 48000, "bit_depth": 16, "channels": 2},
     "signal": "bench"}

From Python: ``harness.start_test_server(find_server_python(), script=BENCH_SERVER, ...)``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SERVER_SCRIPT = REPO / "resonate_embedded" / "bench" / "sendspin_test_server.py"

# Run as a script, this directory is sys.path[0]: keep its modules from shadowing others.
if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path.pop(0)


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def install() -> object:
    """Load the test server module and register the ``bench`` signal; return the module."""
    sig = _load("bench_testsignal", HERE / "testsignal.py")
    srv = _load("sendspin_test_server", SERVER_SCRIPT)
    plain = srv.make_pcm

    def make_pcm(signal_name, first_frame, frames, fmt):
        if signal_name == "bench":
            s = sig.pcm(first_frame, frames, fmt.sample_rate, fmt.bit_depth, fmt.channels)
            return srv.pack_pcm(s, fmt.bit_depth)
        return plain(signal_name, first_frame, frames, fmt)

    srv.make_pcm = make_pcm
    srv.SIGNALS = (*srv.SIGNALS, "bench")
    return srv


if __name__ == "__main__":
    sys.exit(install().main())
