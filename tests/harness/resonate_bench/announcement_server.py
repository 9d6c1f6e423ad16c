"""A Sendspin server that speaks the announcement role, written from the spec text
(``roles/announcement/v1.md``; no released server speaks it yet), and the measurement of
the media's sync around an announcement.  Used by ``tests/e2e/test_announcement_e2e.py``
and ``tests/benchmarks/announcement_bench.py``.

Plain Sendspin v1 over a real WebSocket, clock = CLOCK_MONOTONIC_RAW (the paced device's
clock).  The media is the index signal; in the middle comes a 1 s announcement: mono 24 kHz
with 12 dB ducking, or (``stereo``) 48 kHz stereo with the tone in channel 1 only and no
ducking, which leaves channel 0 the media's (K mod 32768) so that the media's sync error
can be measured *during* the announcement.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import attrs
import numpy as np
import trio
from trio_websocket import ConnectionClosed, serve_websocket

from resonate_bench.harness import index_signal
from resonate_bench.measure import ChunkTable, ErrorSummary, match, summarize
from resonate_bench.scenario import stop_process
from resonate_bench.paced_log import PacedLog

RATE = 48000
CHUNK = 960  # 20 ms of media
ANN_RATE = 24000
ANN_CHUNK = 1200  # 50 ms
DUCK_DB = 12
TONE = 8000
MEDIA_S = 7.0
ANN_AT_S = 3.5  # announcement start, seconds after the media's first frame
DUCK_LEAD_S = 1.5  # stream/start goes with the media chunk this far ahead of the start
ANN_S = 1.0


def now_us() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW) // 1000


def msg(kind: str, payload: dict) -> str:
    return json.dumps({"type": kind, "payload": payload})


class AnnouncementServer:
    """Sendspin v1, roles player@v1 + announcement@v1, clock = CLOCK_MONOTONIC_RAW."""

    def __init__(self, stereo: bool = False) -> None:
        # stereo: 48 kHz 2 ch, tone in channel 1 only, no ducking — channel 0 stays the
        # media's, so the media's sync can be measured *during* the announcement
        self.stereo = stereo
        self.hello: dict | None = None
        self.states: list[dict] = []
        self.chunks: list[dict] = []
        self.ann_start_us = 0
        self.done = trio.Event()

    async def handle(self, request) -> None:
        ws = await request.accept()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive, ws)
                with trio.fail_after(30):
                    while not self.states:
                        await trio.sleep(0.05)
                await trio.sleep(1.0)  # clock sync settles
                await self._stream(ws)
                self.done.set()
                await trio.sleep(2.0)
                nursery.cancel_scope.cancel()
        except* ConnectionClosed:
            pass

    async def _receive(self, ws) -> None:
        while True:
            data = json.loads(await ws.get_message())
            received = now_us()
            if data["type"] == "client/hello":
                self.hello = data["payload"]
                await ws.send_message(msg("server/hello", {
                    "server_id": "ann-test", "name": "Announcer", "version": 1,
                    "active_roles": ["player@v1", "announcement@v1"],
                    "connection_reason": "playback"}))
            elif data["type"] == "client/time":
                await ws.send_message(msg("server/time", {
                    "client_transmitted": data["payload"]["client_transmitted"],
                    "server_received": received, "server_transmitted": now_us()}))
            elif data["type"] == "client/state":
                self.states.append(data["payload"])

    async def _stream(self, ws) -> None:
        t0 = now_us() + 600_000
        self.ann_start_us = t0 + int(ANN_AT_S * 1e6)
        await ws.send_message(msg("stream/start", {"player": {
            "codec": "pcm", "sample_rate": RATE, "channels": 2, "bit_depth": 16}}))
        rate = RATE if self.stereo else ANN_RATE
        tone = np.round(TONE * np.cos(2 * np.pi * 1000 * np.arange(int(ANN_S * rate))
                                      / rate)).astype("<i2")
        if self.stereo:
            tone = np.stack([np.zeros_like(tone), tone], axis=1).reshape(-1)
        ann_sent = 0
        total = int(MEDIA_S * RATE)
        for first in range(0, total, CHUNK):
            ts = t0 + first * 1_000_000 // RATE
            while ts - now_us() > 800_000:
                await trio.sleep(0.01)
            pcm = index_signal(first, CHUNK, 16, 2).astype("<i2").tobytes()
            await ws.send_message(b"\x04" + ts.to_bytes(8, "big", signed=True) + pcm)
            self.chunks.append({"event": "chunk", "first_frame": first, "frames": CHUNK,
                                "server_ts_us": ts, "format": {"sample_rate": RATE}})
            if ts >= self.ann_start_us - DUCK_LEAD_S * 1e6 and ann_sent == 0:
                await ws.send_message(msg("stream/start", {"announcement": {
                    "codec": "pcm", "sample_rate": rate, "channels": 2 if self.stereo else 1,
                    "bit_depth": 16, "start_timestamp": self.ann_start_us,
                    "media_duck_db": 0 if self.stereo else DUCK_DB, "duck_ramp_ms": 50}}))
            if ts >= self.ann_start_us - DUCK_LEAD_S * 1e6 and ann_sent < tone.size:
                # a little faster than real time, as a TTS engine streaming its reply
                for _ in range(2):
                    part = tone[ann_sent:ann_sent + ANN_CHUNK * (4 if self.stereo else 1)]
                    if part.size:
                        await ws.send_message(b"\x18" + part.tobytes())
                        ann_sent += part.size
                if ann_sent >= tone.size:
                    await ws.send_message(msg("stream/end", {"roles": ["announcement"]}))
        while now_us() < t0 + int(MEDIA_S * 1e6) + 200_000:  # played out
            await trio.sleep(0.05)
        await ws.send_message(msg("stream/end", {"roles": ["player"]}))


def run_player_against(server: AnnouncementServer, workdir: Path) -> str:
    """The player process (paced device, log ``workdir/play.plog``) against ``server``
    until its stream is over; returns the player's log.  Raises RuntimeError if the player
    did not exit cleanly."""
    log_path = workdir / "player.log"

    async def main():
        async with trio.open_nursery() as nursery:
            ws_server = await nursery.start(serve_websocket, server.handle, "127.0.0.1", 0, None)
            port = ws_server.port
            with open(log_path, "wb") as out:
                proc = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "resonate_embedded.cli", "run",
                     "--server", f"ws://127.0.0.1:{port}/sendspin", "--encryption", "off",
                     "--device", f"paced:LOG={workdir / 'play.plog'}",
                     "--state-dir", str(workdir / "state"), "--formats", "pcm:48000:16:2"],
                    stdout=out, stderr=subprocess.STDOUT)
            try:
                with trio.fail_after(60):
                    await server.done.wait()
                await trio.sleep(0.5)
            finally:
                code = await stop_process(proc)
            nursery.cancel_scope.cancel()
        return code

    code = trio.run(main)
    player_log = log_path.read_text()
    if code != 0:
        raise RuntimeError(f"player exited with {code}:\n{player_log[-3000:]}")
    return player_log


@attrs.frozen
class AroundAnnouncement:
    """The media's sync error before, during (stereo case only) and after an announcement,
    and when the announcement's first frame left the speaker relative to its timestamp."""

    before: ErrorSummary
    during: ErrorSummary | None
    after: ErrorSummary
    start_error_us: float
    median_before_us: float
    median_during_us: float | None
    median_after_us: float


def measure(server: AnnouncementServer, log: PacedLog) -> AroundAnnouncement:
    table = ChunkTable.from_events(server.chunks)
    m = match(log, table)
    ann_start_ns = server.ann_start_us * 1000
    # Selected by play time: ducked media can pass for other index frames.  Ducking ramps
    # in when stream/start arrives (≤ 0.8 s + DUCK_LEAD_S before the start) and is
    # released 50 ms after the announcement's last frame.
    before = m.play_ns < ann_start_ns - int((DUCK_LEAD_S + 0.9) * 1e9)
    after = m.play_ns > ann_start_ns + int((ANN_S + 0.3) * 1e9)
    samples = log.all_samples().astype(np.int64)
    times = np.concatenate([span.play_times_ns() for span in log.spans])
    loud = np.flatnonzero(np.abs(samples[:, 1]) > TONE // 2)
    start_error_us = (times[loud[0]] - ann_start_ns) / 1000 if loud.size else float("nan")
    during_error = None
    if server.stereo:
        k_est = m.k[before][-1] + np.round((times - m.play_ns[before][-1]) * RATE / 1e9).astype(np.int64)
        during = (times > ann_start_ns + 50_000_000) & (times < ann_start_ns + int((ANN_S - 0.05) * 1e9))
        k = (k_est[during] & ~0x7FFF) | samples[during, 0]  # high part from the timeline, low heard
        k += np.where(k - k_est[during] > 16384, -32768, np.where(k_est[during] - k > 16384, 32768, 0))
        server_ns, ok = table.server_ns(k)
        during_error = ((times[during] - server_ns) / 1000)[ok]
    return AroundAnnouncement(
        summarize(m.error_us[before]),
        summarize(during_error) if during_error is not None else None,
        summarize(m.error_us[after]), start_error_us,
        float(np.median(m.error_us[before])),
        float(np.median(during_error)) if during_error is not None else None,
        float(np.median(m.error_us[after])))
