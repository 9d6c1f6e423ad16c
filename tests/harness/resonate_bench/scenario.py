"""Run one measured scenario: a real server, player process(es), the paced device.

A scenario starts the aiosendspin test server, starts the player as its own
process on ``paced:PPM=…,LATENCY_US=…,LOG=…``, streams the index signal, and
returns the ground-truth match plus the player's CPU time and peak RSS, read
from /proc before the player is stopped.

Options on top of that (all off by default):

* ``player="reference"`` runs the reference player (``sendspin daemon`` 9.x,
  see :mod:`resonate_bench.reference`) on the same kind of paced device;
* ``netem`` puts the delaying proxy (:mod:`resonate_bench.netem`)
  between the player(s) and the server;
* ``cpu_hog`` runs a busy-loop process pinned to the last CPU while streaming;
* ``group_ppm`` adds more players of the same kind (one per entry, with that
  DAC crystal error) joined into the first player's group before the start.

:func:`figures` turns one player's result into the benchmark's numbers
(steady-state error, convergence, first sound, corrections, speed deviation…),
:func:`inter_player` compares two players of a group frame by frame.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import attrs
import numpy as np
import trio

from resonate_bench.harness import TestServer, find_server_python, start_test_server
from resonate_bench.measure import ChunkTable, Matched, match
from resonate_bench.netem import NetemConfig, open_netem
from resonate_bench.paced_log import PacedLog, read_paced_log

CLK_TCK = os.sysconf("SC_CLK_TCK")


@attrs.frozen
class Scenario:
    name: str
    offer: str | None = "pcm:48000:16:2"  # what the player offers (--formats; None: its default)
    codec: str | None = None  # the codec the server is told to send (None: its own choice)
    rate: int = 48000
    bits: int = 16
    ppm: float = 0.0
    latency_us: int = 0  # the paced DAC's hidden latency
    dac_latency_us: int = 0  # what the player is told about it
    seconds: float = 8.0
    extra_player_args: tuple[str, ...] = ()
    player: str = "ours"  # "ours" | "reference"
    netem: NetemConfig | None = None
    cpu_hog: bool = False
    group_ppm: tuple[float, ...] = ()  # extra players joined into the first one's group
    trust_unpaired: bool = True  # the server approves encrypted unpaired players (see below)
    server_args: tuple[str, ...] = ()  # extra test-server options (e.g. --wire-truth)
    server_script: str | None = None  # another harness script (e.g. SENDSPIN_V1_SCRIPT)
    steady_after_s: float = 0.0  # CPU is counted from this long after the start command


@attrs.frozen
class ProcessUsage:
    cpu_s: float
    peak_rss_kb: int
    packages: frozenset[str] = frozenset()  # installed packages whose native code is mapped


@attrs.frozen
class PlayerRun:
    """One player process of a scenario and what its device played."""

    name: str  # also the name it gives the server
    kind: str  # "ours" | "reference"
    ppm: float
    client_id: str | None
    log: PacedLog
    matched: Matched
    usage_start: ProcessUsage  # when the CPU window began (Scenario.steady_after_s)
    usage: ProcessUsage  # just before the stop command
    exit_code: int
    output: str
    stream_start_ns: int | None  # CLOCK_MONOTONIC_RAW when the server had sent it stream/start
    stop_cmd_ns: int | None = None  # CLOCK_MONOTONIC_RAW just before the stop command


@attrs.frozen
class ScenarioResult:
    scenario: Scenario
    log: PacedLog
    matched: Matched
    events: list
    usage: ProcessUsage
    player_exit: int
    player_output: str
    players: list[PlayerRun] = attrs.field(factory=list)  # players[0] is the fields above
    start_cmd_ns: int | None = None  # CLOCK_MONOTONIC_RAW just before the start command
    streamed_s: float = 0.0  # wall time from the start of the CPU window to the usage sample
    netem: dict | None = None  # the proxy's statistics
    stop_cmd_ns: int | None = None  # CLOCK_MONOTONIC_RAW just before the stop command


_TRUST_WRAPPER = '''\
"""Run the harness server, approving every encrypted unpaired client for playback.

Written by tests/harness/resonate_bench/scenario.py: aiosendspin 10 activates no roles
for an unpaired Noise client until the server calls trust_unpaired() (the operator's
"approve this speaker"); this does that for every such connection. Plaintext clients
are not affected.
"""
import runpy
import sys

from aiosendspin.server.connection import SendspinConnection

_original = getattr(SendspinConnection, "_reload_trusted_unpaired", None)  # 10.x+


async def _reload_trusted_unpaired(self):
    await _original(self)
    if self._noise_psk is not None and not self._trusted_unpaired:
        self._trusted_unpaired = True


if _original is not None:
    SendspinConnection._reload_trusted_unpaired = _reload_trusted_unpaired
args = [a for a in sys.argv[1:] if a != "-u"]
sys.argv = args
runpy.run_path(args[0], run_name="__main__")
'''


def trusting_server_python(server_python: str, workdir: Path) -> str:
    """An executable that starts the harness server like ``server_python`` would, but
    approves every encrypted unpaired client for playback, as an operator would.

    aiosendspin 10 accepts a Noise (encrypted) client that is not paired, but
    activates no roles for it until ``SendspinServer.trust_unpaired(client_id)``;
    ``client_added`` then shows ``roles: []`` and no audio is sent. The harness has
    no command for that, so this wraps it (patching
    ``SendspinConnection._reload_trusted_unpaired``).
    """
    d = workdir / "trusting-server"
    d.mkdir(parents=True, exist_ok=True)
    wrapper = d / "trust_wrapper.py"
    wrapper.write_text(_TRUST_WRAPPER)
    launcher = d / "python"
    launcher.write_text(f'#!/bin/sh\nexec "{server_python}" -u "{wrapper}" "$@"\n')
    launcher.chmod(0o755)
    return str(launcher)


def raw_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW)


def device_name(sc: Scenario, log_path: Path, ppm: float | None = None) -> str:
    return f"paced:PPM={sc.ppm if ppm is None else ppm},LATENCY_US={sc.latency_us},LOG={log_path}"


def player_command(sc: Scenario, url: str, device: str, state_dir: Path,
                   name: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "resonate_embedded.cli", "run", "--server", url,
           "--device", device, "--state-dir", str(state_dir),
           "--dac-latency-us", str(sc.dac_latency_us)]
    if sc.offer is not None:
        cmd += ["--formats", sc.offer]
    if name is not None:
        cmd += ["--name", name]
    return [*cmd, *sc.extra_player_args]


def usage_of(pid: int) -> ProcessUsage:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            rss = int(line.split()[1])
    return ProcessUsage(cpu, rss, mapped_packages(pid))


def mapped_packages(pid: int) -> frozenset[str]:
    """Top-level site-packages directories with a shared object mapped in ``pid`` (e.g.
    ``av`` once FFmpeg is loaded): what the process really loaded, seen from outside."""
    names = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split(None, 5)[-1]
        if ".so" in path and "/site-packages/" in path:
            top = path.split("/site-packages/", 1)[1].split("/", 1)[0]
            names.add(top.removesuffix(".libs").split(".", 1)[0])
    return frozenset(names)


async def stop_process(proc: trio.Process, timeout_s: float = 10.0) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(timeout_s):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode


@asynccontextmanager
async def cpu_hog(enabled: bool = True, max_seconds: float = 1800.0) -> AsyncIterator[trio.Process | None]:
    """A busy-loop process pinned to the last CPU (it ends by itself after ``max_seconds``)."""
    if not enabled:
        yield None
        return
    cpu = sorted(os.sched_getaffinity(0))[-1]
    code = (f"import os, time\nos.sched_setaffinity(0, {{{cpu}}})\n"
            f"end = time.monotonic() + {max_seconds}\nwhile time.monotonic() < end:\n    pass\n")
    proc = await trio.lowlevel.open_process([sys.executable, "-c", code])
    try:
        yield proc
    finally:
        with trio.CancelScope(shield=True):
            proc.kill()
            await proc.wait()


Action = Callable[[TestServer], Awaitable[None]]


@attrs.define
class _Launched:
    name: str
    ppm: float
    log_path: Path
    out_path: Path
    proc: trio.Process
    client_id: str | None = None
    usage_start: ProcessUsage | None = None
    usage: ProcessUsage | None = None
    stream_start_ns: int | None = None


async def run_scenario(sc: Scenario, workdir: Path, during: Action | None = None,
                       server_python: str | None = None, ref_python: str | None = None
                       ) -> ScenarioResult:
    """Play ``sc.seconds`` of the index signal (``during`` may act on the server meanwhile)."""
    workdir.mkdir(parents=True, exist_ok=True)
    server_python = server_python or find_server_python()
    if server_python is None:
        raise RuntimeError("no Python with aiosendspin 10.x for the test server")
    if sc.player == "reference":
        from resonate_bench import reference

        if ref_python is None:
            ref_python, why = reference.find_reference_python()
            if ref_python is None:
                raise RuntimeError(f"reference player not available: {why}")
    elif sc.player != "ours":
        raise ValueError(f"unknown player kind {sc.player!r}")
    if sc.trust_unpaired:
        server_python = trusting_server_python(server_python, workdir)
    members = [(sc.name, sc.ppm)] + [(f"{sc.name}-m{i + 1}", p) for i, p in enumerate(sc.group_ppm)]
    launched: list[_Launched] = []
    netem_stats = None
    start_cmd_ns = stop_cmd_ns = None
    streamed_s = 0.0
    proxy = None
    script = {"script": sc.server_script} if sc.server_script else {}
    async with start_test_server(server_python, port=0, extra_args=list(sc.server_args), **script,
                                 log_path=workdir / f"{sc.name}.server.log") as srv:
        async with AsyncExitStack() as stack:
            url = srv.url
            if sc.netem is not None:
                proxy = await stack.enter_async_context(
                    open_netem(sc.netem, srv.port, workdir, max_seconds=sc.seconds + 600))
                url = f"ws://127.0.0.1:{proxy.port}/sendspin"
            nursery = await stack.enter_async_context(trio.open_nursery())
            try:
                for name, ppm in members:
                    launched.append(await _launch(sc, name, ppm, url, workdir, ref_python))
                for p in launched:
                    ev = await srv.wait_event("client_added", timeout=60,
                                              predicate=lambda e, n=p.name: e.get("name") == n)
                    p.client_id = ev["client_id"]
                for p in launched[1:]:
                    await srv.command({"cmd": "join", "client_id": p.client_id,
                                       "to": launched[0].client_id})
                async with cpu_hog(sc.cpu_hog, max_seconds=sc.seconds + 600):
                    mark = srv.mark()
                    for p in launched:
                        nursery.start_soon(_watch_stream_start, srv, p, mark)
                    for p in launched:
                        p.usage_start = usage_of(p.proc.pid)
                    fmt = {"sample_rate": sc.rate, "bit_depth": sc.bits, "channels": 2}
                    if sc.codec is not None:
                        for p in launched:
                            await srv.command({"cmd": "format", "client_id": p.client_id,
                                               "format": {**fmt, "codec": sc.codec}})
                    start_cmd_ns = window_ns = raw_ns()
                    await srv.command({"cmd": "start", "client_id": launched[0].client_id,
                                       "format": fmt})
                    if sc.steady_after_s > 0:
                        await trio.sleep(sc.steady_after_s)
                        for p in launched:
                            p.usage_start = usage_of(p.proc.pid)
                        window_ns = raw_ns()
                    if during is not None:
                        await during(srv)
                    else:
                        await trio.sleep(sc.seconds - sc.steady_after_s)
                    streamed_s = (raw_ns() - window_ns) / 1e9
                    for p in launched:
                        p.usage = usage_of(p.proc.pid)
                    stop_cmd_ns = raw_ns()
                    await srv.command({"cmd": "stop"})
            finally:
                with trio.CancelScope(shield=True):
                    exits = [await stop_process(p.proc) for p in launched]
                nursery.cancel_scope.cancel()
        if proxy is not None:
            netem_stats = proxy.stats()  # written when the proxy process exits
        events = list(srv.events)
    with open(workdir / f"{sc.name}.events.jsonl", "w") as f:
        for ev in events:
            f.write(json.dumps(ev, separators=(",", ":")) + "\n")
    chunks = ChunkTable.from_events(events)
    runs = []
    for p, code in zip(launched, exits):
        log = read_paced_log(p.log_path)
        runs.append(PlayerRun(
            p.name, sc.player, p.ppm, p.client_id, log, match(log, chunks, stream_bits=sc.bits),
            p.usage_start or ProcessUsage(0.0, 0), p.usage or ProcessUsage(0.0, 0), code,
            p.out_path.read_text(errors="replace"), p.stream_start_ns, stop_cmd_ns))
    first = runs[0]
    return ScenarioResult(sc, first.log, first.matched, events, first.usage, first.exit_code,
                          first.output, runs, start_cmd_ns, streamed_s, netem_stats, stop_cmd_ns)


async def _launch(sc: Scenario, name: str, ppm: float, url: str, workdir: Path,
                  ref_python: str | None) -> _Launched:
    log_path = workdir / f"{name}.plog"
    out_path = workdir / f"{name}.player.log"
    log_path.unlink(missing_ok=True)
    env = None
    if sc.player == "reference":
        from resonate_bench.reference import reference_command

        assert ref_python is not None
        cmd, env = reference_command(
            ref_python, url=url, name=name, run_dir=workdir / f"{name}.ref", offer=sc.offer,
            ppm=ppm, latency_us=sc.latency_us, output_delay_ms=sc.dac_latency_us / 1000.0,
            log_path=log_path, extra_args=sc.extra_player_args)
    else:
        cmd = player_command(sc, url, device_name(sc, log_path, ppm), workdir / f"{name}.state", name)
    with open(out_path, "wb") as out:
        proc = await trio.lowlevel.open_process(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    return _Launched(name, ppm, log_path, out_path, proc)


async def _watch_stream_start(srv: TestServer, p: _Launched, since: int) -> None:
    try:
        await srv.wait_event("player_stream_start", timeout=120, since=since,
                             predicate=lambda e: e.get("client_id") == p.client_id)
    except Exception:  # noqa: BLE001 - no stream/start seen: the figure stays None
        return
    p.stream_start_ns = raw_ns()


# ====================================================================================
# Figures
# ====================================================================================

CONVERGED_US = 1000.0  # "converged" = |error| stays within this
MIN_STEADY_S = 2.0  # steady state never starts earlier than this after first sound
JUMP_FRAMES = 8  # a K discontinuity larger than this is a jump (resync, gap), not a correction
SPEED_WINDOW_S = 0.150
SPEED_STEP_S = 0.010


@attrs.frozen
class Clean:
    """The bit-exact, identified frames of one player with isolated glitches removed."""

    k: np.ndarray
    play_ns: np.ndarray
    error_us: np.ndarray
    d: np.ndarray  # per consecutive pair: K advance minus device slots (+ drop, - insert)
    glitches: int  # isolated frames whose K disagreed with both neighbours (removed)


def clean_frames(run: PlayerRun | ScenarioResult) -> Clean:
    """Bit-exact frames played before the stop command, minus isolated glitch frames.

    A correction that blends two neighbours across a 32768-frame boundary of the
    index signal produces one frame that decodes (and checks) as a far-away K;
    such a frame disagrees with both neighbours and is dropped here.
    """
    m = run.matched
    log = run.log
    sel = m.bit_exact
    stop_ns = getattr(run, "stop_cmd_ns", None)
    if stop_ns is not None:
        sel = sel & (m.play_ns < stop_ns)  # after stream/end a player owes nothing
    k = m.k[sel]
    p = m.play_ns[sel]
    e = m.error_us[sel]
    glitches = 0
    if k.size >= 3:
        period = log.spans[0].frame_period_ns
        d = np.diff(k) - np.rint(np.diff(p) / period).astype(np.int64)
        bad = np.flatnonzero((np.abs(d[:-1]) > 2) & (np.abs(d[1:]) > 2)
                             & (np.abs(d[:-1] + d[1:]) <= 2)) + 1
        if bad.size:
            keep = np.ones(k.size, bool)
            keep[bad] = False
            k, p, e = k[keep], p[keep], e[keep]
            glitches = int(bad.size)
    if k.size >= 2:
        period = log.spans[0].frame_period_ns
        d = np.diff(k) - np.rint(np.diff(p) / period).astype(np.int64)
    else:
        d = np.zeros(0, np.int64)
    return Clean(k, p, e, d, glitches)


@attrs.frozen
class Figures:
    frames: int
    played_s: float
    steady_from_s: float
    median_us: float  # steady-state |error|
    p99_us: float
    max_us: float
    mean_us: float  # signed
    p99_jitter_us: float  # p99 |error - median(error)|: the error with its constant part removed
    late_p99_us: float  # p99 |error| over the second half of the run (long runs: settled state)
    late_mean_us: float  # signed mean error over the second half
    late_p99_jitter_us: float  # p99 |error - median| over the second half
    converge_s: float | None  # first sound -> |error| stays <= 1 ms (None: never, in this run)
    first_sound_ms: float | None  # first non-silent frame's play time - stream/start sent
    scheduled_first_ms: float | None  # server time of the first played frame - stream/start sent
    start_error_us: float  # error of the first played frame
    dropped_per_min: float
    inserted_per_min: float
    jumps: int
    jump_frames: int
    max_speed_dev_pct: float
    xruns: int
    cpu_s_per_min: float
    rss_mb: float
    glitches: int
    unidentified: int
    not_bit_exact: int

    def as_dict(self) -> dict:
        return attrs.asdict(self)


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def figures(run: PlayerRun, streamed_s: float) -> Figures:
    c = clean_frames(run)
    m = run.matched
    nan = float("nan")
    if c.k.size < 2:
        return Figures(int(c.k.size), 0.0, nan, nan, nan, nan, nan, nan, nan, nan, nan,
                       None, None, None, nan,
                       nan, nan, 0, 0, nan, _xruns(run), nan,
                       run.usage.peak_rss_kb / 1024.0, c.glitches, m.unidentified_frames,
                       int((~m.bit_exact).sum()))
    t = (c.play_ns - c.play_ns[0]) / 1e9
    played = float(t[-1])
    over = np.flatnonzero(np.abs(c.error_us) > CONVERGED_US)
    if over.size == 0:
        converge = 0.0
    elif over[-1] + 1 < t.size:
        converge = float(t[over[-1] + 1])
    else:
        converge = None
    steady_from = max(MIN_STEADY_S, converge) if converge is not None else MIN_STEADY_S
    ss = c.error_us[t >= steady_from]
    if ss.size == 0:
        ss = c.error_us
    a = np.abs(ss)
    med_signed = float(np.median(ss))
    late = c.error_us[t >= played / 2]
    late_med = float(np.median(late))
    first_sound = scheduled = None
    first_play = int(m.play_ns[0]) if m.play_ns.size else int(c.play_ns[0])
    first_server = int(m.server_ns[0]) if m.server_ns.size else int(c.play_ns[0])
    if run.stream_start_ns is not None:
        first_sound = (first_play - run.stream_start_ns) / 1e6
        scheduled = (first_server - run.stream_start_ns) / 1e6
    minutes = max(played, 1e-9) / 60.0
    small = np.abs(c.d) <= JUMP_FRAMES
    dropped = int(c.d[small & (c.d > 0)].sum())
    inserted = int(-c.d[small & (c.d < 0)].sum())
    jumps = int((~small).sum())
    jump_frames = int(np.abs(c.d[~small]).sum())
    cpu = (run.usage.cpu_s - run.usage_start.cpu_s) / (streamed_s / 60.0) if streamed_s > 0 else nan
    return Figures(
        frames=int(c.k.size), played_s=played, steady_from_s=steady_from,
        median_us=float(np.median(a)), p99_us=float(np.percentile(a, 99)), max_us=float(a.max()),
        mean_us=float(ss.mean()), p99_jitter_us=float(np.percentile(np.abs(ss - med_signed), 99)),
        late_p99_us=float(np.percentile(np.abs(late), 99)), late_mean_us=float(late.mean()),
        late_p99_jitter_us=float(np.percentile(np.abs(late - late_med), 99)),
        converge_s=converge, first_sound_ms=first_sound, scheduled_first_ms=scheduled,
        start_error_us=float(m.error_us[0]) if m.error_us.size else nan,
        dropped_per_min=dropped / minutes, inserted_per_min=inserted / minutes,
        jumps=jumps, jump_frames=jump_frames, max_speed_dev_pct=max_speed_deviation(c, run.log.rate),
        xruns=_xruns(run), cpu_s_per_min=cpu, rss_mb=run.usage.peak_rss_kb / 1024.0,
        glitches=c.glitches, unidentified=m.unidentified_frames,
        not_bit_exact=int((~m.bit_exact).sum()))


def _xruns(run: PlayerRun) -> int:
    """Underruns while streaming (after the stop command the device may run dry)."""
    stop_ns = getattr(run, "stop_cmd_ns", None)
    return sum(1 for x in run.log.xruns_ns if stop_ns is None or x < stop_ns)


def max_speed_deviation(c: Clean, rate: int, window_s: float = SPEED_WINDOW_S,
                        step_s: float = SPEED_STEP_S) -> float:
    """Largest |K consumed per window of play time / nominal − 1| over any ``window_s``
    window (one starting every ``step_s``), in %. Windows containing a jump are skipped
    (jumps are counted on their own)."""
    if c.k.size < 2:
        return float("nan")
    p = c.play_ns
    starts = np.searchsorted(p, np.arange(p[0], p[-1] - window_s * 1e9, step_s * 1e9))
    if starts.size == 0:
        return float("nan")
    ends = np.searchsorted(p, p[starts] + window_s * 1e9)
    ends = np.minimum(ends, p.size - 1)
    jumps_before = np.concatenate([[0], np.cumsum(np.abs(c.d) > JUMP_FRAMES)])
    ok = (jumps_before[ends] == jumps_before[starts]) & (ends > starts)
    if not ok.any():
        return float("nan")
    s, e = starts[ok], ends[ok]
    speed = (c.k[e] - c.k[s]) * 1e9 / ((p[e] - p[s]) * rate) - 1.0
    return float(np.abs(speed).max() * 100.0)


@attrs.frozen
class InterPlayer:
    frames: int
    median_us: float
    p99_us: float
    max_us: float
    mean_us: float


def inter_player(a: PlayerRun, b: PlayerRun, after_s: float = MIN_STEADY_S) -> InterPlayer:
    """play_a(K) − play_b(K) for every frame K both played (first occurrence), from
    ``after_s`` after the later of the two first sounds."""
    ca, cb = clean_frames(a), clean_frames(b)
    ka, ia = np.unique(ca.k, return_index=True)
    kb, ib = np.unique(cb.k, return_index=True)
    common, ja, jb = np.intersect1d(ka, kb, assume_unique=True, return_indices=True)
    if common.size == 0:
        nan = float("nan")
        return InterPlayer(0, nan, nan, nan, nan)
    pa = ca.play_ns[ia[ja]]
    pb = cb.play_ns[ib[jb]]
    start = max(ca.play_ns[0], cb.play_ns[0]) + after_s * 1e9
    sel = (pa >= start) & (pb >= start)
    diff = (pa[sel] - pb[sel]) / 1000.0
    if diff.size == 0:
        diff = (pa - pb) / 1000.0
    ad = np.abs(diff)
    return InterPlayer(int(diff.size), float(np.median(ad)), float(np.percentile(ad, 99)),
                       float(ad.max()), float(diff.mean()))


def fmt_opt(x: float | None, spec: str = ".1f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)
