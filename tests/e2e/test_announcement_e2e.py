"""The announcement role end to end: a player process on the paced device against the
spec-following announcement server of ``resonate_bench.announcement_server``
(no released server speaks the role yet), plain Sendspin v1 over a real WebSocket.

* mono 24 kHz with 12 dB ducking: the hello offers the role; media frames before and after
  are bit-exact, their sync error unchanged and none lost or repeated; the announcement
  starts at its ``start_timestamp``; the media under it is ducked by 12 dB; ``client/state``
  reports ``playing`` then ``idle``;
* stereo, tone in channel 1 only, no ducking: the media's sync error is measured *during*
  the announcement too (channel 0 stays the media's) and is unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest

from resonate_embedded.audio.announcement import duck_q15
from resonate_bench.announcement_server import (
    ANN_RATE, ANN_S, DUCK_DB, RATE, AnnouncementServer, measure, run_player_against,
)
from resonate_bench.measure import ChunkTable, match
from resonate_bench.paced_log import read_paced_log

pytestmark = pytest.mark.e2e


def test_announcement_mixes_ducks_and_leaves_the_media_timeline_alone(tmp_path):
    server = AnnouncementServer()
    player_log = run_player_against(server, tmp_path)
    support = server.hello["announcement@v1_support"]
    assert "announcement@v1" in server.hello["supported_roles"]
    assert {"codec": "pcm", "sample_rate": ANN_RATE, "channels": 1, "bit_depth": 16} \
        in support["supported_formats"] and support["buffer_capacity"] > 0

    log = read_paced_log(tmp_path / "play.plog")
    r = measure(server, log)
    print(f"\n[sync] media before the announcement: {r.before.line()}"
          f"\n[sync] media after the announcement:  {r.after.line()}"
          f"\n[sync] announcement start: {r.start_error_us:+.0f} us from its start_timestamp")
    assert r.before.frames > RATE * 0.5 and r.after.frames > RATE * 1.0
    # loopback jitter is tens of µs; losing or repeating a chunk would be 20 000 µs
    assert abs(r.median_after_us - r.median_before_us) < 150
    assert abs(r.start_error_us) < 2000

    # media under the announcement: ducked by 12 dB (channel 0 carries K & 0x7FFF, channel 1
    # the announcement plus K >> 15 ducked, which is 0 or 1 here)
    m = match(log, ChunkTable.from_events(server.chunks))
    ann_start_ns = server.ann_start_us * 1000
    first = m.play_ns < ann_start_ns - 2_500_000_000
    samples = log.all_samples().astype(np.int64)
    times = np.concatenate([span.play_times_ns() for span in log.spans])
    k_est = m.k[first][-1] + np.round((times - m.play_ns[first][-1]) * RATE / 1e9).astype(np.int64)
    under = (times > ann_start_ns + 100_000_000) & (times < ann_start_ns + 900_000_000)
    expected = (k_est[under] & 0x7FFF) * duck_q15(DUCK_DB) >> 15
    ducked = samples[under, 0] - samples[under, 1]
    assert np.median(np.abs(ducked - expected)) <= 2, np.median(np.abs(ducked - expected))

    reported = [s["announcement"]["state"] for s in server.states if "announcement" in s]
    assert reported[0] == "idle" and "playing" in reported and reported[-1] == "idle"
    assert "Traceback" not in player_log


def test_media_sync_is_unchanged_while_an_announcement_plays(tmp_path):
    """No ducking and the announcement in channel 1 only: channel 0 is the media's index
    (K mod 32768), so the media's sync error is measured before, during and after."""
    server = AnnouncementServer(stereo=True)
    player_log = run_player_against(server, tmp_path)
    r = measure(server, read_paced_log(tmp_path / "play.plog"))
    print(f"\n[sync] media before the announcement: {r.before.line()}"
          f"\n[sync] media during the announcement: {r.during.line()}"
          f"\n[sync] media after the announcement:  {r.after.line()}")
    assert r.during.frames > ANN_S * RATE * 0.8
    # loopback jitter is tens of µs; a shifted timeline would be whole chunks (20 000 µs)
    assert abs(r.median_during_us - r.median_before_us) < 150
    assert abs(r.median_after_us - r.median_before_us) < 150
    assert "announcement finished" in player_log and "Traceback" not in player_log
