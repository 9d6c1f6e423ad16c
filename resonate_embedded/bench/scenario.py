"""Run one measured scenario: a real server, a player process, the paced device.

A scenario starts the aiosendspin test server, starts the player as its own
process on ``paced:PPM=…,LATENCY_US=…,LOG=…``, streams the index signal, and
returns the ground-truth match plus the player's CPU time and peak RSS, read
from /proc before the player is stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Awaitable, Callable

import attrs
import trio

from resonate_embedded.bench.harness import TestServer, find_server_python, start_test_server
from resonate_embedded.bench.measure import ChunkTable, Matched, match
from resonate_embedded.paced.log import PacedLog, read_paced_log

CLK_TCK = os.sysconf("SC_CLK_TCK")


@attrs.frozen
class Scenario:
    name: str
    offer: str = "pcm:48000:16:2"  # what the player offers (--formats)
    rate: int = 48000
    bits: int = 16
    ppm: float = 0.0
    latency_us: int = 0  # the paced DAC's hidden latency
    dac_latency_us: int = 0  # what the player is told about it
    seconds: float = 8.0
    extra_player_args: tuple[str, ...] = ()


@attrs.frozen
class ProcessUsage:
    cpu_s: float
    peak_rss_kb: int


@attrs.frozen
class ScenarioResult:
    scenario: Scenario
    log: PacedLog
    matched: Matched
    events: list
    usage: ProcessUsage
    player_exit: int
    player_output: str


def device_name(sc: Scenario, log_path: Path) -> str:
    return f"paced:PPM={sc.ppm},LATENCY_US={sc.latency_us},LOG={log_path}"


def player_command(sc: Scenario, url: str, device: str, state_dir: Path) -> list[str]:
    return [sys.executable, "-m", "resonate_embedded.cli", "run", "--server", url,
            "--device", device, "--state-dir", str(state_dir), "--formats", sc.offer,
            "--dac-latency-us", str(sc.dac_latency_us), *sc.extra_player_args]


def usage_of(pid: int) -> ProcessUsage:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            rss = int(line.split()[1])
    return ProcessUsage(cpu, rss)


async def stop_process(proc: trio.Process, timeout_s: float = 10.0) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(timeout_s):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode


Action = Callable[[TestServer], Awaitable[None]]


async def run_scenario(sc: Scenario, workdir: Path, during: Action | None = None,
                       server_python: str | None = None) -> ScenarioResult:
    """Play ``sc.seconds`` of the index signal (``during`` may act on the server meanwhile)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{sc.name}.plog"
    out_path = workdir / f"{sc.name}.player.log"
    log_path.unlink(missing_ok=True)
    async with start_test_server(server_python or find_server_python(), port=0,
                                 log_path=workdir / f"{sc.name}.server.log") as srv:
        with open(out_path, "wb") as out:
            proc = await trio.lowlevel.open_process(
                player_command(sc, srv.url, device_name(sc, log_path), workdir / f"{sc.name}.state"),
                stdout=out, stderr=subprocess.STDOUT)
        try:
            await srv.wait_event("client_added", timeout=30)
            await srv.command({"cmd": "start", "format": {
                "sample_rate": sc.rate, "bit_depth": sc.bits, "channels": 2}})
            if during is not None:
                await during(srv)
            else:
                await trio.sleep(sc.seconds)
            usage = usage_of(proc.pid)
            await srv.command({"cmd": "stop"})
        finally:
            exit_code = await stop_process(proc)
        events = list(srv.events)
    log = read_paced_log(log_path)
    matched = match(log, ChunkTable.from_events(events), stream_bits=sc.bits)
    return ScenarioResult(sc, log, matched, events, usage, exit_code, out_path.read_text())
