"""The HIL bench plugin for tests under board/bench (see plugin.py and README.md).

pytest only reads a conftest's command-line options when its directory is named on the
command line, so run the bench as ``python -m pytest board/bench --hil``.
"""

import sys
from pathlib import Path

if str(Path(__file__).resolve().parents[2]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from board.bench.plugin import *  # noqa: E402,F401,F403  (hooks and fixtures)
