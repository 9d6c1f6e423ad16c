"""Soak: a real aiosendspin server streams to the player on the paced device for a long time,
and the player's memory is sampled every minute.

    .venv/bin/python -m resonate_bench.soak --minutes 30

Prints one line per sample (elapsed, RSS, CPU seconds used since the previous sample),
then the first and last sample, and exits non-zero if the player died, lost its
connection, or its RSS grew by more than ``--max-growth-mb`` from the first sample to
the last.  Loopback only; the server is ``bench/sendspin_test_server.py`` in
``.venv-server``.  With ``--log DIR`` the paced device also logs what it played (about
11.5 MB per minute) and underruns are counted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from resonate_bench.harness import find_server_python, start_test_server
from resonate_bench.scenario import stop_process

CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def soak(minutes: float, interval_s: float, workdir: Path, log_dir: Path | None,
               fmt: str) -> dict:
    _codec, rate, bits, channels = fmt.split(":")  # the player offers only this format
    plog = (log_dir / "soak.plog") if log_dir else None
    device = f"paced:LOG={plog}" if plog else "paced"
    samples: list[tuple[float, int, float]] = []
    result: dict = {"samples": samples}
    async with start_test_server(find_server_python(), port=0,
                                 log_path=workdir / "server.log") as srv:
        cmd = [sys.executable, "-m", "resonate_embedded.cli", "run", "--server", srv.url,
               "--device", device, "--state-dir", str(workdir / "state"), "--formats", fmt,
               "--encryption", "off"]
        with open(workdir / "player.log", "wb") as out:
            proc = await trio.lowlevel.open_process(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            added = await srv.wait_event("client_added", timeout=60)
            await srv.command({"cmd": "start", "format": {
                "sample_rate": int(rate), "bit_depth": int(bits), "channels": int(channels)}})
            start = time.monotonic()
            last_cpu = cpu_s(proc.pid)
            print(f"soak: {minutes:g} min of {fmt} to the player (pid {proc.pid}) on {device}; "
                  f"a sample every {interval_s:g} s", flush=True)
            print(f"{'elapsed':>8} {'rss MB':>8} {'cpu s':>7}", flush=True)
            end = start + minutes * 60
            while True:
                await trio.sleep(max(0.0, min(interval_s, end - time.monotonic())))
                if proc.returncode is not None:
                    result["died"] = proc.returncode
                    break
                now, cpu = time.monotonic(), cpu_s(proc.pid)
                samples.append((now - start, rss_kb(proc.pid), cpu - last_cpu))
                last_cpu = cpu
                t, rss, used = samples[-1]
                print(f"{t / 60:7.2f}m {rss / 1024:8.1f} {used:7.2f}", flush=True)
                if now >= end - 0.01:
                    break
            status = await srv.command({"cmd": "status"})
            result["connected"] = any(c.get("client_id") == added["client_id"] and c.get("connected")
                                      for c in status.get("clients", []))
            result["streaming"] = status.get("streaming")
            result["disconnects"] = len(srv.events_of("client_disconnected"))
        finally:
            result["exit"] = await stop_process(proc)
    if plog is not None and plog.exists():
        from resonate_bench.paced_log import read_paced_log

        result["xruns"] = len(read_paced_log(plog).xruns_ns)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="long run with RSS sampled every minute")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--interval", type=float, default=None,
                   help="seconds between samples (default 60, or a sixth of a short run)")
    p.add_argument("--format", default="pcm:48000:16:2", help="codec:rate:bits:channels")
    p.add_argument("--max-growth-mb", type=float, default=8.0,
                   help="fail if RSS grows more than this from the first to the last sample")
    p.add_argument("--log", type=Path, default=None, help="directory for the paced device's log")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    if find_server_python() is None:
        print("soak: no Python with aiosendspin 10 (run bash .ci/setup)", file=sys.stderr)
        return 2
    interval = args.interval or min(60.0, max(2.0, args.minutes * 60 / 6))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="resonate-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.log:
        args.log.mkdir(parents=True, exist_ok=True)
    r = trio.run(soak, args.minutes, interval, workdir, args.log, args.format)
    samples = r["samples"]
    problems = []
    if "died" in r:
        problems.append(f"the player died (exit {r['died']})")
    if not r.get("connected"):
        problems.append("the player was not connected at the end")
    if r.get("disconnects"):
        problems.append(f"{r['disconnects']} disconnects")
    if r.get("exit") != 0:
        problems.append(f"exit code {r.get('exit')} on SIGTERM")
    if len(samples) >= 2:
        first, last = samples[0], samples[-1]
        growth = (last[1] - first[1]) / 1024
        print(f"soak: RSS first {first[1] / 1024:.1f} MB (at {first[0] / 60:.1f} min), "
              f"last {last[1] / 1024:.1f} MB (at {last[0] / 60:.1f} min), growth {growth:+.1f} MB, "
              f"max {max(s[1] for s in samples) / 1024:.1f} MB"
              + (f", xruns {r['xruns']}" if "xruns" in r else ""))
        if growth > args.max_growth_mb:
            problems.append(f"RSS grew {growth:.1f} MB (> {args.max_growth_mb:g})")
    else:
        problems.append("fewer than two samples")
    print(f"soak: {'FAIL: ' + '; '.join(problems) if problems else 'OK'} (logs in {workdir})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
