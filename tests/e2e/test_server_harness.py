"""The real Sendspin test server harness (aiosendspin 10.x) against a raw v1 client.

A plain trio_websocket client speaks Sendspin v1 (client/hello with both
``player@v1_support`` and ``player_support``, client/state, client/time) and checks
what the harness really puts on the wire: server/hello, server/time in
CLOCK_MONOTONIC_RAW µs, stream/start, 9-byte type-4 audio frames carrying exactly the
frame-index test signal, and chunk timestamps that equal the harness's chunk log.
"""

from __future__ import annotations

import base64
import bisect
import json
import struct
import time
from typing import Any

import attrs
import numpy as np
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url


from resonate_bench.harness import (
    HarnessCommandError,
    TestServer,
    decode_frame_index,
    find_server_python,
    frame_timestamp_us,
    index_signal,
    pcm_bytes_to_samples,
    requires_venv,
    start_test_server,
)

pytestmark = pytest.mark.e2e

SERVER_PYTHON = find_server_python()
needs_server = requires_venv(SERVER_PYTHON, ".venv-server")

PCM16 = {"codec": "pcm", "channels": 2, "sample_rate": 48000, "bit_depth": 16}
PCM24 = {"codec": "pcm", "channels": 2, "sample_rate": 48000, "bit_depth": 24}
FLAC16 = {"codec": "flac", "channels": 2, "sample_rate": 48000, "bit_depth": 16}
FLAC24 = {"codec": "flac", "channels": 2, "sample_rate": 48000, "bit_depth": 24}

# Everything is generous: the machine may be a loaded 2-core box.
EVENT_TIMEOUT = 60.0


def raw_now_us() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW) // 1000


@attrs.define
class Received:
    kind: str  # "json" | "bin"
    t_us: int  # local CLOCK_MONOTONIC_RAW at receipt
    msg: Any


@attrs.define(eq=False)
class RawPlayer:
    """A minimal Sendspin v1 player: records every message, answers the handshake."""

    client_id: str
    formats: list[dict[str, Any]]
    received: list[Received] = attrs.field(factory=list)
    time_replies: list[tuple[int, int, int, int]] = attrs.field(factory=list)
    closed: bool = False
    ws: Any = None

    def hello(self) -> dict[str, Any]:
        support = {
            "supported_formats": self.formats,
            "buffer_capacity": 32_000_000,
            "supported_commands": ["volume", "mute"],
        }
        return {
            "type": "client/hello",
            "payload": {
                "client_id": self.client_id,
                "name": f"Raw {self.client_id}",
                "version": 1,
                "device_info": {
                    "product_name": "raw-test",
                    "manufacturer": "resonate_embedded tests",
                    "software_version": "0",
                },
                "supported_roles": ["player@v1"],
                "player@v1_support": support,
                "player_support": support,
            },
        }

    def client_state(self) -> dict[str, Any]:
        return {
            "type": "client/state",
            "payload": {
                "state": "synchronized",
                "player": {
                    "volume": 100,
                    "muted": False,
                    "supported_commands": ["volume", "mute", "set_output_delay"],
                    "output_delay_ms": 0,
                    "required_lead_time_ms": 250,
                    "min_buffer_ms": 1000,
                },
            },
        }

    async def run(self, url: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with open_websocket_url(url, max_message_size=16 * 1024 * 1024) as ws:
            self.ws = ws
            await ws.send_message(json.dumps(self.hello()))
            task_status.started()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._time_loop, ws)
                    await self._receive_loop(ws)
                    nursery.cancel_scope.cancel()
            finally:
                self.closed = True

    async def _receive_loop(self, ws: Any) -> None:
        while True:
            try:
                msg = await ws.get_message()
            except ConnectionClosed:
                return
            t = raw_now_us()
            if isinstance(msg, bytes | bytearray):
                self.received.append(Received("bin", t, bytes(msg)))
                continue
            obj = json.loads(msg)
            self.received.append(Received("json", t, obj))
            if obj.get("type") == "server/hello":
                try:
                    await ws.send_message(json.dumps(self.client_state()))
                except ConnectionClosed:
                    return
            elif obj.get("type") == "server/time":
                p = obj["payload"]
                self.time_replies.append(
                    (p["client_transmitted"], p["server_received"], p["server_transmitted"], t)
                )

    async def _time_loop(self, ws: Any) -> None:
        await self.wait_json("server/hello")
        while True:
            msg = {"type": "client/time", "payload": {"client_transmitted": raw_now_us()}}
            try:
                await ws.send_message(json.dumps(msg))
            except ConnectionClosed:
                return
            await trio.sleep(0.2)

    async def goodbye(self, reason: str = "shutdown") -> None:
        """Send client/goodbye and close the connection."""
        msg = {"type": "client/goodbye", "payload": {"reason": reason}}
        await self.ws.send_message(json.dumps(msg))
        await self.ws.aclose()

    def jsons(self, type_: str | None = None) -> list[dict[str, Any]]:
        return [
            r.msg
            for r in self.received
            if r.kind == "json" and (type_ is None or r.msg.get("type") == type_)
        ]

    def binaries(self) -> list[Received]:
        return [r for r in self.received if r.kind == "bin"]

    async def wait_json(self, type_: str, count: int = 1, timeout: float = EVENT_TIMEOUT) -> Any:
        with trio.fail_after(timeout):
            while len(self.jsons(type_)) < count:
                if self.closed:
                    raise AssertionError(f"connection closed while waiting for {type_}")
                await trio.sleep(0.02)
        return self.jsons(type_)[count - 1]

    async def wait_binaries(self, count: int, timeout: float = EVENT_TIMEOUT) -> None:
        with trio.fail_after(timeout):
            while len(self.binaries()) < count:
                if self.closed:
                    raise AssertionError("connection closed while waiting for audio")
                await trio.sleep(0.02)


@attrs.define
class WireFrame:
    """One received audio frame, decoded."""

    ts_us: int
    codec: str
    bits: int
    frames: np.ndarray  # frame indices K of this wire chunk
    exact: bool  # samples are exactly the index signal at `bits` (low bits included)
    recv_us: int


def decode_stream(player: RawPlayer) -> tuple[list[WireFrame], list[str]]:
    """Walk the player's messages in order, decode every binary audio frame.

    Returns the decoded frames and the sequence of stream control message types.
    """
    import av  # the player's 3.11 env has PyAV

    current: dict[str, Any] | None = None
    decoder: Any = None
    out: list[WireFrame] = []
    control: list[str] = []
    for r in player.received:
        if r.kind == "json":
            typ = r.msg.get("type", "")
            if typ.startswith("stream/"):
                control.append(typ)
            if typ == "stream/start" and r.msg["payload"].get("player"):
                current = r.msg["payload"]["player"]
                decoder = None
                if current["codec"] == "flac":
                    header = base64.b64decode(current["codec_header"])
                    assert header[:4] == b"fLaC"
                    assert len(header) == 42
                    decoder = av.CodecContext.create("flac", "r")
                    decoder.extradata = header[8:]
            continue
        data = r.msg
        assert current is not None, "binary audio before stream/start"
        assert len(data) > 9
        assert data[0] == 4, f"binary type {data[0]} is not audio (4)"
        (ts,) = struct.unpack(">q", data[1:9])
        payload = data[9:]
        bits, ch = int(current["bit_depth"]), int(current["channels"])
        if current["codec"] == "pcm":
            assert len(payload) % ((bits // 8) * ch) == 0
            samples = pcm_bytes_to_samples(payload, bits, ch)
        else:
            assert current["codec"] == "flac"
            decoded = decoder.decode(av.Packet(payload))
            parts = [f.to_ndarray().reshape(-1, ch) for f in decoded]
            assert parts, "FLAC frame decoded to nothing"
            samples = np.concatenate(parts).astype(np.int64)
            if bits == 24:
                samples = samples >> 8  # PyAV delivers 24-bit FLAC as s32, top-aligned
        k = decode_frame_index(samples, bits)
        exact = bool(np.array_equal(samples, index_signal(int(k[0]), len(k), bits, ch)))
        out.append(WireFrame(ts, current["codec"], bits, k, exact, r.t_us))
    return out, control


def check_against_log(srv: TestServer, frames: list[WireFrame]) -> None:
    """Every wire frame's timestamp equals the harness log's timestamp for its first frame."""
    chunks = srv.chunks()
    assert chunks, "the harness logged no chunks"
    firsts = [c["first_frame"] for c in chunks]
    assert firsts == sorted(firsts), "frame indices in the chunk log must only grow"
    for wf in frames:
        k0 = int(wf.frames[0])
        assert np.all(np.diff(wf.frames) == 1), f"frame indices inside a chunk jump at K={k0}"
        i = bisect.bisect_right(firsts, k0) - 1
        assert i >= 0, f"wire frame K={k0} precedes the chunk log"
        chunk = chunks[i]
        assert k0 < chunk["first_frame"] + chunk["frames"], f"K={k0} is in no logged chunk"
        expected = frame_timestamp_us(chunk, k0)
        assert wf.ts_us == expected, (
            f"wire ts {wf.ts_us} != logged {expected} for K={k0} (chunk {chunk})"
        )


def no_late_drops(srv: TestServer) -> bool:
    return not srv.events_of("late_drop") and not srv.events_of("timeline_jump")


def check_time_replies(player: RawPlayer) -> None:
    """server/time is in CLOCK_MONOTONIC_RAW µs: on one host T1 <= T2 <= T3 <= T4."""
    assert len(player.time_replies) >= 3
    for t1, t2, t3, t4 in player.time_replies:
        assert t1 <= t2 <= t3 <= t4, (t1, t2, t3, t4)


async def _connect(nursery: trio.Nursery, srv: TestServer, player: RawPlayer) -> None:
    since = srv.mark()
    await nursery.start(player.run, srv.url)
    await srv.wait_event(
        "client_added",
        EVENT_TIMEOUT,
        since=since,
        predicate=lambda e: e["client_id"] == player.client_id,
    )


# ---------------------------------------------------------------------------------------


async def _pcm16_basics() -> None:
    async with start_test_server(SERVER_PYTHON, port=0) as srv:
        ready = srv.ready
        assert ready["clock"] == "CLOCK_MONOTONIC_RAW", ready
        assert ready["clock_class"] == "RawMonotonicClock"
        assert ready["aiosendspin_version"].startswith("10.")
        assert srv.url.startswith("ws://127.0.0.1:") and srv.url.endswith("/sendspin")
        player = RawPlayer("raw-pcm16", [PCM16, PCM24, FLAC16])
        async with trio.open_nursery() as nursery:
            await _connect(nursery, srv, player)
            hello = await player.wait_json("server/hello")
            assert hello["payload"]["version"] == 1
            assert hello["payload"]["server_id"] == ready["server_id"]
            assert "player@v1" in hello["payload"]["active_roles"]

            mark = srv.mark()
            done = await srv.command(
                {"cmd": "start", "format": {"sample_rate": 48000, "bit_depth": 16, "channels": 2}}
            )
            assert done["chunk_frames"] == 1200
            start = await player.wait_json("stream/start")
            assert start["payload"]["player"]["codec"] == "pcm"
            assert start["payload"]["player"]["bit_depth"] == 16
            await srv.wait_event("player_stream_start", EVENT_TIMEOUT, since=mark)
            await player.wait_binaries(60)

            await srv.command({"cmd": "volume", "value": 55})
            cmd = await player.wait_json("server/command")
            assert cmd["payload"]["player"] == {"command": "volume", "volume": 55}
            await srv.command({"cmd": "mute", "value": True})
            cmd = await player.wait_json("server/command", count=2)
            assert cmd["payload"]["player"] == {"command": "mute", "mute": True}
            await srv.command({"cmd": "set_output_delay", "ms": 12})
            cmd = await player.wait_json("server/command", count=3)
            assert cmd["payload"]["player"]["command"] == "set_output_delay"
            assert cmd["payload"]["player"]["output_delay_ms"] == 12

            await srv.command({"cmd": "stop"})
            await player.wait_json("stream/end")
            await srv.wait_event("stopped", EVENT_TIMEOUT, since=mark)
            nursery.cancel_scope.cancel()

        frames, control = decode_stream(player)
        assert control[0] == "stream/start" and control[-1] == "stream/end"
        assert len(frames) >= 60
        assert all(f.codec == "pcm" and f.exact for f in frames)
        assert all(len(f.frames) == 1200 for f in frames)
        assert int(frames[0].frames[0]) == 0
        if no_late_drops(srv):
            allk = np.concatenate([f.frames for f in frames])
            assert np.array_equal(allk, np.arange(len(allk)))
            # 1200 frames @ 48 kHz = exactly 25 000 µs per chunk
            steps = {b.ts_us - a.ts_us for a, b in zip(frames, frames[1:], strict=False)}
            assert steps == {25_000}
        check_against_log(srv, frames)
        # The harness's stamps are CLOCK_MONOTONIC_RAW: audio arrives ahead of its play time.
        assert all(f.ts_us > f.recv_us for f in frames[:10])
        check_time_replies(player)


async def _flac_format_change_and_clear() -> None:
    async with start_test_server(SERVER_PYTHON, port=0) as srv:
        player = RawPlayer("raw-flac", [FLAC16, PCM24, PCM16])
        async with trio.open_nursery() as nursery:
            await _connect(nursery, srv, player)
            await srv.command(
                {"cmd": "start", "format": {"sample_rate": 48000, "bit_depth": 16, "channels": 2}}
            )
            start = await player.wait_json("stream/start")
            assert start["payload"]["player"]["codec"] == "flac"
            await player.wait_binaries(12)

            # Mid-stream format change: a second stream/start, no stream/end in between.
            n_before = len(player.binaries())
            await srv.command(
                {
                    "cmd": "format",
                    "format": {"codec": "pcm", "sample_rate": 48000, "bit_depth": 24,
                               "channels": 2},
                }
            )
            start2 = await player.wait_json("stream/start", count=2)
            assert start2["payload"]["player"]["codec"] == "pcm"
            assert start2["payload"]["player"]["bit_depth"] == 24
            await player.wait_binaries(n_before + 40)

            # Seek: stream/clear, the signal index continues, the timeline restarts.
            await srv.command({"cmd": "clear"})
            await player.wait_json("stream/clear")
            n_clear = len(player.binaries())
            await player.wait_binaries(n_clear + 40)
            await srv.command({"cmd": "stop"})
            await player.wait_json("stream/end")
            nursery.cancel_scope.cancel()

        frames, control = decode_stream(player)
        assert control[:2] == ["stream/start", "stream/start"], control
        assert "stream/end" not in control[:3]
        assert control[2] == "stream/clear"
        check_against_log(srv, frames)

        flac = [f for f in frames if f.codec == "flac"]
        pcm = [f for f in frames if f.codec == "pcm"]
        assert flac and pcm
        assert all(f.exact and len(f.frames) == 4608 for f in flac)
        assert all(b.ts_us - a.ts_us == 96_000 for a, b in zip(flac, flac[1:], strict=False))
        # Format switch is seamless on the index and on the timeline.
        last = flac[-1]
        first = pcm[0]
        if no_late_drops(srv):
            assert int(first.frames[0]) == int(last.frames[-1]) + 1
            assert first.ts_us == last.ts_us + 96_000
        # Frames committed at 16 bits but sent after the switch (the FLAC encoder's
        # hold-back, < 4608 frames) were widened by the server: top bits intact, low byte 0.
        inexact = [f for f in pcm if not f.exact]
        assert sum(len(f.frames) for f in inexact) < 4608
        assert all(f.exact for f in pcm[len(inexact):])

        # After stream/clear: K keeps growing, timestamps go back (≈ now + 1 s again).
        cleared = srv.events_of("cleared")
        assert len(cleared) == 1
        k_clear = cleared[0]["next_frame"]
        before = [f for f in pcm if f.frames[0] < k_clear]
        after = [f for f in pcm if f.frames[0] >= k_clear]
        assert before and after
        assert int(after[0].frames[0]) == k_clear
        assert after[0].ts_us < before[-1].ts_us + 25_000
        check_time_replies(player)


async def _pcm24_join_and_finish() -> None:
    async with start_test_server(SERVER_PYTHON, port=0) as srv:
        a = RawPlayer("raw-a", [PCM24, PCM16])
        b = RawPlayer("raw-b", [FLAC24, PCM24])
        async with trio.open_nursery() as nursery:
            await _connect(nursery, srv, a)
            await _connect(nursery, srv, b)
            await srv.command(
                {
                    "cmd": "start",
                    "client_id": "raw-a",
                    "format": {"sample_rate": 48000, "bit_depth": 24, "channels": 2},
                    "duration_s": 5.0,
                }
            )
            await a.wait_binaries(20)
            done = await srv.command({"cmd": "join", "client_id": "raw-b"})
            assert set(done["client_ids"]) == {"raw-a", "raw-b"}
            await b.wait_json("stream/start")
            stopped = await srv.wait_event("stopped", EVENT_TIMEOUT)
            assert stopped["reason"] == "finished"
            await a.wait_json("stream/end")
            await b.wait_json("stream/end")
            nursery.cancel_scope.cancel()

        finished = srv.events_of("source_finished")
        assert finished and finished[0]["last_frame"] == 5 * 48000 - 1
        fa, _ = decode_stream(a)
        fb, _ = decode_stream(b)
        assert all(f.codec == "pcm" and f.bits == 24 and f.exact for f in fa)
        assert all(f.codec == "flac" and f.bits == 24 and f.exact for f in fb)
        check_against_log(srv, fa)
        check_against_log(srv, fb)
        if no_late_drops(srv):
            # Player a got the whole finite signal; b joined late but got the tail
            # (the harness pads with continuing signal to flush the FLAC encoder). Where b's
            # run starts depends on how far ahead the server was when b joined: on a loaded
            # machine every chunk sent so far may still be ahead of its play time, and then
            # b gets them all from frame 0.
            ka = np.concatenate([f.frames for f in fa])
            assert np.array_equal(ka, np.arange(len(ka)))
            assert ka[-1] >= 5 * 48000 - 1
            kb = np.concatenate([f.frames for f in fb])
            assert np.all(np.diff(kb) == 1)
            assert kb[-1] >= 5 * 48000 - 1


async def _errors_goodbye_and_shutdown() -> None:
    async with start_test_server(SERVER_PYTHON, port=0) as srv:
        with pytest.raises(HarnessCommandError, match="no connected client"):
            await srv.command({"cmd": "start"})
        with pytest.raises(HarnessCommandError, match="unknown command"):
            await srv.command({"cmd": "bogus"})
        with pytest.raises(HarnessCommandError, match="no active stream"):
            await srv.command({"cmd": "clear"})
        await srv.send({"not": "a command"})  # no "cmd": answered by an error event
        await srv.wait_event(
            "error", EVENT_TIMEOUT, predicate=lambda e: e["message"] == "missing 'cmd'"
        )
        pong = await srv.command({"cmd": "ping"})
        assert abs(pong["server_now_us"] - raw_now_us()) < 5_000_000

        # A player that says goodbye mid-stream: the server removes it and the stream ends.
        player = RawPlayer("raw-bye", [PCM16])
        async with trio.open_nursery() as nursery:
            await _connect(nursery, srv, player)
            with pytest.raises(HarnessCommandError, match="unknown client"):
                await srv.command({"cmd": "volume", "value": 10, "client_id": "nobody"})
            mark = srv.mark()
            await srv.command({"cmd": "start"})  # default source format 48 kHz/16/2
            await player.wait_binaries(10)
            await player.goodbye("shutdown")
            bye = await srv.wait_event("client_disconnected", EVENT_TIMEOUT, since=mark)
            assert bye["goodbye_reason"] == "shutdown"
            await srv.wait_event("client_removed", EVENT_TIMEOUT, since=mark)
            stopped = await srv.wait_event("stopped", EVENT_TIMEOUT, since=mark)
            assert stopped["reason"] == "stream_ended_by_server"
            nursery.cancel_scope.cancel()
    assert srv.process.returncode == 0
    assert srv.events[-1]["event"] == "closed"
    # The only errors are the five provoked above (no stream-task failures).
    assert len(srv.events_of("error")) == 5


@needs_server
def test_pcm16_handshake_signal_and_commands() -> None:
    trio.run(_pcm16_basics)


@needs_server
def test_flac_then_midstream_format_change_then_clear() -> None:
    trio.run(_flac_format_change_and_clear)


@needs_server
def test_pcm24_and_late_flac_joiner_finite_stream() -> None:
    trio.run(_pcm24_join_and_finish)


@needs_server
def test_errors_goodbye_and_clean_shutdown() -> None:
    trio.run(_errors_goodbye_and_shutdown)
