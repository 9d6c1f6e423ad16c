"""The announcement role's second pipeline, mixed into the writer's output.

An announcement (voice-assistant reply, chime) is decoded PCM without timestamps: it
plays continuously from its start instant, stretching with silence when data arrives
late (spec ``roles/announcement/v1.md``), converted to the output's rate, channels and
bit depth by integer linear interpolation.  While it is active the media is ducked by
``media_duck_db`` (a ramped Q15 gain), released after the last frame, on a stall of
``STALL_US`` or when the transport drops.

Guarantees: the media timeline is never touched — :meth:`Announcement.mix` changes
sample values of the block the writer has already aligned, never their number or
position; with no announcement and no ducking in progress the block passes through
unchanged (bit-exact); everything on the audio path is integer numpy (soft-float Pi).
"""

from __future__ import annotations

import logging
from collections import deque

import attrs
import numpy as np

from resonate_embedded.audio.formats import PcmShape
from resonate_embedded.audio.volume import UNITY_Q15, VolumeStage, gain_q15

log = logging.getLogger(__name__)

STALL_US = 5_000_000  # spec: a stalled announcement may be ended after 5 s (recommended)
MAX_BUFFER_FRAMES = 48000 * 60  # a minute of audio at most; more is refused
_FRAC_BITS = 32


@attrs.frozen
class AnnouncementStart:
    """``stream/start`` with an ``announcement`` object (also an update of a running one)."""

    shape: PcmShape
    start_server_us: int
    media_duck_db: int = 0
    duck_ramp_ms: int = 100
    volume: int | None = None


@attrs.frozen
class AnnouncementAudio:
    pcm: np.ndarray = attrs.field(eq=False)
    shape: PcmShape


@attrs.frozen
class AnnouncementEnd:
    """``stream/end`` listing ``announcement``: play out what is buffered, then release."""


@attrs.frozen
class AnnouncementStop:
    """Transport lost: stop now and release the ducking (never resumed)."""


def duck_q15(db: int) -> int:
    """Amplitude ``10^(-db/20)`` in Q15 (0 dB: unity; ≥ 200 dB: silence)."""
    return int(round(UNITY_Q15 * 10 ** (-min(max(db, 0), 200) / 20)))


class Announcement:
    """At most one announcement stream: its buffer, start instant, ducking and gain."""

    def __init__(self) -> None:
        self._duck = VolumeStage(ramp_frames=4800)
        self._gain = VolumeStage(ramp_frames=480)
        self._start: AnnouncementStart | None = None
        self._start_local_us: int | None = None
        self._started = False
        self._ending = False
        self._blocks: deque[np.ndarray] = deque()  # source frames, int32, source scale
        self._buffered = 0
        self._pos_q = 0  # fractional read position in the first block (Q32 source frames)
        self._last_data_us = 0
        self._duck_ramp_ms = 100
        self._duck_target = UNITY_Q15
        self.state = "idle"

    # ------------------------------------------------------------------ commands
    def start(self, cmd: AnnouncementStart, start_local_us: int | None, now_us: int) -> None:
        """Begin (or, while one is active, update ducking and volume of) an announcement."""
        if self._start is None:
            self._blocks.clear()
            self._buffered, self._pos_q, self._started, self._ending = 0, 0, False, False
            self._start_local_us = start_local_us if start_local_us is not None else now_us
            self._last_data_us = now_us
        elif cmd.shape != self._start.shape:
            log.warning("announcement update with another format ignored (a new clip needs "
                        "stream/end first)")
            cmd = attrs.evolve(cmd, shape=self._start.shape)
        self._start = cmd
        self._duck_ramp_ms = max(0, min(cmd.duck_ramp_ms, 2000))
        self._duck_target = duck_q15(cmd.media_duck_db)

    def add(self, cmd: AnnouncementAudio, now_us: int) -> bool:
        """Queue decoded audio; False (dropped) without an active stream or when full."""
        if self._start is None or self._ending or cmd.shape != self._start.shape:
            return False
        if self._buffered + cmd.pcm.shape[0] > MAX_BUFFER_FRAMES:
            return False
        self._blocks.append(np.ascontiguousarray(cmd.pcm, dtype=np.int32))
        self._buffered += cmd.pcm.shape[0]
        self._last_data_us = now_us
        return True

    def end(self) -> None:
        if self._start is not None:
            self._ending = True

    def stop(self) -> None:
        """Transport lost: no more audio; the ducking releases over its ramp."""
        if self._start is not None:
            log.info("announcement stopped (transport lost)")
        self._finish()

    # ------------------------------------------------------------------ queries
    @property
    def active(self) -> bool:
        return self._start is not None

    @property
    def busy(self) -> bool:
        """An announcement is on or its ducking is still releasing: mixing is needed."""
        return self._start is not None or self._duck.current_q15 != UNITY_Q15

    # ------------------------------------------------------------------ mixing
    def mix(self, block: np.ndarray, rate: int, block_local_us: int, muted: bool,
            master: VolumeStage, now_us: int) -> np.ndarray:
        """The output for a media ``block`` (frames, channels) whose first frame leaves
        the speaker at ``block_local_us``: ducked media plus the announcement, through the
        master volume (an announcement with its own ``volume`` bypasses it; mute silences
        both).  Same shape and dtype as ``block``."""
        n, channels = block.shape
        if self.active:
            self._duck.set_ramp_frames(rate * self._duck_ramp_ms // 1000)
            self._duck.set_target(self._duck_target)
        else:
            self._duck.set_target(UNITY_Q15)  # released over the stream's last ramp
        media = self._duck.apply(block)
        part = self._take(n, rate, channels, 16 if block.dtype == np.int16 else 24,
                          block_local_us, now_us)
        limit = (1 << 15) - 1 if block.dtype == np.int16 else (1 << 23) - 1
        if part is None:
            return master.apply(media)
        own = self._start.volume if self._start is not None else None
        if own is None:
            mixed = np.clip(media.astype(np.int32) + part, -limit - 1, limit).astype(block.dtype)
            return master.apply(mixed)
        self._gain.set_target(gain_q15(own, muted))
        scaled = self._gain.apply(part.astype(np.int32))
        out = master.apply(media).astype(np.int32) + scaled
        return np.clip(out, -limit - 1, limit).astype(block.dtype)

    def _take(self, n: int, rate: int, channels: int, bits: int, block_local_us: int,
              now_us: int) -> np.ndarray | None:
        """``n`` output frames of announcement (int32, output scale), or None if silent."""
        start = self._start
        if start is None:
            return None
        lead = 0
        if not self._started:
            lead = (self._start_local_us - block_local_us) * rate // 1_000_000
            if lead >= n:
                return None
            lead = max(0, lead)
            self._started = True
            self.state = "playing"
            log.info("announcement playing (%d Hz, %d ch, duck %d dB, volume %s)",
                     start.shape.sample_rate, start.shape.channels, start.media_duck_db,
                     "master" if start.volume is None else start.volume)
        src = self._read_source(n - lead, start.shape.sample_rate, rate)
        if src.shape[0] == 0 and self._buffered == 0:
            if self._ending or now_us - self._last_data_us > STALL_US:
                log.info("announcement %s", "finished" if self._ending else
                         "stalled (no audio for 5 s): ended")
                self._finish()
            return None
        out = np.zeros((n, channels), dtype=np.int32)
        out[lead:lead + src.shape[0]] = _map_channels(_rescale(src, start.shape.bits, bits),
                                                      channels)
        return out

    def _read_source(self, n_out: int, src_rate: int, out_rate: int) -> np.ndarray:
        """Up to ``n_out`` frames resampled from the buffer (fewer if it runs short: the
        announcement stretches, it is never skipped)."""
        if not self._blocks:
            return np.zeros((0, self._start.shape.channels), dtype=np.int32)
        src = np.concatenate(list(self._blocks)) if len(self._blocks) > 1 else self._blocks[0]
        step_q = (src_rate << _FRAC_BITS) // out_rate
        # output frame k reads source positions pos + k*step and the next one
        avail_q = ((src.shape[0] - 1) << _FRAC_BITS) - self._pos_q
        n = 0 if avail_q < 0 else min(n_out, avail_q // step_q + 1)
        pos = self._pos_q + np.arange(n, dtype=np.int64) * step_q
        idx = pos >> _FRAC_BITS
        frac = ((pos & ((1 << _FRAC_BITS) - 1)) >> 16)[:, None]
        a = src[idx].astype(np.int64)
        b = src[np.minimum(idx + 1, src.shape[0] - 1)].astype(np.int64)
        out = (a + (((b - a) * frac) >> 16)).astype(np.int32)
        consumed_q = self._pos_q + n * step_q
        whole = int(consumed_q >> _FRAC_BITS)
        self._pos_q = consumed_q - (whole << _FRAC_BITS)
        rest = src[whole:]
        self._blocks.clear()
        if rest.shape[0]:
            self._blocks.append(rest)
        self._buffered = rest.shape[0]
        if self._ending and rest.shape[0] == 1:  # the last frame has no successor to blend
            self._blocks.clear()
            self._buffered = 0
        return out

    def _finish(self) -> None:
        self._start = None
        self._blocks.clear()
        self._buffered = 0
        self._started = False
        self._ending = False
        self.state = "idle"


def _rescale(pcm: np.ndarray, src_bits: int, out_bits: int) -> np.ndarray:
    if src_bits == out_bits:
        return pcm
    return pcm << (out_bits - src_bits) if out_bits > src_bits else pcm >> (src_bits - out_bits)


def _map_channels(pcm: np.ndarray, channels: int) -> np.ndarray:
    """Mono to every channel; several to mono by averaging; otherwise channel by channel
    (missing ones repeat the last)."""
    have = pcm.shape[1]
    if have == channels:
        return pcm
    if have == 1:
        return np.repeat(pcm, channels, axis=1)
    if channels == 1:
        return (pcm.astype(np.int64).sum(axis=1, keepdims=True) // have).astype(np.int32)
    picks = [min(c, have - 1) for c in range(channels)]
    return pcm[:, picks]
