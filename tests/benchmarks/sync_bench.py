#!/usr/bin/env python3
"""Sync benchmark: how well the player keeps time, against ground truth, next to the reference.

    python tests/benchmarks/sync_bench.py [--quick] [--out DIR] [--only A,B] [--no-reference]

Every case streams the index test signal from the real aiosendspin 10 server to
our player and, at the same time and on its own server, to the reference player
(sendspin 9.x), each on its own software-paced DAC whose log says exactly which
frame left the DAC when. Figures are therefore ground truth, not what a player
says about itself. See tests/benchmarks/README.md for what each figure means.

Writes DIR/table.txt (the printed report), DIR/results.json (all figures) and
DIR/sync_bench.png (error against time, one row per case). Exit status: 0 when
every run completed (whatever the targets say; --strict makes a MISS exit 1),
2 when a run failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import attrs
import numpy as np
import trio

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from resonate_bench.harness import find_server_python  # noqa: E402
from resonate_bench.netem import NetemConfig  # noqa: E402
from resonate_bench.reference import find_reference_python  # noqa: E402
from resonate_bench.scenario import (  # noqa: E402
    Figures, InterPlayer, Scenario, ScenarioResult, clean_frames, cpu_hog, figures, fmt_opt,
    inter_player, run_scenario,
)

# ------------------------------------------------------------------------------ cases


@attrs.frozen
class Case:
    name: str
    what: str
    full_s: float
    quick_s: float | None  # None: not in --quick
    kwargs: dict = attrs.field(factory=dict)
    hog: bool = False
    targets: tuple[str, ...] = ()  # which targets this case is checked against
    expected_us: float | None = None  # a known, reported-only bias (positive = late)


CASES = [
    Case("clean_0ppm", "DAC crystal exact, loopback", 10, None, {"ppm": 0},
         targets=("converge", "speed", "xrun")),
    Case("clean_+100ppm", "DAC +100 ppm, loopback", 10, 10, {"ppm": 100},
         targets=("converge", "speed", "xrun", "cpu")),
    Case("clean_-100ppm", "DAC -100 ppm, loopback", 10, None, {"ppm": -100},
         targets=("converge", "speed", "xrun")),
    Case("dac2ms_told", "+100 ppm, 2 ms codec latency, --dac-latency-us 2000", 10, None,
         {"ppm": 100, "latency_us": 2000, "dac_latency_us": 2000},
         targets=("converge", "speed", "xrun")),
    Case("dac2ms_untold", "-100 ppm, 2 ms codec latency not configured (expect +2 ms)", 10, None,
         {"ppm": -100, "latency_us": 2000}, targets=("speed",), expected_us=2000.0),
    Case("wifi_+100ppm", "+100 ppm, Wi-Fi-like jitter (10 min in full mode)", 600, 15,
         {"ppm": 100, "netem": NetemConfig.wifi(seed=1)}, targets=("p99", "converge", "speed")),
    Case("wifi_-100ppm", "-100 ppm, Wi-Fi-like jitter", 15, 15,
         {"ppm": -100, "netem": NetemConfig.wifi(seed=2)}, targets=("p99", "converge", "speed")),
    Case("asym_10/1ms", "+100 ppm, 10 ms down / 1 ms up (expect +4.5 ms)", 10, 10,
         {"ppm": 100, "netem": NetemConfig.asymmetric(10.0, 1.0)}, targets=("speed",),
         expected_us=4500.0),
    Case("cpu_hog", "+100 ppm, busy loop pinned to the other core", 10, None, {"ppm": 100},
         hog=True, targets=("converge", "speed")),
    Case("group2", "two players in one group: +100 and -100 ppm", 10, 10,
         {"ppm": 100, "group_ppm": (-100.0,)}, targets=("converge", "speed", "xrun")),
    Case("flac", "FLAC 48k/16/2, +100 ppm", 10, 10,
         {"ppm": 100, "offer": "flac:48000:16:2"}, targets=("converge", "speed", "xrun")),
]

TARGET_P99_US = 100.0
TARGET_CONVERGE_S = 2.0
TARGET_SPEED_PCT = 0.5
TARGET_CPU_RATIO = 0.3
TARGET_RSS_MB = 40.0


# ------------------------------------------------------------------------------ running


@attrs.define
class RunOutcome:
    case: str
    kind: str  # ours | reference
    seconds: float
    error: str | None = None
    figures: list[tuple[str, Figures]] = attrs.field(factory=list)  # per member
    inter: InterPlayer | None = None
    traces: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = attrs.field(factory=list)
    inter_trace: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    netem: dict | None = None
    wall_s: float = 0.0


def envelope(t: np.ndarray, y: np.ndarray, bins: int = 3000):
    """(t, min, max) per bin: a faithful, small version of a long trace for plotting."""
    n = t.size
    if n == 0:
        return t, y, y
    per = max(1, n // bins)
    m = (n // per) * per
    if m == 0:
        return t, y, y
    tt = t[:m].reshape(-1, per)[:, 0]
    yy = y[:m].reshape(-1, per)
    return tt, yy.min(axis=1), yy.max(axis=1)


def summarize_result(case: Case, kind: str, res: ScenarioResult, wall_s: float) -> RunOutcome:
    out = RunOutcome(case.name, kind, res.scenario.seconds, wall_s=wall_s, netem=res.netem)
    for p in res.players:
        out.figures.append((p.name, figures(p, res.streamed_s)))
        c = clean_frames(p)
        t0 = c.play_ns[0] if c.play_ns.size else 0
        out.traces.append((p.name, *envelope((c.play_ns - t0) / 1e9, c.error_us)))
        if p.exit_code not in (0, -15) and out.error is None:
            out.error = f"{p.name} exited {p.exit_code}"
    if len(res.players) >= 2:
        a, b = res.players[0], res.players[1]
        out.inter = inter_player(a, b)
        ca, cb = clean_frames(a), clean_frames(b)
        ka, ia = np.unique(ca.k, return_index=True)
        kb, ib = np.unique(cb.k, return_index=True)
        _, ja, jb = np.intersect1d(ka, kb, assume_unique=True, return_indices=True)
        if ja.size:
            pa = ca.play_ns[ia[ja]]
            pb = cb.play_ns[ib[jb]]
            t0 = min(ca.play_ns[0], cb.play_ns[0])
            out.inter_trace = envelope((pa - t0) / 1e9, (pa - pb) / 1000.0)
    return out


async def run_one(case: Case, kind: str, seconds: float, workdir: Path, ref_python: str | None,
                  server_python: str | None) -> RunOutcome:
    sc = Scenario(case.name.replace("/", "_").replace("+", "p"), seconds=seconds, player=kind,
                  **case.kwargs)
    t0 = time.monotonic()
    try:
        res = await run_scenario(sc, workdir, server_python=server_python, ref_python=ref_python)
        # In a worker thread: a 10-minute log takes ~20 s to analyse, and the event loop must
        # keep reading the other run's harness meanwhile (a harness whose stdout pipe fills up
        # blocks, and its server stops streaming).
        return await trio.to_thread.run_sync(summarize_result, case, kind, res,
                                             time.monotonic() - t0)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        (workdir / "error.txt").write_text(traceback.format_exc())
        return RunOutcome(case.name, kind, seconds, error=f"{type(exc).__name__}: {exc}"[:300],
                          wall_s=time.monotonic() - t0)


async def run_case(case: Case, seconds: float, out: Path, ref_python: str | None,
                   server_python: str | None) -> list[RunOutcome]:
    results: list[RunOutcome] = []
    kinds = ["ours"] + (["reference"] if ref_python else [])

    async def go(kind: str) -> None:
        results.append(await run_one(case, kind, seconds, out / "runs" / case.name.replace("/", "_")
                                     / kind, ref_python, server_python))

    async with cpu_hog(case.hog, max_seconds=seconds + 300):
        async with trio.open_nursery() as n:
            for kind in kinds:
                n.start_soon(go, kind)
    results.sort(key=lambda r: kinds.index(r.kind))
    return results


# ------------------------------------------------------------------------------ report


def f0(x, spec=".0f"):
    return fmt_opt(x, spec)


def table(outcomes: list[RunOutcome]) -> list[str]:
    hdr = (f"{'case':<14} {'player':<10} {'dur s':>5} {'p50 us':>8} {'p99 us':>8} {'max us':>8} "
           f"{'jit99':>7} {'conv s':>6} {'lead':>5} {'1st ms':>7} {'st.err':>7} {'drop/m':>7} {'ins/m':>7} "
           f"{'jumps':>5} {'spd %':>6} {'xrun':>4} {'cpu/m':>6} {'rss MB':>6}")
    lines = [hdr, "-" * len(hdr)]
    for o in outcomes:
        if o.error and not o.figures:
            lines.append(f"{o.case:<14} {o.kind:<10} FAILED: {o.error}")
            continue
        for i, (name, f) in enumerate(o.figures):
            who = o.kind if i == 0 else f"{o.kind[:6]}-m{i}"
            lines.append(
                f"{o.case if i == 0 else '':<14} {who:<10} {f.played_s:>5.0f} {f0(f.median_us):>8} "
                f"{f0(f.p99_us):>8} {f0(f.max_us):>8} {f0(f.p99_jitter_us):>7} "
                f"{fmt_opt(f.converge_s, '.2f') if f.converge_s is not None else 'never':>6} "
                f"{f0(f.scheduled_first_ms):>5} {f0(f.first_sound_ms):>7} {f0(f.start_error_us):>7} {f0(f.dropped_per_min):>7} "
                f"{f0(f.inserted_per_min):>7} {f.jumps:>5} {fmt_opt(f.max_speed_dev_pct, '.3f'):>6} "
                f"{f.xruns:>4} {fmt_opt(f.cpu_s_per_min, '.2f'):>6} {f.rss_mb:>6.1f}")
        if o.error:
            lines.append(f"{'':<14} {o.kind:<10} note: {o.error}")
    return lines


def by(outcomes: list[RunOutcome], case: str, kind: str) -> RunOutcome | None:
    for o in outcomes:
        if o.case == case and o.kind == kind and o.figures:
            return o
    return None


def verdict(ok: bool, margin: str) -> str:
    return f"{'PASS' if ok else 'MISS'} ({margin})"


def targets(outcomes: list[RunOutcome], cases: list[Case]) -> tuple[list[str], bool]:
    lines = ["Targets (our player; MISS says by how much):"]
    all_ok = True

    def add(label: str, ok: bool, margin: str) -> None:
        nonlocal all_ok
        all_ok &= ok
        lines.append(f"  {verdict(ok, margin):<44} {label}")

    for case in cases:
        o = by(outcomes, case.name, "ours")
        if o is None:
            continue
        for name, f in o.figures:
            tag = f"[{case.name}{'' if name == o.figures[0][0] else ' ' + name[-2:]}]"
            if "p99" in case.targets:
                d = f.p99_us - TARGET_P99_US
                add(f"steady-state p99 |error| <= {TARGET_P99_US:.0f} us {tag}", d <= 0,
                    f"p99 {f.p99_us:.0f} us, {abs(d):.0f} us {'under' if d <= 0 else 'over'}")
            if "converge" in case.targets:
                c = f.converge_s
                ok = c is not None and c <= TARGET_CONVERGE_S
                add(f"converged (|error| stays <= 1 ms) within {TARGET_CONVERGE_S:.0f} s {tag}", ok,
                    "never" if c is None else f"{c:.2f} s")
            if "speed" in case.targets:
                s = f.max_speed_dev_pct
                ok = not math.isnan(s) and s <= TARGET_SPEED_PCT
                add(f"speed deviation over any 150 ms <= {TARGET_SPEED_PCT} % {tag}", ok,
                    f"{s:.3f} %")
            if "xrun" in case.targets:
                add(f"no underrun on a clean run {tag}", f.xruns == 0, f"{f.xruns} underruns")
    cpu_case = next((c for c in cases if "cpu" in c.targets), None)
    if cpu_case is not None:
        ours, ref = by(outcomes, cpu_case.name, "ours"), by(outcomes, cpu_case.name, "reference")
        if ours and ref:
            a, b = ours.figures[0][1].cpu_s_per_min, ref.figures[0][1].cpu_s_per_min
            ratio = a / b if b else float("inf")
            add(f"CPU <= {TARGET_CPU_RATIO}x the reference's on the same stream [{cpu_case.name}]",
                ratio <= TARGET_CPU_RATIO, f"{ratio:.2f}x: {a:.2f} vs {b:.2f} cpu-s/min")
        elif ours:
            lines.append(f"  {'n/a (no reference run)':<44} CPU ratio [{cpu_case.name}]")
    rss = [(f.rss_mb, o.case) for o in outcomes if o.kind == "ours" for _, f in o.figures]
    if rss:
        worst, where = max(rss)
        add(f"peak RSS <= {TARGET_RSS_MB:.0f} MB (worst case: {where})", worst <= TARGET_RSS_MB,
            f"{worst:.1f} MB")
    lines.append("Reported, not held to a target:")
    for case in cases:
        if case.expected_us is None:
            continue
        for kind in ("ours", "reference"):
            o = by(outcomes, case.name, kind)
            if o is None:
                continue
            f = o.figures[0][1]
            lines.append(
                f"  [{case.name}] {kind:<9} expected {case.expected_us:+.0f} us, measured mean "
                f"{f.mean_us:+.0f} us (off by {f.mean_us - case.expected_us:+.0f} us), "
                f"p99 |error - mean| {f.p99_jitter_us:.0f} us")
    for o in outcomes:
        if o.seconds < 120:
            continue
        for name, f in o.figures:
            lines.append(
                f"  [{o.case}] {o.kind:<9} long run, second half ({f.played_s / 2:.0f} s): p99 |error| "
                f"{f.late_p99_us:.0f} us, mean {f.late_mean_us:+.0f} us, p99 |error - median| "
                f"{f.late_p99_jitter_us:.0f} us")
    return lines, all_ok


def inter_lines(outcomes: list[RunOutcome]) -> list[str]:
    lines = []
    for o in outcomes:
        if o.inter is not None:
            i = o.inter
            lines.append(f"  [{o.case}] {o.kind:<9} play_m0(K) - play_m1(K) over {i.frames} frames: "
                         f"median |d| {i.median_us:.1f} us, p99 {i.p99_us:.1f} us, "
                         f"max {i.max_us:.1f} us, mean {i.mean_us:+.1f} us")
    return (["Inter-player (same frame K on the two players of a group, after 2 s):"] + lines
            if lines else [])


def ratios(outcomes: list[RunOutcome], cases: list[Case]) -> list[str]:
    cols = [("p99", "p99_us"), ("jit99", "p99_jitter_us"), ("max", "max_us"),
            ("1st snd", "first_sound_ms"), ("corr/m", None), ("spd", "max_speed_dev_pct"),
            ("cpu/m", "cpu_s_per_min"), ("rss", "rss_mb")]
    hdr = f"{'case':<14} " + " ".join(f"{c:>8}" for c, _ in cols)
    lines = ["Ours / reference (below 1 = ours is better or smaller):", hdr]
    any_row = False
    for case in cases:
        a, b = by(outcomes, case.name, "ours"), by(outcomes, case.name, "reference")
        if not (a and b):
            continue
        fa, fb = a.figures[0][1], b.figures[0][1]
        cells = []
        for _, attr in cols:
            if attr is None:
                x = fa.dropped_per_min + fa.inserted_per_min
                y = fb.dropped_per_min + fb.inserted_per_min
            else:
                x, y = getattr(fa, attr), getattr(fb, attr)
            if x is None or y is None or (isinstance(y, float) and (math.isnan(y) or y == 0)):
                cells.append(f"{'-':>8}")
            else:
                cells.append(f"{x / y:>8.3g}")
        if a.inter and b.inter and b.inter.p99_us:
            cells.append(f"  inter-player p99 {a.inter.p99_us / b.inter.p99_us:.3g}")
        lines.append(f"{case.name:<14} " + " ".join(cells))
        any_row = True
    if any_row:
        lines.append("  (first sound is mostly the server's lead, which it picks from what the player "
                     "declares: see the 'lead' column)")
    return lines if any_row else ["Ours / reference: no reference runs."]


# ------------------------------------------------------------------------------ plot


def plot(outcomes: list[RunOutcome], cases: list[Case], path: Path, with_ref: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = 2 if with_ref else 1
    fig, axes = plt.subplots(len(cases), ncols, figsize=(7 * ncols, 2.3 * len(cases)), squeeze=False)
    colors = ["tab:blue", "tab:orange", "tab:green"]
    for row, case in enumerate(cases):
        for col, kind in enumerate(["ours", "reference"][:ncols]):
            ax = axes[row][col]
            o = next((x for x in outcomes if x.case == case.name and x.kind == kind), None)
            scale, unit = (1.0, "us") if kind == "ours" else (1000.0, "ms")
            title = f"{case.name} - {'our player' if kind == 'ours' else 'reference (sendspin 9)'}"
            ax.set_title(title, fontsize=9)
            ax.grid(True, alpha=0.3)
            ax.tick_params(labelsize=7)
            if o is None or not o.traces:
                ax.text(0.5, 0.5, o.error if o and o.error else "not run", ha="center",
                        va="center", fontsize=8, transform=ax.transAxes, wrap=True)
                continue
            for i, (name, t, lo, hi) in enumerate(o.traces):
                label = "m0" if i == 0 else f"m{i}"
                ax.fill_between(t, lo / scale, hi / scale, color=colors[i % 3], alpha=0.6,
                                linewidth=0.6, label=f"{label} error" if len(o.traces) > 1 else None)
                ax.plot(t, (lo + hi) / 2 / scale, color=colors[i % 3], linewidth=0.4)
            if o.inter_trace is not None:
                t, lo, hi = o.inter_trace
                ax.fill_between(t, lo / scale, hi / scale, color="tab:red", alpha=0.5,
                                label="m0 - m1")
                ax.legend(fontsize=6, loc="upper right")
            if kind == "ours" and case.expected_us is None:
                for y in (-TARGET_P99_US, TARGET_P99_US):
                    ax.axhline(y, color="grey", linestyle=":", linewidth=0.8)
            ax.set_ylabel(f"error ({unit})", fontsize=7)
            if row == len(cases) - 1:
                ax.set_xlabel("seconds since first sound", fontsize=7)
    fig.suptitle("Play time - server time of the same frame (positive = late), ground truth "
                 "from the paced DAC log", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------------------ main


def to_json(outcomes: list[RunOutcome]) -> list[dict]:
    def clean(v):
        if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
            return None
        return v

    rows = []
    for o in outcomes:
        rows.append({
            "case": o.case, "player": o.kind, "seconds": o.seconds, "error": o.error,
            "wall_s": round(o.wall_s, 1), "netem": o.netem,
            "members": [{"name": n, **{k: clean(v) for k, v in f.as_dict().items()}}
                        for n, f in o.figures],
            "inter_player": ({k: clean(v) for k, v in attrs.asdict(o.inter).items()}
                             if o.inter else None),
        })
    return rows


def code_version() -> str:
    """The commit the player code comes from, and whether the tree differs from it (read-only)."""
    import subprocess

    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no",
                                "--", "resonate_embedded"], capture_output=True, text=True,
                               timeout=10).stdout.split("\n")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    changed = [line for line in dirty if line.strip()]
    return f"{head or 'unknown'}" + (f" + {len(changed)} uncommitted file(s)" if changed else "")


async def amain(args: argparse.Namespace) -> int:
    t_start = time.monotonic()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    cases = [c for c in CASES if args.quick is False or c.quick_s is not None]
    if args.only:
        wanted = set(args.only.split(","))
        cases = [c for c in CASES if c.name in wanted]
        missing = wanted - {c.name for c in cases}
        if missing:
            print(f"unknown case(s): {sorted(missing)}; known: {[c.name for c in CASES]}",
                  file=sys.stderr)
            return 2
    server_python = find_server_python()
    if server_python is None:
        print("no Python with aiosendspin 10.x for the test server (see tests/server/README.md)",
              file=sys.stderr)
        return 2
    ref_python, ref_note = (None, "disabled by --no-reference")
    if not args.no_reference:
        ref_python, ref_note = find_reference_python()
    header = [
        f"sync benchmark ({'quick' if args.quick else 'full'}), {time.strftime('%Y-%m-%d %H:%M:%S')}, "
        f"{os.cpu_count()} CPUs, player code {code_version()}",
        f"reference player: {ref_note if ref_python else 'NOT RUN: ' + ref_note}",
        f"server: aiosendspin 10 test harness ({server_python})",
    ]
    for line in header:
        print(line, flush=True)
    outcomes: list[RunOutcome] = []
    loads: list[tuple[str, float, float]] = []
    for case in cases:
        seconds = args.seconds or (case.quick_s if args.quick else case.full_s)
        print(f"-- {case.name}: {case.what}, {seconds:g} s ...", flush=True)
        load_before = os.getloadavg()[0]
        res = await run_case(case, seconds, out, ref_python, server_python)
        load_after = os.getloadavg()[0]
        loads.append((case.name, load_before, load_after))
        for r in res:
            f = r.figures[0][1] if r.figures else None
            print(f"   {r.kind:<9} {'FAILED ' + str(r.error) if f is None else f'p99 {f.p99_us:.0f} us, max {f.max_us:.0f} us'}"
                  f" ({r.wall_s:.0f} s)", flush=True)
        outcomes.extend(res)
    report = header + [""] + table(outcomes) + [""]
    report += inter_lines(outcomes) + [""]
    tlines, all_ok = targets(outcomes, cases)
    report += tlines + [""] + ratios(outcomes, cases) + [""]
    png = out / "sync_bench.png"
    try:
        plot(outcomes, cases, png, with_ref=ref_python is not None)
        report.append(f"plot: {png}")
    except Exception as exc:  # noqa: BLE001
        report.append(f"plot FAILED: {exc!r}")
    report.append("system load (1-min average, before/after each case; this bench alone adds ~1): "
                  + ", ".join(f"{n} {a:.1f}/{b:.1f}" for n, a, b in loads))
    report.append(f"results: {out / 'results.json'}   runs: {out / 'runs'}")
    report.append(f"wall time: {time.monotonic() - t_start:.0f} s")
    text = "\n".join(report)
    print("\n" + text)
    (out / "table.txt").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(
        {"mode": "quick" if args.quick else "full", "reference": ref_note if ref_python else None,
         "runs": to_json(outcomes)}, indent=1))
    if any(o.error and not o.figures for o in outcomes):
        return 2
    return 1 if (args.strict and not all_ok) else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the short subset (~3 minutes)")
    p.add_argument("--out", type=Path,
                   default=Path(tempfile.gettempdir()) / "resonate-sync-bench",
                   help="output directory (default: %(default)s)")
    p.add_argument("--only", help="comma-separated case names to run")
    p.add_argument("--seconds", type=float, help="override every case's duration")
    p.add_argument("--no-reference", action="store_true", help="skip the reference player")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    return trio.run(amain, args)


if __name__ == "__main__":
    sys.exit(main())
