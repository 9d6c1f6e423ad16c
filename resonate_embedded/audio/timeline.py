"""The timestamped queue: decoded chunks placed on a frame-exact server timeline.

A *segment* is a run of chunks with one PCM shape.  Its timeline is anchored at
the server timestamp of its first chunk; every chunk gets an integer start frame
``round((ts - anchor) * rate / 1e6)``, so gaps and overlaps are decided per chunk
from the server's own timestamps (the timestamps are authoritative).

Guarantees:
- gaps between chunks read back as digital silence;
- an overlap keeps the earlier-queued audio and trims the later chunk's start
  (a chunk wholly overlapped is dropped);
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


@attrs.define
class _Chunk:
    start: int  # frame index on the segment timeline
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

    def position_of(self, server_us: int) -> int:
        return frames_between(self.anchor_us, server_us, self.shape.sample_rate)

    def server_us_at(self, frame: int) -> int:
        return us_after(self.anchor_us, frame, self.shape.sample_rate)


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
        start = tail.position_of(server_ts_us)
        overlap = tail.end_frame() - start if tail.chunks else 0
        if overlap >= pcm.shape[0]:
            return
        if overlap > 0:
            pcm, start = pcm[overlap:], start + overlap
        if pcm.shape[0] == 0:
            return
        tail.chunks.append(_Chunk(start, pcm, payload_bytes))
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
            self._pending_bytes -= seg.chunks.popleft().payload_bytes
