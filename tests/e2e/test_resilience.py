"""Bad input is survived; a restarted server gets its speaker back."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trio
from trio_websocket import serve_websocket

from resonate_bench.harness import find_server_python, start_test_server
from resonate_bench.scenario import stop_process
from resonate_embedded.config import Config
from resonate_embedded.player import Player

pytestmark = pytest.mark.e2e

HOSTILE = [
    "not json at all",
    '{"type": 5}',
    '{"type": "server/command", "payload": {"player": {"command": "volume", "volume": "loud"}}}',
    '{"type": "server/command", "payload": {"player": {"command": "volume", "volume": 1e999}}}',
    '{"type": "stream/start", "payload": {"player": {"codec": "mp3", "sample_rate": 48000, '
    '"channels": 2, "bit_depth": 16}}}',
    '{"type": "stream/start", "payload": {"player": {"codec": "flac", "sample_rate": 48000, '
    '"channels": 2, "bit_depth": 16, "codec_header": "AAAA"}}}',
    '{"type": "server/time", "payload": {"client_transmitted": [], "server_received": 1}}',
    '{"type": "group/update", "payload": {"playback_state": 7}}',
    '{"type": "future/thing", "payload": {"x": 1}}',
    "[" * 50000,
    b"\x04\x00\x01",                        # truncated audio header
    b"\x04" + b"\x00" * 8 + b"\x01\x02\x03",  # audio outside a stream, odd size
    b"",
    '{"type": "stream/start", "payload": {"player": {"codec": "pcm", "sample_rate": 48000, '
    '"channels": 2, "bit_depth": 16}}}',
    b"\x04" + (10**15).to_bytes(8, "big") + b"\x00" * 7,  # not a whole frame
    b"\x04" + (-(2**63)).to_bytes(8, "big", signed=True) + b"\x00" * 8,  # absurd timestamp
]


def test_hostile_server_input_is_survived(tmp_path):
    received: list[dict] = []

    async def handler(request):
        ws = await request.accept()
        received.append(json.loads(await ws.get_message()))
        await ws.send_message(json.dumps({"type": "server/hello", "payload": {
            "server_id": "evil", "name": "Evil", "version": 1, "active_roles": ["player@v1"]}}))
        for item in HOSTILE:
            await ws.send_message(item)
        await ws.send_message(json.dumps({"type": "server/command", "payload": {
            "player": {"command": "volume", "volume": 33}}}))
        with trio.move_on_after(10):
            while True:
                msg = json.loads(await ws.get_message())
                received.append(msg)
                if msg["type"] == "client/state" and msg["payload"].get("player", {}).get("volume") == 33:
                    break

    async def main():
        async with trio.open_nursery() as nursery:
            servers = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
            port = servers.port
            player = Player(Config(server=f"ws://127.0.0.1:{port}/sendspin", device="paced",
                                   state_dir=tmp_path, encryption="off"))
            nursery.start_soon(player.run)
            with trio.fail_after(20):
                while not any(m["type"] == "client/state" and
                              m["payload"].get("player", {}).get("volume") == 33 for m in received):
                    await trio.sleep(0.05)
            assert player.state.volume == 33
            await player.stop()
            nursery.cancel_scope.cancel()

    trio.run(main)
    types = [m["type"] for m in received]
    assert types[0] == "client/hello"
    assert "client/time" in types, "clock sync stopped after the hostile input"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_speaker_comes_back_after_a_server_restart(tmp_path):
    """The server is killed (SIGKILL) mid-stream and comes back 5 s later on the same port:
    the speaker reconnects within 3 s of its return and plays again, on its own."""
    port = free_port()
    log = tmp_path / "restart.plog"
    fmt = {"cmd": "start", "format": {"sample_rate": 48000, "bit_depth": 16, "channels": 2}}

    async def main():
        cmd = [sys.executable, "-m", "resonate_embedded.cli", "run",
               "--server", f"ws://127.0.0.1:{port}/sendspin", "--device", f"paced:LOG={log}",
               "--state-dir", str(tmp_path / "state"), "--formats", "pcm:48000:16:2", "--encryption", "off"]
        with open(tmp_path / "player.log", "wb") as out:
            proc = await trio.lowlevel.open_process(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            async with start_test_server(find_server_python(), port=port) as srv:
                first = await srv.wait_event("client_added", timeout=30)
                await srv.command(fmt)
                await trio.sleep(3)
                srv.process.kill()  # mid-stream, no goodbye
                await srv.process.wait()
            await trio.sleep(5)
            async with start_test_server(find_server_python(), port=port) as srv:
                back_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW) // 1000
                again = await srv.wait_event("client_added", timeout=30)
                reconnect_s = (time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW) // 1000 - back_us) / 1e6
                assert again["client_id"] == first["client_id"]
                await srv.command(fmt)
                await trio.sleep(3)
        finally:
            assert await stop_process(proc) == 0
        return back_us, reconnect_s

    back_us, reconnect_s = trio.run(main)
    from resonate_bench.paced_log import read_paced_log
    played = read_paced_log(log)
    times = np.concatenate([s.play_times_ns()[s.samples.any(axis=1)] for s in played.spans])
    again = times[times > back_us * 1000]
    assert again.size > 48000, "no audio after the server came back"
    sound_s = (again[0] / 1000 - back_us) / 1e6
    print(f"\n[fault] server restart: reconnected {reconnect_s:.2f} s after the server was back, "
          f"audio {sound_s:.2f} s after (the server starts its stream on reconnection)")
    assert reconnect_s < 3.0
    assert "reconnecting" in Path(tmp_path / "player.log").read_text()
