"""Client-side helper (Python 3.11, trio) for the real Sendspin test server harness.

Starts ``sendspin_test_server.py`` with the server venv's Python as a subprocess,
collects its JSON-line events and sends it JSON-line commands::

    async with start_test_server(venv_python, port=0) as srv:
        ...connect a player to srv.url...
        await srv.wait_event("client_added", timeout=30)
        await srv.command({"cmd": "start", "format": {...}})
        ev = await srv.wait_event("chunk", since=mark)

Only stdlib + trio + attrs + numpy. Never imports the aiosendspin side.
See tests/harness/resonate_bench/README.md for commands, events and the test-signal encoding.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import trio

SERVER_SCRIPT = Path(__file__).resolve().with_name("sendspin_test_server.py")
RESONATE_SCRIPT = Path(__file__).resolve().with_name("resonate_test_server.py")
SENDSPIN_V1_SCRIPT = Path(__file__).resolve().with_name("sendspin_v1_test_server.py")
SETUP_SCRIPT = Path(__file__).resolve().with_name("setup_server_venv.sh")
REPO_ROOT = Path(__file__).resolve().parents[3]

Predicate = Callable[[dict[str, Any]], bool]


class HarnessError(Exception):
    """The harness process failed, exited, or reported an error for a command."""


class HarnessCommandError(HarnessError):
    """A command was answered with an ``error`` event."""

    def __init__(self, event: dict[str, Any]) -> None:
        super().__init__(event.get("message", "command failed"))
        self.event = event


# ---------------------------------------------------------------------------------------
# Locating the server interpreter
# ---------------------------------------------------------------------------------------


# Skip reasons naming a missing dependency start with one of these prefixes; under
# RESONATE_REQUIRE_ALL=1 (CI) tests/conftest.py turns such a skip into a failure.
MISSING_VENV = "missing server venv:"
MISSING_DEPENDENCY = "missing dependency:"
_VENV_SETUP = {".venv-server": "bash tests/harness/resonate_bench/setup_server_venv.sh",
               ".venv-ref": "python -m resonate_bench.reference setup"}


def missing_venv_reason(name: str) -> str:
    """The skip reason for a test whose server venv `name` (e.g. ".venv-resonate") is missing,
    with the command that makes it (``bash .ci/setup`` makes them all)."""
    setup = _VENV_SETUP.get(name, "bash tests/harness/resonate_bench/setup_legacy_venvs.sh")
    return f"{MISSING_VENV} {name} (run {setup})"


def requires_venv(python: str | None, name: str) -> Any:
    """A pytest mark that skips the test when `python` (a ``find_*_python()`` result for the
    venv `name`) is None, with ``missing_venv_reason(name)``."""
    import pytest  # the tests' dependency, not the harness's

    return pytest.mark.skipif(python is None, reason=missing_venv_reason(name))


def find_server_python() -> str | None:
    """Return a Python >= 3.12 that can import aiosendspin 10.x (and PyAV), or None.

    Order: $SENDSPIN_SERVER_PYTHON, <repo>/.venv-server/bin/python, /tmp/venv312/bin/python.
    """
    return _find_python("SENDSPIN_SERVER_PYTHON", ".venv-server", "aiosendspin", "10.",
                        extra=("/tmp/venv312/bin/python",), also_import="av")


def _find_python(env_var: str, venv: str, dist: str, version_prefix: str,
                 extra: tuple[str, ...] = (), also_import: str = "numpy") -> str | None:
    """$`env_var`, else <repo>/`venv`/bin/python (else `extra`), if it imports `dist`
    at `version_prefix`* plus numpy and `also_import`."""
    candidates = [os.environ.get(env_var), str(REPO_ROOT / venv / "bin" / "python"), *extra]
    probe = (
        f"import importlib.metadata as m, sys; import numpy, {also_import}; "
        f"sys.exit(0 if m.version({dist!r}).startswith({version_prefix!r}) else 3)"
    )
    for cand in candidates:
        if not cand or not (Path(cand).exists() or shutil.which(cand)):
            continue
        try:
            res = subprocess.run([cand, "-c", probe], capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if res.returncode == 0:
            return cand
    return None


def find_resonate_python() -> str | None:
    """A Python with aioresonate 0.13.x for ``RESONATE_SCRIPT``, or None.

    Order: $RESONATE_SERVER_PYTHON, <repo>/.venv-resonate/bin/python (made by
    ``setup_legacy_venvs.sh``)."""
    return _find_python("RESONATE_SERVER_PYTHON", ".venv-resonate", "aioresonate", "0.13.")


def find_sendspin1_python() -> str | None:
    """A Python with aiosendspin 1.x ("S1a") for ``SENDSPIN_V1_SCRIPT``, or None.

    Order: $SENDSPIN1_SERVER_PYTHON, <repo>/.venv-sendspin1/bin/python."""
    return _find_python("SENDSPIN1_SERVER_PYTHON", ".venv-sendspin1", "aiosendspin", "1.")


def find_sendspin2_python() -> str | None:
    """A Python with aiosendspin 2.x ("S1") for ``SENDSPIN_V1_SCRIPT``, or None.

    Order: $SENDSPIN2_SERVER_PYTHON, <repo>/.venv-sendspin2/bin/python."""
    return _find_python("SENDSPIN2_SERVER_PYTHON", ".venv-sendspin2", "aiosendspin", "2.")


def find_era_python(venv: str, version_prefix: str) -> str | None:
    """A Python with aiosendspin ``version_prefix``* in <repo>/``venv`` (made by
    ``setup_legacy_venvs.sh``; $SENDSPIN<major>_SERVER_PYTHON overrides), or None."""
    major = version_prefix.split(".", 1)[0]
    return _find_python(f"SENDSPIN{major}_SERVER_PYTHON", venv, "aiosendspin", version_prefix)


# ---------------------------------------------------------------------------------------
# The running server
# ---------------------------------------------------------------------------------------


@attrs.define(eq=False)
class TestServer:
    """Handle to a running harness process."""

    __test__ = False  # not a pytest test class

    process: trio.Process
    log_path: Path
    events: list[dict[str, Any]] = attrs.field(factory=list)
    ready: dict[str, Any] = attrs.field(factory=dict)
    exited: bool = False
    _new_event: trio.Event = attrs.field(factory=trio.Event)
    _ids: Any = attrs.field(factory=lambda: itertools.count(1))
    _send_lock: trio.Lock = attrs.field(factory=trio.Lock)
    _partial: bytes = b""

    # -- properties ---------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self.ready["port"])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.ready.get('path', '/sendspin')}"

    @property
    def clock(self) -> str:
        """Kernel clock of every server timestamp, e.g. 'CLOCK_MONOTONIC_RAW' (µs units)."""
        return str(self.ready.get("clock"))

    def mark(self) -> int:
        """Index to pass as ``since=`` to wait only for events that arrive from now on."""
        return len(self.events)

    def events_of(self, name: str, since: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.events[since:] if e.get("event") == name]

    def chunks(self, since: int = 0) -> list[dict[str, Any]]:
        """All ``chunk`` events (every committed buffer of the test signal)."""
        return self.events_of("chunk", since)

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    # -- event plumbing -------------------------------------------------------------------
    def _push_event(self, ev: dict[str, Any]) -> None:
        self.events.append(ev)
        if ev.get("event") == "ready" and not self.ready:
            self.ready = ev
        self._new_event.set()
        self._new_event = trio.Event()

    async def _reader(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                buf = self._partial + data
                *lines, self._partial = buf.split(b"\n")
                for raw in lines:
                    raw = raw.strip()
                    if not raw:
                        continue
                    try:
                        ev = json.loads(raw)
                    except ValueError:
                        ev = {"event": "bad_line", "line": raw[:500].decode(errors="replace")}
                    if isinstance(ev, dict):
                        self._push_event(ev)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            self.exited = True
            self._new_event.set()
            self._new_event = trio.Event()

    async def wait_event(
        self,
        name: str | None,
        timeout: float = 30.0,
        *,
        since: int = 0,
        predicate: Predicate | None = None,
    ) -> dict[str, Any]:
        """Return the first event named `name` (any if None) at index >= `since`
        that satisfies `predicate`, waiting up to `timeout` seconds."""
        idx = since
        with trio.move_on_after(timeout) as scope:
            while True:
                while idx < len(self.events):
                    ev = self.events[idx]
                    idx += 1
                    if name is not None and ev.get("event") != name:
                        continue
                    if predicate is not None and not predicate(ev):
                        continue
                    return ev
                if self.exited:
                    raise HarnessError(
                        f"harness exited while waiting for {name!r}"
                        f" (rc={self.process.returncode})\n{self.log_tail()}"
                    )
                await self._new_event.wait()
        assert scope.cancelled_caught
        raise TimeoutError(f"no {name!r} event within {timeout} s\n{self.log_tail(30)}")

    async def send(self, cmd: dict[str, Any]) -> None:
        """Write one command line without waiting for its answer."""
        stdin = self.process.stdin
        if stdin is None:
            raise HarnessError("harness stdin is closed")
        data = (json.dumps(cmd, separators=(",", ":")) + "\n").encode()
        async with self._send_lock:
            await stdin.send_all(data)

    async def command(self, cmd: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Send a command and return its ``command_done`` event (raises on ``error``)."""
        cmd = dict(cmd)
        cmd.setdefault("id", f"h{next(self._ids)}")
        since = self.mark()
        await self.send(cmd)
        ev = await self.wait_event(
            None,
            timeout,
            since=since,
            predicate=lambda e: e.get("id") == cmd["id"]
            and e.get("event") in ("command_done", "error"),
        )
        if ev["event"] == "error":
            raise HarnessCommandError(ev)
        return ev

    async def close(self, timeout: float = 20.0) -> None:
        """Ask the harness to quit, then terminate/kill it if it does not."""
        proc = self.process
        if proc.returncode is None:
            with trio.move_on_after(2):
                try:
                    await self.send({"cmd": "quit"})
                except (HarnessError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            if proc.stdin is not None:
                try:
                    await proc.stdin.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            with trio.move_on_after(timeout):
                await proc.wait()
        if proc.returncode is None:
            proc.terminate()
            with trio.move_on_after(5):
                await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _single(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@asynccontextmanager
async def _unwrapping_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery that re-raises a lone exception bare instead of in an ExceptionGroup."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        inner = _single(group)
        if inner is group:
            raise
        raise inner from None


@asynccontextmanager
async def start_test_server(
    venv_python: str | os.PathLike[str] | None = None,
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    name: str = "Sendspin Test Server",
    lead_ms: float | None = None,
    wire_events: bool = False,
    log_level: str = "INFO",
    log_path: str | os.PathLike[str] | None = None,
    ready_timeout: float = 90.0,
    keep_log: bool = False,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    script: str | os.PathLike[str] = SERVER_SCRIPT,
) -> AsyncIterator[TestServer]:
    """Start the harness, wait for ``ready`` and yield a :class:`TestServer`.

    `script` selects the server: ``SERVER_SCRIPT`` (aiosendspin 10, the default),
    ``RESONATE_SCRIPT`` (aioresonate 0.13) or ``SENDSPIN_V1_SCRIPT`` (aiosendspin 1.x/2.x);
    pass the matching ``find_*_python()`` as `venv_python`.  The older servers take no
    `lead_ms`/`wire_events`.

    `port=0` lets the server pick a free port (read it from ``srv.port``/``srv.url``).
    The server's stderr log goes to `log_path` (default: a temp file, ``srv.log_path``,
    deleted after a clean run unless `keep_log`). The process is shut down cleanly
    (quit, then stdin EOF, then SIGTERM, then SIGKILL) on exit.
    """
    if venv_python is None:
        venv_python = find_server_python()
        if venv_python is None:
            raise HarnessError(
                f"no Python with aiosendspin 10.x found; run {SETUP_SCRIPT} first"
            )
    auto_log = log_path is None
    if log_path is None:
        fd, tmp = tempfile.mkstemp(prefix="sendspin-test-server-", suffix=".log")
        os.close(fd)
        log_file = Path(tmp)
    else:
        log_file = Path(log_path)
    args = [
        str(venv_python),
        "-u",
        str(script),
        "--port",
        str(port),
        "--host",
        host,
        "--name",
        name,
        "--log-level",
        log_level,
    ]
    if lead_ms is not None:
        args += ["--lead-ms", str(lead_ms)]
    if wire_events:
        args.append("--wire-events")
    args += list(extra_args or [])
    proc_env = dict(os.environ)
    proc_env.pop("PYTHONPATH", None)  # keep the 3.11 project path out of the server's Python
    proc_env.pop("PYTHONHOME", None)
    proc_env["PYTHONUNBUFFERED"] = "1"
    if env:
        proc_env.update(env)
    with open(log_file, "ab") as errf:
        proc = await trio.lowlevel.open_process(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errf,
            env=proc_env,
            start_new_session=True,
        )
    srv = TestServer(process=proc, log_path=log_file)
    clean = False
    try:
        async with _unwrapping_nursery() as nursery:
            nursery.start_soon(srv._reader)
            try:
                ready = await srv.wait_event("ready", timeout=ready_timeout)
                if ready.get("clock") in (None, "UNKNOWN"):
                    raise HarnessError(f"server clock could not be identified: {ready}")
                yield srv
                clean = True
            finally:
                with trio.CancelScope(shield=True):
                    await srv.close()
                nursery.cancel_scope.cancel()
    finally:
        if proc.returncode is None:  # pragma: no cover - defensive
            with trio.CancelScope(shield=True):
                proc.kill()
                await proc.wait()
        if auto_log and clean and not keep_log and proc.returncode == 0:
            try:
                log_file.unlink()
            except OSError:
                pass


# ---------------------------------------------------------------------------------------
# Test-signal helpers (mirror of sendspin_test_server.index_samples)
# ---------------------------------------------------------------------------------------


def pcm_bytes_to_samples(payload: bytes, bits: int, channels: int) -> np.ndarray:
    """Interleaved little-endian PCM (24-bit packed in 3 bytes) -> (frames, channels) int64."""
    if bits == 16:
        a = np.frombuffer(payload, dtype="<i2").astype(np.int64)
    elif bits == 32:
        a = np.frombuffer(payload, dtype="<i4").astype(np.int64)
    elif bits == 24:
        b = np.frombuffer(payload, dtype=np.uint8).reshape(-1, 3).astype(np.int64)
        a = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        a = np.where(a & 0x800000, a - (1 << 24), a)
    else:
        raise ValueError(f"unsupported bit depth {bits}")
    return a.reshape(-1, channels)


def index_signal(first_frame: int, frames: int, bits: int, channels: int) -> np.ndarray:
    """The expected (frames, channels) samples of the index signal (see README)."""
    k = np.arange(first_frame, first_frame + frames, dtype=np.int64)
    return index_samples_for(k, bits, channels)


def sine_signal(
    first_frame: int, frames: int, bits: int, channels: int, sample_rate: int
) -> np.ndarray:
    """The expected samples of ``"signal": "sine"`` (440 Hz, -6 dBFS, all channels)."""
    k = np.arange(first_frame, first_frame + frames, dtype=np.int64)
    phase = ((k * 440) % sample_rate).astype(np.float64) * (2.0 * np.pi / sample_rate)
    amp = 0.5 * float((1 << (bits - 1)) - 1)
    col = np.rint(amp * np.sin(phase)).astype(np.int64)
    return np.repeat(col[:, None], channels, axis=1)


def decode_frame_index(samples: Any, bits: int, *, strict: bool = False) -> np.ndarray:
    """Decode the frame index K of every frame of the index signal.

    `samples`: (n, channels) integers at `bits` bit depth (a 1-D array = mono).
    Only the top 16 bits of each sample are used (``sample >> (bits - 16)``), so
    audio that went through 16<->24-bit conversion still decodes. With 1 channel
    the result is K mod 32768. With `strict`, raise ValueError unless every frame is
    exactly the index signal at `bits` (low bits included).
    """
    s = np.asarray(samples).astype(np.int64)
    if s.ndim == 1:
        s = s[:, None]
    shift = bits - 16
    top = s >> shift if shift > 0 else s
    k = top[:, 0] & 0x7FFF
    if s.shape[1] >= 2:
        k = k | ((top[:, 1] & 0x7FFF) << 15)
    if strict:
        if np.any(top < 0) or np.any(top > 0x7FFF):
            raise ValueError("samples out of the index signal's range")
        expect = index_samples_for(k, bits, s.shape[1])
        if s.shape[1] == 1 and shift > 15:
            # Mono only determines K mod 2**15: compare the low bits that K fixes.
            mask = ~np.int64(((1 << shift) - 1) & ~0x7FFF)
            expect, s = expect & mask, s & mask
        if not np.array_equal(expect, s):
            raise ValueError("samples are not exactly the index signal")
    return k


def index_samples_for(k: np.ndarray, bits: int, channels: int) -> np.ndarray:
    """The index-signal samples for the frame indices `k` (any order), (len(k), channels)."""
    low_bits = bits - 16
    lo = k & 0x7FFF
    hi = (k >> 15) & 0x7FFF
    if low_bits > 0:
        fill = k & ((1 << low_bits) - 1)
        lo = (lo << low_bits) | fill
        hi = (hi << low_bits) | fill
    return np.stack([lo if c % 2 == 0 else hi for c in range(channels)], axis=1)


def frame_timestamp_us(chunk: dict[str, Any], frame: int) -> int:
    """Server timestamp (µs) at which `frame` (inside or after `chunk`) must play."""
    rate = int(chunk["format"]["sample_rate"])
    return int(chunk["server_ts_us"]) + (frame - int(chunk["first_frame"])) * 1_000_000 // rate


if __name__ == "__main__":  # pragma: no cover - manual smoke run
    print(find_server_python() or "no server python", file=sys.stderr)
