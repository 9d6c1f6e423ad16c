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
- It wakes every ``WRITE_INTERVAL_US`` (at most half the device buffer) and fills the
  buffer: few wake-ups, the device never more than half empty.
- Then a PI loop drops or inserts single blended frames at ≤ 0.2 % to absorb
  crystal drift; errors above ``HARD_RESYNC_US`` are realigned in one step.
- Underrun: mute, report ``error``, re-prime, realign, ramp the volume back in,
  report ``synchronized``.
- Starved (a stream is on but no audio is queued for ``STARVED_REPORT_US``, e.g. the
  network stalled): the output is digital silence; report ``error``, and
  ``synchronized`` again when audio arrives (placed by its timestamps: no drift).
- Start: before anything else the device is opened, given one period of silence and closed
  (:attr:`Writer.output_proven` is set then; what systemd's READY waits for): a device
  that cannot play is found at start, not at the first stream, and retried as a lost one.
- Device lost (write/drop fail with an I/O error, the device cannot be opened, or it
  xruns ``LOST_AFTER_XRUNS`` times in a row without playing): close it, report
  ``error``, keep taking commands (the queue stays current; audio that fell due
  meanwhile is discarded) and open it again every ``OPEN_RETRY_S`` — no process
  restart.  One log line when it goes, one when it is back.
- Bounded: the queue refuses audio beyond ``timeline.MAX_QUEUED_SECONDS`` /
  ``MAX_QUEUED_BYTES`` and chunks stamped more than ``MAX_AHEAD_US`` after or
  ``MAX_BEHIND_US`` before the server's present (one log line per episode).
"""

from __future__ import annotations

import logging
from typing import Protocol

import attrs
import numpy as np
import trio

from resonate_embedded.audio.alsa_output import (
    AlsaOutput, AlsaOutputError, DeviceLost, OutputConfig, Underrun, write_silence,
)
from resonate_embedded.audio.commands import (
    EndStream, Flush, PcmChunk, SetOutputDelay, SetVolume, WriterCommand,
)
from resonate_embedded.audio.correction import (
    CorrectionScheduler, DacRateEstimator, RateController, correct_into,
)
from resonate_embedded.audio.timeline import (
    MAX_QUEUED_SECONDS, Segment, TimestampedQueue, frames_between,
)
from resonate_embedded.audio.announcement import (
    Announcement, AnnouncementAudio, AnnouncementEnd, AnnouncementStart, AnnouncementStop,
)
from resonate_embedded.audio.formats import PcmShape
from resonate_embedded.audio.volume import VolumeStage, gain_q15
from resonate_embedded.clock.local import local_now_ns, local_now_us

log = logging.getLogger(__name__)

HARD_RESYNC_US = 5_000
# While playing, the writer wakes once per this much audio (at most half the device buffer):
# each wake-up costs CPU, so it tops the buffer up in a few large blocks, not every period.
WRITE_INTERVAL_US = 60_000
VOLUME_RAMP_US = 10_000
OPEN_RETRY_S = 1.0
HEARTBEAT_S = 1.0
STARVED_REPORT_US = 1_000_000
LOST_AFTER_XRUNS = 8  # consecutive underruns with no audio played in between
MAX_AHEAD_US = 60_000_000  # a chunk stamped further ahead of the server's now is refused
MAX_BEHIND_US = 10_000_000  # and one this far behind (too late anyway: never a queue anchor)
REFUSALS_QUIET_US = 10_000_000  # an episode of refused audio ends after this long without one


class MappingSource(Protocol):
    """Where the writer reads the latest server↔local clock mapping."""

    @property
    def mapping(self): ...


@attrs.define
class WriterStats:
    """What the writer believes, for the status line, the bench and the protocol."""

    state: str = "idle"  # idle | waiting_clock | playing | underrun | starved | no_device
    error_us: int = 0
    correction_ppm: int = 0
    frames_dropped: int = 0
    frames_inserted: int = 0
    underruns: int = 0
    queued_device_frames: int = 0
    buffered_ms: int = 0
    dac_ppm: float | None = None
    heartbeat_local_us: int = 0  # last time the task made progress (for the watchdog)
    chunks_refused: int = 0  # audio the queue would not take (unbounded / absurd timestamps)
    device_losses: int = 0
    starvations: int = 0


@attrs.frozen
class WriterEvent:
    """Sent to the protocol side: 'synchronized' or 'error'."""

    state: str


class Writer:
    def __init__(self, output: OutputConfig, dac_latency_us: int, clock: MappingSource,
                 commands: trio.MemoryReceiveChannel, events: trio.MemorySendChannel,
                 volume: int = 100, muted: bool = False, output_delay_us: int = 0,
                 max_queued_s: float = MAX_QUEUED_SECONDS,
                 first_shape: PcmShape = PcmShape(48000, 2, 16)) -> None:
        """``first_shape``: what the device is proven with at start (and an announcement
        alone plays in until a stream has played)."""
        self._output_config = output
        self._dac_latency_us = dac_latency_us
        self._clock = clock
        self._commands = commands
        self._events = events
        self._queue = TimestampedQueue(max_seconds=max_queued_s)
        self._volume = VolumeStage(ramp_frames=480)
        self._volume.set_target(gain_q15(volume, muted), immediate=True)
        self._gain_target = gain_q15(volume, muted)
        self._muted = muted
        self._announcement = Announcement()
        self._announcement_reported = "idle"
        self._last_shape = first_shape  # an announcement alone plays in this
        self._output_delay_us = output_delay_us
        self._controller = RateController()
        self._scheduler = CorrectionScheduler()
        self._dac_rate = DacRateEstimator(48000)
        self._interrupted = False
        self._buffers: dict[str, np.ndarray] = {}  # see _buffer
        self._last_refusal_us: dict[str, int] = {}  # refusals: one log line per kind and episode
        self._starved_since_us: int | None = None
        self._starved_reported = False
        self._xruns_in_a_row = 0
        self._device_lost_us: int | None = None  # when the device went away (None: present)
        self.stats = WriterStats()
        self.output_proven = trio.Event()  # the device opened and took audio (set once)
        # Amplifier power (resonate_embedded.amplifier.Amplifier): request() before the
        # output opens returns when audio may flow (warm-up); release() once it is closed.
        self.power = None

    def reconfigure(self, output: OutputConfig, dac_latency_us: int) -> None:
        """Use ``output`` and ``dac_latency_us`` from the next :meth:`run` on (a reload
        restarts the writer task to apply them)."""
        self._output_config = output
        self._dac_latency_us = dac_latency_us

    @property
    def pending_payload_bytes(self) -> int:
        return self._queue.pending_payload_bytes

    # ------------------------------------------------------------------ commands
    @property
    def queued_us(self) -> int:
        return self._queue.queued_us

    def _push(self, cmd: PcmChunk) -> None:
        why = None
        mapping = self._clock.mapping
        if mapping is not None:
            ahead = cmd.server_ts_us - mapping.server_from_local(local_now_us())
            if ahead > MAX_AHEAD_US:
                why = f"its timestamp is {ahead / 1e6:.0f} s in the future"
            elif ahead < -MAX_BEHIND_US:
                why = f"its timestamp is {-ahead / 1e6:.0f} s in the past"
        if why is None:
            why = self._queue.push(cmd.server_ts_us, cmd.pcm, cmd.shape, cmd.payload_bytes)
        if why is None:
            return
        self.stats.chunks_refused += 1
        now = local_now_us()
        kind = "future" if "future" in why else "past" if "past" in why else "full"
        last = self._last_refusal_us.get(kind)
        if last is None or now - last > REFUSALS_QUIET_US:
            log.warning("refusing audio from the server: %s (%d refused so far; more like it "
                        "within %.0f s are not logged)", why, self.stats.chunks_refused,
                        REFUSALS_QUIET_US / 1e6)
        self._last_refusal_us[kind] = now

    def _apply(self, cmd: WriterCommand) -> None:
        if isinstance(cmd, PcmChunk):
            self._push(cmd)
        elif isinstance(cmd, (Flush, EndStream)):
            self._queue.clear()
            self._interrupted = True
        elif isinstance(cmd, SetVolume):
            self._gain_target = gain_q15(cmd.volume, cmd.muted)
            self._muted = cmd.muted
            self._volume.set_target(self._gain_target)
        elif isinstance(cmd, (AnnouncementStart, AnnouncementAudio, AnnouncementEnd,
                              AnnouncementStop)):
            self._apply_announcement(cmd)
        elif isinstance(cmd, SetOutputDelay):
            self._output_delay_us = cmd.delay_us

    def _apply_announcement(self, cmd) -> None:
        now = local_now_us()
        ann = self._announcement
        if isinstance(cmd, AnnouncementStart):
            mapping = self._clock.mapping
            start_local = mapping.local_from_server(cmd.start_server_us) if mapping else None
            ann.start(cmd, start_local, now)
        elif isinstance(cmd, AnnouncementAudio):
            if not ann.add(cmd, now):
                log.warning("announcement audio dropped (no announcement, or over a minute)")
        elif isinstance(cmd, AnnouncementEnd):
            ann.end()
        else:
            ann.stop()
        self._report_announcement()

    def _report_announcement(self) -> None:
        if self._announcement.state != self._announcement_reported:
            self._announcement_reported = self._announcement.state
            self._emit(f"announcement:{self._announcement.state}")

    def _output_block(self, block: np.ndarray, rate: int, dac_local_us: int) -> np.ndarray:
        """Master volume (in place: ``block`` is the writer's), and the announcement mixed
        in while one is on (the block's frames and timing are the media's, untouched)."""
        if not self._announcement.busy:
            self._volume.apply_in_place(block)
            return block
        out = self._announcement.mix(block, rate, dac_local_us, self._muted, self._volume,
                                     local_now_us())
        self._report_announcement()
        return out

    async def _play_announcement_alone(self) -> None:
        """No media: open the output for the announcement and play it (and its ducking
        release) until it is over or media arrives."""
        try:
            out = AlsaOutput(self._output_config, self._last_shape)
        except AlsaOutputError as exc:
            log.error("announcement: audio output unavailable: %s", exc)
            self._announcement.stop()
            self._report_announcement()
            return
        self.stats.state = "announcement"
        try:
            while self._announcement.busy and not self._media_waiting():
                self._drain_commands()
                self.stats.heartbeat_local_us = local_now_us()
                zeros = np.zeros((out.period_size, self._last_shape.channels),
                                 dtype=self._last_shape.dtype)
                try:
                    if not out.running():
                        out.write(zeros)
                        continue
                    with trio.move_on_after(max(0.05, 4 * out.period_size / out.rate)):
                        await out.wait_writable()
                    report = out.report()
                    block = np.zeros((report.avail, self._last_shape.channels),
                                     dtype=self._last_shape.dtype)
                    out.write(self._output_block(block, out.rate,
                                                 self._next_dac_local_us(out, report)))
                except Underrun:
                    out.drop()
        finally:
            out.close()

    def _media_waiting(self) -> bool:
        return self._queue.head is not None and bool(self._queue.head.chunks)

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
        """Prove the output (once), then play forever; returns only when the command
        channel closes."""
        while not self.output_proven.is_set():
            await self._prove_output()
        while True:
            self.stats.state = "idle"
            if self.power is not None:
                self.power.release()
            try:
                while not self._media_waiting() and not self._announcement.busy:
                    self.stats.heartbeat_local_us = local_now_ns() // 1000
                    with trio.move_on_after(HEARTBEAT_S):
                        self._apply(await self._commands.receive())
            except trio.EndOfChannel:
                return
            await self._power_up()
            if not self._media_waiting():
                if self._announcement.busy:
                    await self._play_announcement_alone()
                continue
            self._interrupted = False
            segment = self._queue.head
            try:
                output = AlsaOutput(self._output_config, segment.shape)
            except DeviceLost as exc:
                await self._device_away(exc)
                continue
            except AlsaOutputError as exc:
                log.error("audio output unavailable: %s", exc)
                self._emit("error")
                self._queue.drop_head()
                await self._sleep_taking_commands(OPEN_RETRY_S)
                continue
            self._device_back()
            self._volume.set_ramp_frames(segment.shape.sample_rate * VOLUME_RAMP_US // 1_000_000)
            self._last_shape = segment.shape
            try:
                await self._play_segment(output, segment)
            except DeviceLost as exc:
                output.close()
                await self._device_away(exc)
            finally:
                output.close()

    async def _prove_output(self) -> None:
        """Open the device, write a period of silence, close it: :attr:`output_proven`;
        a device that cannot do that is reported and retried like a lost one.  The
        amplifier stays off: silence needs no power."""
        try:
            write_silence(self._output_config, self._last_shape)
        except AlsaOutputError as exc:
            await self._device_away(exc)
            return
        self._device_back()
        log.info("audio device %s opened and took silence", self._output_config.device)
        self.output_proven.set()

    def _device_back(self) -> None:
        if self._device_lost_us is not None:
            log.warning("audio device %s is back after %.1f s", self._output_config.device,
                        (local_now_us() - self._device_lost_us) / 1e6)
            self._device_lost_us = None

    async def _power_up(self) -> None:
        """The amplifier on before the output opens, and its warm-up waited out (still
        taking commands): the device plays nothing before the amplifier is ready."""
        if self.power is not None:
            wait_s = self.power.request() - trio.current_time()
            if wait_s > 0:
                await self._sleep_taking_commands(wait_s)

    async def _device_away(self, exc: Exception) -> None:
        """The device failed or cannot be opened: report once, wait, keep the queue current."""
        if self._device_lost_us is None:
            self._device_lost_us = local_now_us()
            self.stats.device_losses += 1
            log.error("audio device %s unavailable (%s): retrying every %.0f s",
                      self._output_config.device, exc, OPEN_RETRY_S)
            self._emit("error")
        self.stats.state = "no_device"
        self._starved_since_us, self._starved_reported = None, False
        self._xruns_in_a_row = 0
        await self._sleep_taking_commands(OPEN_RETRY_S)
        mapping = self._clock.mapping
        if mapping is not None:
            self._queue.discard_before_server_us(mapping.server_from_local(local_now_us()))

    async def _sleep_taking_commands(self, seconds: float) -> None:
        """Sleep, still applying commands (the session never blocks on a full channel)."""
        with trio.move_on_after(seconds):
            while True:
                self.stats.heartbeat_local_us = local_now_us()
                try:
                    self._apply(await self._commands.receive())
                except trio.EndOfChannel:
                    await trio.sleep_forever()

    async def _play_segment(self, out: AlsaOutput, seg: Segment) -> None:
        position: int | None = None
        last_measure_ns: int | None = None
        self._controller.reset()
        self._scheduler.reset()
        self._dac_rate = DacRateEstimator(out.rate)
        self._starved_since_us, self._starved_reported = None, False
        while True:
            self._drain_commands()
            if self._interrupted:
                out.drop()
                return
            try:
                position, last_measure_ns, done = await self._step(out, seg, position, last_measure_ns)
            except Underrun:
                self._xruns_in_a_row += 1
                if self._xruns_in_a_row >= LOST_AFTER_XRUNS:
                    raise DeviceLost(f"{self._xruns_in_a_row} underruns in a row") from None
                self._recover(out)
                position = None
                continue
            if done:
                return

    async def _step(self, out: AlsaOutput, seg: Segment, position: int | None,
                    last_measure_ns: int | None) -> tuple[int | None, int | None, bool]:
        """One wake-up: measure, correct, write.  Returns (position, last_measure_ns, done)."""
        self.stats.heartbeat_local_us = local_now_ns() // 1000
        if not out.running():
            out.write(self._silence(out.period_size, seg.shape))
            return position, last_measure_ns, False
        if position is not None:  # playing: let WRITE_INTERVAL_US of audio go out first
            await trio.sleep(min(WRITE_INTERVAL_US, out.buffer_size * 500_000 // out.rate) / 1e6)
        with trio.move_on_after(max(0.05, 4 * out.period_size / out.rate)):
            await out.wait_writable()
        report = out.report()
        mapping = self._clock.mapping
        if mapping is None:
            self.stats.state = "waiting_clock"
            out.write(self._silence(report.avail, seg.shape))
            return position, last_measure_ns, False
        next_dac_local_us = self._next_dac_local_us(out, report)
        next_server_us = mapping.server_from_local(next_dac_local_us)
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
        position = self._write_block(out, seg, position, report.avail, next_dac_local_us)
        self._xruns_in_a_row = 0
        self._check_starved(seg, position)
        self.stats.queued_device_frames = report.queued_frames
        self.stats.buffered_ms = self._queue.buffered_frames(position) * 1000 // out.rate
        if position >= seg.end_frame() and self._queue.has_next_segment():
            await trio.sleep(report.queued_frames / out.rate)
            self._queue.drop_head()
            return position, report.tstamp_local_ns, True
        return position, report.tstamp_local_ns, False

    def _check_starved(self, seg: Segment, position: int) -> None:
        """A stream is on but nothing is queued to play: report ``error`` after a while,
        ``synchronized`` once audio is there again (the output meanwhile is silence)."""
        if self._queue.buffered_frames(position) > 0 or self._queue.has_next_segment():
            if self._starved_since_us is not None:
                if self._starved_reported:
                    log.warning("audio again after %.1f s without any",
                                (local_now_us() - self._starved_since_us) / 1e6)
                    self.stats.state = "playing"
                    self._emit("synchronized")
                self._starved_since_us, self._starved_reported = None, False
            return
        now = local_now_us()
        if self._starved_since_us is None:
            self._starved_since_us = now
        elif not self._starved_reported and now - self._starved_since_us >= STARVED_REPORT_US:
            self._starved_reported = True
            self.stats.starvations += 1
            self.stats.state = "starved"
            log.warning("no audio from the server for %.1f s: playing silence, reporting error",
                        (now - self._starved_since_us) / 1e6)
            self._emit("error")

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
        out.write(self._silence(silence, seg.shape))
        return position

    def _write_block(self, out: AlsaOutput, seg: Segment, position: int, avail: int,
                     dac_local_us: int) -> int:
        """Read, correct, scale and write ``avail`` frames through the writer's own buffers:
        at unity volume with no correction due nothing is allocated."""
        if avail <= 0:
            return position
        corrections = self._scheduler.frames_for(avail, self._controller.ppm)
        raw = self._buffer("raw", avail + corrections, seg.shape)
        self._queue.read_into(position, raw)
        block = raw
        if corrections:
            block = self._buffer("corrected", avail, seg.shape)
            correct_into(raw, corrections, block)
        if corrections > 0:
            self.stats.frames_dropped += corrections
        else:
            self.stats.frames_inserted -= corrections
        self.stats.correction_ppm = self._controller.ppm
        written = out.write(self._output_block(block, out.rate, dac_local_us))
        if written != block.shape[0]:
            log.warning("device took %d of %d frames", written, block.shape[0])
        return position + avail + corrections

    def _buffer(self, name: str, frames: int, shape: PcmShape) -> np.ndarray:
        """The first ``frames`` of a buffer kept from block to block (grown when needed)."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape[0] < frames or buf.shape[1:] != (shape.channels,) \
                or buf.dtype != shape.dtype:
            buf = self._buffers[name] = np.empty((max(frames, 4096), shape.channels),
                                                 dtype=shape.dtype)
        return buf[:frames]

    def _silence(self, frames: int, shape: PcmShape) -> np.ndarray:
        silence = self._buffer("silence", frames, shape)
        silence[:] = 0
        return silence

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
