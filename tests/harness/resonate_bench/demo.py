"""``resonate-embedded demo``: a whole speaker on one machine, no card, no server needed.

Starts the real aiosendspin test server (its own Python ≥ 3.12 venv, made by
``.ci/setup``), plays its index test signal through the player onto the
software-paced ALSA device (or ``--device``), shows the player's live status line,
and on Ctrl-C (or after ``--seconds``) prints a summary that includes the ground
truth: the paced device's own log matched frame by frame to the server's stamps.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import trio

from resonate_bench.harness import HarnessError, find_server_python, start_test_server
from resonate_bench.measure import ChunkTable, match, summarize
from resonate_embedded.config import DEFAULT_FORMATS
from resonate_bench.paced_log import read_paced_log
from resonate_embedded.player import Player
from resonate_embedded.status import format_status

log = logging.getLogger(__name__)


def run_demo(args: argparse.Namespace) -> int:
    from resonate_embedded.cli import make_config

    server_python = find_server_python()
    if server_python is None:
        print("demo: no test server venv found; run 'bash .ci/setup' first", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="resonate-demo-"))
    log_path = workdir / "demo.plog"
    device = args.device or f"paced:LOG={log_path}"
    formats = args.formats or DEFAULT_FORMATS[:1]
    config = make_config(args, server="ws://127.0.0.1:1/sendspin", device=device,
                         state_dir=args.state_dir or workdir / "state", formats=formats, stats=False)
    try:
        return trio.run(_demo, config, server_python, workdir, log_path, args.seconds)
    except HarnessError as exc:
        print(f"demo: the test server failed: {exc}", file=sys.stderr)
        return 1


async def _demo(config, server_python: str, workdir: Path, log_path: Path,
                seconds: float | None) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    async with start_test_server(server_python, port=0, log_path=workdir / "server.log") as srv:
        import attrs

        player = Player(attrs.evolve(config, server=srv.url))
        print(f"demo: server {srv.url}, device {config.device}, work dir {workdir}", file=sys.stderr)
        print("demo: Ctrl-C to stop", file=sys.stderr)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_run_then_cancel, player, nursery.cancel_scope)
            await srv.wait_event("client_added", timeout=30)
            fmt = config.formats[0]
            await srv.command({"cmd": "start", "format": {
                "sample_rate": fmt.sample_rate, "bit_depth": fmt.bit_depth, "channels": fmt.channels}})
            nursery.start_soon(_status_line, player)
            if seconds is not None:
                await trio.sleep(seconds)
                await player.stop()
        sys.stderr.write("\n")
        events = list(srv.events)
    _summary(player, events, log_path, config.formats[0].bit_depth)
    return 0


async def _run_then_cancel(player: Player, scope: trio.CancelScope) -> None:
    await player.run()
    scope.cancel()


async def _status_line(player: Player) -> None:
    while True:
        sys.stderr.write("\r" + format_status(player) + "\x1b[K")
        sys.stderr.flush()
        await trio.sleep(0.5)


def _summary(player: Player, events: list, log_path: Path, bits: int) -> None:
    stats = player.writer.stats
    print(f"summary: {stats.frames_dropped} frames dropped, {stats.frames_inserted} inserted, "
          f"{stats.underruns} underruns")
    if not log_path.exists():
        return
    played = read_paced_log(log_path)
    matched = match(played, ChunkTable.from_events(events), stream_bits=bits)
    if matched.k.size == 0:
        print("summary: no test-signal frames were played")
        return
    seconds = matched.k.size / played.rate
    print(f"summary: {seconds:.1f} s of audio, {len(played.xruns_ns)} device underruns")
    print("summary: ground truth (paced device log vs server stamps): "
          + summarize(matched.error_us).line())
