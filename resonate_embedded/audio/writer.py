"""The ALSA writer task: puts every frame on the DAC at its server timestamp.

Before each write it asks the device (``htimestamp``: timestamp and avail
together) when the next written frame will leave the DAC, in local time; adds
the configured DAC latency (what the codec adds after ALSA) and the output delay
(what follows the DAC); maps that instant to server time with the clock filter;
and compares it with the server time of the next frame in the queue.

- Start: the first frame written is chosen from the queue by that mapping, so
  playback begins already aligned (silence before the first chunk's instant,
  or skipping what is already late): no audible pull-in at start, resume or
  track change.
- Then a PI loop drops or inserts single blended frames at ≤ 0.2 % to absorb
  crystal drift; errors above ``HARD_RESYNC_US`` are realigned in one step.
- Underrun: mute, report ``error``, re-prime, realign, ramp the volume back in,
  report ``synchronized``.
"""

from __future__ import annotations

import logging
from typing import Protocol

import attrs
import numpy as np
import trio

from resonate_embedded.audio.alsa_output import AlsaOutput, AlsaOutputError, OutputConfig, Underrun
from resonate_embedded.audio.commands import (
    EndStream, Flush, PcmChunk, SetOutputDelay, SetVolume, WriterCommand,
)
from resonate_embedded.audio.correction import (
    CorrectionScheduler, DacRateEstimator, RateController, corrected_block,
)
from resonate_embedded.audio.timeline import Segment, TimestampedQueue, frames_between
from resonate_embedded.audio.volume import VolumeStage, gain_q15
from resonate_embedded.clock.local import local_now_ns

log = logging.getLogger(__name__)

HARD_RESYNC_US = 5_000
VOLUME_RAMP_US = 10_000
OPEN_RETRY_S = 1.0
HEARTBEAT_S = 1.0


class MappingSource(Protocol):
    """Where the writer reads the latest server↔local clock mapping."""

    @property
    def mapping(self): ...


@attrs.define
class WriterStats:
    """What the writer believes, for the status line, the bench and the protocol."""

    state: str = "idle"  # idle | waiting_clock | playing | underrun
    error_us: int = 0
    correction_ppm: int = 0
    frames_dropped: int = 0
    frames_inserted: int = 0
    underruns: int = 0
    queued_device_frames: int = 0
    buffered_ms: int = 0
    dac_ppm: float | None = None
    heartbeat_local_us: int = 0  # last time the task made progress (for the watchdog)


@attrs.frozen
class WriterEvent:
    """Sent to the protocol side: 'synchronized' or 'error'."""

    state: str


class Writer:
    def __init__(self, output: OutputConfig, dac_latency_us: int, clock: MappingSource,
                 commands: trio.MemoryReceiveChannel, events: trio.MemorySendChannel,
                 volume: int = 100, muted: bool = False, output_delay_us: int = 0) -> None:
        self._output_config = output
        self._dac_latency_us = dac_latency_us
        self._clock = clock
        self._commands = commands
        self._events = events
        self._queue = TimestampedQueue()
        self._volume = VolumeStage(ramp_frames=480)
        self._volume.set_target(gain_q15(volume, muted), immediate=True)
        self._gain_target = gain_q15(volume, muted)
        self._output_delay_us = output_delay_us
        self._controller = RateController()
        self._scheduler = CorrectionScheduler()
        self._dac_rate = DacRateEstimator(48000)
        self._interrupted = False
        self.stats = WriterStats()

    def reconfigure(self, output: OutputConfig, dac_latency_us: int) -> None:
        """Use ``output`` and ``dac_latency_us`` from the next :meth:`run` on (a reload
        restarts the writer task to apply them)."""
        self._output_config = output
        self._dac_latency_us = dac_latency_us

    @property
    def pending_payload_bytes(self) -> int:
        return self._queue.pending_payload_bytes

    # ------------------------------------------------------------------ commands
    def _apply(self, cmd: WriterCommand) -> None:
        if isinstance(cmd, PcmChunk):
            self._queue.push(cmd.server_ts_us, cmd.pcm, cmd.shape, cmd.payload_bytes)
        elif isinstance(cmd, (Flush, EndStream)):
            self._queue.clear()
            self._interrupted = True
        elif isinstance(cmd, SetVolume):
            self._gain_target = gain_q15(cmd.volume, cmd.muted)
            self._volume.set_target(self._gain_target)
        elif isinstance(cmd, SetOutputDelay):
            self._output_delay_us = cmd.delay_us

    def _drain_commands(self) -> None:
        while True:
            try:
                self._apply(self._commands.receive_nowait())
            except trio.WouldBlock:
                return

    def _emit(self, state: str) -> None:
        try:
            self._events.send_nowait(WriterEvent(state))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    # ------------------------------------------------------------------ task
    async def run(self) -> None:
        """Play forever; returns only when the command channel closes."""
        while True:
            self.stats.state = "idle"
            try:
                while self._queue.head is None or not self._queue.head.chunks:
                    self.stats.heartbeat_local_us = local_now_ns() // 1000
                    with trio.move_on_after(HEARTBEAT_S):
                        self._apply(await self._commands.receive())
            except trio.EndOfChannel:
                return
            self._interrupted = False
            segment = self._queue.head
            try:
                output = AlsaOutput(self._output_config, segment.shape)
            except AlsaOutputError as exc:
                log.error("audio output unavailable: %s", exc)
                self._emit("error")
                self._queue.drop_head()
                await trio.sleep(OPEN_RETRY_S)
                continue
            self._volume.set_ramp_frames(segment.shape.sample_rate * VOLUME_RAMP_US // 1_000_000)
            try:
                await self._play_segment(output, segment)
            finally:
                output.close()

    async def _play_segment(self, out: AlsaOutput, seg: Segment) -> None:
        position: int | None = None
        last_measure_ns: int | None = None
        self._controller.reset()
        self._scheduler.reset()
        self._dac_rate = DacRateEstimator(out.rate)
        while True:
            self._drain_commands()
            if self._interrupted:
                out.drop()
                return
            try:
                position, last_measure_ns, done = await self._step(out, seg, position, last_measure_ns)
            except Underrun:
                self._recover(out)
                position = None
                continue
            if done:
                return

    async def _step(self, out: AlsaOutput, seg: Segment, position: int | None,
                    last_measure_ns: int | None) -> tuple[int | None, int | None, bool]:
        """One wake-up: measure, correct, write.  Returns (position, last_measure_ns, done)."""
        self.stats.heartbeat_local_us = local_now_ns() // 1000
        silence = np.zeros((out.period_size, seg.shape.channels), dtype=seg.shape.dtype)
        if not out.running():
            out.write(silence)
            return position, last_measure_ns, False
        with trio.move_on_after(max(0.05, 4 * out.period_size / out.rate)):
            await out.wait_writable()
        report = out.report()
        mapping = self._clock.mapping
        if mapping is None:
            self.stats.state = "waiting_clock"
            out.write(np.zeros((report.avail, seg.shape.channels), dtype=seg.shape.dtype))
            return position, last_measure_ns, False
        next_server_us = mapping.server_from_local(self._next_dac_local_us(out, report))
        if position is None:
            position = seg.position_of(next_server_us)
            self._started(seg, position)
        else:
            error_us = next_server_us - seg.server_us_at(position)
            if abs(error_us) > HARD_RESYNC_US:
                position = self._hard_resync(out, seg, position, error_us)
                return position, None, False
            dt_us = (report.tstamp_local_ns - last_measure_ns) // 1000 if last_measure_ns else 0
            self._dac_rate.add(report.tstamp_local_ns, out.frames_written - report.queued_frames)
            feed_forward = mapping.drift * 1e6 - (self._dac_rate.ppm or 0.0)
            self._controller.update(error_us, dt_us, feed_forward, mapping.error_us)
            self.stats.error_us = error_us
            self.stats.dac_ppm = self._dac_rate.ppm
        position = self._write_block(out, seg, position, report.avail)
        self.stats.queued_device_frames = report.queued_frames
        self.stats.buffered_ms = self._queue.buffered_frames(position) * 1000 // out.rate
        if position >= seg.end_frame() and self._queue.has_next_segment():
            await trio.sleep(report.queued_frames / out.rate)
            self._queue.drop_head()
            return position, report.tstamp_local_ns, True
        return position, report.tstamp_local_ns, False

    def _next_dac_local_us(self, out: AlsaOutput, report) -> int:
        """Local time at which the next frame written will leave the speaker chain."""
        # The device reports whole frames played: at the timestamp, on average half
        # a frame more has left than reported, so the queue is half a frame shorter.
        queued_ns = (2 * report.queued_frames - 1) * 1_000_000_000 // (2 * out.rate)
        dac_local_ns = report.tstamp_local_ns + queued_ns
        return dac_local_ns // 1000 + self._dac_latency_us + self._output_delay_us

    def _started(self, seg: Segment, position: int) -> None:
        self.stats.state = "playing"
        first = seg.chunks[0].start if seg.chunks else position
        offset = self._clock.mapping.offset_us if self._clock.mapping else float("nan")
        log.info("audio start aligned %+d frames from the first chunk (clock offset %+.1f us)",
                 position - first, offset)
        self._emit("synchronized")

    def _hard_resync(self, out: AlsaOutput, seg: Segment, position: int, error_us: int) -> int:
        """Realign in one step an error beyond what drift correction should fix.

        Late: skip that much audio.  Early: write that much silence.  The rate
        loop restarts from the new error (its learned drift is kept).
        """
        log.warning("hard resync: error %+d us", error_us)
        self._controller.reset()
        if error_us > 0:
            return position + frames_between(0, error_us, out.rate)
        silence = min(frames_between(0, -error_us, out.rate), out.buffer_size)
        out.write(np.zeros((silence, seg.shape.channels), dtype=seg.shape.dtype))
        return position

    def _write_block(self, out: AlsaOutput, seg: Segment, position: int, avail: int) -> int:
        if avail <= 0:
            return position
        corrections = self._scheduler.frames_for(avail, self._controller.ppm)
        block = self._queue.read(position, avail + corrections).pcm
        block = corrected_block(block, corrections)
        if corrections > 0:
            self.stats.frames_dropped += corrections
        else:
            self.stats.frames_inserted -= corrections
        self.stats.correction_ppm = self._controller.ppm
        written = out.write(self._volume.apply(block))
        if written != block.shape[0]:
            log.warning("device took %d of %d frames", written, block.shape[0])
        return position + avail + corrections

    def _recover(self, out: AlsaOutput) -> None:
        """Underrun: mute, tell the server, restart the device; the caller realigns."""
        self.stats.underruns += 1
        self.stats.state = "underrun"
        log.warning("underrun: muting and realigning")
        self._emit("error")
        out.drop()
        self._volume.set_target(0, immediate=True)
        self._volume.set_target(self._gain_target)
        self._controller.reset()
        self._scheduler.reset()
        self._dac_rate.reset()
