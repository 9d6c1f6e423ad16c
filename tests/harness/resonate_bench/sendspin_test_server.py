#!/usr/bin/env python3
"""Real Sendspin test server: aiosendspin 5.x-10.x driven over stdin/stdout JSON lines.

What differs between those releases is read from the installed one by ``server_era.py``.

Run with the Python 3.12 venv made by ``setup_server_venv.sh`` (it must NOT import
anything from resonate_embedded)::

    .venv-server/bin/python tests/harness/resonate_bench/sendspin_test_server.py --port 18928

Protocol (one JSON object per line):

* stdin  -> commands, e.g. ``{"cmd": "start", "format": {...}, "id": 7}``
* stdout <- events, e.g. ``{"event": "chunk", "server_ts_us": ..., ...}`` (flushed)
* stderr <- human-readable logs (aiosendspin's own logging included)

Every command is answered by ``{"event": "command_done", "cmd": C, "id": I, ...}`` or
``{"event": "error", "cmd": C, "id": I, "message": ...}`` (``id`` is echoed when given).
See tests/harness/resonate_bench/README.md for the full list of commands and events and for the
definition of the test signal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
from aiosendspin.models.types import AudioCodec, ConnectionReason, PlayerCommand
from aiosendspin.server import (
    AudioFormat,
    ClientAddedEvent,
    ClientRemovedEvent,
    ClientUpdatedEvent,
    SendspinServer,
    VolumeChangedEvent,
)
from aiosendspin.server import push_stream as _push_stream_mod
from aiosendspin.server import server as _server_mod
from aiosendspin.server.connection import SendspinConnection
from aiosendspin.server.push_stream import StreamStoppedError
from aiosendspin.server.roles.player.v1 import PlayerV1Role

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # also when a wrapper loads us
from server_era import (  # noqa: E402
    CLIENT_CONNECTED, CLIENT_DISCONNECTED, DELAY_COMMAND, DELAY_EVENT, HAS_NOISE, declares, delay_ms,
    WireTruth, delay_us, disable_mdns, event_delay_ms, make_server, set_delay,
)

_LOGGER = logging.getLogger("sendspin_test_server")

# ---------------------------------------------------------------------------------------
# Event output
# ---------------------------------------------------------------------------------------

_OUT_LOCK = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    """Write one event line to stdout and flush it."""
    obj = {"event": event, **fields}
    line = json.dumps(obj, separators=(",", ":"), default=str)
    with _OUT_LOCK:
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            # The controlling process went away; nothing left to report to.
            pass


# ---------------------------------------------------------------------------------------
# Test signals
# ---------------------------------------------------------------------------------------

SIGNALS = ("index", "sine", "silence")
SINE_HZ = 440
SINE_GAIN = 0.5  # -6.02 dBFS


def index_samples(first_frame: int, frames: int, bits: int, channels: int) -> np.ndarray:
    """Return the frame-index signal as an (frames, channels) int64 array.

    For frame K (0 at stream start, never reset by clear/format changes):
      hi15(ch0) = K & 0x7FFF, hi15(ch1) = (K >> 15) & 0x7FFF (both non-negative)
    where hi15 is the top 16 bits of the sample (sign bit always 0). For bit depths
    above 16 the remaining low (bits-16) bits of every channel carry K mod 2**(bits-16).
    Channels >= 2 repeat ch0/ch1 alternately. Mono carries only ch0 (K mod 32768).
    Decoding only needs ``sample >> (bits - 16)``, so the signal survives FLAC,
    16<->24 bit conversion by shifting/truncation, and periodically covers 0..32767/32768
    of positive full scale on ch0 (a sawtooth with a 32768-frame period).
    """
    k = np.arange(first_frame, first_frame + frames, dtype=np.int64)
    low_bits = bits - 16
    lo = k & 0x7FFF
    hi = (k >> 15) & 0x7FFF
    if low_bits > 0:
        fill = k & ((1 << low_bits) - 1)
        lo = (lo << low_bits) | fill
        hi = (hi << low_bits) | fill
    cols = [lo if c % 2 == 0 else hi for c in range(channels)]
    return np.stack(cols, axis=1)


def sine_samples(
    first_frame: int, frames: int, bits: int, channels: int, sample_rate: int
) -> np.ndarray:
    """Return a 440 Hz sine at -6 dBFS on all channels, phase locked to the frame index."""
    k = np.arange(first_frame, first_frame + frames, dtype=np.int64)
    # 440 Hz has an integer number of cycles per second: reduce exactly before the float math.
    phase = ((k * SINE_HZ) % sample_rate).astype(np.float64) * (2.0 * np.pi / sample_rate)
    amp = SINE_GAIN * float((1 << (bits - 1)) - 1)
    col = np.rint(amp * np.sin(phase)).astype(np.int64)
    return np.repeat(col[:, None], channels, axis=1)


def pack_pcm(samples: np.ndarray, bits: int) -> bytes:
    """Pack (frames, channels) ints as interleaved little-endian PCM (24-bit = 3 bytes)."""
    if bits == 16:
        return samples.astype("<i2").tobytes()
    if bits == 32:
        return samples.astype("<i4").tobytes()
    if bits == 24:
        b = samples.astype("<i4").reshape(-1).view(np.uint8).reshape(-1, 4)[:, :3]
        return np.ascontiguousarray(b).tobytes()
    raise ValueError(f"unsupported bit depth {bits}")


def make_pcm(signal_name: str, first_frame: int, frames: int, fmt: AudioFormat) -> bytes:
    """Generate `frames` frames of the named signal starting at frame index `first_frame`."""
    if signal_name == "index":
        s = index_samples(first_frame, frames, fmt.bit_depth, fmt.channels)
    elif signal_name == "sine":
        s = sine_samples(first_frame, frames, fmt.bit_depth, fmt.channels, fmt.sample_rate)
    elif signal_name == "silence":
        s = np.zeros((frames, fmt.channels), dtype=np.int64)
    else:
        raise ValueError(f"unknown signal {signal_name!r} (expected one of {SIGNALS})")
    return pack_pcm(s, fmt.bit_depth)


# ---------------------------------------------------------------------------------------
# Hooks into aiosendspin internals (best effort, each guarded)
# ---------------------------------------------------------------------------------------


class _WireTimestampProbe:
    """Capture the output timestamp aiosendspin assigns to each committed PCM buffer.

    aiosendspin 10.x stamps the wire from the per-format resampler cursor
    (``_resample_pcm_standalone(...).output_start_ts``), which equals the value
    ``commit_audio()`` returns except after a sub-millisecond timeline rebase (the cursor
    only follows jumps > 1 ms). The probe records that cursor for the PCM buffers the
    harness registers, keyed by object identity.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watch: dict[int, list[tuple[bool, int, int]]] = {}
        self.installed = False

    def install(self) -> None:
        original = getattr(_push_stream_mod, "_resample_pcm_standalone", None)
        if original is None or getattr(original, "_harness_wrapped", False):
            return
        probe = self

        def wrapper(state: Any, source_pcm: bytes, source_format: Any, input_ts: int) -> Any:
            result = original(state, source_pcm, source_format, input_ts)
            key = id(source_pcm)
            with probe._lock:
                entries = probe._watch.get(key)
                if entries is not None:
                    entries.append(
                        (
                            bool(getattr(state, "is_passthrough", False)),
                            int(result.output_start_ts),
                            int(result.sample_count),
                        )
                    )
            return result

        wrapper._harness_wrapped = True  # type: ignore[attr-defined]
        _push_stream_mod._resample_pcm_standalone = wrapper
        self.installed = True

    def watch(self, pcm: bytes) -> None:
        with self._lock:
            self._watch[id(pcm)] = []

    def take(self, pcm: bytes) -> list[tuple[bool, int, int]]:
        with self._lock:
            return self._watch.pop(id(pcm), [])


WIRE_PROBE = _WireTimestampProbe()
WIRE_EVENTS = {"enabled": False}
WIRE_TRUTH = WireTruth()


def _role_client_id(role: Any) -> str | None:
    client = getattr(role, "_client", None)
    return getattr(client, "client_id", None)


def install_role_hooks() -> None:
    """Wrap PlayerV1Role/SendspinConnection methods to report what goes on the wire."""
    orig_start = getattr(PlayerV1Role, "_send_stream_start_message", None)
    if orig_start is not None and not getattr(orig_start, "_harness_wrapped", False):

        def send_stream_start(self: Any) -> None:
            before = getattr(self, "_last_sent_format", None)
            was_started = bool(getattr(self, "_stream_started", False))
            orig_start(self)
            after = getattr(self, "_last_sent_format", None)
            if after is not None and (after != before or not was_started):
                codec, rate, channels, bits, header = after
                WIRE_TRUTH.stream_started(_role_client_id(self))
                emit(
                    "player_stream_start",
                    client_id=_role_client_id(self),
                    codec=getattr(codec, "value", str(codec)),
                    sample_rate=rate,
                    channels=channels,
                    bit_depth=bits,
                    codec_header=header is not None,
                    format_update=was_started,
                )

        send_stream_start._harness_wrapped = True  # type: ignore[attr-defined]
        PlayerV1Role._send_stream_start_message = send_stream_start  # type: ignore[method-assign]

    orig_clear = getattr(PlayerV1Role, "on_stream_clear", None)
    if orig_clear is not None and not getattr(orig_clear, "_harness_wrapped", False):

        def on_stream_clear(self: Any) -> None:
            sent = bool(getattr(self, "_stream_started", False)) and self.has_connection()
            orig_clear(self)
            if sent:
                emit("player_stream_clear", client_id=_role_client_id(self))

        on_stream_clear._harness_wrapped = True  # type: ignore[attr-defined]
        PlayerV1Role.on_stream_clear = on_stream_clear  # type: ignore[method-assign]

    orig_end = getattr(PlayerV1Role, "on_stream_end", None)
    if orig_end is not None and not getattr(orig_end, "_harness_wrapped", False):

        def on_stream_end(self: Any) -> None:
            sent = bool(getattr(self, "_stream_started", False)) and self.has_connection()
            orig_end(self)
            if sent:
                emit("player_stream_end", client_id=_role_client_id(self))

        on_stream_end._harness_wrapped = True  # type: ignore[attr-defined]
        PlayerV1Role.on_stream_end = on_stream_end  # type: ignore[method-assign]

    orig_chunk = getattr(PlayerV1Role, "on_audio_chunk", None)
    if orig_chunk is not None and not getattr(orig_chunk, "_harness_wrapped", False):

        def on_audio_chunk(self: Any, chunk: Any) -> None:
            orig_chunk(self, chunk)
            if WIRE_TRUTH.enabled and getattr(self, "_stream_started", False):
                WIRE_TRUTH.chunk(self, chunk, _role_client_id(self), emit)
            if WIRE_EVENTS["enabled"] and getattr(self, "_stream_started", False):
                emit(
                    "wire_chunk",
                    client_id=_role_client_id(self),
                    ts_us=chunk.timestamp_us,
                    duration_us=chunk.duration_us,
                    bytes=chunk.byte_count,
                )

        on_audio_chunk._harness_wrapped = True  # type: ignore[attr-defined]
        PlayerV1Role.on_audio_chunk = on_audio_chunk  # type: ignore[method-assign]

    orig_late = getattr(SendspinConnection, "_check_late_binary", None)
    if orig_late is not None and not getattr(orig_late, "_harness_wrapped", False):

        def check_late(self: Any, handling: Any, role: Any, entry: Any, *a: Any, **kw: Any) -> bool:
            dropped = orig_late(self, handling, role, entry, *a, **kw)
            if dropped:
                with contextlib.suppress(Exception):
                    now = self._server.clock.now_us()
                    emit(
                        "late_drop",
                        client_id=_role_client_id(role),
                        ts_us=entry.timestamp_us,
                        late_by_us=now - (entry.timestamp_us - delay_us(role)),
                    )
            return dropped

        check_late._harness_wrapped = True  # type: ignore[attr-defined]
        SendspinConnection._check_late_binary = check_late  # type: ignore[method-assign]


def _free_port(host: str) -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------
# Clock identification
# ---------------------------------------------------------------------------------------


def identify_clock(server: SendspinServer) -> dict[str, Any]:
    """Find out which kernel clock server.clock.now_us() reads, by comparing readings."""
    clk = server.clock
    info: dict[str, Any] = {"clock_class": type(clk).__name__}
    candidates: dict[str, int] = {}
    for name in ("CLOCK_MONOTONIC_RAW", "CLOCK_MONOTONIC", "CLOCK_BOOTTIME"):
        cid = getattr(time, name, None)
        if cid is not None:
            candidates[name] = cid
    best: tuple[str, int, int] | None = None
    diffs: dict[str, int] = {}
    for name, cid in candidates.items():
        samples = []
        for _ in range(5):
            a = time.clock_gettime_ns(cid) // 1000
            b = clk.now_us()
            c = time.clock_gettime_ns(cid) // 1000
            samples.append(b - (a + c) // 2)
        d = min(samples, key=abs)
        diffs[name] = d
        if best is None or abs(d) < abs(best[2]):
            best = (name, cid, d)
    info["clock_diffs_us"] = diffs
    if best is not None and abs(best[2]) <= 1000:
        # MONOTONIC and MONOTONIC_RAW can be within 1 ms of each other on a fresh boot;
        # when ambiguous, trust the class (RawMonotonicClock reads CLOCK_MONOTONIC_RAW).
        close = [n for n, d in diffs.items() if abs(d) <= 1000]
        if len(close) > 1 and info["clock_class"] == "RawMonotonicClock" and (
            "CLOCK_MONOTONIC_RAW" in close
        ):
            best = ("CLOCK_MONOTONIC_RAW", candidates["CLOCK_MONOTONIC_RAW"], diffs[
                "CLOCK_MONOTONIC_RAW"
            ])
        info["clock"] = best[0]
        info["clock_id"] = best[1]
        info["clock_ambiguous"] = len(close) > 1
    else:
        info["clock"] = "UNKNOWN"
        info["clock_id"] = None
    return info


# ---------------------------------------------------------------------------------------
# Streaming session
# ---------------------------------------------------------------------------------------


def _fmt_dict(fmt: AudioFormat) -> dict[str, int]:
    return {"sample_rate": fmt.sample_rate, "bit_depth": fmt.bit_depth, "channels": fmt.channels}


def _parse_format(d: dict[str, Any] | None, default: AudioFormat | None = None) -> AudioFormat:
    if d is None:
        return default or AudioFormat(sample_rate=48000, bit_depth=16, channels=2)
    base = default or AudioFormat(sample_rate=48000, bit_depth=16, channels=2)
    rate = int(d.get("sample_rate", base.sample_rate))
    bits = int(d.get("bit_depth", base.bit_depth))
    ch = int(d.get("channels", base.channels))
    if bits not in (16, 24, 32):
        raise ValueError(f"bit_depth must be 16, 24 or 32, got {bits}")
    if ch < 1 or rate < 1:
        raise ValueError("channels and sample_rate must be positive")
    return AudioFormat(sample_rate=rate, bit_depth=bits, channels=ch)


def _player_roles(group: Any) -> list[PlayerV1Role]:
    roles: list[PlayerV1Role] = []
    for client in list(group.clients):
        for role in client.active_roles:
            if isinstance(role, PlayerV1Role):
                roles.append(role)
    return roles


class StreamSession:
    """One push stream to one group, committing the test signal chunk by chunk."""

    def __init__(
        self,
        harness: Harness,
        group: Any,
        fmt: AudioFormat,
        *,
        signal_name: str,
        duration_s: float | None,
        max_buffer_us: int,
        chunk_frames: int | None,
        live: bool,
        on_finish: str,
    ) -> None:
        self.harness = harness
        self.group = group
        self.fmt = fmt
        self.signal_name = signal_name
        self.duration_frames = (
            None if duration_s is None else int(round(duration_s * fmt.sample_rate))
        )
        self.max_buffer_us = max_buffer_us
        self.chunk_frames_opt = chunk_frames
        self.live = live
        self.on_finish = on_finish
        self.stream: Any = None
        self.next_frame = 0
        self.seq = 0
        self.expected_next_ts: int | None = None
        self._ts_residue = 0
        self._ts_rate: int | None = None
        self.last_end_ts: int | None = None
        self.task: asyncio.Task[None] | None = None
        self._ops: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self.finished = False
        self.stopped = False

    # -- public API used by command handlers ------------------------------------------
    def start(self) -> None:
        self.stream = self.group.start_stream()
        if hasattr(self.stream, "set_live_source"):  # 6.x on; 5.x treats every source alike
            self.stream.set_live_source(self.live)
        self.task = asyncio.get_running_loop().create_task(self._run(), name="harness-stream")

    async def call_between_commits(self, fn: Callable[[], Any]) -> Any:
        """Run fn (sync or async) in the stream task between two commits."""
        if self.task is None or self.task.done():
            res = fn()
            if asyncio.iscoroutine(res):
                res = await res
            return res
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._ops.append((fn, fut))
        self._wake.set()
        return await fut

    @property
    def active(self) -> bool:
        return self.task is not None and not self.task.done()

    # -- internals ----------------------------------------------------------------------
    def chunk_frames(self) -> int:
        if self.chunk_frames_opt:
            return int(self.chunk_frames_opt)
        # The PCM passthrough chunk size, so each commit is exactly one PCM wire chunk.
        return max(1, int(self.fmt.sample_rate * 25_000 / 1_000_000))

    def reset_timeline(self) -> None:
        """After stream.clear(): aiosendspin re-anchors the timeline with a zero residue."""
        self.expected_next_ts = None
        self._ts_residue = 0
        self._ts_rate = None

    async def _apply_ops(self) -> None:
        while self._ops:
            fn, fut = self._ops.pop(0)
            try:
                res = fn()
                if asyncio.iscoroutine(res):
                    res = await res
            except Exception as err:  # noqa: BLE001 - reported to the command issuer
                if not fut.done():
                    fut.set_exception(err)
            else:
                if not fut.done():
                    fut.set_result(res)
        self._wake.clear()

    async def _pace(self) -> bool:
        """Sleep as aiosendspin's sleep_to_limit_buffer says. Return True if woken by an op."""
        if self._ops:
            return True
        sleeper = asyncio.ensure_future(self.stream.sleep_to_limit_buffer(self.max_buffer_us))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (sleeper, waker):
                if not t.done():
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
        if sleeper.done() and not sleeper.cancelled() and sleeper.exception() is not None:
            raise sleeper.exception()  # type: ignore[misc]
        return bool(self._ops)

    def _hold_back_frames(self) -> int:
        """Frames an encoder may still hold (0 for PCM): FLAC/Opus keep a partial frame."""
        pad = 0
        for role in _player_roles(self.group):
            req = role.get_audio_requirements()
            tr = getattr(req, "transformer", None) if req is not None else None
            if tr is None or type(tr).__name__ == "PcmPassthrough":
                continue
            pad = max(pad, int(getattr(tr, "frame_samples", 0) or 0))
        return pad

    async def _commit(self, frames: int, *, tail_pad: bool = False) -> None:
        fmt = self.fmt
        first = self.next_frame
        pcm = make_pcm(self.signal_name, first, frames, fmt)
        self.stream.prepare_audio(pcm, fmt)
        WIRE_PROBE.watch(pcm)
        try:
            commit_ts = await self.stream.commit_audio()
        finally:
            probes = WIRE_PROBE.take(pcm)
        wire_ts = commit_ts
        resampled = False
        if probes:
            passthrough = [p for p in probes if p[0]]
            if passthrough:
                # Unconverted PCM: the resampler's output cursor is the wire timestamp.
                wire_ts = passthrough[0][1]
            else:
                resampled = True
        ev: dict[str, Any] = {
            "seq": self.seq,
            "server_ts_us": wire_ts,
            "first_frame": first,
            "frames": frames,
            "format": _fmt_dict(fmt),
        }
        if wire_ts != commit_ts:
            ev["commit_ts_us"] = commit_ts
        if resampled:
            # The server converts this source format for every player; the output
            # cursor (FIR delay included) is reported separately, the index signal is lost.
            ev["resampled"] = True
            ev["wire_ts_us"] = probes[0][1]
        if tail_pad:
            ev["tail_pad"] = True
        if self._ts_rate != fmt.sample_rate:
            # aiosendspin resets its timeline residue when the source rate changes.
            self._ts_rate = fmt.sample_rate
            self._ts_residue = 0
        if self.expected_next_ts is not None and commit_ts != self.expected_next_ts:
            emit(
                "timeline_jump",
                first_frame=first,
                expected_us=self.expected_next_ts,
                actual_us=commit_ts,
                shift_us=commit_ts - self.expected_next_ts,
                wire_ts_us=wire_ts,
            )
        # Continuous expectation, same residue arithmetic as aiosendspin's timeline
        # (a rebase shifts the timeline by whole µs and keeps the residue).
        num = self._ts_residue + frames * 1_000_000
        dur, self._ts_residue = divmod(num, fmt.sample_rate)
        self.expected_next_ts = commit_ts + dur
        self.last_end_ts = wire_ts + dur
        self.next_frame += frames
        self.seq += 1
        if not WIRE_TRUTH.enabled:
            emit("chunk", **ev)

    def _note_external_stop(self) -> None:
        """Report a stream that aiosendspin stopped on its own (e.g. the group emptied)."""
        if self.stopped:
            return
        self.stopped = True
        emit("stopped", reason="stream_ended_by_server", next_frame=self.next_frame,
             group_id=self.group.group_id)

    async def _wait_until(self, ts_us: int) -> None:
        """Wait (interruptible by ops) until the server clock passes ts_us."""
        clock = self.harness.server.clock
        while True:
            await self._apply_ops()
            if self.stopped or self.stream.is_stopped:
                return
            remaining = ts_us - clock.now_us()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=min(remaining / 1e6, 0.5))

    async def _run(self) -> None:
        try:
            while True:
                await self._apply_ops()
                if self.stopped or self.stream is None or self.stream.is_stopped:
                    self._note_external_stop()
                    return
                if self.duration_frames is not None and self.next_frame >= self.duration_frames:
                    break
                n = self.chunk_frames()
                if self.duration_frames is not None:
                    n = min(n, self.duration_frames - self.next_frame)
                try:
                    await self._commit(n)
                except StreamStoppedError:
                    self._note_external_stop()
                    return
                if self.stopped:
                    return
                while await self._pace():
                    await self._apply_ops()
                    if self.stopped or self.stream.is_stopped:
                        self._note_external_stop()
                        return
            # Finite source finished.
            last_frame = self.next_frame - 1
            pad = self._hold_back_frames()
            if pad:
                # Push an encoder's held-back partial frame out with continuing signal.
                await self._commit(pad, tail_pad=True)
            emit("source_finished", last_frame=last_frame, tail_pad_frames=pad,
                 end_ts_us=self.last_end_ts)
            self.finished = True
            if self.on_finish == "stop" and self.last_end_ts is not None:
                await self._wait_until(self.last_end_ts + 200_000)
                if not self.stopped and not self.stream.is_stopped:
                    await self.harness.stop_group(self, reason="finished")
            # on_finish == "keep": stream stays open without audio; ops still apply.
            while not self.stopped and self.on_finish == "keep":
                await self._wake.wait()
                await self._apply_ops()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001
            _LOGGER.exception("stream task failed")
            emit("error", message=f"stream task failed: {err!r}", traceback=traceback.format_exc())
        finally:
            # Fail any op that will never run.
            for _fn, fut in self._ops:
                if not fut.done():
                    fut.set_exception(RuntimeError("stream ended before the command ran"))
            self._ops.clear()


# ---------------------------------------------------------------------------------------
# The harness
# ---------------------------------------------------------------------------------------


class CommandError(Exception):
    """A command could not be carried out (reported as an error event)."""


def approve_encrypted_unpaired() -> None:
    """Approve every *encrypted* unpaired client for playback, as ``sendspin serve`` does.

    aiosendspin 7.x+ activate no roles for a Noise client that is not paired until the
    operator approves it (``trust_unpaired``). Done per connection, not in the pairing
    store: a store that trusts every client_id would make the transition-mode server
    refuse all plaintext clients (downgrade protection). Each release reads the
    connection's ``_trusted_unpaired``; this makes it true for every encrypted one.
    Off with --no-approve-unpaired.
    """

    def approved(self: SendspinConnection) -> bool:
        return self.__dict__.get("_approved", False) or getattr(self, "_noise_psk", None) is not None

    def store(self: SendspinConnection, value: bool) -> None:
        self.__dict__["_approved"] = value

    SendspinConnection._trusted_unpaired = property(approved, store)  # type: ignore[attr-defined]


class Harness:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = asyncio.get_running_loop()
        self.server: SendspinServer = None  # type: ignore[assignment]
        self.client_order: list[str] = []
        self.session: StreamSession | None = None
        self.next_source_format: AudioFormat | None = None
        self.commands: asyncio.Queue[str | None] = asyncio.Queue()
        self._client_listeners: dict[str, Callable[[], None]] = {}
        self._quit = asyncio.Event()

    # -- setup ----------------------------------------------------------------------------
    async def start(self) -> None:
        mdns = self.args.mdns or self.args.advertise or self.args.discover_clients
        if not mdns:
            disable_mdns(_server_mod)
        WIRE_PROBE.install()
        install_role_hooks()
        if self.args.approve_unpaired and HAS_NOISE:
            approve_encrypted_unpaired()
        WIRE_EVENTS["enabled"] = bool(self.args.wire_events)
        WIRE_TRUTH.enabled = bool(self.args.wire_truth)
        self.server = make_server(SendspinServer, self.loop, self.args.name, self.args.server_id)
        self.server.add_event_listener(self._on_server_event)
        port = self.args.port
        if port == 0 and self.args.advertise:
            port = _free_port(self.args.host)  # mDNS advertises the port as given
        await self.server.start_server(
            port=port,
            host=self.args.host,
            advertise_addresses=[self.args.host] if self.args.advertise else [],
            discover_clients=self.args.discover_clients,
        )
        with contextlib.suppress(Exception):
            site = self.server._tcp_site  # noqa: SLF001
            port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001
        clock = identify_clock(self.server)
        try:
            version = importlib.metadata.version("aiosendspin")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        emit(
            "ready",
            port=port,
            host=self.args.host,
            url=f"ws://{self.args.host}:{port}{SendspinServer.API_PATH}",
            server_id=self.server.id,
            server_name=self.args.name,
            aiosendspin_version=version,
            pid=os.getpid(),
            now_us=self.server.clock.now_us(),
            wire_probe=WIRE_PROBE.installed,
            **clock,
        )

    # -- server/client events ---------------------------------------------------------
    def _on_server_event(self, _server: Any, event: Any) -> None:
        try:
            if isinstance(event, ClientAddedEvent):
                cid = event.client_id
                if cid not in self.client_order:
                    self.client_order.append(cid)
                client = self.server.get_client(cid)
                info: dict[str, Any] = {"client_id": cid}
                if client is not None:
                    info.update(self._client_info(client, player=False))
                    self._listen_client(client)
                emit("client_added", **info)
            elif isinstance(event, ClientRemovedEvent):
                if event.client_id in self.client_order:
                    self.client_order.remove(event.client_id)
                rm = self._client_listeners.pop(event.client_id, None)
                if rm is not None:
                    rm()
                emit("client_removed", client_id=event.client_id)
            elif isinstance(event, CLIENT_CONNECTED):
                emit("client_connected", client_id=event.client_id)
            elif isinstance(event, CLIENT_DISCONNECTED):
                reason = event.goodbye_reason
                emit(
                    "client_disconnected",
                    client_id=event.client_id,
                    goodbye_reason=getattr(reason, "value", reason),
                )
            elif isinstance(event, ClientUpdatedEvent):
                emit("client_updated", client_id=event.client_id)
        except Exception as err:  # noqa: BLE001
            emit("error", message=f"event handler failed: {err!r}")

    def _client_info(self, client: Any, *, player: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            out["name"] = client.name
        with contextlib.suppress(Exception):
            out["roles"] = list(client.active_role_ids)
        with contextlib.suppress(Exception):
            support = client.info.player_support
            if support is not None:
                out["supported_formats"] = [
                    {
                        "codec": f.codec.value,
                        "sample_rate": f.sample_rate,
                        "bit_depth": f.bit_depth,
                        "channels": f.channels,
                    }
                    for f in support.supported_formats
                ]
                out["buffer_capacity"] = support.buffer_capacity
        role = self._player_role(client) if player else None
        if role is not None:
            with contextlib.suppress(Exception):
                out["player"] = {
                    "volume": role.volume,
                    "muted": role.muted,
                    "supported_commands": [c.value for c in role.state_supported_commands],
                    "output_delay_ms": delay_ms(role),
                    "min_buffer_ms": role.min_buffer_ms,
                    "required_lead_time_ms": role.required_lead_time_ms,
                }
        return out

    def _listen_client(self, client: Any) -> None:
        cid = client.client_id
        if cid in self._client_listeners:
            return

        def on_client_event(c: Any, event: Any) -> None:
            try:
                if isinstance(event, VolumeChangedEvent):
                    emit("volume_changed", client_id=c.client_id, volume=event.volume,
                         muted=event.muted)
                elif isinstance(event, DELAY_EVENT):
                    emit("output_delay_changed", client_id=c.client_id,
                         output_delay_ms=event_delay_ms(event))
            except Exception as err:  # noqa: BLE001
                emit("error", message=f"client event handler failed: {err!r}")

        self._client_listeners[cid] = client.add_event_listener(on_client_event)

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _player_role(client: Any) -> PlayerV1Role | None:
        for role in client.active_roles:
            if isinstance(role, PlayerV1Role):
                return role
        return None

    def _client(self, cid: str | None) -> Any:
        if cid is None:
            for c in self.client_order:
                client = self.server.get_client(c)
                if client is not None and client.is_connected:
                    return client
            raise CommandError("no connected client")
        client = self.server.get_client(cid)
        if client is None:
            raise CommandError(f"unknown client {cid!r}")
        return client

    def _target_clients(self, cmd: dict[str, Any]) -> list[Any]:
        if cmd.get("client_id") is not None:
            return [self._client(cmd["client_id"])]
        if self.session is not None and self.session.active:
            return list(self.session.group.clients)
        return [self._client(None)]

    async def stop_group(self, session: StreamSession, *, reason: str, keep_playing: bool = False
                         ) -> None:
        if session.stopped:
            return
        session.stopped = True
        if keep_playing:
            session.group.stop_stream()
        else:
            await session.group.stop()
        emit("stopped", reason=reason, next_frame=session.next_frame,
             group_id=session.group.group_id)

    # -- commands -------------------------------------------------------------------------
    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any] | None:
        name = cmd.get("cmd")
        if not isinstance(name, str):
            raise CommandError("missing 'cmd'")
        handler = getattr(self, f"cmd_{name}", None)
        if handler is None:
            raise CommandError(f"unknown command {name!r}")
        return await handler(cmd)

    async def cmd_ping(self, _cmd: dict[str, Any]) -> dict[str, Any]:
        return {"server_now_us": self.server.clock.now_us()}

    async def cmd_status(self, _cmd: dict[str, Any]) -> dict[str, Any]:
        clients = []
        for client in self.server.clients:
            d = {"client_id": client.client_id, "connected": client.is_connected,
                 "group_id": client.group.group_id}
            d.update(self._client_info(client))
            clients.append(d)
        s = self.session
        return {
            "clients": clients,
            "streaming": bool(s and s.active and not s.stopped),
            "next_frame": s.next_frame if s else None,
            "format": _fmt_dict(s.fmt) if s else None,
            "server_now_us": self.server.clock.now_us(),
        }

    async def cmd_start(self, cmd: dict[str, Any]) -> dict[str, Any]:
        client = self._client(cmd.get("client_id"))
        fmt = _parse_format(cmd.get("format"), self.next_source_format)
        signal_name = cmd.get("signal", "index")
        if signal_name not in SIGNALS:
            raise CommandError(f"unknown signal {signal_name!r}")
        realtime = bool(cmd.get("realtime", True))
        max_buffer_ms = cmd.get("max_buffer_ms")
        if max_buffer_ms is None:
            max_buffer_ms = self.args.lead_ms if realtime else 5000
        on_finish = cmd.get("on_finish", "stop")
        if on_finish not in ("stop", "keep"):
            raise CommandError("on_finish must be 'stop' or 'keep'")
        duration = cmd.get("duration_s")
        replaced = False
        if self.session is not None and self.session.active:
            # Replaced: the start_stream() below clears (current clients) or ends (legacy
            # clients) the old stream and starts the new one; the old task just exits.
            old = self.session
            old.stopped = True
            old._wake.set()  # noqa: SLF001
            replaced = True
            if old.task is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(old.task), timeout=10)
                except Exception:  # noqa: BLE001
                    old.task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await old.task
            if old.group is not client.group and old.group.has_active_stream:
                # A stream on another group: end it properly, the new one starts elsewhere.
                await old.group.stop()
                emit("stopped", reason="replaced", next_frame=old.next_frame,
                     group_id=old.group.group_id)
        group = client.group
        session = StreamSession(
            self,
            group,
            fmt,
            signal_name=signal_name,
            duration_s=None if duration is None else float(duration),
            max_buffer_us=int(float(max_buffer_ms) * 1000),
            chunk_frames=cmd.get("chunk_frames"),
            live=bool(cmd.get("live", False)),
            on_finish=on_finish,
        )
        self.session = session
        session.start()
        self.next_source_format = fmt
        info = {
            "group_id": group.group_id,
            "client_ids": [c.client_id for c in group.clients],
            "format": _fmt_dict(fmt),
            "signal": signal_name,
            "first_frame": 0,
            "max_buffer_ms": max_buffer_ms,
            "chunk_frames": session.chunk_frames(),
            "duration_s": duration,
            "replaced": replaced,
        }
        emit("stream_started", **info)
        return info

    async def cmd_stop(self, cmd: dict[str, Any]) -> dict[str, Any]:
        s = self.session
        if s is None or s.stopped:
            raise CommandError("no active stream")
        keep = bool(cmd.get("keep_playing", False))
        await s.call_between_commits(
            lambda: self.stop_group(s, reason="command", keep_playing=keep)
        )
        if s.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(s.task, timeout=10)
        return {"next_frame": s.next_frame}

    async def cmd_clear(self, _cmd: dict[str, Any]) -> dict[str, Any]:
        s = self.session
        if s is None or not s.active or s.stopped:
            raise CommandError("no active stream")

        def do_clear() -> dict[str, Any]:
            s.stream.clear()
            s.reset_timeline()
            emit("cleared", next_frame=s.next_frame)
            return {"next_frame": s.next_frame}

        return await s.call_between_commits(do_clear)

    async def cmd_format(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Mid-stream format change: new player format (stream/start, no stream/end) and
        the same new source format so the server does not resample the test signal."""
        s = self.session
        base = s.fmt if s is not None else self.next_source_format
        new_fmt = _parse_format(cmd.get("format"), base)
        codec_name = (cmd.get("format") or {}).get("codec")
        change_player = bool(cmd.get("player", True))
        change_source = bool(cmd.get("source", True))
        targets = self._target_clients(cmd)

        def apply() -> Any:
            results: dict[str, Any] = {}
            if change_player:
                for client in targets:
                    role = self._player_role(client)
                    if role is None:
                        results[client.client_id] = "no player role"
                        continue
                    codec = self._pick_codec(client, role, new_fmt, codec_name)
                    if codec is None:
                        results[client.client_id] = "format not in supported_formats"
                        continue
                    ok = role.set_preferred_format(new_fmt, codec)
                    results[client.client_id] = {"ok": bool(ok), "codec": codec.value}
            if change_source:
                if s is not None and s.active:
                    s.fmt = new_fmt
                self.next_source_format = new_fmt
            emit(
                "format_changed",
                format=_fmt_dict(new_fmt),
                player=results,
                source_changed=change_source,
                next_frame=s.next_frame if s is not None else None,
            )
            return {"player": results, "format": _fmt_dict(new_fmt)}

        if s is not None and s.active:
            res = await s.call_between_commits(apply)
        else:
            res = apply()
        bad = {k: v for k, v in res["player"].items() if not (isinstance(v, dict) and v["ok"])}
        if bad:
            raise CommandError(f"format change refused: {bad}")
        return res

    @staticmethod
    def _pick_codec(client: Any, role: Any, fmt: AudioFormat, codec_name: str | None
                    ) -> AudioCodec | None:
        support = client.info.player_support
        if support is None:
            return None
        matching = [
            f for f in support.supported_formats
            if f.sample_rate == fmt.sample_rate and f.channels == fmt.channels
            and (f.codec == AudioCodec.OPUS or f.bit_depth == fmt.bit_depth)
        ]
        if codec_name is not None:
            codec = AudioCodec(codec_name)
            return codec if any(f.codec == codec for f in matching) else None
        current = getattr(role, "preferred_codec", None)
        if current is not None and any(f.codec == current for f in matching):
            return current
        return matching[0].codec if matching else None

    async def _player_command(self, cmd: dict[str, Any], command: PlayerCommand,
                              send: Callable[[PlayerV1Role], None]) -> dict[str, Any]:
        sent: dict[str, bool] = {}
        for client in self._target_clients(cmd):
            role = self._player_role(client)
            if role is None:
                sent[client.client_id] = False
                continue
            declared = declares(client, role, command)
            if declared:
                send(role)
            sent[client.client_id] = declared
        if not any(sent.values()):
            raise CommandError(
                f"no target client declared {command.value!r} where this release looks for it"
                f" ({sent})"
            )
        return {"sent": sent}

    async def cmd_volume(self, cmd: dict[str, Any]) -> dict[str, Any]:
        value = int(cmd["value"])
        if not 0 <= value <= 100:
            raise CommandError("volume must be 0..100")
        return await self._player_command(cmd, PlayerCommand.VOLUME,
                                          lambda r: r.set_volume(value))

    async def cmd_mute(self, cmd: dict[str, Any]) -> dict[str, Any]:
        value = bool(cmd["value"])
        return await self._player_command(cmd, PlayerCommand.MUTE, lambda r: r.set_mute(value))

    async def cmd_set_output_delay(self, cmd: dict[str, Any]) -> dict[str, Any]:
        ms = int(cmd["ms"])
        if not 0 <= ms <= 5000:
            raise CommandError("ms must be 0..5000")
        return await self._player_command(cmd, DELAY_COMMAND, lambda r: set_delay(r, ms))

    async def cmd_join(self, cmd: dict[str, Any]) -> dict[str, Any]:
        cid = cmd.get("client_id")
        if cid is None:
            raise CommandError("join needs client_id")
        client = self._client(cid)
        if cmd.get("to") is not None:
            group = self._client(cmd["to"]).group
        elif self.session is not None and not self.session.stopped:
            group = self.session.group
        else:
            group = self._client(None).group
        if client in group.clients:
            return {"group_id": group.group_id, "already_member": True}

        async def do_join() -> dict[str, Any]:
            await group.add_client(client)
            return {"group_id": group.group_id,
                    "client_ids": [c.client_id for c in group.clients]}

        if self.session is not None and self.session.active and self.session.group is group:
            res = await self.session.call_between_commits(do_join)
        else:
            res = await do_join()
        emit("joined", client_id=cid, **res)
        return res

    async def cmd_leave(self, cmd: dict[str, Any]) -> dict[str, Any]:
        cid = cmd.get("client_id")
        if cid is None:
            raise CommandError("leave needs client_id")
        client = self._client(cid)

        async def do_leave() -> dict[str, Any]:
            await client.ungroup()
            return {"group_id": client.group.group_id}

        if self.session is not None and self.session.active:
            return await self.session.call_between_commits(do_leave)
        return await do_leave()

    async def cmd_inject_audio(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Hostile-server tests: raw player audio frames straight onto a client's socket,
        past aiosendspin's queue, buffer limit and late-drop.

        ``count`` chunks of ``frames`` frames (the active stream's format, ``signal``
        default "sine"); the first is stamped server-now + ``offset_us`` (or exactly
        ``ts_us``), each next one ``step_us`` later (default: one chunk's duration); one
        is sent every ``interval_ms`` (0: as fast as the socket takes them).  So
        ``interval_ms`` < the chunk duration is faster than real time, > is slower, and
        ``offset_us`` of ±hours gives timestamps far in the future or past.
        """
        client = self._client(cmd.get("client_id"))
        conn = getattr(client, "_connection", None)
        s = self.session
        if conn is None or s is None:
            raise CommandError("inject_audio needs a connected client and a started stream")
        fmt = s.fmt
        frames = int(cmd.get("frames", max(1, fmt.sample_rate // 40)))
        count = int(cmd.get("count", 1))
        signal_name = cmd.get("signal", "sine")
        duration_us = frames * 1_000_000 // fmt.sample_rate
        step_us = int(cmd.get("step_us", duration_us))
        interval_s = float(cmd.get("interval_ms", duration_us / 1000)) / 1000
        first_ts = int(cmd["ts_us"]) if "ts_us" in cmd else (
            self.server.clock.now_us() + int(cmd.get("offset_us", 0)))
        legacy = bool(getattr(conn, "uses_pre_spec_177_wire", True))
        header = struct.Struct(">Bq" if legacy else ">BqI")
        lo, hi = -(1 << 63), (1 << 63) - 1
        started = time.monotonic()
        for i in range(count):
            ts = min(max(first_ts + i * step_us, lo), hi)
            head = header.pack(4, ts) if legacy else header.pack(4, ts, 0)
            conn.send_priority_message(head + make_pcm(signal_name, i * frames, frames, fmt))
            if interval_s > 0:
                await asyncio.sleep(max(0.0, started + (i + 1) * interval_s - time.monotonic()))
            elif i % 256 == 255:
                await asyncio.sleep(0.005)  # let the writer drain the priority queue
        return {"sent": count, "frames": frames, "first_ts_us": first_ts, "step_us": step_us,
                "seconds": time.monotonic() - started, "header_bytes": header.size}

    async def cmd_connect_to_client(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Server-initiated mode: dial the player listening at ``url``."""
        url = cmd.get("url")
        if not isinstance(url, str):
            raise CommandError("connect_to_client needs url")
        reason = ConnectionReason(cmd.get("connection_reason", "discovery"))
        self.server.connect_to_client(url, connection_reason=reason)
        return {"url": url, "connection_reason": reason.value}

    async def cmd_disconnect_from_client(self, cmd: dict[str, Any]) -> dict[str, Any]:
        url = cmd.get("url")
        if not isinstance(url, str):
            raise CommandError("disconnect_from_client needs url")
        self.server.disconnect_from_client(url)
        return {"url": url}

    async def cmd_quit(self, _cmd: dict[str, Any]) -> dict[str, Any]:
        self._quit.set()
        return {}

    # -- main loops -------------------------------------------------------------------------
    def _stdin_thread(self) -> None:
        try:
            for line in sys.stdin:
                self.loop.call_soon_threadsafe(self.commands.put_nowait, line)
        except Exception:  # noqa: BLE001
            _LOGGER.exception("stdin reader failed")
        finally:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.commands.put_nowait, None)

    async def command_loop(self) -> None:
        while not self._quit.is_set():
            line = await self.commands.get()
            if line is None:
                _LOGGER.info("stdin closed; shutting down")
                self._quit.set()
                return
            line = line.strip()
            if not line:
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
            emit("command_done", cmd=cmd.get("cmd"), **extra, **(result or {}))

    async def shutdown(self) -> None:
        s = self.session
        if s is not None and s.active:
            try:
                await asyncio.wait_for(
                    s.call_between_commits(lambda: self.stop_group(s, reason="quit")), timeout=5
                )
            except Exception as err:  # noqa: BLE001
                _LOGGER.warning("stopping the stream at shutdown failed: %r", err)
            if s.task is not None and not s.task.done():
                s.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await s.task
        try:
            await asyncio.wait_for(self.server.close(), timeout=10)
        except Exception as err:  # noqa: BLE001
            _LOGGER.warning("server.close() failed: %r", err)
        emit("closed")


async def amain(args: argparse.Namespace) -> int:
    harness = Harness(args)
    try:
        await harness.start()
    except Exception as err:  # noqa: BLE001
        _LOGGER.exception("server start failed")
        emit("error", message=f"server start failed: {err!r}", fatal=True)
        return 2
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, harness._quit.set)  # noqa: SLF001
    stdin_reader = harness._stdin_thread  # noqa: SLF001
    threading.Thread(target=stdin_reader, name="stdin", daemon=True).start()
    cmd_task = loop.create_task(harness.command_loop())
    quit_task = loop.create_task(harness._quit.wait())  # noqa: SLF001
    await asyncio.wait({cmd_task, quit_task}, return_when=asyncio.FIRST_COMPLETED)
    if not cmd_task.done():
        cmd_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await cmd_task
    quit_task.cancel()
    await harness.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--port", type=int, default=18928, help="TCP port (0 = pick a free one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--name", default="Sendspin Test Server")
    p.add_argument("--lead-ms", type=float, default=1500.0,
                   help="max_buffer for sleep_to_limit_buffer in realtime mode (default 1500)")
    p.add_argument("--wire-truth", action="store_true",
                   help="chunk events from what each player is sent (PCM), not from commit_audio()")
    p.add_argument("--wire-events", action="store_true",
                   help="emit a wire_chunk event for every audio chunk handed to a player")
    p.add_argument("--mdns", action="store_true", help="allow zeroconf (off by default)")
    p.add_argument("--server-id", default="sendspin-era-test",
                   help="server id of the releases before Noise (later ones derive it from a key)")
    p.add_argument("--no-approve-unpaired", dest="approve_unpaired", action="store_false",
                   help="leave encrypted unpaired clients unapproved (no roles) until paired")
    p.add_argument("--advertise", action="store_true",
                   help="advertise _sendspin-server._tcp with --host as address (implies --mdns)")
    p.add_argument("--discover-clients", action="store_true",
                   help="browse _sendspin._tcp and dial the players found (implies --mdns)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
