"""Test-server harness for the pull-model servers: aioresonate 0.13.x and aiosendspin 1.x/2.x.

Shared by ``resonate_test_server.py`` and ``sendspin_v1_test_server.py``, which only
describe their library in a :class:`ServerApi` and call :func:`main`.  Runs in the
server's Python 3.12 venv; imports nothing from resonate_embedded (only the stdlib and
numpy at module level), so those scripts can import it as a sibling module.

Same stdin/stdout JSON-lines protocol as ``sendspin_test_server.py`` (see the bench
README): commands in, events out, every command answered by ``command_done`` or ``error``.

Chunk timestamps are exact: the harness wraps the library's ``Streamer`` and emits one
``chunk`` event per audio chunk **when it is first sent**, with the timestamp that went
into its binary header, the frame index K of its first frame and its frame count.
Chunks the server never sends (the truncation trap of PROTOCOL.md §5) get no event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.metadata
import inspect
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from typing import Any

import numpy as np

_LOGGER = logging.getLogger("pull_test_server")
_OUT_LOCK = threading.Lock()
SIGNALS = ("index", "sine", "silence")
SINE_HZ = 440
SINE_GAIN = 0.5
STOP_MARGIN_US = 200_000  # on_finish="stop": stop this long after the last chunk has played
_MAX_TRACKED = 8192


def emit(event: str, **fields: Any) -> None:
    """Write one event line to stdout and flush it."""
    line = json.dumps({"event": event, **fields}, separators=(",", ":"), default=str)
    with _OUT_LOCK:
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            pass


# ---------------------------------------------------------------------------------------
# The library description
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ServerApi:
    """What differs between aioresonate 0.13 and aiosendspin 1.x/2.x."""

    dist: str  # distribution name, for the version in ``ready``
    path: str  # WebSocket path the server serves
    server_cls: Any  # ResonateServer / SendspinServer
    server_module: Any  # module whose AsyncZeroconf the server constructs
    stream_module: Any  # module defining Streamer
    media_stream: Any  # MediaStream class
    audio_format: Any  # AudioFormat class
    client_added: Any  # ClientAddedEvent class
    client_removed: Any  # ClientRemovedEvent class
    listener_gets_server: bool  # callbacks are cb(server, event) (aiosendspin) or cb(event)
    remote_volume: bool  # server/command volume/mute exists (aiosendspin only)


# ---------------------------------------------------------------------------------------
# Test signals (identical to sendspin_test_server.py; see the bench README)
# ---------------------------------------------------------------------------------------


def index_samples(first_frame: int, frames: int, bits: int, channels: int) -> np.ndarray:
    """The frame-index signal: top 16 bits of ch0 = K & 0x7FFF, of ch1 = (K >> 15) & 0x7FFF;
    the low bits-16 bits of every sample = K mod 2**(bits-16)."""
    k = np.arange(first_frame, first_frame + frames, dtype=np.int64)
    low_bits = bits - 16
    lo, hi = k & 0x7FFF, (k >> 15) & 0x7FFF
    if low_bits > 0:
        fill = k & ((1 << low_bits) - 1)
        lo, hi = (lo << low_bits) | fill, (hi << low_bits) | fill
    return np.stack([lo if c % 2 == 0 else hi for c in range(channels)], axis=1)


def make_pcm(signal_name: str, first_frame: int, frames: int, rate: int, bits: int,
             channels: int) -> bytes:
    """`frames` frames of the named signal from frame index `first_frame`, as LE PCM."""
    if signal_name == "index":
        s = index_samples(first_frame, frames, bits, channels)
    elif signal_name == "sine":
        k = np.arange(first_frame, first_frame + frames, dtype=np.int64)
        phase = ((k * SINE_HZ) % rate).astype(np.float64) * (2.0 * np.pi / rate)
        col = np.rint(SINE_GAIN * float((1 << (bits - 1)) - 1) * np.sin(phase)).astype(np.int64)
        s = np.repeat(col[:, None], channels, axis=1)
    elif signal_name == "silence":
        s = np.zeros((frames, channels), dtype=np.int64)
    else:
        raise ValueError(f"unknown signal {signal_name!r} (expected one of {SIGNALS})")
    if bits == 16:
        return s.astype("<i2").tobytes()
    if bits == 24:
        b = s.astype("<i4").reshape(-1).view(np.uint8).reshape(-1, 4)[:, :3]
        return np.ascontiguousarray(b).tobytes()
    raise ValueError(f"unsupported bit depth {bits}")


# ---------------------------------------------------------------------------------------
# Streamer hooks: exact wire timestamps
# ---------------------------------------------------------------------------------------


class _Bounded(OrderedDict):
    """An insertion-ordered dict that forgets its oldest entries beyond a size."""

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        while len(self) > _MAX_TRACKED:
            self.popitem(last=False)


class ChunkTracker:
    """Follows the index signal through the library's Streamer.

    * the source generator registers each PCM buffer it yields with its frame index K;
    * a pipeline remembers K of the first source buffer it consumed (its origin), so
      a prepared chunk's first frame is ``origin + pipeline.samples_produced``;
    * when ``_send_chunks_to_players`` has popped a chunk from a player queue, the chunk
      went on the wire with header timestamp ``chunk.start_time_us``: emit it once.
    """

    def __init__(self) -> None:
        self.source_k: _Bounded = _Bounded()  # id(pcm bytes) -> (K, pcm bytes)
        self.origin: _Bounded = _Bounded()  # id(pipeline) -> (K, pipeline)
        self.prepared: _Bounded = _Bounded()  # id(chunk) -> (chunk, meta)
        self.seq = 0
        self.source_frames: int | None = None  # total frames of a finite source

    def install(self, streamer_cls: Any) -> None:
        tracker = self
        orig_process = streamer_cls._process_source_pcm
        orig_publish = streamer_cls._publish_chunk
        orig_send = streamer_cls._send_chunks_to_players
        orig_adjust = streamer_cls._adjust_timing_for_stale_chunk

        def process(self: Any, pipeline: Any, channel_state: Any, source_chunk: Any) -> Any:
            if pipeline.next_chunk_start_us is None and not pipeline.buffer:
                entry = tracker.source_k.get(id(source_chunk.pcm_data))
                if entry is not None and entry[1] is source_chunk.pcm_data:
                    tracker.origin.put(id(pipeline), (entry[0], pipeline))
            return orig_process(self, pipeline, channel_state, source_chunk)

        def publish(self: Any, pipeline: Any, audio_data: bytes, sample_count: int,
                    start_us: int, end_us: int) -> Any:
            before = len(pipeline.prepared)
            produced = pipeline.samples_produced
            result = orig_publish(self, pipeline, audio_data, sample_count, start_us, end_us)
            if len(pipeline.prepared) > before:
                origin = tracker.origin.get(id(pipeline))
                first = origin[0] + produced if origin and origin[1] is pipeline else None
                fmt = pipeline.target_format
                meta = {"first_frame": first, "frames": sample_count,
                        "codec": getattr(fmt.codec, "value", str(fmt.codec)),
                        "format": {"sample_rate": fmt.sample_rate, "bit_depth": fmt.bit_depth,
                                   "channels": fmt.channels},
                        "bytes": len(audio_data)}
                chunk = pipeline.prepared[-1]
                tracker.prepared.put(id(chunk), (chunk, meta))
            return result

        def send(self: Any) -> Any:
            queues = [(ps, list(ps.queue)) for ps in self._players.values()]
            result = orig_send(self)
            for ps, before in queues:
                for chunk in before[: len(before) - len(ps.queue)]:
                    tracker.sent(chunk, ps.config.client_id)
            return result

        def adjust(self: Any, now_us: int, chunk_start_us: int) -> Any:
            start = self._play_start_time_us
            result = orig_adjust(self, now_us, chunk_start_us)
            emit("timeline_jump", shift_us=self._play_start_time_us - start, now_us=now_us)
            return result

        streamer_cls._process_source_pcm = process
        streamer_cls._publish_chunk = publish
        streamer_cls._send_chunks_to_players = send
        streamer_cls._adjust_timing_for_stale_chunk = adjust

    def sent(self, chunk: Any, client_id: str) -> None:
        entry = self.prepared.pop(id(chunk), None)
        if entry is None or entry[0] is not chunk:
            return
        meta = dict(entry[1])
        first, total = meta["first_frame"], self.source_frames
        if first is not None and total is not None and first + meta["frames"] > total:
            meta["pad_frames"] = first + meta["frames"] - max(total, first)
        emit("chunk", seq=self.seq, server_ts_us=chunk.start_time_us, client_id=client_id, **meta)
        self.seq += 1


# ---------------------------------------------------------------------------------------
# The harness
# ---------------------------------------------------------------------------------------


class CommandError(Exception):
    """A command could not be carried out (reported as an error event)."""


def group_id(group: Any) -> str | None:
    """The group's id (aioresonate 0.13 has no public property for it)."""
    return getattr(group, "group_id", None) or getattr(group, "_group_id", None)


def free_port(host: str) -> int:
    """A TCP port that is free on `host` right now (mDNS must advertise the real port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def identify_clock(now_us: Callable[[], int]) -> dict[str, Any]:
    """Which kernel clock `now_us` reads (the event loop's: CLOCK_MONOTONIC)."""
    diffs = {}
    for name in ("CLOCK_MONOTONIC", "CLOCK_MONOTONIC_RAW", "CLOCK_BOOTTIME"):
        cid = getattr(time, name, None)
        if cid is None:
            continue
        samples = []
        for _ in range(5):
            a = time.clock_gettime_ns(cid) // 1000
            b = now_us()
            c = time.clock_gettime_ns(cid) // 1000
            samples.append(b - (a + c) // 2)
        diffs[name] = min(samples, key=abs)
    best = min(diffs, key=lambda n: abs(diffs[n]))
    if abs(diffs[best]) > 1000:
        return {"clock": "UNKNOWN", "clock_id": None, "clock_diffs_us": diffs}
    if abs(diffs.get("CLOCK_MONOTONIC", 10**9)) <= 1000:
        best = "CLOCK_MONOTONIC"  # loop.time() is time.monotonic(); RAW can be within 1 ms
    return {"clock": best, "clock_id": getattr(time, best), "clock_diffs_us": diffs}


class Harness:
    def __init__(self, api: ServerApi, args: argparse.Namespace) -> None:
        self.api = api
        self.args = args
        self.loop = asyncio.get_running_loop()
        self.server: Any = None
        self.client_order: list[str] = []
        self.tracker = ChunkTracker()
        self.play_task: asyncio.Task[None] | None = None
        self.group: Any = None
        self.commands: asyncio.Queue[str | None] = asyncio.Queue()
        self.quit = asyncio.Event()

    def now_us(self) -> int:
        return int(self.loop.time() * 1_000_000)

    # -- setup ----------------------------------------------------------------------------
    def _confine_mdns(self) -> None:
        """zeroconf on --host only (the libraries use every interface), or not at all."""
        host = self.args.host
        zc_cls = self.api.server_module.AsyncZeroconf
        ip_version = self.api.server_module.IPVersion.V4Only
        self.api.server_module.AsyncZeroconf = (
            lambda *_a, **_kw: zc_cls(ip_version=ip_version, interfaces=[host]))
        if not self.args.mdns:
            async def nothing(*_a: Any, **_kw: Any) -> None:
                return None

            self.api.server_cls._start_mdns_advertising = nothing
            self.api.server_cls._start_mdns_discovery = nothing

    async def start(self) -> None:
        self._confine_mdns()
        self.tracker.install(self.api.stream_module.Streamer)
        self.server = self.api.server_cls(self.loop, self.args.server_id, self.args.name)
        if self.api.listener_gets_server:
            self.server.add_event_listener(lambda _srv, ev: self._on_event(ev))
        else:
            self.server.add_event_listener(self._on_event)
        port = self.args.port or free_port(self.args.host)
        params = inspect.signature(self.server.start_server).parameters
        kwargs: dict[str, Any] = {"port": port, "host": self.args.host}
        if "advertise_addresses" in params:
            kwargs["advertise_addresses"] = [self.args.host]
        if "advertise_host" in params:
            kwargs["advertise_host"] = self.args.host
        if "discover_clients" in params:
            kwargs["discover_clients"] = bool(self.args.mdns)
        await self.server.start_server(**kwargs)
        emit("ready", port=port, host=self.args.host, path=self.api.path,
             url=f"ws://{self.args.host}:{port}{self.api.path}", server_id=self.args.server_id,
             server_name=self.args.name, library=self.api.dist,
             library_version=importlib.metadata.version(self.api.dist), pid=os.getpid(),
             now_us=self.now_us(), mdns=bool(self.args.mdns), **identify_clock(self.now_us))

    # -- server events ----------------------------------------------------------------------
    async def _on_event(self, event: Any) -> None:
        if isinstance(event, self.api.client_added):
            cid = event.client_id
            if cid not in self.client_order:
                self.client_order.append(cid)
            emit("client_added", client_id=cid, **self._client_info(cid))
        elif isinstance(event, self.api.client_removed):
            if event.client_id in self.client_order:
                self.client_order.remove(event.client_id)
            emit("client_removed", client_id=event.client_id)

    def _client_info(self, cid: str) -> dict[str, Any]:
        client = self.server.get_client(cid)
        if client is None:
            return {}
        info = client.info
        support = getattr(info, "player_support", None)
        return {"name": info.name,
                "roles": [getattr(r, "value", str(r)) for r in info.supported_roles],
                "player_support": support.to_dict() if support is not None else None}

    def _client(self, cid: str | None) -> Any:
        for candidate in ([cid] if cid is not None else self.client_order):
            client = self.server.get_client(candidate)
            if client is not None:
                return client
        raise CommandError(f"no connected client {cid or ''}".strip())

    # -- commands -------------------------------------------------------------------------
    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd.get("cmd")
        handler = getattr(self, f"cmd_{name}", None) if isinstance(name, str) else None
        if handler is None:
            raise CommandError(f"unknown command {name!r}")
        return await handler(cmd)

    async def cmd_ping(self, _cmd: dict[str, Any]) -> dict[str, Any]:
        return {"server_now_us": self.now_us()}

    async def cmd_status(self, _cmd: dict[str, Any]) -> dict[str, Any]:
        return {"clients": [{"client_id": c, **self._client_info(c)} for c in self.client_order],
                "streaming": self.play_task is not None and not self.play_task.done(),
                "server_now_us": self.now_us()}

    async def cmd_start(self, cmd: dict[str, Any]) -> dict[str, Any]:
        client = self._client(cmd.get("client_id"))
        fmt_d = cmd.get("format") or {}
        rate = int(fmt_d.get("sample_rate", 48000))
        bits = int(fmt_d.get("bit_depth", 16))
        channels = int(fmt_d.get("channels", 2))
        signal_name = cmd.get("signal", "index")
        if signal_name not in SIGNALS:
            raise CommandError(f"unknown signal {signal_name!r}")
        if bits not in (16, 24):
            raise CommandError("bit_depth must be 16 or 24 (24 is broken in these servers)")
        on_finish = cmd.get("on_finish", "stop")
        if on_finish not in ("stop", "keep"):
            raise CommandError("on_finish must be 'stop' or 'keep'")
        duration = cmd.get("duration_s")
        frames = None if duration is None else int(round(float(duration) * rate))
        chunk_frames = int(cmd.get("chunk_frames") or rate * 25 // 1000)
        replaced = await self._stop_playing("replaced")
        self.tracker.source_frames = frames
        self.group = client.group
        fmt = self.api.audio_format(sample_rate=rate, bit_depth=bits, channels=channels)
        source = self._source(signal_name, frames, chunk_frames, rate, bits, channels)
        stream = self.api.media_stream(main_channel_source=source, main_channel_format=fmt)
        self.play_task = self.loop.create_task(self._play(self.group, stream, on_finish))
        info = {"group_id": group_id(self.group),
                "client_ids": [c.client_id for c in self.group.clients],
                "format": {"sample_rate": rate, "bit_depth": bits, "channels": channels},
                "signal": signal_name, "chunk_frames": chunk_frames, "duration_s": duration,
                "replaced": replaced}
        emit("stream_started", **info)
        return info

    async def _source(self, signal_name: str, frames: int | None, chunk_frames: int, rate: int,
                      bits: int, channels: int) -> AsyncGenerator[bytes, None]:
        k = 0
        while frames is None or k < frames:
            n = chunk_frames if frames is None else min(chunk_frames, frames - k)
            pcm = make_pcm(signal_name, k, n, rate, bits, channels)
            self.tracker.source_k.put(id(pcm), (k, pcm))
            yield pcm
            k += n
        emit("source_finished", last_frame=k - 1)

    async def _play(self, group: Any, stream: Any, on_finish: str) -> None:
        try:
            end_us = await group.play_media(stream)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            return  # group.stop() cancelled the library's stream task
        except Exception as err:  # noqa: BLE001 - reported to the driver
            _LOGGER.exception("play_media failed")
            emit("error", message=f"play_media failed: {err!r}", traceback=traceback.format_exc())
            return
        emit("play_media_returned", end_ts_us=end_us)
        if on_finish == "stop":
            await asyncio.sleep(max(0, end_us + STOP_MARGIN_US - self.now_us()) / 1e6)
            await group.stop()
            emit("stopped", reason="finished", group_id=group_id(group))

    async def _stop_playing(self, reason: str) -> bool:
        task, group = self.play_task, self.group
        if task is None or task.done() or group is None:
            return False
        await group.stop()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, timeout=10)
        emit("stopped", reason=reason, group_id=group_id(group))
        return True

    async def cmd_stop(self, _cmd: dict[str, Any]) -> dict[str, Any]:
        if not await self._stop_playing("command"):
            raise CommandError("no active stream")
        return {}

    async def cmd_volume(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if not self.api.remote_volume:
            raise CommandError(f"{self.api.dist} has no server/command")
        value = int(cmd["value"])
        if not 0 <= value <= 100:
            raise CommandError("volume must be 0..100")
        self._client(cmd.get("client_id")).require_player.set_volume(value)
        return {"value": value}

    async def cmd_mute(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if not self.api.remote_volume:
            raise CommandError(f"{self.api.dist} has no server/command")
        player = self._client(cmd.get("client_id")).require_player
        if cmd["value"]:
            player.mute()
        else:
            player.unmute()
        return {"value": bool(cmd["value"])}

    async def cmd_connect_to_client(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Server-initiated mode: dial the player listening at ``url``."""
        url = cmd.get("url")
        if not isinstance(url, str):
            raise CommandError("connect_to_client needs url")
        self.server.connect_to_client(url)
        return {"url": url}

    async def cmd_disconnect_from_client(self, cmd: dict[str, Any]) -> dict[str, Any]:
        url = cmd.get("url")
        if not isinstance(url, str):
            raise CommandError("disconnect_from_client needs url")
        self.server.disconnect_from_client(url)
        return {"url": url}

    async def cmd_quit(self, _cmd: dict[str, Any]) -> dict[str, Any]:
        self.quit.set()
        return {}

    # -- main loops -------------------------------------------------------------------------
    def stdin_thread(self) -> None:
        try:
            for line in sys.stdin:
                self.loop.call_soon_threadsafe(self.commands.put_nowait, line)
        finally:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.commands.put_nowait, None)

    async def command_loop(self) -> None:
        while not self.quit.is_set():
            line = await self.commands.get()
            if line is None:
                self.quit.set()
                return
            if not line.strip():
                continue
            try:
                cmd = json.loads(line)
                if not isinstance(cmd, dict):
                    raise ValueError("command must be a JSON object")
            except ValueError as err:
                emit("error", message=f"bad command line: {err}", line=line[:200])
                continue
            extra = {"id": cmd["id"]} if "id" in cmd else {}
            try:
                result = await self.handle(cmd)
            except (CommandError, ValueError, KeyError, TypeError) as err:
                emit("error", cmd=cmd.get("cmd"), message=str(err) or repr(err), **extra)
                continue
            except Exception as err:  # noqa: BLE001
                _LOGGER.exception("command %s failed", cmd.get("cmd"))
                emit("error", cmd=cmd.get("cmd"), message=repr(err),
                     traceback=traceback.format_exc(), **extra)
                continue
            emit("command_done", cmd=cmd.get("cmd"), **extra, **result)

    async def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._stop_playing("quit"), timeout=10)
        try:
            await asyncio.wait_for(self.server.close(), timeout=10)
        except Exception as err:  # noqa: BLE001
            _LOGGER.warning("server.close() failed: %r", err)
        emit("closed")


async def amain(api: ServerApi, args: argparse.Namespace) -> int:
    if args.raw_clock:  # the server clock (the loop's) becomes the paced device's clock
        asyncio.get_running_loop().time = lambda: time.clock_gettime(time.CLOCK_MONOTONIC_RAW)
    harness = Harness(api, args)
    try:
        await harness.start()
    except Exception as err:  # noqa: BLE001
        _LOGGER.exception("server start failed")
        emit("error", message=f"server start failed: {err!r}", fatal=True)
        return 2
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, harness.quit.set)
    threading.Thread(target=harness.stdin_thread, name="stdin", daemon=True).start()
    cmd_task = loop.create_task(harness.command_loop())
    await harness.quit.wait()
    cmd_task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await cmd_task
    await harness.shutdown()
    return 0


def main(api: ServerApi, argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=f"Real {api.dist} test server (JSON lines on stdio)")
    p.add_argument("--port", type=int, default=0, help="TCP port (0 = pick a free one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--name", default=f"{api.dist} test server")
    p.add_argument("--server-id", default=f"{api.dist}-test")
    p.add_argument("--mdns", action="store_true",
                   help="advertise the server and dial discovered clients, on --host only")
    p.add_argument("--raw-clock", action="store_true",
                   help="run the event loop (the server clock) on CLOCK_MONOTONIC_RAW")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(stream=sys.stderr,
                        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(amain(api, args))
    except KeyboardInterrupt:
        return 130
