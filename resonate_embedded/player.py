"""The player: one trio nursery supervising the writer and the server connection.

Tasks: the ALSA writer (lives as long as the player), the connection loop
(connect, run a session, reconnect with backoff forever), and optionally a
status line.  SIGINT/SIGTERM end the player cleanly: ``client/goodbye`` is sent
to the server and the device is closed.
"""

from __future__ import annotations

import logging
import signal
import sys

import trio
from trio_websocket import HandshakeError

from resonate_embedded import __version__
from resonate_embedded.audio.alsa_output import OutputConfig
from resonate_embedded.audio.commands import EndStream
from resonate_embedded.audio.decoders import decodable_formats, preload
from resonate_embedded.audio.writer import Writer
from resonate_embedded.clock.sync import ClockSync
from resonate_embedded.config import Config
from resonate_embedded.protocol.connection import ConnectionClosed, connect
from resonate_embedded.protocol.messages import ClientHello, DeviceInfo
from resonate_embedded.protocol.session import Session, SessionRefused
from resonate_embedded.state_store import StateStore
from resonate_embedded.status import format_status

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_SESSION_S = 10.0


class Player:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._store = StateStore(config.state_dir)
        self.state = self._store.load()
        if config.client_id:
            self.state.client_id = config.client_id
        if config.volume is not None:
            self.state.volume = config.volume
        if config.output_delay_ms is not None:
            self.state.output_delay_ms = config.output_delay_ms
        self._store.save(self.state)
        self.clock = ClockSync()
        self._to_writer, writer_commands = trio.open_memory_channel(4096)
        events_send, self._writer_events = trio.open_memory_channel(16)
        self.writer = Writer(
            OutputConfig(config.device, config.period_us, config.periods), config.dac_latency_us,
            self.clock, writer_commands, events_send, self.state.volume, self.state.muted,
            self.state.output_delay_ms * 1000)
        self.session: Session | None = None
        self._scope = trio.CancelScope()

    def hello(self) -> ClientHello:
        usable = set(decodable_formats())
        formats = tuple(f for f in self.config.formats if (f.codec, f.bit_depth) in usable)
        if not formats:
            raise SystemExit("none of the configured formats can be decoded by this build")
        preload(formats)
        byte_rate = max(f.sample_rate * f.channels * f.bit_depth // 8 for f in formats)
        return ClientHello(
            client_id=self.state.client_id, name=self.config.name,
            device_info=DeviceInfo("resonate_embedded", "resonate_embedded", __version__),
            formats=formats, buffer_capacity=byte_rate * self.config.buffer_seconds)

    async def run(self) -> None:
        """Play until SIGINT/SIGTERM or :meth:`stop`."""
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            nursery.start_soon(self.writer.run)
            nursery.start_soon(self._connection_loop)
            nursery.start_soon(self._stop_on_signal)
            if self.config.stats:
                nursery.start_soon(self._print_status)

    async def stop(self, reason: str = "shutdown") -> None:
        """Say goodbye to the server and end :meth:`run`."""
        if self.session is not None:
            await self.session.goodbye(reason)
        self._scope.cancel()

    async def _stop_on_signal(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("%s: saying goodbye", signal.Signals(signum).name)
                await self.stop()
                return

    async def _connection_loop(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            started = trio.current_time()
            try:
                await self._one_session()
            except Exception:  # crash-only: a session's bug must not end the speaker
                log.exception("session failed")
            self.clock.reset()
            await self._to_writer.send(EndStream())
            if trio.current_time() - started > STABLE_SESSION_S:
                backoff = BACKOFF_MIN_S
            log.info("reconnecting in %.1f s", backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _one_session(self) -> None:
        url = self.config.server
        try:
            async with connect(url) as conn:
                self.session = Session(conn, self.hello(), self.state, lambda: self._store.save(self.state),
                                       self.clock, self._to_writer, self._writer_events)
                await self.session.run()
        except* SessionRefused as group:
            log.error("%s: %s", url, group.exceptions[0])
        except* (OSError, HandshakeError, ConnectionClosed, trio.BrokenResourceError) as group:
            log.warning("connection to %s lost: %s", url, group.exceptions[0])
        finally:
            self.session = None

    async def _print_status(self) -> None:
        while True:
            await trio.sleep(0.5)
            sys.stderr.write("\r" + format_status(self) + "\x1b[K")
            sys.stderr.flush()
