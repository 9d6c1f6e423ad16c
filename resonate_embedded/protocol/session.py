"""One conversation with a Sendspin v1 server (plaintext dialect).

The session owns the connection for its lifetime: it sends ``client/hello``,
waits for ``server/hello``, sends the full ``client/state``, runs the clock-sync
task, and turns server messages into writer commands (in arrival order) and
``client/state`` replies.  Bad input from the server costs one log line and is
otherwise ignored; the session (and what it holds) survives it.
"""

from __future__ import annotations

import logging
from typing import Callable

import attrs
import trio

from resonate_embedded.audio.commands import EndStream, Flush, PcmChunk, SetOutputDelay, SetVolume
from resonate_embedded.audio.decoders import DecodeError, Decoder, make_decoder
from resonate_embedded.clock.sync import ClockSync, TimeReply
from resonate_embedded.protocol.binary import BinaryFrameError, parse_audio_frame
from resonate_embedded.protocol.connection import Connection, ConnectionClosed
from resonate_embedded.protocol.messages import (
    ClientHello, ClientState, GroupUpdate, PlayerState, ProtocolError, ServerCommand, ServerError,
    ServerHello, ServerTime, StreamClear, StreamEnd, StreamStart, UnknownMessage,
    client_goodbye_json, parse_server_message,
)
from resonate_embedded.state_store import PersistentState

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 5.0
REQUIRED_LEAD_TIME_MS = 150
MIN_BUFFER_MS = 1000
PLAYER_COMMANDS = ("volume", "mute", "set_output_delay")


class SessionRefused(RuntimeError):
    """The server would not take us as a player (no or failed hello)."""


@attrs.define
class SessionInfo:
    server_id: str | None = None
    server_name: str | None = None
    playback_state: str | None = None
    group_name: str | None = None
    stream_format: str | None = None


class Session:
    def __init__(self, conn: Connection, hello: ClientHello, state: PersistentState,
                 save_state: Callable[[], None], clock: ClockSync,
                 to_writer: trio.MemorySendChannel, writer_events: trio.MemoryReceiveChannel) -> None:
        self._conn = conn
        self._hello = hello
        self._state = state
        self._save_state = save_state
        self._clock = clock
        self._to_writer = to_writer
        self._writer_events = writer_events
        self._decoder: Decoder | None = None
        self._time_replies_send, self._time_replies = trio.open_memory_channel(16)
        self.info = SessionInfo()
        self._complained: set[str] = set()

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Handshake, then serve until the connection closes."""
        await self._handshake()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._clock.run, self._conn.send_text, self._time_replies)
            nursery.start_soon(self._forward_writer_events)
            await self._receive_loop()
            nursery.cancel_scope.cancel()

    async def goodbye(self, reason: str) -> None:
        with trio.move_on_after(1.0) as scope:
            scope.shield = True
            try:
                await self._conn.send_text(client_goodbye_json(reason))
            except (ConnectionClosed, trio.BrokenResourceError, OSError):
                pass

    async def _handshake(self) -> None:
        await self._conn.send_text(self._hello.to_json())
        with trio.move_on_after(HELLO_TIMEOUT_S):
            while True:
                received = await self._conn.receive()
                if not isinstance(received.data, str):
                    continue
                msg = self._parse(received.data)
                if isinstance(msg, ServerError):
                    raise SessionRefused(f"server refused us: {msg.reason}")
                if isinstance(msg, ServerHello):
                    self.info.server_id, self.info.server_name = msg.server_id, msg.name
                    log.info("connected to server %r (%s)", msg.name, msg.server_id)
                    await self._conn.send_text(self._full_state("synchronized").to_json())
                    return
        raise SessionRefused(f"no server/hello within {HELLO_TIMEOUT_S:.0f} s")

    def _full_state(self, state: str) -> ClientState:
        return ClientState(state, PlayerState(
            volume=self._state.volume, muted=self._state.muted,
            output_delay_ms=self._state.output_delay_ms,
            required_lead_time_ms=REQUIRED_LEAD_TIME_MS, min_buffer_ms=MIN_BUFFER_MS,
            supported_commands=PLAYER_COMMANDS))

    # ------------------------------------------------------------------ receiving
    async def _receive_loop(self) -> None:
        while True:
            try:
                received = await self._conn.receive()
            except ConnectionClosed as exc:
                log.warning("connection closed: %s", exc.reason)
                return
            if isinstance(received.data, str):
                msg = self._parse(received.data)
                if msg is not None:
                    await self._on_message(msg, received.local_us)
            else:
                await self._on_binary(received.data)

    def _parse(self, text: str):
        try:
            return parse_server_message(text)
        except ProtocolError as exc:
            log.error("ignoring malformed message: %s", exc)
            return None

    async def _on_message(self, msg, received_local_us: int) -> None:
        if isinstance(msg, ServerTime):
            try:
                self._time_replies_send.send_nowait(TimeReply(msg, received_local_us))
            except trio.WouldBlock:
                pass
        elif isinstance(msg, StreamStart):
            self._on_stream_start(msg)
        elif isinstance(msg, StreamClear):
            if msg.concerns_player():
                await self._to_writer.send(Flush())
        elif isinstance(msg, StreamEnd):
            if msg.concerns_player():
                self._decoder = None
                self.info.stream_format = None
                await self._to_writer.send(EndStream())
        elif isinstance(msg, ServerCommand):
            await self._on_command(msg)
        elif isinstance(msg, GroupUpdate):
            self._on_group_update(msg)
        elif isinstance(msg, ServerError):
            log.error("server error: %s", msg.reason)
        elif isinstance(msg, UnknownMessage):
            self._complain_once(msg.type, f"ignoring message type {msg.type!r}")

    def _on_stream_start(self, msg: StreamStart) -> None:
        if msg.format is None:
            return
        try:
            self._decoder = make_decoder(msg.format, msg.codec_header)
        except DecodeError as exc:
            log.error("cannot play stream %s: %s", msg.format, exc)
            self._decoder = None
            return
        fmt = msg.format
        self.info.stream_format = f"{fmt.codec}:{fmt.sample_rate}:{fmt.bit_depth}:{fmt.channels}"
        log.info("stream format %s", self.info.stream_format)

    def _on_group_update(self, msg: GroupUpdate) -> None:
        if msg.playback_state is not None:
            self.info.playback_state = msg.playback_state
            if msg.playback_state == "playing" and self.info.server_id:
                if self._state.last_played_server_id != self.info.server_id:
                    self._state.last_played_server_id = self.info.server_id
                    self._save_state()
        if msg.group_name is not None:
            self.info.group_name = msg.group_name

    async def _on_command(self, cmd: ServerCommand) -> None:
        if cmd.command == "volume" and cmd.volume is not None:
            self._state.volume = cmd.volume
            delta, to_writer = PlayerState(volume=cmd.volume), SetVolume(cmd.volume, self._state.muted)
        elif cmd.command == "mute" and cmd.mute is not None:
            self._state.muted = cmd.mute
            delta, to_writer = PlayerState(muted=cmd.mute), SetVolume(self._state.volume, cmd.mute)
        elif cmd.command in ("set_output_delay", "set_static_delay") and cmd.output_delay_ms is not None:
            self._state.output_delay_ms = cmd.output_delay_ms
            delta = PlayerState(output_delay_ms=cmd.output_delay_ms)
            to_writer = SetOutputDelay(cmd.output_delay_ms * 1000)
        else:
            log.error("ignoring server command %r without a usable value", cmd.command)
            return
        self._save_state()
        await self._to_writer.send(to_writer)
        await self._conn.send_text(ClientState(player=delta).to_json())

    async def _on_binary(self, frame: bytes) -> None:
        try:
            chunk = parse_audio_frame(frame)
        except BinaryFrameError as exc:
            log.error("ignoring binary frame: %s", exc)
            return
        if chunk is None:
            return
        if self._decoder is None:
            self._complain_once("audio-without-stream", "ignoring audio received outside a stream")
            return
        try:
            pcm = self._decoder.decode(chunk.payload)
        except DecodeError as exc:
            log.error("dropping undecodable chunk at %d: %s", chunk.server_ts_us, exc)
            return
        if pcm.shape[0]:
            await self._to_writer.send(
                PcmChunk(chunk.server_ts_us, pcm, self._decoder.shape, len(chunk.payload)))

    def _complain_once(self, key: str, text: str) -> None:
        if key not in self._complained:
            self._complained.add(key)
            log.warning(text)

    # ------------------------------------------------------------------ writer → server
    async def _forward_writer_events(self) -> None:
        async for event in self._writer_events:
            await self._conn.send_text(ClientState(state=event.state).to_json())
