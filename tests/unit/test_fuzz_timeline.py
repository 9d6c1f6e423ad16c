"""Hypothesis: whatever timestamps and sizes a server sends, the queue stays within its limits,
its accounting stays exact, and reading never fails."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resonate_embedded.audio.formats import PcmShape
from resonate_embedded.audio.timeline import TimestampedQueue

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPES = [PcmShape(48000, 2, 16), PcmShape(44100, 2, 16), PcmShape(48000, 1, 24)]
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
timestamps = INT64 | st.integers(min_value=0, max_value=20_000_000)
pushes = st.lists(st.tuples(timestamps, st.integers(min_value=0, max_value=4800),
                            st.sampled_from(range(len(SHAPES)))), max_size=40)


def _recount(q: TimestampedQueue) -> tuple[int, int, int]:
    chunks = [c for seg in q._segments for c in seg.chunks]
    return (sum(c.payload_bytes for c in chunks), sum(c.pcm.nbytes for c in chunks),
            sum(c.pcm.shape[0] * 1_000_000 // c.pcm_rate for c in chunks))


@FUZZ
@given(pushes, st.integers(min_value=-(2**62), max_value=2**62), st.floats(0.05, 2.0))
def test_queue_is_bounded_and_its_accounting_exact(items, read_at, max_seconds):
    q = TimestampedQueue(max_seconds=max_seconds, max_bytes=200_000)
    for ts, frames, s in items:
        shape = SHAPES[s]
        pcm = np.ones((frames, shape.channels), dtype=shape.dtype)
        why = q.push(ts, pcm, shape, frames)
        assert why is None or isinstance(why, str)
        assert q.queued_us <= q.max_us and q.pcm_bytes <= q.max_bytes
        assert (q.pending_payload_bytes, q.pcm_bytes, q.queued_us) == _recount(q)
    q.discard_before_server_us(read_at)
    assert (q.pending_payload_bytes, q.pcm_bytes, q.queued_us) == _recount(q)
    if q.head is not None:
        res = q.read(q.head.position_of(read_at), 480)
        assert res.pcm.shape[0] == 480
        assert (q.pending_payload_bytes, q.pcm_bytes, q.queued_us) == _recount(q)
    q.clear()
    assert (q.pending_payload_bytes, q.pcm_bytes, q.queued_us) == (0, 0, 0)


def test_faster_than_real_time_is_refused_beyond_the_limit():
    q = TimestampedQueue(max_seconds=1.0)
    shape = SHAPES[0]
    refused = [q.push(1_000_000 + i * 25_000, np.ones((1200, 2), np.int16), shape, 4800)
               for i in range(80)]  # 2 s of audio at once
    assert refused[:40] == [None] * 40 and all(refused[40:])
    assert "1.0 s" in refused[-1]


def test_a_chunk_far_in_the_future_is_refused():
    q = TimestampedQueue()
    shape = SHAPES[0]
    assert q.push(0, np.ones((480, 2), np.int16), shape, 1) is None
    assert "future" in q.push(3600 * 10**6, np.ones((480, 2), np.int16), shape, 1)
    assert q.push(10_000, np.ones((480, 2), np.int16), shape, 1) is None  # the stream goes on
