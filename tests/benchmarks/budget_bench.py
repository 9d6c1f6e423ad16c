#!/usr/bin/env python3
"""Resource budget benchmark: our player's CPU per audio minute and peak RSS, next to the reference.

    python tests/benchmarks/budget_bench.py [--quick] [--out DIR] [--no-reference]

For PCM 48 kHz/16/2 and for FLAC, the real aiosendspin 10 test server streams
the index signal to our player, started with its default flags (encryption on,
the default --formats list; the server is told which codec to send), and at the
same time, on its own server, to the reference player (sendspin 9.x). Each
plays on its own software-paced DAC.

Figures, read from /proc for each player process:

* ``cpu s/min``: utime + stime over a steady window that starts ``--settle``
  seconds after the start command (start-up and the first connection are
  excluded), divided by the window's length in minutes;
* ``peak MB``: VmHWM, the peak resident set over the whole life of the process;
* which installed packages have native code mapped at the end (``av`` = FFmpeg loaded).

CPU seconds depend far less on the machine's load than wall time does; the load
average is printed anyway. Exit status: 0 when every run played (whatever the
targets say), 2 when a run failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
from pathlib import Path

import attrs
import trio

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from resonate_bench.harness import find_server_python  # noqa: E402
from resonate_bench.reference import find_reference_python  # noqa: E402
from resonate_bench.scenario import Scenario, figures, run_scenario  # noqa: E402


@attrs.frozen
class Case:
    name: str
    codec: str
    cpu_target_s_per_min: float
    rss_target_mb: float


CASES = (Case("pcm", "pcm", 1.0, 40.0), Case("flac", "flac", 1.5, 55.0))


@attrs.frozen
class Outcome:
    case: str
    kind: str  # ours | reference
    cpu_s_per_min: float | None = None
    peak_rss_mb: float | None = None
    window_s: float = 0.0
    played_s: float = 0.0
    codec: str | None = None  # what the server actually streamed
    packages: tuple[str, ...] = ()  # packages with native code loaded at the end of the window
    error: str | None = None


def scenario(case: Case, kind: str, settle_s: float, window_s: float) -> Scenario:
    """Ours with its default --formats; the reference told to ask for the case's codec."""
    offer = None if kind == "ours" else f"{case.codec}:48000:16:2"
    return Scenario(f"budget-{case.name}-{kind}", offer=offer, codec=case.codec, player=kind,
                    seconds=settle_s + window_s, steady_after_s=settle_s)


async def run_one(case: Case, kind: str, settle_s: float, window_s: float, workdir: Path,
                  ref_python: str | None, server_python: str | None) -> Outcome:
    try:
        res = await run_scenario(scenario(case, kind, settle_s, window_s), workdir,
                                 server_python=server_python, ref_python=ref_python)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        (workdir / "error.txt").write_text(traceback.format_exc())
        return Outcome(case.name, kind, error=f"{type(exc).__name__}: {exc}"[:300])
    run = res.players[0]
    fig = figures(run, res.streamed_s)
    started = [e for e in res.events if e.get("event") == "player_stream_start"
               and e.get("client_id") == run.client_id]
    codec = started[0].get("codec") if started else None
    error = None if fig.played_s > 0 else f"nothing played (exit {run.exit_code})"
    return Outcome(case.name, kind, fig.cpu_s_per_min, fig.rss_mb, res.streamed_s, fig.played_s,
                   codec, tuple(sorted(run.usage.packages)), error)


async def run_case(case: Case, settle_s: float, window_s: float, out: Path,
                   ref_python: str | None, server_python: str | None) -> list[Outcome]:
    """Ours and the reference at the same time, each with its own server and DAC."""
    kinds = ["ours"] + (["reference"] if ref_python else [])
    results: dict[str, Outcome] = {}

    async def go(kind: str) -> None:
        results[kind] = await run_one(case, kind, settle_s, window_s, out / case.name / kind,
                                      ref_python, server_python)

    async with trio.open_nursery() as nursery:
        for kind in kinds:
            nursery.start_soon(go, kind)
    return [results[k] for k in kinds]


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def report(outcomes: list[Outcome], load_before: tuple[float, ...],
           load_after: tuple[float, ...], settle_s: float, ref_note: str) -> list[str]:
    lines = [f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
             f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} "
             f"({os.cpu_count()} CPUs)",
             f"reference player: {ref_note}",
             f"CPU window starts {settle_s:.0f} s after the start command",
             "",
             f"{'case':<6} {'player':<10} {'codec':<6} {'window s':>8} {'cpu s/min':>9} "
             f"{'peak MB':>8}  note"]
    for o in outcomes:
        lines.append(f"{o.case:<6} {o.kind:<10} {o.codec or '-':<6} {o.window_s:>8.1f} "
                     f"{_fmt(o.cpu_s_per_min, '.2f'):>9} {_fmt(o.peak_rss_mb, '.1f'):>8}  "
                     f"{o.error or ''}")
    lines += ["", "Native code loaded at the end of the window (site-packages):"]
    lines += [f"  {o.case:<6} {o.kind:<10} {' '.join(o.packages) or '-'}" for o in outcomes]
    lines += ["", "Targets (ours):"]
    for case in CASES:
        ours = next((o for o in outcomes if o.case == case.name and o.kind == "ours"), None)
        if ours is None or ours.error:
            lines.append(f"  {case.name}: not measured")
            continue
        for what, value, target, unit in (
                ("CPU", ours.cpu_s_per_min, case.cpu_target_s_per_min, "s/min"),
                ("peak RSS", ours.peak_rss_mb, case.rss_target_mb, "MB")):
            verdict = "PASS" if value is not None and value <= target else "MISS"
            lines.append(f"  {verdict}  {case.name} {what} <= {target:g} {unit}: "
                         f"{_fmt(value, '.2f')} {unit}")
    return lines


async def main_async(args: argparse.Namespace) -> int:
    server_python = find_server_python()
    if server_python is None:
        print("no Python with aiosendspin 10.x for the test server", file=sys.stderr)
        return 2
    ref_python, ref_note = (None, "disabled by --no-reference")
    if not args.no_reference:
        ref_python, ref_note = find_reference_python()
        if ref_python is None:
            ref_note = "NOT RUN: " + ref_note
    settle_s, window_s = (args.settle, args.window) if not args.quick else (5.0, 10.0)
    out = Path(args.out or tempfile.mkdtemp(prefix="budget_bench-"))
    load_before = os.getloadavg()
    outcomes: list[Outcome] = []
    for case in CASES:
        outcomes += await run_case(case, settle_s, window_s, out, ref_python, server_python)
    lines = report(outcomes, load_before, os.getloadavg(), settle_s, ref_note)
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "budget.txt").write_text(text)
    print(text, end="")
    print(f"(runs and logs in {out})")
    return 2 if any(o.error for o in outcomes) else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="5 s settle + 10 s window per run")
    p.add_argument("--settle", type=float, default=20.0, help="seconds before the CPU window")
    p.add_argument("--window", type=float, default=90.0, help="seconds of the CPU window")
    p.add_argument("--out", help="directory for the runs' logs and budget.txt")
    p.add_argument("--no-reference", action="store_true", help="skip the reference player")
    sys.exit(trio.run(main_async, p.parse_args()))


if __name__ == "__main__":
    main()
