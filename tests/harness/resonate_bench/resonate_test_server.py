#!/usr/bin/env python3
"""Real Resonate test server: aioresonate 0.13.x driven over stdin/stdout JSON lines.

Run with the venv made by ``setup_legacy_venvs.sh`` (``.venv-resonate``); it must NOT
import anything from resonate_embedded::

    .venv-resonate/bin/python tests/harness/resonate_bench/resonate_test_server.py --port 0

Serves ``/resonate``.  Commands, events and the index test signal are those of
``pull_server_core.py`` (see the bench README).  No ``volume``/``mute``: Resonate has no
``server/command``.  The server clock is the event loop's (CLOCK_MONOTONIC µs).
"""

from __future__ import annotations

import sys

from aioresonate.server import server as server_module
from aioresonate.server import stream as stream_module
from aioresonate.server.server import ClientAddedEvent, ClientRemovedEvent, ResonateServer
from aioresonate.server.stream import AudioFormat, MediaStream
from pull_server_core import ServerApi, main

API = ServerApi(
    dist="aioresonate",
    path="/resonate",
    server_cls=ResonateServer,
    server_module=server_module,
    stream_module=stream_module,
    media_stream=MediaStream,
    audio_format=AudioFormat,
    client_added=ClientAddedEvent,
    client_removed=ClientRemovedEvent,
    listener_gets_server=False,
    remote_volume=False,
)

if __name__ == "__main__":
    sys.exit(main(API))
