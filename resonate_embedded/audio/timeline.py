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
  wholly read, which is what ``buffer_capacity`` is about;
- bounded whatever the server sends: a chunk that would make the queue hold more
  than ``max_seconds`` of audio or ``max_bytes`` of decoded PCM, or that starts more
  than ``max_seconds`` after the audio already queued (a timestamp far in the future),
  is refused (:meth:`TimestampedQueue.push` returns why); one that ends before what
  is queued (far in the past) is dropped as wholly overlapped.
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
    pcm_rate: int = 48000

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


MAX_QUEUED_SECONDS = 30  # of audio held, and of gap allowed after the queued audio
MAX_QUEUED_BYTES = 32 << 20  # of decoded PCM


class TimestampedQueue:
    """Segments of timestamped PCM, read sequentially by the writer."""

    def __init__(self, max_seconds: float = MAX_QUEUED_SECONDS,
                 max_bytes: int = MAX_QUEUED_BYTES) -> None:
        self._segments: deque[Segment] = deque()
        self._pending_bytes = 0
        self._pcm_bytes = 0
        self._frames_us = 0  # queued audio, in µs (sum over chunks of frames * 1e6 / rate)
        self.max_us = int(max_seconds * 1_000_000)
        self.max_bytes = max_bytes

    # ----------------------------------------------------------------- filling
    def push(self, server_ts_us: int, pcm: np.ndarray, shape: PcmShape,
             payload_bytes: int) -> str | None:
        """Queue a chunk; returns None, or why it was refused (the queue is unchanged)."""
        rate = shape.sample_rate
        chunk_us = pcm.shape[0] * 1_000_000 // rate
        if self._frames_us + chunk_us > self.max_us:
            return f"the queue already holds {self._frames_us / 1e6:.1f} s of audio"
        if self._pcm_bytes + pcm.nbytes > self.max_bytes:
            return f"the queue already holds {self._pcm_bytes >> 20} MiB of audio"
        tail = self._segments[-1] if self._segments else None
        new_segment = tail is None or tail.shape != shape
        if new_segment:
            tail = Segment(shape, server_ts_us)
        start = frames_between(tail.anchor_us, server_ts_us, rate)
        if tail.chunks:
            last = tail.chunks[-1]
            start = last.start + frames_between(last.server_ts_us, server_ts_us, rate)
            overlap = last.end - start
            if abs(overlap) <= SNAP_FRAMES:
                start = last.end
            elif overlap >= pcm.shape[0]:
                return None  # wholly overlapped (or far in the past): nothing new
            elif overlap > 0:
                pcm, start = pcm[overlap:], last.end
                server_ts_us = us_after(server_ts_us, overlap, rate)
            elif -overlap > rate * self.max_us // 1_000_000:
                return (f"it starts {-overlap / rate:.1f} s after the queued audio "
                        "(timestamp far in the future)")
        if pcm.shape[0] == 0:
            return None
        if new_segment:
            self._segments.append(tail)
        tail.chunks.append(_Chunk(start, server_ts_us, pcm, payload_bytes, rate))
        self._account(tail.chunks[-1], +1)
        return None

    def _account(self, chunk: _Chunk, sign: int) -> None:
        self._pending_bytes += sign * chunk.payload_bytes
        self._pcm_bytes += sign * chunk.pcm.nbytes
        self._frames_us += sign * (chunk.pcm.shape[0] * 1_000_000 // chunk.pcm_rate)

    def clear(self) -> None:
        self._segments.clear()
        self._pending_bytes = 0
        self._pcm_bytes = 0
        self._frames_us = 0

    @property
    def queued_us(self) -> int:
        """Audio held (gaps not counted), in µs."""
        return self._frames_us

    @property
    def pcm_bytes(self) -> int:
        """Decoded PCM held, in bytes."""
        return self._pcm_bytes

    def discard_before_server_us(self, server_us: int) -> None:
        """Forget every queued frame due before ``server_us`` (audio that can no longer be
        played on time, e.g. while the device is away)."""
        while self._segments:
            seg = self._segments[0]
            self._discard_before(seg, seg.position_of(server_us))
            if seg.chunks or len(self._segments) == 1:
                return
            self._segments.popleft()

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
        for chunk in seg.chunks:
            self._account(chunk, -1)

    def buffered_frames(self, position: int) -> int:
        """Frames of head-segment audio at or after ``position`` (gaps included)."""
        head = self.head
        if head is None or not head.chunks:
            return 0
        return max(0, head.end_frame() - position)

    # ----------------------------------------------------------------- reading
    def read(self, position: int, frames: int) -> ReadResult:
        """Frames [position, position + frames) of the head segment, in a new array."""
        head = self.head
        if head is None:
            raise LookupError("read from an empty queue")
        out = np.empty((frames, head.shape.channels), dtype=head.shape.dtype)
        return ReadResult(out, self.read_into(position, out))

    def read_into(self, position: int, out: np.ndarray) -> int:
        """Fill ``out`` (frames, channels) with frames [position, position + len(out)) of the
        head segment, gaps as zeros; returns how many came from chunks.  Allocates nothing."""
        head = self.head
        if head is None:
            raise LookupError("read from an empty queue")
        self._discard_before(head, position)
        stop = position + out.shape[0]
        filled = position  # everything before this frame is written
        audio = 0
        for chunk in head.chunks:
            if chunk.start >= stop:
                break
            lo, hi = max(chunk.start, position), min(chunk.end, stop)
            if hi > lo:
                if lo > filled:
                    out[filled - position:lo - position] = 0
                out[lo - position:hi - position] = chunk.pcm[lo - chunk.start:hi - chunk.start]
                filled = hi
                audio += hi - lo
        if filled < stop:
            out[filled - position:] = 0
        self._discard_before(head, stop)
        return audio

    def _discard_before(self, seg: Segment, position: int) -> None:
        while seg.chunks and seg.chunks[0].end <= position:
            chunk = seg.chunks.popleft()
            seg.ref_start, seg.ref_ts_us = chunk.start, chunk.server_ts_us
            self._account(chunk, -1)
