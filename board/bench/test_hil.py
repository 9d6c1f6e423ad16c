"""Hardware-in-the-loop tests (marker ``hil``; skipped unless --hil / RESONATE_HIL=1 and a
bench config). Run on the bench host: ``.venv/bin/python -m pytest board/bench --hil -v``.

Every test starts the aiosendspin 10 test server with the bench signal on the bench host
(tests/harness/resonate_bench/harness.py via hil.bench_server), drives the boards over ssh and
records their line outputs with arecord. Thresholds come from the config's [thresholds].
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import trio

from board.bench import analysis as an
from board.bench import hil
from board.bench import testsignal as ts

pytestmark = pytest.mark.hil


def _save(results_dir, name: str, data: dict) -> None:
    (results_dir / f"{name}.json").write_text(json.dumps(data, indent=2, default=float))


async def _thread(fn, *args):
    return await trio.to_thread.run_sync(fn, *args)


def test_two_boards_in_sync(bench_config, two_boards, results_dir):
    """Two boards in one group: offset B-A from the recording, at join and at steady state."""
    th = bench_config.thresholds
    a, b = two_boards
    wav = results_dir / "sync.wav"
    rec = hil.Recorder(bench_config.capture, wav)

    async def scenario():
        async with hil.bench_server(bench_config.server) as srv:
            ids = await hil.wait_clients(srv, two_boards)
            rec.start(th.record_s + th.settle_s + 8)
            await trio.sleep(1.0)
            t_start = time.monotonic()
            await hil.start_bench_stream(srv, [ids[a.name], ids[b.name]])
            await _thread(rec.wait)
            await srv.command({"cmd": "stop"})
            return t_start - rec.t0

    start_in_rec = trio.run(scenario)
    x, fs = an.read_wav(wav)
    r = an.analyse_sync(x, fs, a.cfg.channel, b.cfg.channel)
    t_first = float(r.t_s[0]) if r.t_s.size else float("nan")
    early = np.abs(r.offset_us[r.t_s <= t_first + 2.0])
    steady = r.t_s >= t_first + th.settle_s
    o = r.offset_us[steady]
    drift = np.polyfit(r.t_s[steady], o, 1)[0] if steady.sum() >= 10 else float("nan")
    result = {**r.summary(), "stream_start_in_recording_s": start_in_rec,
              "join_max_abs_us": float(early.max()) if early.size else None,
              "steady_median_us": float(np.median(o)) if o.size else None,
              "steady_p99_abs_us": float(np.percentile(np.abs(o), 99)) if o.size else None,
              "steady_drift_ppm": float(drift)}
    _save(results_dir, "sync", result)
    print("\n".join(r.lines()))
    assert o.size >= int(0.9 * th.record_s / ts.PERIOD_S), result
    assert early.size and early.max() <= th.join_offset_us, result
    assert abs(result["steady_median_us"]) <= th.sync_median_us, result
    assert result["steady_p99_abs_us"] <= th.sync_p99_us, result
    assert abs(drift) <= th.drift_ppm, result
    for ch in (a.cfg.channel, b.cfg.channel):
        g = an.find_glitches(x[:, ch], fs, start_s=t_first + 1.0)
        assert g.ok, (ch, g.gaps[:5], g.clicks[:5])


@pytest.mark.parametrize("which", [0, 1])
def test_power_cycle_boot_to_first_sound(bench_config, boards, results_dir, which):
    """Power-cycle one board while the server runs; time from power-on (the power command
    returning) to the first chirp recorded from it. The server starts the bench signal on
    the board as soon as its player appears. Also: ssh, the unit and no failed units after
    the cut (the read-only root survives)."""
    if which >= len(boards):
        pytest.skip("board not configured")
    board = boards[which]
    if not board.cfg.power_cycle:
        pytest.skip(f"{board.name}: no power_cycle command configured")
    th = bench_config.thresholds
    wav = results_dir / f"boot_{board.name}.wav"
    rec = hil.Recorder(bench_config.capture, wav)

    async def scenario():
        async with hil.bench_server(bench_config.server) as srv:
            await hil.wait_clients(srv, [board])
            rec.start()
            try:
                mark = srv.mark()
                await _thread(board.power_cycle)
                t_on = time.monotonic()
                ids = await hil.wait_clients(srv, [board], timeout=th.boot_to_sound_s, since=mark)
                t_client = time.monotonic()
                await hil.start_bench_stream(srv, [ids[board.name]])
                await trio.sleep(5.0)
            finally:
                rec.stop()
            return t_on - rec.t0, t_client - t_on

    on_in_rec, client_after_s = trio.run(scenario)
    x, fs = an.read_wav(wav)
    cut = max(0, int(on_in_rec * fs))
    fsd = an.first_sound(x[cut:, board.cfg.channel], fs)
    board.wait_ssh(60)
    failed = board.run("systemctl --failed --no-legend --plain", check=False).stdout.strip()
    result = {"board": board.name, "client_added_after_power_on_s": client_after_s,
              "first_sound_after_power_on_s": fsd.sound_s, "first_chirp_after_power_on_s": fsd.chirp_s,
              "failed_units": failed}
    _save(results_dir, f"boot_{board.name}", result)
    assert fsd.chirp_s is not None and fsd.chirp_s <= th.boot_to_sound_s, result
    assert board.is_active(), result
    assert failed == "", result


def test_reconnect_after_server_restart(bench_config, boards, results_dir):
    """Stop the server mid-stream, start it again on the same port: every player
    reconnects by itself (same MainPID, no service restart) and plays within
    ``reconnect_s`` of the new server being ready."""
    th = bench_config.thresholds
    pids = {b.name: b.main_pid() for b in boards}
    wav = results_dir / "reconnect.wav"
    rec = hil.Recorder(bench_config.capture, wav)

    async def scenario():
        async with hil.bench_server(bench_config.server) as srv:
            ids = await hil.wait_clients(srv, boards)
            await hil.start_bench_stream(srv, [ids[b.name] for b in boards])
            await trio.sleep(5.0)
        await trio.sleep(3.0)
        rec.start()
        try:
            async with hil.bench_server(bench_config.server) as srv:
                t_ready = time.monotonic()
                ids = await hil.wait_clients(srv, boards, timeout=th.reconnect_s)
                t_clients = time.monotonic()
                await hil.start_bench_stream(srv, [ids[b.name] for b in boards])
                await trio.sleep(5.0)
        finally:
            rec.stop()
        return t_ready - rec.t0, t_clients - t_ready

    ready_in_rec, clients_after_s = trio.run(scenario)
    x, fs = an.read_wav(wav)
    cut = max(0, int(ready_in_rec * fs))
    result = {"clients_back_after_s": clients_after_s, "boards": {}}
    for b in boards:
        fsd = an.first_sound(x[cut:, b.cfg.channel], fs)
        result["boards"][b.name] = {"first_chirp_after_ready_s": fsd.chirp_s,
                                    "pid_before": pids[b.name], "pid_after": b.main_pid()}
    _save(results_dir, "reconnect", result)
    for b in boards:
        r = result["boards"][b.name]
        assert r["first_chirp_after_ready_s"] is not None, result
        assert r["first_chirp_after_ready_s"] <= th.reconnect_s, result
        assert r["pid_after"] == r["pid_before"], result


@pytest.mark.parametrize("which", [0])
def test_watchdog_restarts_a_hung_player(bench_config, boards, results_dir, which):
    """kill -STOP the player: it stops petting the systemd watchdog (WatchdogSec), so
    systemd kills and restarts it; expect a new MainPID and an active unit in time."""
    board = boards[which]
    th = bench_config.thresholds
    old = board.main_pid()
    t0 = time.monotonic()
    board.signal_player("STOP", old)
    new = old
    try:
        while time.monotonic() - t0 < th.watchdog_restart_s:
            time.sleep(1.0)
            new = board.main_pid()
            if new not in (0, old) and board.is_active():
                break
    finally:
        board.root(f"kill -CONT {old}", check=False)  # if systemd has not killed it
    elapsed = time.monotonic() - t0
    journal = board.journal("-5min")
    result = {"board": board.name, "old_pid": old, "new_pid": new, "restart_after_s": elapsed,
              "watchdog_in_journal": "watchdog" in journal.lower()}
    _save(results_dir, f"watchdog_{board.name}", result)
    assert new not in (0, old), result
    assert elapsed <= th.watchdog_restart_s, result
    assert board.is_active(), result
