"""The timestamped queue: decoded chunks placed on a frame-exact server timeline.

A *segment* is a run of chunks with one PCM shape.  Its timeline is anchored at
the server timestamp of its first chunk; every chunk gets an integer start frame
``round((ts - anchor) * rate / 1e6)``, so gaps and overlaps are decided per chunk
from the server's own timestamps (the timestamps are authoritative).

Guarantees:
- gaps between chunks read back as digital silence;
- an overlap keeps the earlier-queued audio and trims the later chunk's start
  (a chunk wholly overlapped is dropped);
- a chunk that starts within ``SNAP_FRAMES`` of where the previous one ended is
  laid down contiguously: timestamp rounding (the 44.1 kHz truncation of older
  servers runs 26.5 ppm slow) never cuts or pads audio.  Each chunk keeps its
  own timestamp, and :meth:`Segment.server_us_at` answers from it, so the writer
  sees such a discrepancy as drift and corrects it smoothly;
- frames before the read position are never returned (late audio is skipped);
- a chunk in a new PCM shape starts a new segment, played after the current one;
- ``pending_payload_bytes`` counts the wire payload of every chunk not yet
  wholly read, which is what ``buffer_capacity`` is about.
"""

from __future__ import annotations

from collections import deque

import attrs
import numpy as np

from resonate_embedded.audio.formats import PcmShape


def frames_between(from_us: int, to_us: int, rate: int) -> int:
    """Whole frames from one server time to another, rounded to nearest (exact integers)."""
    num = (to_us - from_us) * rate
    return (2 * num + 1_000_000) // 2_000_000


def us_after(anchor_us: int, frames: int, rate: int) -> int:
    """Server time of the frame ``frames`` after the anchor, floored to a µs."""
    return anchor_us + (frames * 1_000_000) // rate


SNAP_FRAMES = 2


@attrs.define
class _Chunk:
    start: int  # frame index on the segment timeline
    server_ts_us: int  # the server's time for frame ``start``
    pcm: np.ndarray  # (frames, channels)
    payload_bytes: int

    @property
    def end(self) -> int:
        return self.start + self.pcm.shape[0]


@attrs.define
class Segment:
    shape: PcmShape
    anchor_us: int
    chunks: deque = attrs.field(factory=deque)

    def end_frame(self) -> int:
        return self.chunks[-1].end if self.chunks else 0

    # the last chunk read away: the reference for positions before the queued ones
    ref_start: int = 0
    ref_ts_us: int | None = None

    def _reference(self, frame: int) -> tuple[int, int]:
        """(start frame, server µs) of the chunk that times ``frame``."""
        ref = (self.ref_start, self.ref_ts_us) if self.ref_ts_us is not None else None
        for chunk in self.chunks:
            if chunk.start > frame and ref is not None:
                break
            ref = (chunk.start, chunk.server_ts_us)
        return ref if ref is not None else (0, self.anchor_us)

    def position_of(self, server_us: int) -> int:
        """The frame the server wants played at ``server_us``."""
        start, ts = self._reference(self.chunks[0].start if self.chunks else 0)
        return start + frames_between(ts, server_us, self.shape.sample_rate)

    def server_us_at(self, frame: int) -> int:
        """The server time of ``frame``, from the timestamp of the chunk it belongs to."""
        start, ts = self._reference(frame)
        return us_after(ts, frame - start, self.shape.sample_rate)


@attrs.frozen
class ReadResult:
    pcm: np.ndarray
    audio_frames: int  # frames that came from chunks (the rest is gap silence)


class TimestampedQueue:
    """Segments of timestamped PCM, read sequentially by the writer."""

    def __init__(self) -> None:
        self._segments: deque[Segment] = deque()
        self._pending_bytes = 0

    # ----------------------------------------------------------------- filling
    def push(self, server_ts_us: int, pcm: np.ndarray, shape: PcmShape, payload_bytes: int) -> None:
        tail = self._segments[-1] if self._segments else None
        if tail is None or tail.shape != shape:
            tail = Segment(shape, server_ts_us)
            self._segments.append(tail)
        rate = shape.sample_rate
        start = frames_between(tail.anchor_us, server_ts_us, rate)
        if tail.chunks:
            last = tail.chunks[-1]
            start = last.start + frames_between(last.server_ts_us, server_ts_us, rate)
            overlap = last.end - start
            if abs(overlap) <= SNAP_FRAMES:
                start = last.end
            elif overlap >= pcm.shape[0]:
                return
            elif overlap > 0:
                pcm, start = pcm[overlap:], last.end
                server_ts_us = us_after(server_ts_us, overlap, rate)
        if pcm.shape[0] == 0:
            return
        tail.chunks.append(_Chunk(start, server_ts_us, pcm, payload_bytes))
        self._pending_bytes += payload_bytes

    def clear(self) -> None:
        self._segments.clear()
        self._pending_bytes = 0

    # ----------------------------------------------------------------- state
    @property
    def pending_payload_bytes(self) -> int:
        return self._pending_bytes

    @property
    def head(self) -> Segment | None:
        return self._segments[0] if self._segments else None

    def has_next_segment(self) -> bool:
        return len(self._segments) > 1

    def drop_head(self) -> None:
        """Forget the head segment (the writer has finished or abandoned it)."""
        seg = self._segments.popleft()
        self._pending_bytes -= sum(c.payload_bytes for c in seg.chunks)

    def buffered_frames(self, position: int) -> int:
        """Frames of head-segment audio at or after ``position`` (gaps included)."""
        head = self.head
        if head is None or not head.chunks:
            return 0
        return max(0, head.end_frame() - position)

    # ----------------------------------------------------------------- reading
    def read(self, position: int, frames: int) -> ReadResult:
        """Frames [position, position + frames) of the head segment."""
        head = self.head
        if head is None:
            raise LookupError("read from an empty queue")
        self._discard_before(head, position)
        out = np.zeros((frames, head.shape.channels), dtype=head.shape.dtype)
        stop = position + frames
        audio = 0
        for chunk in head.chunks:
            if chunk.start >= stop:
                break
            lo, hi = max(chunk.start, position), min(chunk.end, stop)
            if hi > lo:
                out[lo - position:hi - position] = chunk.pcm[lo - chunk.start:hi - chunk.start]
                audio += hi - lo
        self._discard_before(head, stop)
        return ReadResult(out, audio)

    def _discard_before(self, seg: Segment, position: int) -> None:
        while seg.chunks and seg.chunks[0].end <= position:
            chunk = seg.chunks.popleft()
            seg.ref_start, seg.ref_ts_us = chunk.start, chunk.server_ts_us
            self._pending_bytes -= chunk.payload_bytes
