"""systemd integration: READY=1, STATUS=, and WATCHDOG=1 only while the writer is alive."""

import os
import socket

import pytest
import trio

from resonate_embedded.config import Config
from resonate_embedded.player import Player

pytestmark = pytest.mark.e2e


def test_ready_status_and_watchdog_pings(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    messages: list[bytes] = []

    async def main():
        player = Player(Config(server="ws://127.0.0.1:9/sendspin", device="paced",
                               state_dir=tmp_path / "state", encryption="off"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(player.run)
            with trio.move_on_after(15):
                while not any(b"WATCHDOG=1" in m for m in messages):
                    await trio.lowlevel.wait_readable(server)
                    messages.append(server.recv(4096))
            await player.stop()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert messages[0].startswith(b"READY=1")
    assert any(b"WATCHDOG=1" in m and b"STATUS=" in m for m in messages)
