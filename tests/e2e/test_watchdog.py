"""systemd integration: READY=1 only once the audio path works and the connection is up or
waiting; STATUS=; WATCHDOG=1 only while the writer makes progress.

The notify socket is a real datagram socket (what systemd gives a ``Type=notify`` service).
The device is ALSA's ``tee`` plugin over the paced device: what the player writes is also
written to a file, so "silence was written" is seen outside the player; a FIFO that nobody
reads makes that write block, a real stalled writer (as a wedged driver would).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from resonate_bench.harness import find_server_python, start_test_server
from resonate_bench.scenario import stop_process
from resonate_embedded.config import Config, parse_formats
from resonate_embedded.player import Player

pytestmark = pytest.mark.e2e

PERIOD_BYTES = 48000 * 20 // 1000 * 2 * 2  # one 20 ms period of 48 kHz 16-bit stereo
WATCHDOG_S = 3


def notify_socket(tmp_path: Path, monkeypatch) -> socket.socket:
    path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["dial", "listen"])
def test_ready_only_after_silence_was_written_then_watchdog_pings(tmp_path, monkeypatch, mode):
    """Dialling a server that is not there, or listening: READY=1 comes after the device
    took a period of silence and the connection is up or waiting, then STATUS and
    WATCHDOG=1."""
    server = notify_socket(tmp_path, monkeypatch)
    tee = tmp_path / "written.raw"
    connection = ({"server": f"ws://127.0.0.1:{free_port()}/sendspin"} if mode == "dial"
                  else {"listen_port": free_port()})
    messages: list[bytes] = []
    written_at_ready: list[int] = []

    async def main():
        player = Player(Config(device=f"tee:paced,{tee},raw", state_dir=tmp_path / "state",
                               encryption="off", formats=parse_formats("pcm:48000:16:2"),
                               **connection))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(player.run)
            with trio.fail_after(30):
                while not any(b"WATCHDOG=1" in m for m in messages):
                    await trio.lowlevel.wait_readable(server)
                    messages.append(server.recv(4096))
                    if messages[-1].startswith(b"READY=1"):
                        written_at_ready.append(tee.stat().st_size if tee.exists() else 0)
                        assert player.connection_ready.is_set()
            await player.stop()
            nursery.cancel_scope.cancel()

    trio.run(main)
    ready = next(i for i, m in enumerate(messages) if m.startswith(b"READY=1"))
    assert all(m.startswith(b"STATUS=starting") for m in messages[:ready]), messages
    assert written_at_ready[0] >= PERIOD_BYTES and not tee.read_bytes().strip(b"\0")
    assert any(b"WATCHDOG=1" in m and b"STATUS=" in m for m in messages[ready:])


def test_no_ready_while_the_device_cannot_be_opened(tmp_path, monkeypatch):
    """A device name that does not exist: the player runs on, retrying the device, and says
    it is starting, but never READY=1 (so an update trial with it is never committed)."""
    server = notify_socket(tmp_path, monkeypatch)
    messages: list[bytes] = []

    async def main():
        player = Player(Config(server=f"ws://127.0.0.1:{free_port()}/sendspin",
                               device="resonate_no_such_device", state_dir=tmp_path / "state",
                               encryption="off"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(player.run)
            with trio.fail_after(30):
                while not (player.connection_ready.is_set() and player.writer.stats.device_losses):
                    await trio.sleep(0.05)
            state_then = player.writer.stats.state
            await trio.sleep(2.5)  # two more attempts at the device (every OPEN_RETRY_S)
            await trio.testing.wait_all_tasks_blocked()
            while True:
                try:
                    messages.append(server.recv(4096))
                except BlockingIOError:
                    break
            assert state_then == player.writer.stats.state == "no_device"
            assert not player.writer.output_proven.is_set()
            await player.stop()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert messages and all(m.startswith(b"STATUS=starting") for m in messages), messages


def test_watchdog_pings_stop_within_watchdog_sec_when_the_writer_stalls(tmp_path):
    """A real player process plays a stream into a FIFO (through ``tee``): while the FIFO is
    read, READY and WATCHDOG=1 come; once nobody reads it, the writer's write blocks and the
    pings stop within one WatchdogSec; reading again brings them back."""
    fifo = tmp_path / "dac.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    pings: list[float] = []  # time.monotonic() of each WATCHDOG=1
    seen: list[bytes] = []
    drain = {"on": True, "bytes": 0}
    marks: dict[str, float] = {}
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"),
           "WATCHDOG_USEC": str(WATCHDOG_S * 1_000_000)}
    env.pop("WATCHDOG_PID", None)

    async def receive_notifications():
        while True:
            await trio.lowlevel.wait_readable(notify)
            message = notify.recv(4096)
            seen.append(message)
            if b"WATCHDOG=1" in message:
                pings.append(time.monotonic())

    async def drain_fifo():
        while True:
            if drain["on"]:
                await trio.lowlevel.wait_readable(reader)
                try:
                    drain["bytes"] += len(os.read(reader, 1 << 16))
                except BlockingIOError:
                    pass
            else:
                await trio.sleep(0.05)

    async def wait_for_pings(n: int, after: float, timeout: float) -> None:
        with trio.fail_after(timeout):
            while sum(t > after for t in pings) < n:
                await trio.sleep(0.05)

    async def main():
        async with start_test_server(find_server_python(), port=0,
                                     log_path=tmp_path / "server.log") as srv:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive_notifications)
                nursery.start_soon(drain_fifo)
                with open(tmp_path / "player.log", "wb") as out:
                    proc = await trio.lowlevel.open_process(
                        [sys.executable, "-m", "resonate_embedded.cli", "run",
                         "--server", srv.url, "--device", f"tee:paced,{fifo},raw",
                         "--state-dir", str(tmp_path / "state"), "--formats", "pcm:48000:16:2",
                         "--encryption", "off"], stdout=out, stderr=subprocess.STDOUT, env=env)
                try:
                    await srv.wait_event("client_added", timeout=60)
                    await srv.command({"cmd": "start", "format": {
                        "sample_rate": 48000, "bit_depth": 16, "channels": 2}})
                    with trio.fail_after(30):
                        while drain["bytes"] < 10 * 192_000:  # 10 s of audio went through
                            await trio.sleep(0.1)
                    await wait_for_pings(2, time.monotonic(), timeout=3 * WATCHDOG_S)
                    marks["stall"] = time.monotonic()
                    drain["on"] = False
                    await trio.sleep(3 * WATCHDOG_S)
                    marks["resume"] = time.monotonic()
                    drain["on"] = True
                    await wait_for_pings(2, marks["resume"], timeout=10 * WATCHDOG_S)
                finally:
                    drain["on"] = True
                    marks["exit"] = await stop_process(proc)
                nursery.cancel_scope.cancel()

    trio.run(main)
    output = (tmp_path / "player.log").read_text(errors="replace")
    assert marks["exit"] == 0, output[-3000:]
    assert seen[0].startswith(b"STATUS=starting") and any(m.startswith(b"READY=1") for m in seen)
    before = [t for t in pings if t <= marks["stall"]]
    stalled = [t for t in pings if marks["stall"] < t < marks["resume"]]
    last = f"{max(stalled) - marks['stall']:.2f} s after" if stalled else "none after"
    print(f"[watchdog] last ping {last} the FIFO stopped being read (WatchdogSec "
          f"{WATCHDOG_S} s); {len(before)} pings before, back after reading again")
    assert len(before) >= 2
    assert all(t < marks["stall"] + WATCHDOG_S for t in stalled), (stalled, marks)
