"""Hardware-in-the-loop sync bench: test signal, recording analysis, pytest HIL plugin.

See board/bench/README.md. ``testsignal`` and ``analysis`` need only numpy (they also run
inside the test server's venv and on any bench host).
"""
