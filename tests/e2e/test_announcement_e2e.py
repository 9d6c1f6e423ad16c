"""The announcement role end to end: a player process on the paced device, and a small
server written here from the spec text (``roles/announcement/v1.md``; no released server
speaks the role yet), plain Sendspin v1 over a real WebSocket.

The server streams the index signal as media and, in the middle, a 1 s announcement
(mono 24 kHz PCM, 12 dB media ducking).  The paced device's log shows:

* media frames before and after the announcement are bit-exact and their sync error is
  unchanged (the announcement never shifts the media timeline);
* the announcement starts at its ``start_timestamp`` (first tone frame, channel 1 where
  the index signal is near zero);
* the media under it is ducked by 12 dB;
* ``client/state`` reports the announcement ``playing`` then ``idle``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trio
from trio_websocket import ConnectionClosed, serve_websocket

from resonate_embedded.audio.announcement import duck_q15
from resonate_embedded.bench.harness import index_signal
from resonate_embedded.bench.measure import ChunkTable, match, summarize
from resonate_embedded.bench.scenario import stop_process
from resonate_embedded.paced.log import read_paced_log

pytestmark = pytest.mark.e2e

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


def run_player_against(server: AnnouncementServer, tmp_path: Path) -> str:
    """The player process against ``server`` until its stream is over; the player's log."""
    log_path = tmp_path / "player.log"

    async def main():
        async with trio.open_nursery() as nursery:
            ws_server = await nursery.start(serve_websocket, server.handle, "127.0.0.1", 0, None)
            port = ws_server.port
            with open(log_path, "wb") as out:
                proc = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "resonate_embedded.cli", "run",
                     "--server", f"ws://127.0.0.1:{port}/sendspin", "--encryption", "off",
                     "--device", f"paced:LOG={tmp_path / 'play.plog'}",
                     "--state-dir", str(tmp_path / "state"), "--formats", "pcm:48000:16:2"],
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
    assert code == 0, player_log[-3000:]
    return player_log


def test_announcement_mixes_ducks_and_leaves_the_media_timeline_alone(tmp_path):
    server = AnnouncementServer()
    player_log = run_player_against(server, tmp_path)
    support = server.hello["announcement@v1_support"]
    assert "announcement@v1" in server.hello["supported_roles"]
    assert {"codec": "pcm", "sample_rate": ANN_RATE, "channels": 1, "bit_depth": 16} \
        in support["supported_formats"] and support["buffer_capacity"] > 0

    log = read_paced_log(tmp_path / "play.plog")
    m = match(log, ChunkTable.from_events(server.chunks))
    ann_start_ns = server.ann_start_us * 1000
    # Selected by play time: ducked media can pass for other index frames.  The ducking
    # ramps in when stream/start arrives (≤ 0.8 s + DUCK_LEAD_S before the start) and is
    # released 50 ms after the announcement's last frame.
    before = m.play_ns < ann_start_ns - int((DUCK_LEAD_S + 0.9) * 1e9)
    after = m.play_ns > ann_start_ns + int((ANN_S + 0.3) * 1e9)
    assert before.sum() > RATE * 0.5 and after.sum() > RATE * 1.0, (before.sum(), after.sum())
    s_before, s_after = summarize(m.error_us[before]), summarize(m.error_us[after])
    print(f"\n[sync] media before the announcement: {s_before.line()}"
          f"\n[sync] media after the announcement:  {s_after.line()}")
    assert m.bit_exact[before | after].all()
    # loopback jitter is tens of µs; losing or repeating a chunk would be 20 000 µs
    assert abs(np.median(m.error_us[after]) - np.median(m.error_us[before])) < 150
    # no frame of the media was lost or repeated across the announcement
    k_last, k_next = m.k[before][-1], m.k[after][0]
    gap_frames = (m.play_ns[after][0] - m.play_ns[before][-1]) * RATE / 1e9
    assert abs(gap_frames - (k_next - k_last)) <= 2

    samples = log.all_samples()
    times = np.concatenate([span.play_times_ns() for span in log.spans])
    loud = np.flatnonzero(np.abs(samples[:, 1].astype(np.int64)) > TONE // 2)
    assert loud.size > ANN_S * RATE * 0.5
    start_error_us = (times[loud[0]] - ann_start_ns) / 1000
    print(f"[sync] announcement start: {start_error_us:+.0f} us from its start_timestamp")
    assert abs(start_error_us) < 2000
    # media under the announcement: ducked by 12 dB (channel 0 carries K & 0x7FFF)
    k_est = m.k[before][-1] + np.round((times - m.play_ns[before][-1]) * RATE / 1e9).astype(np.int64)
    under = (times > ann_start_ns + 100_000_000) & (times < ann_start_ns + 900_000_000)
    media = (k_est[under] & 0x7FFF).astype(np.int64)
    ducked = samples[under, 0].astype(np.int64) - samples[under, 1].astype(np.int64)
    expected = media * duck_q15(DUCK_DB) >> 15
    assert np.median(np.abs(ducked - expected)) <= 2, np.median(np.abs(ducked - expected))

    reported = [s["announcement"]["state"] for s in server.states if "announcement" in s]
    assert reported[0] == "idle" and "playing" in reported and reported[-1] == "idle"
    assert "Traceback" not in player_log


def test_media_sync_is_unchanged_while_an_announcement_plays(tmp_path):
    """No ducking and the announcement in channel 1 only: channel 0 is the media's index
    (K mod 32768), so the media's sync error is measured before, during and after."""
    server = AnnouncementServer(stereo=True)
    player_log = run_player_against(server, tmp_path)
    log = read_paced_log(tmp_path / "play.plog")
    table = ChunkTable.from_events(server.chunks)
    m = match(log, table)
    ann_start_ns = server.ann_start_us * 1000
    before = m.play_ns < ann_start_ns - int((DUCK_LEAD_S + 0.9) * 1e9)
    samples = log.all_samples().astype(np.int64)
    times = np.concatenate([span.play_times_ns() for span in log.spans])
    k_est = m.k[before][-1] + np.round((times - m.play_ns[before][-1]) * RATE / 1e9).astype(np.int64)
    during = (times > ann_start_ns + 50_000_000) & (times < ann_start_ns + int((ANN_S - 0.05) * 1e9))
    assert np.abs(samples[during, 1]).max() > TONE // 2, "no announcement in channel 1"
    low = samples[during, 0]
    k = (k_est[during] & ~0x7FFF) | low  # the high part from the timeline, the low part heard
    k += np.where(k - k_est[during] > 16384, -32768, np.where(k_est[during] - k > 16384, 32768, 0))
    server_ns, ok = table.server_ns(k)
    assert ok.all()
    error_during = (times[during] - server_ns) / 1000
    s_before, s_during = summarize(m.error_us[before]), summarize(error_during)
    print(f"\n[sync] media before the announcement: {s_before.line()}"
          f"\n[sync] media during the announcement: {s_during.line()}")
    assert abs(np.median(error_during) - np.median(m.error_us[before])) < 150
    assert "announcement finished" in player_log and "Traceback" not in player_log
