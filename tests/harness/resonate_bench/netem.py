"""A loopback TCP proxy that delays each direction like a (bad) network link.

The player connects to the proxy instead of the server. Every read from one side
is forwarded to the other side after ``base + uniform(0, jitter)`` milliseconds,
with a seeded random generator per direction, and **never before the previous
read of the same direction** (order preserved: a segment cannot overtake the one
before it, exactly like TCP over a link whose delay varies). So a ``server/time``
reply queued behind a late audio frame is late too, as on Wi-Fi.

Profiles:

* :meth:`NetemConfig.wifi` — 1 ms base each way, 0–10 ms jitter downstream
  (server → player) and 0–3 ms upstream: "Wi-Fi-like", with a symmetric base, so
  a minimum-RTT clock estimate stays unbiased.
* :meth:`NetemConfig.asymmetric` — constant 10 ms down / 1 ms up and no jitter:
  no clock-sync method can see this; the expected error is half the asymmetry,
  (10 − 1) / 2 = 4.5 ms late.

Bounded: at most ``max_segments`` reads are held per direction (the reader then
waits, which back-pressures the socket), and the proxy stops by itself after
``max_seconds`` or when its nursery is cancelled. Only 127.0.0.1 is used.

In-process (shares the caller's event loop, so its timing suffers when that loop
is busy)::

    async with trio.open_nursery() as n:
        proxy = NetemProxy(NetemConfig.wifi(seed=1), upstream_port=srv.port)
        port = await n.start(proxy.serve)
        ...  # connect the player to ws://127.0.0.1:{port}/sendspin
        n.cancel_scope.cancel()

In its own process at real-time priority (what the scenarios use)::

    async with open_netem(NetemConfig.wifi(seed=1), srv.port, workdir) as proxy:
        ...  # ws://127.0.0.1:{proxy.port}/sendspin; proxy.stats() afterwards
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import attrs
import trio

HOST = "127.0.0.1"
PRECISE_SPIN_S = 0.0011  # trio sleeps overshoot by < 1 ms


@attrs.frozen
class LinkProfile:
    """One direction: every segment waits ``base_ms + uniform(0, jitter_ms)``."""

    base_ms: float = 0.0
    jitter_ms: float = 0.0

    def describe(self) -> str:
        if self.jitter_ms:
            return f"{self.base_ms:g}+U(0,{self.jitter_ms:g}) ms"
        return f"{self.base_ms:g} ms"


@attrs.frozen
class NetemConfig:
    down: LinkProfile = LinkProfile()  # server -> player
    up: LinkProfile = LinkProfile()  # player -> server
    seed: int = 1
    label: str = "custom"

    @classmethod
    def wifi(cls, seed: int = 1) -> NetemConfig:
        return cls(LinkProfile(1.0, 10.0), LinkProfile(1.0, 3.0), seed, "wifi")

    @classmethod
    def asymmetric(cls, down_ms: float = 10.0, up_ms: float = 1.0, seed: int = 1) -> NetemConfig:
        return cls(LinkProfile(down_ms), LinkProfile(up_ms), seed, "asymmetric")

    @property
    def expected_bias_us(self) -> float:
        """Clock-offset bias a symmetric-path estimate cannot remove: half the base asymmetry
        (positive = the player plays late). With jitter, a minimum-RTT estimate sees the bases."""
        return (self.down.base_ms - self.up.base_ms) * 1000.0 / 2.0

    def describe(self) -> str:
        return f"down {self.down.describe()}, up {self.up.describe()}"


@attrs.define
class DirectionStats:
    segments: int = 0
    bytes: int = 0
    delay_sum_s: float = 0.0
    delay_max_s: float = 0.0
    queued_max: int = 0

    @property
    def delay_mean_ms(self) -> float:
        return 1000.0 * self.delay_sum_s / self.segments if self.segments else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"segments": self.segments, "bytes": self.bytes,
                "delay_mean_ms": round(self.delay_mean_ms, 3),
                "delay_max_ms": round(1000.0 * self.delay_max_s, 3), "queued_max": self.queued_max}


class NetemProxy:
    """Order-preserving delaying proxy from ``127.0.0.1:<port>`` to ``127.0.0.1:upstream_port``."""

    def __init__(self, config: NetemConfig, upstream_port: int, *, max_seconds: float = 3600.0,
                 max_segments: int = 4096, max_connections: int = 16, precise: bool = True) -> None:
        self.config = config
        self.precise = precise
        self.upstream_port = upstream_port
        self.max_seconds = max_seconds
        self.max_segments = max_segments
        self.max_connections = max_connections
        self.down = DirectionStats()
        self.up = DirectionStats()
        self.connections = 0
        self.port: int | None = None
        self._seq = 0

    def stats(self) -> dict[str, Any]:
        return {"config": self.config.describe(), "connections": self.connections,
                "down": self.down.as_dict(), "up": self.up.as_dict()}

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=HOST)
        self.port = listeners[0].socket.getsockname()[1]
        with trio.move_on_after(self.max_seconds):
            async with trio.open_nursery() as nursery:
                task_status.started(self.port)
                await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if self.connections >= self.max_connections:
                return
            self.connections += 1
            self._seq += 1
            seed = self.config.seed * 1000 + self._seq
            try:
                upstream = await trio.open_tcp_stream(HOST, self.upstream_port)
            except OSError:
                return
            async with upstream, trio.open_nursery() as nursery:
                nursery.start_soon(self._pipe, upstream, client, self.config.down,
                                   random.Random(seed * 2), self.down)
                nursery.start_soon(self._pipe, client, upstream, self.config.up,
                                   random.Random(seed * 2 + 1), self.up)

    async def _wait_until(self, release: float) -> None:
        """Sleep until ``release``. trio's sleeps wake up to 1 ms late (epoll rounds its
        timeout up to whole ms), which would add a random 0–1 ms to every delay; with
        ``precise`` the last millisecond is spent yielding instead (costs a few % CPU)."""
        if not self.precise:
            await trio.sleep_until(release)
            return
        if release - trio.current_time() > PRECISE_SPIN_S:
            await trio.sleep_until(release - PRECISE_SPIN_S)
        while trio.current_time() < release:
            await trio.sleep(0)

    async def _pipe(self, src: trio.SocketStream, dst: trio.SocketStream, link: LinkProfile,
                    rng: random.Random, stats: DirectionStats) -> None:
        send, receive = trio.open_memory_channel[tuple[float, float, bytes]](self.max_segments)

        async def reader() -> None:
            last_release = 0.0
            async with send:
                while True:
                    try:
                        data = await src.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    if not data:
                        break
                    now = trio.current_time()
                    delay = (link.base_ms + rng.uniform(0.0, link.jitter_ms)) / 1000.0
                    release = max(now + delay, last_release)  # order preserved
                    last_release = release
                    try:
                        await send.send((now, release, data))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break  # the writer gave up (peer gone)
                    stats.queued_max = max(stats.queued_max, receive.statistics().current_buffer_used)

        async def writer() -> None:
            async with receive:
                async for arrived, release, data in receive:
                    await self._wait_until(release)
                    try:
                        await dst.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    stats.segments += 1
                    stats.bytes += len(data)
                    held = trio.current_time() - arrived
                    stats.delay_sum_s += held
                    stats.delay_max_s = max(stats.delay_max_s, held)
            try:
                await dst.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(writer)


# ------------------------------------------------------------------------------ own process


def _config_to_json(cfg: NetemConfig) -> str:
    return json.dumps(attrs.asdict(cfg))


def _config_from_json(text: str) -> NetemConfig:
    d = json.loads(text)
    return NetemConfig(LinkProfile(**d["down"]), LinkProfile(**d["up"]), d["seed"], d["label"])


def _raise_priority() -> str:
    """SCHED_FIFO when allowed (root), else a lower nice value, else nothing."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        return "SCHED_FIFO 10"
    except (OSError, AttributeError):
        pass
    try:
        os.nice(-10)
        return "nice -10"
    except OSError:
        return "normal"


class NetemProcess:
    """The proxy in its own process, at real-time priority when allowed.

    Delays are then exact to about 0.1 ms whatever the other processes do (in the
    benchmark: two servers, two or more players and the benchmark itself share two
    cores). Use :func:`open_netem`.
    """

    def __init__(self, proc: trio.Process, port: int, stats_path: Path, priority: str) -> None:
        self.proc = proc
        self.port = port
        self.stats_path = stats_path
        self.priority = priority
        self._stats: dict[str, Any] | None = None

    def stats(self) -> dict[str, Any]:
        if self._stats is None:
            try:
                self._stats = json.loads(self.stats_path.read_text())
            except (OSError, ValueError):
                self._stats = {}
            self._stats["priority"] = self.priority
        return self._stats


@asynccontextmanager
async def open_netem(config: NetemConfig, upstream_port: int, workdir: Path, *,
                     max_seconds: float = 3600.0) -> AsyncIterator[NetemProcess]:
    """Run the proxy as ``python -m resonate_bench.netem``; yields once it listens."""
    stats_path = workdir / f"netem-{upstream_port}.json"
    stats_path.unlink(missing_ok=True)
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "resonate_bench.netem", "--upstream-port",
         str(upstream_port), "--config", _config_to_json(config), "--max-seconds",
         str(max_seconds), "--stats", str(stats_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                data = await proc.stdout.receive_some(256)
                if not data:
                    raise RuntimeError("netem proxy exited before listening")
                line += data
        port_s, _, priority = line.decode().strip().partition(" ")
        yield NetemProcess(proc, int(port_s), stats_path, priority)
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                try:
                    await proc.stdin.aclose()  # EOF on stdin: write the stats and exit
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
                with trio.move_on_after(5):
                    await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def _main(args: argparse.Namespace) -> None:
    priority = _raise_priority()
    proxy = NetemProxy(_config_from_json(args.config), args.upstream_port,
                       max_seconds=args.max_seconds)
    stdin = trio.lowlevel.FdStream(os.dup(0))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(proxy.serve)
        sys.stdout.write(f"{port} {priority}\n")
        sys.stdout.flush()

        async def until_eof() -> None:
            while await stdin.receive_some(1024):
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(until_eof)
    Path(args.stats).write_text(json.dumps(proxy.stats()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="order-preserving delaying TCP proxy on 127.0.0.1")
    p.add_argument("--upstream-port", type=int, required=True)
    p.add_argument("--config", required=True, help="NetemConfig as JSON")
    p.add_argument("--max-seconds", type=float, default=3600.0)
    p.add_argument("--stats", required=True, help="where to write the statistics on exit")
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    trio.run(_main, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
