"""One ALSA playback device, non-blocking, waited on inside trio.

Guarantees:
- the device timestamps in the player's local clock (CLOCK_MONOTONIC_RAW);
- :meth:`AlsaOutput.report` returns ``htimestamp()``'s timestamp and avail
  taken together, so ``queued = buffer_size - avail`` is the hardware queue at
  exactly that instant; it raises :class:`Underrun` when the device is in XRUN;
- :meth:`AlsaOutput.wait_writable` waits on the device's own poll descriptors
  with the events they ask for (plugins often signal POLLIN for playback) and
  asks ALSA (``polldescriptors_revents``) whether it is really writable;
- no thread is used: every call here returns without blocking.
"""

from __future__ import annotations

import errno
import select

import alsaaudio
import attrs
import numpy as np
import trio

from resonate_embedded.audio.formats import PcmShape


class AlsaOutputError(RuntimeError):
    """The device cannot be opened or configured as asked."""


class Underrun(RuntimeError):
    """The hardware ran out of frames (XRUN)."""


class DeviceLost(AlsaOutputError):
    """The device cannot be opened, or stopped working (unplugged, I/O error): close it
    and try again later (unlike a plain AlsaOutputError: a format it cannot play)."""


@attrs.frozen
class DacReport:
    tstamp_local_ns: int
    avail: int
    queued_frames: int


# device sample formats we can produce, with the left shift from decoded PCM
_FORMATS = {
    "S16_LE": (alsaaudio.PCM_FORMAT_S16_LE, np.dtype("<i2")),
    "S32_LE": (alsaaudio.PCM_FORMAT_S32_LE, np.dtype("<i4")),
}
_PREFERENCE = {16: ("S16_LE", "S32_LE"), 24: ("S32_LE",)}


@attrs.frozen
class OutputConfig:
    device: str
    period_us: int = 20_000
    periods: int = 8


class AlsaOutput:
    """An open playback PCM in the decoded stream's rate and channel count."""

    def __init__(self, config: OutputConfig, shape: PcmShape) -> None:
        self.shape = shape
        self._pcm, self.sample_format = _open(config, shape)
        info = self._pcm.info()
        self.rate: int = info["rate"]
        self.buffer_size: int = info["buffer_size"]
        self.period_size: int = info["period_size"]
        if self.rate != shape.sample_rate or info["channels"] != shape.channels:
            self.close()
            raise AlsaOutputError(
                f"{config.device}: got {self.rate} Hz/{info['channels']} ch, "
                f"need {shape.sample_rate} Hz/{shape.channels} ch")
        self._pcm.set_tstamp_mode(alsaaudio.PCM_TSTAMP_ENABLE)
        self._pcm.set_tstamp_type(alsaaudio.PCM_TSTAMP_TYPE_MONOTONIC_RAW)
        self._fds = self._pcm.polldescriptors()
        self._dtype = _FORMATS[self.sample_format][1]
        self._shift = (self._dtype.itemsize * 8) - shape.bits
        self.frames_written = 0

    # ------------------------------------------------------------------ timing
    def running(self) -> bool:
        return self._pcm.state() == alsaaudio.PCM_STATE_RUNNING

    def report(self) -> DacReport:
        if self._pcm.state() == alsaaudio.PCM_STATE_XRUN:
            raise Underrun("device underrun")
        sec, nsec, avail = self._pcm.htimestamp()
        if avail < 0 or avail > self.buffer_size * 2:
            raise Underrun(f"device reports avail={avail}")
        avail = min(avail, self.buffer_size)
        return DacReport(sec * 1_000_000_000 + nsec, avail, self.buffer_size - avail)

    async def wait_writable(self) -> None:
        """Return once the device can take at least one period (or is in error)."""
        while True:
            fd, events = self._fds[0]
            if events & select.POLLOUT:
                await trio.lowlevel.wait_writable(fd)
                seen = select.POLLOUT
            else:
                await trio.lowlevel.wait_readable(fd)
                seen = select.POLLIN
            try:
                revents = self._pcm.polldescriptors_revents([(fd, seen)])
            except alsaaudio.ALSAAudioError as exc:
                raise DeviceLost(f"poll failed: {exc}") from None
            if revents & (select.POLLOUT | select.POLLERR):
                return

    # ------------------------------------------------------------------ data
    def write(self, block: np.ndarray) -> int:
        """Write whole frames; returns frames taken (possibly 0); raises Underrun on EPIPE."""
        data = block.astype(self._dtype, copy=False)
        if self._shift:
            data = data.astype(self._dtype) << self._shift
        try:
            written = self._pcm.write(np.ascontiguousarray(data))
        except alsaaudio.ALSAAudioError as exc:  # -EIO, -ENODEV, a failed re-prepare, ...
            raise DeviceLost(f"write failed: {exc}") from None
        if written == -errno.EPIPE:
            raise Underrun("write hit an underrun")
        if written < 0:
            raise DeviceLost(f"write failed: {written}")
        self.frames_written += written
        return written

    def drop(self) -> None:
        try:
            self._pcm.drop()
        except alsaaudio.ALSAAudioError as exc:
            raise DeviceLost(f"drop failed: {exc}") from None

    def close(self) -> None:
        try:
            self._pcm.close()
        except alsaaudio.ALSAAudioError:
            pass


def write_silence(config: OutputConfig, shape: PcmShape) -> None:
    """Open the device in ``shape``, write one period of silence and close it: the audio path
    can play.  Raises :class:`DeviceLost` (or :class:`AlsaOutputError`) when it cannot."""
    out = AlsaOutput(config, shape)
    try:
        if out.write(np.zeros((out.period_size, shape.channels), dtype=shape.dtype)) <= 0:
            raise DeviceLost(f"{config.device}: took no audio")
    except Underrun as exc:
        raise DeviceLost(f"{config.device}: {exc}") from None
    finally:
        out.close()


def _open(config: OutputConfig, shape: PcmShape):
    errors = []
    period = max(32, shape.sample_rate * config.period_us // 1_000_000)
    for name in _PREFERENCE[shape.bits]:
        try:
            pcm = alsaaudio.PCM(alsaaudio.PCM_PLAYBACK, alsaaudio.PCM_NONBLOCK,
                                device=config.device, rate=shape.sample_rate,
                                channels=shape.channels, format=_FORMATS[name][0],
                                periodsize=period, periods=config.periods)
        except alsaaudio.ALSAAudioError as exc:
            raise DeviceLost(f"cannot open {config.device!r}: {exc}") from None
        if pcm.info()["format_name"] == name:
            return pcm, name
        errors.append(name)
        pcm.close()
    raise AlsaOutputError(f"{config.device}: none of the sample formats {errors} is supported")
