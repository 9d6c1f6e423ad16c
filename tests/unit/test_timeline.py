"""The timestamped queue: gaps, overlaps, late chunks, segments, accounting."""

import numpy as np
from hypothesis import given, settings, strategies as st

from resonate_embedded.audio.formats import PcmShape
from resonate_embedded.audio.timeline import TimestampedQueue, frames_between, us_after

S48 = PcmShape(48000, 2, 16)


def ramp(start: int, n: int) -> np.ndarray:
    v = np.arange(start, start + n, dtype=np.int16)
    return np.stack([v, -v], axis=1)


def test_contiguous_chunks_read_back_exactly():
    q = TimestampedQueue()
    q.push(1_000_000, ramp(0, 1200), S48, 4800)
    q.push(1_025_000, ramp(1200, 1200), S48, 4800)
    r = q.read(0, 2400)
    assert r.audio_frames == 2400
    assert np.array_equal(r.pcm, ramp(0, 2400))
    assert q.pending_payload_bytes == 0


def test_gap_reads_as_silence():
    q = TimestampedQueue()
    q.push(1_000_000, ramp(1, 480), S48, 1)
    q.push(1_020_000, ramp(1000, 480), S48, 1)  # 10 ms after the first ends
    r = q.read(0, 1440)
    assert np.array_equal(r.pcm[:480], ramp(1, 480))
    assert not r.pcm[480:960].any()
    assert np.array_equal(r.pcm[960:], ramp(1000, 480))
    assert r.audio_frames == 960


def test_overlap_keeps_earlier_audio_and_trims_later_chunk():
    q = TimestampedQueue()
    q.push(1_000_000, ramp(0, 480), S48, 1)
    q.push(1_005_000, ramp(5000, 480), S48, 1)  # starts 240 frames into the first
    r = q.read(0, 720)
    assert np.array_equal(r.pcm[:480], ramp(0, 480))
    assert np.array_equal(r.pcm[480:], ramp(5000 + 240, 240))


def test_wholly_overlapped_chunk_is_dropped():
    q = TimestampedQueue()
    q.push(1_000_000, ramp(0, 480), S48, 10)
    q.push(1_001_000, ramp(9, 48), S48, 10)
    assert q.pending_payload_bytes == 10


def test_reading_past_late_audio_skips_it():
    q = TimestampedQueue()
    q.push(1_000_000, ramp(0, 1200), S48, 7)
    r = q.read(1000, 400)
    assert np.array_equal(r.pcm[:200], ramp(1000, 200))
    assert not r.pcm[200:].any()
    assert q.pending_payload_bytes == 0


def test_silence_before_first_chunk_when_reading_early():
    q = TimestampedQueue()
    q.push(1_000_000, ramp(7, 100), S48, 1)
    head = q.head
    pos = head.position_of(1_000_000 - 1000)  # 1 ms early = 48 frames
    assert pos == -48
    r = q.read(pos, 148)
    assert not r.pcm[:48].any()
    assert np.array_equal(r.pcm[48:], ramp(7, 100))


def test_new_shape_starts_a_new_segment():
    q = TimestampedQueue()
    q.push(1_000_000, ramp(0, 480), S48, 1)
    q.push(1_010_000, ramp(0, 441), PcmShape(44100, 2, 16), 1)
    assert q.has_next_segment()
    q.drop_head()
    assert q.head.shape.sample_rate == 44100
    assert q.pending_payload_bytes == 1


def test_clear_forgets_everything():
    q = TimestampedQueue()
    q.push(1_000_000, ramp(0, 480), S48, 100)
    q.clear()
    assert q.head is None and q.pending_payload_bytes == 0


def test_truncated_44k1_timestamps_neither_cut_nor_pad_and_keep_server_time():
    """R/S1 stamp 44.1 kHz chunks 26.5 ppm slow: audio stays contiguous, time follows the stamps."""
    q = TimestampedQueue()
    shape = PcmShape(44100, 2, 16)
    ts, stamps = 5_000_000, []
    for i in range(400):
        q.push(ts, ramp(i, 1102), shape, 1)
        stamps.append(ts)
        ts += int(1102 * 1_000_000 / 44100)  # truncated, as the old servers do
    head = q.head
    assert head.end_frame() == 400 * 1102
    # the server time of the first frame of chunk 399 is its own timestamp
    assert head.server_us_at(399 * 1102) == stamps[399]
    assert q.read(0, 400 * 1102).audio_frames == 400 * 1102


def test_server_time_survives_reading_past_chunks():
    q = TimestampedQueue()
    q.push(1_000_000, ramp(0, 480), S48, 1)
    q.push(1_010_000, ramp(0, 480), S48, 1)
    q.read(0, 600)  # the first chunk is gone
    assert q.head.server_us_at(470) == 1_000_000 + 470 * 1_000_000 // 48000
    assert q.head.server_us_at(480) == 1_010_000
    assert q.head.position_of(1_010_000) == 480


@settings(max_examples=200, deadline=None)
@given(st.integers(-10**12, 10**12), st.integers(0, 10**9), st.sampled_from([8000, 44100, 48000, 96000]))
def test_frame_time_round_trip(anchor, frames, rate):
    assert frames_between(anchor, us_after(anchor, frames, rate), rate) in (frames, frames - 1, frames + 1)
    assert abs(frames_between(anchor, us_after(anchor, frames, rate), rate) - frames) * 1_000_000 <= rate
