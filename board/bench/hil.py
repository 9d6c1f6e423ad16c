"""HIL bench plumbing: the bench config file, boards over SSH, the recorder, the server.

Only stdlib (+ trio and the project's test-server harness for :func:`bench_server`). No
paramiko/labgrid: boards are driven with the system ``ssh`` client (key auth, BatchMode),
power with whatever shell command the bench config names (USB relay, PoE switch, smart plug).

Config file (TOML), found by ``--hil-config PATH`` or ``$RESONATE_HIL_CONFIG`` (default
``board/bench/bench.toml``); see board/bench/README.md and ``bench.example.toml``.
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BENCH_SERVER = HERE / "bench_server.py"
DEFAULT_CONFIG = HERE / "bench.toml"


class BenchConfigError(ValueError):
    pass


@dataclass
class ServerCfg:
    host: str = "0.0.0.0"          # address the boards reach the bench host at
    port: int = 8927
    python: str | None = None     # server venv python (default: harness.find_server_python())
    discovery: bool = True        # --advertise --discover-clients (mDNS both ways)
    lead_ms: float = 1500.0


@dataclass
class CaptureCfg:
    device: str = ""              # ALSA capture device of the USB interface, hw:CARD=...
    rate: int = 48000
    format: str = "S32_LE"        # arecord -f
    channels: int = 2


@dataclass
class BoardCfg:
    name: str
    ssh: str                      # user@host for ssh
    channel: int                  # input channel of the USB interface this board feeds
    service: str = "resonate-embedded.service"
    client_name: str | None = None  # the player's --name as the server sees it (default: name)
    power_cycle: str | None = None  # shell command on the bench host (off, wait, on)
    sudo: str = "sudo -n"         # prefix for root commands on the board
    ssh_options: list[str] = field(default_factory=list)


@dataclass
class Thresholds:
    sync_median_us: float = 1000.0      # |median offset| at steady state (EMBEDDED.md §5.2)
    sync_p99_us: float = 1000.0         # p99 |offset| at steady state
    join_offset_us: float = 5000.0      # |offset| within 2 s of the stream start
    drift_ppm: float = 0.83             # |drift| (50 µs/min)
    boot_to_sound_s: float = 90.0       # power on -> first chirp heard
    reconnect_s: float = 45.0           # server back -> audio again (backoff caps at 30 s)
    watchdog_restart_s: float = 60.0    # SIGSTOP -> new MainPID (WatchdogSec + restart)
    settle_s: float = 10.0              # ignore this much after the stream start
    record_s: float = 60.0              # sync recording length


@dataclass
class BenchConfig:
    server: ServerCfg
    capture: CaptureCfg
    boards: list[BoardCfg]
    thresholds: Thresholds
    path: Path | None = None


def _build(cls, table: dict[str, Any], where: str):
    names = set(cls.__dataclass_fields__)
    unknown = set(table) - names
    if unknown:
        raise BenchConfigError(f"{where}: unknown keys {sorted(unknown)}")
    try:
        return cls(**table)
    except TypeError as exc:
        raise BenchConfigError(f"{where}: {exc}") from None


def load_config(path: str | os.PathLike[str]) -> BenchConfig:
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BenchConfigError(f"{p}: {exc}") from None
    server = _build(ServerCfg, raw.get("server", {}), "[server]")
    capture = _build(CaptureCfg, raw.get("capture", {}), "[capture]")
    if not capture.device:
        raise BenchConfigError("[capture] device is required (e.g. hw:CARD=Interface)")
    boards = []
    for i, b in enumerate(raw.get("boards", [])):
        b = dict(b)
        b.setdefault("channel", i)
        if "name" not in b or "ssh" not in b:
            raise BenchConfigError(f"[[boards]] #{i + 1}: name and ssh are required")
        boards.append(_build(BoardCfg, b, f"[[boards]] {b['name']}"))
    if not boards:
        raise BenchConfigError("at least one [[boards]] entry is required")
    thresholds = _build(Thresholds, raw.get("thresholds", {}), "[thresholds]")
    return BenchConfig(server, capture, boards, thresholds, p)


# ---------------------------------------------------------------------------------------
# Boards over SSH
# ---------------------------------------------------------------------------------------


class Board:
    """One DUT, driven with the system ssh client (key auth, no prompts)."""

    def __init__(self, cfg: BoardCfg) -> None:
        self.cfg = cfg

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def client_name(self) -> str:
        return self.cfg.client_name or self.cfg.name

    def ssh_argv(self, command: str) -> list[str]:
        return ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                "-o", "ServerAliveInterval=5", *self.cfg.ssh_options, self.cfg.ssh, command]

    def run(self, command: str, timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(self.ssh_argv(command), capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise RuntimeError(f"{self.name}: {command!r} -> rc {res.returncode}: {res.stderr.strip()}")
        return res

    def root(self, command: str, **kw) -> subprocess.CompletedProcess:
        return self.run(f"{self.cfg.sudo} {command}", **kw)

    def reachable(self) -> bool:
        try:
            return self.run("true", timeout=10, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def wait_ssh(self, timeout: float) -> float:
        """Wait until ssh works; return the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.reachable():
                return time.monotonic() - t0
            time.sleep(1.0)
        raise TimeoutError(f"{self.name}: no ssh within {timeout} s")

    def main_pid(self) -> int:
        out = self.run(f"systemctl show -p MainPID --value {shlex.quote(self.cfg.service)}").stdout
        return int(out.strip() or 0)

    def is_active(self) -> bool:
        res = self.run(f"systemctl is-active {shlex.quote(self.cfg.service)}", check=False)
        return res.stdout.strip() == "active"

    def restart_service(self) -> None:
        self.root(f"systemctl restart {shlex.quote(self.cfg.service)}")

    def signal_player(self, sig: str, pid: int | None = None) -> int:
        pid = pid or self.main_pid()
        if pid <= 0:
            raise RuntimeError(f"{self.name}: {self.cfg.service} has no MainPID")
        self.root(f"kill -{sig} {pid}")
        return pid

    def journal(self, since: str = "-10min") -> str:
        return self.root(f"journalctl -u {shlex.quote(self.cfg.service)} --since {shlex.quote(since)} "
                         "--no-pager -o short-monotonic", check=False).stdout

    def power_cycle(self) -> None:
        if not self.cfg.power_cycle:
            raise RuntimeError(f"{self.name}: no power_cycle command in the bench config")
        subprocess.run(self.cfg.power_cycle, shell=True, check=True, timeout=120)


# ---------------------------------------------------------------------------------------
# Recording the USB interface
# ---------------------------------------------------------------------------------------


class Recorder:
    """``arecord`` of the interface's inputs into a WAV; ``t0`` = time.monotonic() at start."""

    def __init__(self, cfg: CaptureCfg, path: str | os.PathLike[str]) -> None:
        self.cfg = cfg
        self.path = Path(path)
        self.proc: subprocess.Popen | None = None
        self.t0 = 0.0

    def start(self, seconds: float | None = None) -> Recorder:
        argv = ["arecord", "-q", "-D", self.cfg.device, "-c", str(self.cfg.channels),
                "-r", str(self.cfg.rate), "-f", self.cfg.format, "-t", "wav"]
        if seconds is not None:
            argv += ["-d", str(math.ceil(seconds))]
        argv.append(str(self.path))
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
        self.t0 = time.monotonic()
        return self

    def stop(self, timeout: float = 10.0) -> Path:
        """Stop (SIGINT lets arecord finish the WAV header) and return the file."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.path

    def wait(self, timeout: float | None = None) -> Path:
        if self.proc is not None:
            self.proc.wait(timeout)
            if self.proc.returncode not in (0, None):
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"arecord failed ({self.proc.returncode}): {err}")
        return self.path

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------
# The test server on the bench host
# ---------------------------------------------------------------------------------------


@asynccontextmanager
async def bench_server(cfg: ServerCfg, **kw):
    """The aiosendspin 10 test server with the ``bench`` signal, reachable by the boards.

    Reuses tests/harness/resonate_bench/harness.py (process, JSON-line commands and events)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from resonate_bench.harness import find_server_python, start_test_server

    python = cfg.python or find_server_python()
    extra = ["--advertise", "--discover-clients"] if cfg.discovery else []
    async with start_test_server(python, port=cfg.port, host=cfg.host, lead_ms=cfg.lead_ms,
                                 script=BENCH_SERVER, extra_args=extra, keep_log=True,
                                 name="Sendspin HIL Bench", **kw) as srv:
        yield srv


def server_url(cfg: ServerCfg, srv) -> str:
    return f"ws://{cfg.host}:{srv.port}{srv.ready.get('path', '/sendspin')}"


async def wait_clients(srv, boards: list[Board], timeout: float = 90.0, since: int = 0) -> dict[str, str]:
    """Wait until every board's player is added; return {board name: client_id}."""
    import trio

    want = {b.client_name: b.name for b in boards}
    found: dict[str, str] = {}
    with trio.fail_after(timeout):
        idx = since
        while len(found) < len(want):
            ev = await srv.wait_event("client_added", timeout=timeout, since=idx)
            idx = srv.events.index(ev) + 1
            if ev.get("name") in want:
                found[want[ev["name"]]] = ev["client_id"]
    return found


FORMAT = {"sample_rate": 48000, "bit_depth": 16, "channels": 2}


async def start_bench_stream(srv, client_ids: list[str]) -> dict[str, Any]:
    """Start the bench signal on the first client's group and join the others to it."""
    done = await srv.command({"cmd": "start", "format": FORMAT, "client_id": client_ids[0],
                              "signal": "bench"})
    for cid in client_ids[1:]:
        await srv.command({"cmd": "join", "client_id": cid, "to": client_ids[0]})
    return done
