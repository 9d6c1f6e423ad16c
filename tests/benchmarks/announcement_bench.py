#!/usr/bin/env python3
"""Announcement benchmark: the media's sync error before, during and after an announcement.

    python tests/benchmarks/announcement_bench.py [--runs N] [--out DIR]

Each run starts the player on the paced device against the spec-following announcement
server (``resonate_bench.announcement_server``): 7 s of media (the index signal)
with a 1 s announcement from 3.5 s.  Two kinds of run alternate:

* ``stereo``: 48 kHz stereo, tone in channel 1 only, no ducking: channel 0 remains the
  media's, so its error is measured *during* the announcement as well;
* ``ducked``: mono 24 kHz, 12 dB ducking (the usual voice-assistant case): the media is
  measured before and after (ducked frames are not the index signal), and the
  announcement's own start against its ``start_timestamp``.

Error = when the frame left the (paced) DAC − the server's timestamp for it, matched frame
by frame: ground truth, not what the player believes.  Exit status 0 when every run
completed; 2 when one failed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from resonate_bench.announcement_server import (
    AnnouncementServer, measure, run_player_against,
)
from resonate_bench.paced_log import read_paced_log


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:+8.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind (default 3)")
    parser.add_argument("--out", type=Path, help="keep each run's logs here")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="announcement-bench-"))
    print(f"{'run':<10} {'before med':>10} {'during med':>10} {'after med':>10} "
          f"{'before p99':>10} {'during p99':>10} {'after p99':>10} {'start':>8}   (µs)")
    failed = 0
    for index in range(args.runs):
        for kind in ("stereo", "ducked"):
            workdir = out / f"{kind}-{index}"
            workdir.mkdir(parents=True, exist_ok=True)
            server = AnnouncementServer(stereo=kind == "stereo")
            try:
                run_player_against(server, workdir)
                r = measure(server, read_paced_log(workdir / "play.plog"))
            except Exception as exc:  # noqa: BLE001 - report and go on with the next run
                print(f"{kind}-{index}: failed: {exc}", file=sys.stderr)
                failed += 1
                continue
            print(f"{kind + '-' + str(index):<10} {fmt(r.median_before_us):>10} "
                  f"{fmt(r.median_during_us):>10} {fmt(r.median_after_us):>10} "
                  f"{r.before.p99_abs_us:>10.1f} "
                  f"{(r.during.p99_abs_us if r.during else float('nan')):>10.1f} "
                  f"{r.after.p99_abs_us:>10.1f} {r.start_error_us:>+8.0f}", flush=True)
    print(f"logs: {out}")
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
