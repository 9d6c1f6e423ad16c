"""Faults injected into a running speaker (real server and player processes, loopback only).

Each test prints the recovery time it measured (``pytest -s`` shows it); the bounds asserted
are generous, for a loaded 2-core machine.  Ground truth is the paced device's log.

* network stall: a proxy freezes the link for 5 s (``bench/faultproxy.py``)
* a server that sends faster than real time, and timestamps far in the future / past
* the DAC disappears and returns (the paced device's ``FAIL=`` flag file)
* hostile input over a real socket: malformed, truncated, type-confused, 100 MB frames
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trio
from trio_websocket import serve_websocket

from resonate_bench.faultproxy import FaultProxy, raw_ns
from resonate_bench.harness import find_server_python, start_test_server
from resonate_bench.measure import ChunkTable, match, summarize
from resonate_bench.scenario import stop_process
from resonate_bench.paced_log import read_paced_log

pytestmark = pytest.mark.e2e

PCM = {"sample_rate": 48000, "bit_depth": 16, "channels": 2}
ON_TIME_US = 1000


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def player_cmd(url: str, device: str, state_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "resonate_embedded.cli", "run", "--server", url,
            "--device", device, "--state-dir", str(state_dir), "--formats", "pcm:48000:16:2",
            "--encryption", "off", *extra]


async def open_player(cmd: list[str], out_path: Path) -> trio.Process:
    with open(out_path, "wb") as out:
        return await trio.lowlevel.open_process(cmd, stdout=out, stderr=subprocess.STDOUT)


def report(name: str, **figures) -> None:
    line = f"[fault] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
    print(line)
    with open(os.environ.get("FAULT_REPORT", "/tmp/resonate-faults.txt"), "a") as f:
        f.write(line + "\n")


def audible(log) -> tuple[np.ndarray, np.ndarray]:
    """(play time ns, nonzero?) of every frame the device played."""
    times, nonzero = [], []
    for span in log.spans:
        times.append(span.play_times_ns())
        nonzero.append(span.samples.any(axis=1))
    if not times:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    return np.concatenate(times), np.concatenate(nonzero)


# --------------------------------------------------------------------------- a. network stall


def test_network_stall_mutes_reports_error_and_resyncs(tmp_path):
    """A 5 s stall: client/state error, silence (no noise), then synchronized and on time."""
    server_python = find_server_python()
    plog = tmp_path / "stall.plog"
    marks: dict[str, int] = {}

    async def main():
        async with start_test_server(server_python, port=0,
                                     log_path=tmp_path / "server.log") as srv:
            proxy = FaultProxy(upstream_port=srv.port)
            async with trio.open_nursery() as nursery:
                port = await nursery.start(proxy.serve)
                proc = await open_player(
                    player_cmd(f"ws://127.0.0.1:{port}/sendspin", f"paced:LOG={plog}",
                               tmp_path / "state"), tmp_path / "player.log")
                try:
                    await srv.wait_event("client_added", timeout=60)
                    await srv.command({"cmd": "start", "format": PCM})
                    await trio.sleep(4.0)
                    marks["freeze"] = raw_ns()
                    proxy.freeze()
                    await trio.sleep(5.0)
                    proxy.thaw()
                    marks["thaw"] = raw_ns()
                    await trio.sleep(6.0)
                    marks["end"] = raw_ns()
                finally:
                    marks["exit"] = await stop_process(proc)
                nursery.cancel_scope.cancel()
            return list(srv.events), proxy

    events, proxy = trio.run(main)
    output = (tmp_path / "player.log").read_text(errors="replace")
    assert marks["exit"] == 0, output
    states = [(m.forwarded_ns, (m.json() or {}).get("payload", {}).get("state"))
              for m in proxy.messages("up", "client/state")]
    states = [(t, s) for t, s in states if s is not None]
    errors = [t for t, s in states if s == "error" and t > marks["freeze"]]
    assert errors, f"no client/state error after the stall: {states}\n{output[-3000:]}"
    synced = [t for t, s in states if s == "synchronized" and t > errors[0]]
    assert synced, f"no client/state synchronized after the error: {states}"

    log = read_paced_log(plog)
    m = match(log, ChunkTable.from_events(events))
    assert m.unidentified_frames == 0, "noise: frames that are neither silence nor the signal"
    times, nonzero = audible(log)
    stalled = (times > marks["freeze"]) & (times < marks["thaw"])
    # the audio queued before the stall plays out, then silence: never anything else
    gap = times[stalled & ~nonzero]
    assert gap.size > 48000, "the output never fell silent during a 5 s stall"
    after = m.play_ns > marks["thaw"]
    assert after.any(), "no audio after the stall"
    recovery_s = (m.play_ns[after].min() - marks["thaw"]) / 1e9
    steady = m.play_ns > m.play_ns[after].min() + 1_500_000_000
    s = summarize(m.error_us[steady])
    report("network stall 5 s", audio_again_after_thaw_s=f"{recovery_s:.2f}",
           error_reported_after_freeze_s=f"{(errors[0] - marks['freeze']) / 1e9:.2f}",
           synchronized_after_thaw_s=f"{(synced[0] - marks['thaw']) / 1e9:.2f}",
           after=s.line())
    assert recovery_s < 5.0
    assert steady.sum() > 48000 and s.max_abs_us < ON_TIME_US, s.line()


# --------------------------------------------------------------------------- b. hostile timing


def test_audio_too_fast_too_slow_or_absurdly_stamped_keeps_memory_bounded(tmp_path):
    """Raw audio past aiosendspin's pacing: 10x real time (120 s of audio in 12 s), 4x
    slower, hours in the future/past, int64 extremes.  Memory stays bounded, nothing
    crashes, and a normal stream afterwards plays on time."""
    server_python = find_server_python()
    plog = tmp_path / "timing.plog"
    rss: dict[str, int] = {}
    marks: dict[str, int] = {}

    async def sample_rss(pid: int, key: str) -> None:
        while True:
            rss[key] = max(rss.get(key, 0), rss_kb(pid))
            await trio.sleep(0.2)

    async def main():
        async with start_test_server(server_python, port=0,
                                     log_path=tmp_path / "server.log") as srv:
            proc = await open_player(player_cmd(srv.url, f"paced:LOG={plog}", tmp_path / "state"),
                                     tmp_path / "player.log")
            try:
                await srv.wait_event("client_added", timeout=60)
                # a stream that stays open without audio of its own: only ours is heard
                await srv.command({"cmd": "start", "format": PCM, "duration_s": 0.5,
                                   "on_finish": "keep"})
                await trio.sleep(3.0)
                rss["before"] = rss_kb(proc.pid)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sample_rss, proc.pid, "flood_max")
                    fast = await srv.command({"cmd": "inject_audio", "count": 4800, "frames": 1200,
                                              "offset_us": 500_000, "interval_ms": 2.5},
                                             timeout=120)
                    await trio.sleep(2.0)
                    nursery.cancel_scope.cancel()
                rss["after_flood"] = rss_kb(proc.pid)
                marks["fast_s"] = fast["seconds"]
                await srv.command({"cmd": "inject_audio", "count": 40, "interval_ms": 100,
                                   "offset_us": 300_000}, timeout=60)
                for offset in (3600 * 10**6, -3600 * 10**6):
                    await srv.command({"cmd": "inject_audio", "count": 50, "interval_ms": 0,
                                       "offset_us": offset})
                for ts in ((1 << 63) - 1, -(1 << 63), 0):
                    await srv.command({"cmd": "inject_audio", "count": 5, "interval_ms": 0,
                                       "ts_us": ts, "step_us": 0})
                await trio.sleep(1.0)
                assert proc.returncode is None, "the player died"
                rss["after_all"] = rss_kb(proc.pid)
                # and it still plays a normal stream on time
                mark = srv.mark()
                marks["restart"] = raw_ns()
                await srv.command({"cmd": "start", "format": PCM})
                await trio.sleep(5.0)
                await srv.command({"cmd": "stop"})
            finally:
                marks["exit"] = await stop_process(proc)
            return list(srv.events)[mark:]

    events = trio.run(main)
    output = (tmp_path / "player.log").read_text(errors="replace")
    assert marks["exit"] == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "refusing audio from the server: the queue already holds" in output
    assert "in the future" in output or "in the past" in output
    m = match(read_paced_log(plog), ChunkTable.from_events(events))
    later = m.play_ns > marks["restart"]
    steady = m.play_ns > (m.play_ns[later].min() if later.any() else 0) + 1_000_000_000
    s = summarize(m.error_us[later & steady])
    growth_mb = (rss["flood_max"] - rss["before"]) / 1024
    report("hostile timing", rss_before_mb=f"{rss['before'] / 1024:.1f}",
           rss_max_during_10x_flood_mb=f"{rss['flood_max'] / 1024:.1f}",
           rss_after_all_mb=f"{rss['after_all'] / 1024:.1f}", flood_s=f"{marks['fast_s']:.1f}",
           normal_stream_after=s.line())
    # 120 s of 48 kHz stereo would be 23 MB of PCM (46 MB with the wire copies); the queue
    # holds at most 30 s (5.8 MB)
    assert growth_mb < 20, rss
    assert (later & steady).sum() > 48000 * 2 and s.max_abs_us < ON_TIME_US, s.line()


# --------------------------------------------------------------------------- c. the DAC goes away


def test_device_that_disappears_and_returns_recovers_without_restart(tmp_path):
    server_python = find_server_python()
    plog = tmp_path / "dac.plog"
    flag = tmp_path / "dac.gone"
    marks: dict[str, int] = {}

    async def main():
        async with start_test_server(server_python, port=0,
                                     log_path=tmp_path / "server.log") as srv:
            proxy = FaultProxy(upstream_port=srv.port)
            async with trio.open_nursery() as nursery:
                port = await nursery.start(proxy.serve)
                proc = await open_player(
                    player_cmd(f"ws://127.0.0.1:{port}/sendspin",
                               f"paced:LOG={plog},FAIL={flag}", tmp_path / "state"),
                    tmp_path / "player.log")
                try:
                    await srv.wait_event("client_added", timeout=60)
                    await srv.command({"cmd": "start", "format": PCM})
                    await trio.sleep(3.0)
                    marks["pid"] = proc.pid
                    flag.touch()
                    marks["gone"] = raw_ns()
                    await trio.sleep(3.5)  # not a multiple of the 1 s reopen period
                    flag.unlink()
                    marks["back"] = raw_ns()
                    await trio.sleep(5.0)
                    assert proc.returncode is None
                finally:
                    marks["exit"] = await stop_process(proc)
                nursery.cancel_scope.cancel()
            return list(srv.events), proxy

    events, proxy = trio.run(main)
    output = (tmp_path / "player.log").read_text(errors="replace")
    assert marks["exit"] == 0, output[-3000:]
    assert output.count("unavailable") == 1, output[-3000:]
    assert "is back after" in output
    states = [(m.forwarded_ns, (m.json() or {}).get("payload", {}).get("state"))
              for m in proxy.messages("up", "client/state")]
    assert any(s == "error" and t > marks["gone"] for t, s in states), states
    assert any(s == "synchronized" and t > marks["back"] for t, s in states), states

    log = read_paced_log(plog)
    m = match(log, ChunkTable.from_events(events))
    assert m.unidentified_frames == 0
    times, _ = audible(log)
    assert not ((times > marks["gone"] + 100_000_000) & (times < marks["back"])).any(), \
        "the device played while it was gone"
    after = m.play_ns > marks["back"]
    assert after.any(), "no audio after the device came back"
    first = m.play_ns[after].min()
    recovery_s = (first - marks["back"]) / 1e9
    steady = m.play_ns > first + 1_000_000_000
    s = summarize(m.error_us[steady])
    report("DAC gone 3.5 s and back", audio_again_after_return_s=f"{recovery_s:.2f}",
           after=s.line())
    assert recovery_s < 5.0
    assert steady.sum() > 48000 and s.max_abs_us < ON_TIME_US, s.line()


# --------------------------------------------------------------------------- d. hostile input

HUGE = 100 << 20

HOSTILE: list[tuple[str | bytes, str]] = [  # (message, what the player's log line says)
    ("not json at all", "malformed"),
    ('{"type": 5}', "malformed"),
    ("[1, 2, 3]", "malformed"),
    ('{"type": "server/time", "payload": "x"}', "malformed"),
    ('{"type": "server/command", "payload": {"player": {"command": "volume", "volume": "loud"}}}',
     "malformed"),
    ('{"type": "server/command", "payload": {"player": {"command": "volume", "volume": 1e999}}}',
     "malformed"),
    ('{"type": "server/command", "payload": {"player": {"command": "volume", "volume": '
     + "9" * 5000 + "}}}", "malformed"),
    ('{"type": "server/command", "payload": {"player": {"command": "mute"}}}', "without a usable"),
    ('{"type": "server/command", "payload": {"player": [1]}}', "malformed"),
    ('{"type": "stream/start", "payload": {"player": {"codec": "' + "x" * 100_000
     + '", "sample_rate": 48000, "channels": 2, "bit_depth": 16}}}', "malformed"),
    ('{"type": "stream/start", "payload": {"player": {"codec": "pcm", "sample_rate": -1, '
     '"channels": 2, "bit_depth": 16}}}', "malformed"),
    ('{"type": "stream/start", "payload": {"player": {"codec": "flac", "sample_rate": 48000, '
     '"channels": 2, "bit_depth": 16, "codec_header": "AAAA"}}}', "cannot play"),
    ('{"type": "stream/start", "payload": {"player": {"codec": "pcm", "sample_rate": 48000, '
     '"channels": 2, "bit_depth": 16, "codec_header": "%%%"}}}', "malformed"),
    ('{"type": "server/time", "payload": {"client_transmitted": [], "server_received": 1}}',
     "malformed"),
    ('{"type": "group/update", "payload": {"playback_state": 7}}', "malformed"),
    ('{"type": "stream/clear", "payload": {"roles": "player"}}', "malformed"),
    ('{"type": "future/thing", "payload": {"x": 1}}', "ignoring message type"),
    ('{"type": "' + "z" * 200_000 + '"}', "ignoring message type"),
    ("[" * 50_000, "malformed"),
    ('{"a":' * 50_000, "malformed"),
    ("x" * (2 << 20), "malformed"),  # text over the 1 MiB text limit (under the socket's)
    (b"", "binary frame"),
    (b"\x04\x00\x01", "binary frame"),  # truncated audio header
    (b"\x04" + b"\x00" * 8 + b"\x01\x02\x03", "outside a stream"),
    ('{"type": "stream/start", "payload": {"player": {"codec": "pcm", "sample_rate": 48000, '
     '"channels": 2, "bit_depth": 16}}}', ""),
    (b"\x04" + (10**15).to_bytes(8, "big") + b"\x00" * 7, "undecodable"),  # not a whole frame
    (b"\x04" + (-(2**63)).to_bytes(8, "big", signed=True) + b"\x00" * 8, ""),  # absurd time
    (b"\x04" + b"\x00" * 8 + b"\x00" * (3 << 20), ""),  # 3 MiB of PCM: big but allowed
]


def test_hostile_input_at_a_running_player_is_survived_with_bounded_memory(tmp_path):
    """A malicious server behind a real socket; the player is a separate process."""
    connections: list[int] = []
    rss: dict[str, int] = {}
    outcome: dict[str, object] = {}
    pid: dict[str, int] = {}

    async def handler(request):
        ws = await request.accept()
        connections.append(1)
        n = len(connections)
        await ws.get_message()  # client/hello
        await ws.send_message(json.dumps({"type": "server/hello", "payload": {
            "server_id": "evil", "name": "Evil", "version": 1, "active_roles": ["player@v1"]}}))
        if n == 1:
            await trio.sleep(1.0)
            rss["before"] = rss_kb(pid["player"])
            for item, _ in HOSTILE:
                await ws.send_message(item)
            await ws.send_message(json.dumps({"type": "server/command", "payload": {
                "player": {"command": "volume", "volume": 33}}}))
            with trio.move_on_after(20):
                while True:
                    msg = json.loads(await ws.get_message())
                    if msg["type"] == "client/state" and \
                            msg["payload"].get("player", {}).get("volume") == 33:
                        outcome["survived_hostile"] = True
                        break
            rss["after_hostile"] = rss_kb(pid["player"])
            try:  # 100 MB in one frame: the player must refuse it, not buffer it
                await ws.send_message(b"\x04" + b"\x00" * HUGE)
            except Exception as exc:  # noqa: BLE001 - the player hangs up on it
                outcome["huge"] = type(exc).__name__
            rss["after_huge"] = rss_kb(pid["player"])
        else:  # it came back: is it still a working player?
            await ws.send_message(json.dumps({"type": "server/command", "payload": {
                "player": {"command": "volume", "volume": 44}}}))
            with trio.move_on_after(20):
                while True:
                    msg = json.loads(await ws.get_message())
                    if msg["type"] == "client/state" and \
                            msg["payload"].get("player", {}).get("volume") == 44:
                        outcome["came_back"] = True
                        break
            await trio.sleep_forever()

    async def main():
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
            url = f"ws://127.0.0.1:{server.port}/sendspin"
            proc = await open_player(player_cmd(url, "paced", tmp_path / "state"),
                                     tmp_path / "player.log")
            pid["player"] = proc.pid
            try:
                with trio.move_on_after(90):
                    while "came_back" not in outcome and proc.returncode is None:
                        await trio.sleep(0.2)
                rss["end"] = rss_kb(proc.pid) if proc.returncode is None else 0
            finally:
                outcome["exit"] = await stop_process(proc)
            nursery.cancel_scope.cancel()

    trio.run(main)
    output = (tmp_path / "player.log").read_text(errors="replace")
    assert outcome.get("survived_hostile"), output[-4000:]
    assert outcome.get("came_back"), (outcome, output[-4000:])
    assert outcome["exit"] == 0
    assert "Traceback" not in output and "session failed" not in output, output[-4000:]
    # one clear line per problem, none longer than a screen line or two
    lines = [ln for ln in output.splitlines() if " WARNING " in ln or " ERROR " in ln]
    for item, says in HOSTILE:
        if says:
            assert any(says in ln for ln in lines), f"nothing logged about {str(item)[:80]!r}"
    problems = sum(1 for _, says in HOSTILE if says)
    hostile_lines = [ln for ln in lines if "reconnecting" not in ln and "closed" not in ln
                     and "lost" not in ln]
    assert len(hostile_lines) <= problems + 2, "\n".join(hostile_lines)
    assert max(len(ln) for ln in lines) < 400, max(lines, key=len)[:500]
    assert any("1009" in ln or "MESSAGE_TOO_BIG" in ln or "maximum message size" in ln
               for ln in lines), "the 100 MB frame was not refused with a clear line"
    growth = {k: f"{(v - rss['before']) / 1024:+.1f} MB" for k, v in rss.items() if k != "before"}
    report("hostile input", rss_before_mb=f"{rss['before'] / 1024:.1f}", **growth)
    assert rss["after_huge"] - rss["before"] < 40 * 1024, rss
    assert rss["end"] - rss["before"] < 40 * 1024, rss


def test_listener_refuses_a_100_mb_frame_without_buffering_it():
    """Server-initiated mode: the same 4 MiB message limit on the listening socket."""
    from trio_websocket import ConnectionClosed

    from resonate_embedded.protocol.connection import MAX_MESSAGE_BYTES
    from resonate_embedded.protocol.listener import open_listener

    seen: dict[str, object] = {}

    async def main():
        async with open_listener(0, "127.0.0.1") as listener:
            async with trio.open_nursery() as nursery:
                async def hostile_server():  # its own process: only the receiver is measured
                    url = f"ws://127.0.0.1:{listener.port}/sendspin"
                    code = ("import sys, trio\n"
                            "from trio_websocket import open_websocket_url, ConnectionClosed\n"
                            "async def main():\n"
                            "    async with open_websocket_url(sys.argv[1]) as ws:\n"
                            "        try:\n"
                            f"            await ws.send_message(bytes({HUGE}))\n"
                            "        except ConnectionClosed:\n"
                            "            pass\n"
                            "trio.run(main)\n")
                    await trio.run_process([sys.executable, "-c", code, url], check=False,
                                           stderr=subprocess.DEVNULL)

                seen["before"] = rss_kb(os.getpid())
                nursery.start_soon(hostile_server)
                conn = await listener.incoming.receive()
                try:
                    with trio.fail_after(60):
                        await conn.receive()
                except ConnectionClosed as exc:
                    seen["reason"] = exc.reason
                seen["after"] = rss_kb(os.getpid())
                await conn.close()
                nursery.cancel_scope.cancel()

    trio.run(main)
    reason = seen.get("reason")
    assert reason is not None and reason.code == 1009, seen
    growth_mb = (seen["after"] - seen["before"]) / 1024
    report("listener 100 MB frame", refused_with=reason.code, rss_growth_mb=f"{growth_mb:.1f}")
    assert growth_mb < 3 * MAX_MESSAGE_BYTES / 2**20, seen


# --------------------------------------------------------------------------- g. soak (smoke)


def test_soak_command_runs(tmp_path):
    """The 30-minute soak's command, for 15 s (the real run: README, 'Soak')."""
    res = subprocess.run([sys.executable, "-m", "resonate_bench.soak", "--minutes", "0.25",
                          "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "soak: RSS first" in res.stdout and "soak: OK" in res.stdout
