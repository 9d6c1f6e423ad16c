"""The announcement pipeline: start instant, resampling, stretching, ducking, own volume,
stall and transport loss — and the media passing through bit-exact when nothing is on."""

from __future__ import annotations

import numpy as np

from resonate_embedded.audio.announcement import (
    STALL_US, Announcement, AnnouncementAudio, AnnouncementStart, duck_q15,
)
from resonate_embedded.audio.formats import PcmShape
from resonate_embedded.audio.volume import UNITY_Q15, VolumeStage, gain_q15

RATE = 48000
MONO24K = PcmShape(24000, 1, 16)
PERIOD = 960  # 20 ms


def media(n: int = PERIOD, value: int = 10000) -> np.ndarray:
    return np.full((n, 2), value, dtype=np.int16)


def unity() -> VolumeStage:
    return VolumeStage(ramp_frames=1)


def start(a: Announcement, at_us: int, now_us: int = 0, **kw) -> None:
    a.start(AnnouncementStart(MONO24K, start_server_us=at_us, **kw), at_us, now_us)


def test_nothing_on_passes_the_media_through_unchanged():
    a = Announcement()
    block = media()
    assert a.mix(block, RATE, 0, False, unity(), 0) is block
    assert not a.busy


def test_starts_at_its_frame_and_is_resampled_and_mapped_to_stereo():
    a = Announcement()
    start(a, at_us=10_000)  # 10 ms into the block: frame 480
    a.add(AnnouncementAudio(np.arange(0, 2000, 2, dtype=np.int16)[:, None] * 0 + 1000, MONO24K), 0)
    out = a.mix(media(value=0), RATE, 0, False, unity(), 0)
    assert np.all(out[:480] == 0) and np.all(out[480:] == 1000)  # DC stays DC, both channels
    assert a.state == "playing"


def test_linear_interpolation_doubles_a_ramp():
    a = Announcement()
    start(a, at_us=0)
    a.add(AnnouncementAudio((np.arange(100, dtype=np.int16) * 100)[:, None], MONO24K), 0)
    out = a.mix(media(n=20, value=0), RATE, 0, False, unity(), 0)
    assert list(out[:8, 0]) == [0, 50, 100, 150, 200, 250, 300, 350]


def test_late_data_stretches_with_silence_and_nothing_is_skipped():
    a = Announcement()
    start(a, at_us=0)
    a.add(AnnouncementAudio(np.full((241, 1), 500, dtype=np.int16), MONO24K), 0)  # 10 ms
    out = a.mix(media(value=0), RATE, 0, False, unity(), 0)
    assert np.count_nonzero(out[:, 0]) == 481  # 10 ms of it (241 points), then silence
    a.add(AnnouncementAudio(np.full((480, 1), 700, dtype=np.int16), MONO24K), 100_000)
    out = a.mix(media(value=0), RATE, 20_000, False, unity(), 100_000)
    assert out[0, 0] in (500, 600, 700) and np.all(out[2:, 0] == 700)


def test_ducking_ramps_in_and_releases_after_the_end():
    a = Announcement()
    start(a, at_us=1_000_000, media_duck_db=20, duck_ramp_ms=10)
    out = a.mix(media(), RATE, 0, False, unity(), 0)  # before the start: duck ramps in
    ducked = 10000 * duck_q15(20) >> 15
    assert out[0, 0] > ducked and np.all(out[480:, 0] == ducked)  # ramp of 10 ms = 480
    a.end()
    a.mix(media(), RATE, 1_000_000, False, unity(), 0)  # nothing buffered: finished
    assert not a.active and a.state == "idle"
    out = a.mix(media(), RATE, 1_020_000, False, unity(), 0)
    assert np.all(out[480:, 0] == 10000)  # released over the ramp
    assert a.mix(media(), RATE, 1_040_000, False, unity(), 0)[0, 0] == 10000 and not a.busy


def test_own_volume_is_not_scaled_by_the_master_volume_but_mute_silences_it():
    master = VolumeStage(ramp_frames=1)
    master.set_target(gain_q15(25, False), immediate=True)
    a = Announcement()
    start(a, at_us=0, volume=100)
    a.add(AnnouncementAudio(np.full((2000, 1), 1000, dtype=np.int16), MONO24K), 0)
    a.mix(media(value=0), RATE, 0, False, master, 0)  # ramp the announcement gain in
    out = a.mix(media(value=8000), RATE, 20_000, False, master, 0)
    assert out[-1, 0] == (8000 * gain_q15(25, False) >> 15) + 1000
    out = a.mix(media(value=0), RATE, 40_000, True, master, 0)
    assert out[-1, 0] == 0


def test_following_the_master_volume_scales_the_mix():
    master = VolumeStage(ramp_frames=1)
    master.set_target(gain_q15(50, False), immediate=True)
    a = Announcement()
    start(a, at_us=0)
    a.add(AnnouncementAudio(np.full((2000, 1), 1000, dtype=np.int16), MONO24K), 0)
    out = a.mix(media(value=3000), RATE, 0, False, master, 0)
    assert out[-1, 0] == (4000 * gain_q15(50, False)) >> 15


def test_a_stalled_announcement_ends_after_the_timeout_and_transport_loss_stops_it():
    a = Announcement()
    start(a, at_us=0, media_duck_db=200)
    a.mix(media(), RATE, 0, False, unity(), 0)
    assert a.active
    a.mix(media(), RATE, 20_000, False, unity(), STALL_US + 1)
    assert not a.active and a.state == "idle"
    start(a, at_us=0)
    a.stop()
    assert not a.active


def test_saturates_instead_of_wrapping_and_keeps_24_bit_scale():
    a = Announcement()
    a.start(AnnouncementStart(PcmShape(48000, 2, 16), 0), 0, 0)
    a.add(AnnouncementAudio(np.full((2000, 2), 30000, dtype=np.int16), PcmShape(48000, 2, 16)), 0)
    out = a.mix(media(value=30000), RATE, 0, False, unity(), 0)
    assert np.all(out == 32767)
    b = Announcement()
    b.start(AnnouncementStart(PcmShape(48000, 1, 16), 0), 0, 0)
    b.add(AnnouncementAudio(np.full((2000, 1), 1, dtype=np.int16), PcmShape(48000, 1, 16)), 0)
    out = b.mix(np.zeros((10, 2), dtype=np.int32), RATE, 0, False, unity(), 0)
    assert np.all(out == 256)  # 16-bit 1 is 24-bit 256
    assert duck_q15(0) == UNITY_Q15 and duck_q15(200) == 0
