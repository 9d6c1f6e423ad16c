#!/usr/bin/env python3
"""Real Sendspin v1 test server: aiosendspin 1.x ("S1a") or 2.x ("S1") over JSON lines.

Run with a venv made by ``setup_legacy_venvs.sh`` (``.venv-sendspin1`` or
``.venv-sendspin2``); it must NOT import anything from resonate_embedded::

    .venv-sendspin2/bin/python tests/harness/resonate_bench/sendspin_v1_test_server.py --port 0

Serves ``/sendspin`` with the pull API (``group.play_media(MediaStream)``) both versions
share.  Commands, events and the index test signal are those of ``pull_server_core.py``
(see the bench README); ``volume``/``mute`` send ``server/command``.  The server clock is
the event loop's (CLOCK_MONOTONIC µs).
"""

from __future__ import annotations

import sys

from aiosendspin.server import AudioFormat, ClientAddedEvent, ClientRemovedEvent, SendspinServer
from aiosendspin.server import server as server_module
from aiosendspin.server import stream as stream_module
from aiosendspin.server.stream import MediaStream
from pull_server_core import ServerApi, main

API = ServerApi(
    dist="aiosendspin",
    path="/sendspin",
    server_cls=SendspinServer,
    server_module=server_module,
    stream_module=stream_module,
    media_stream=MediaStream,
    audio_format=AudioFormat,
    client_added=ClientAddedEvent,
    client_removed=ClientRemovedEvent,
    listener_gets_server=True,
    remote_volume=True,
)

if __name__ == "__main__":
    sys.exit(main(API))
