"""One conversation with a Sendspin v1 server (plaintext dialect or encrypted).

The session owns the connection for its lifetime: it sends ``client/hello``,
waits for ``server/hello``, sends the full ``client/state``, runs the clock-sync
task, and turns server messages into writer commands (in arrival order) and
``client/state`` replies.  Bad input from the server costs one log line and is
otherwise ignored; the session (and what it holds) survives it.

Over an encrypted connection (:class:`~resonate_embedded.protocol.noise_transport.SecureConnection`)
the order is the current spec's: ``server/hello`` → ``client/hello`` →
``server/activate``; every activation is checked against the PSK the handshake
matched (long-term / pairing / Sentinel) and the ``unpaired_access`` setting, and
a Pairing PSK attempt is answered (``client/pair-init`` + ``client/pair-finalize``).
"""

from __future__ import annotations

import logging
import secrets
from typing import Callable

import attrs
import trio

from resonate_embedded.audio.commands import EndStream, Flush, PcmChunk, SetOutputDelay, SetVolume
from resonate_embedded.clock.local import local_now_us
from resonate_embedded.audio.decoders import DecodeError, Decoder, open_decoder
from resonate_embedded.clock.sync import ClockSync, TimeReply
from resonate_embedded.log_limit import LogLimiter
from resonate_embedded.protocol.activation import (
    Security, activities_allowed, pairing_acceptable, refusal_reason,
)
from resonate_embedded.protocol.binary import BinaryFrameError, parse_audio_frame
from resonate_embedded.protocol.connection import Connection, ConnectionClosed, send_last_words
from resonate_embedded.protocol.messages import (
    ClientHello, ClientState, GroupUpdate, PairAbort, PlayerState, ProtocolError, SecureServerHello,
    ServerActivate, ServerCommand, ServerError, ServerHello, ServerPairFinalize, ServerPairStep,
    ServerState,
    ServerTime, ServerUnpair, StreamClear, StreamEnd, StreamStart, UnknownMessage,
    client_goodbye_json, client_message_json, client_pair_finalize_json, client_pair_init_json,
    pair_abort_json, parse_server_message,
)
from resonate_embedded.protocol.noise_variant import OLDER as NOISE_OLDER
from resonate_embedded.protocol.server_profile import (
    CURRENT, CURRENT_COMMANDS, ProfileKeeper, shape_player,
)
from resonate_embedded.protocol.resonate_dialect import (
    Dialect, SessionUpdate, parse_resonate_audio_frame, parse_resonate_message, player_update_json,
    resonate_hello_json,
)
from resonate_embedded.roles.announcement import BINARY_TYPE as ANNOUNCEMENT_BINARY
from resonate_embedded.roles.announcement import AnnouncementRole
from resonate_embedded.roles.hub import RoleHub
from resonate_embedded.state_store import PersistentState

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 5.0
SERVER_SILENCE_S = 30.0  # a live server answers clock sync every few seconds
ACTIVATE_TIMEOUT_S = 30.0  # spec: a provisional connection without server/activate is dropped
SYNC_BEFORE_AVAILABLE_S = 3.0  # wait at most this long for clock sync before "available"
PAIRING_ATTEMPT_TIMEOUT_S = 120.0  # spec: recommended attempt timeout
SPEAK_LEAD_US = 500_000  # the spoken pairing code starts this far ahead
SPEAK_MIN_VOLUME = 50  # a muted or quiet speaker still says its pairing code audibly
REQUIRED_LEAD_TIME_MS = 150
MIN_BUFFER_MS = 1000


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
                 to_writer: trio.MemorySendChannel, writer_events: trio.MemoryReceiveChannel,
                 security: Security | None = None, dialect: Dialect = "sendspin",
                 announcement: AnnouncementRole | None = None,
                 roles: RoleHub | None = None, extra_lead_time_ms: int = 0) -> None:
        self._conn = conn
        self._extra_lead_time_ms = extra_lead_time_ms  # e.g. the amplifier's warm-up
        self._roles = roles  # metadata, controller, color: server/state in, commands out
        self._announcement = announcement  # offered in client/hello when not None
        # "resonate": aioresonate 0.13 (PROTOCOL.md §2.2): player/update instead of
        # client/state, session/update, type-1 audio, no goodbye, no server/command.
        self._resonate = dialect == "resonate"
        self._secure = bool(getattr(conn, "encrypted", False))
        self._header_size = int(getattr(conn, "audio_header_size", 9))
        self._security = security
        self._active_roles: tuple[str, ...] = ()
        self._player_active = not self._secure  # plaintext: the hello is the activation
        self._activities: set[str] = set()
        self._handshakes_seen = getattr(conn, "handshakes", 0)
        self._pairing_index = 0
        self._pairing_psk: bytes | None = None  # the long-term PSK offered in client/pair-finalize
        self._pairing_deadline: float | None = None
        self._pairing_started = trio.Event()
        self._deferred_pairing: ServerActivate | None = None  # pairing asked before serve()
        self._nursery: trio.Nursery | None = None
        self._code_attempt = None  # resonate_embedded.pairing.DynamicCodeAttempt
        self._speaking = False
        self._volume_lifted = False
        self._initial_state_due = False
        self._initial_state_event = trio.Event()
        self._closing = False
        self._hello = hello
        self._state = state
        self._save_state = save_state
        self._clock = clock
        self._to_writer = to_writer
        self._writer_events = writer_events
        self._decoder: Decoder | None = None
        self._time_replies_send, self._time_replies = trio.open_memory_channel(16)
        self.info = SessionInfo()
        self.started_local_us = local_now_us()
        self.last_received_local_us = self.started_local_us  # liveness, for the watchdog
        self._limited = LogLimiter(log)  # what the server can provoke is logged bounded
        self._era: ProfileKeeper | None = None  # Sendspin: the server's era (shapes)

    # ------------------------------------------------------------------ lifecycle
    async def run(self, server_hello: ServerHello | None = None) -> None:
        """Handshake, then serve until the connection closes.  ``server_hello``: the hello
        exchange was already done by the caller (dialect fallback); only the post-hello
        step (initial state) is left."""
        await self.handshake(server_hello)
        await self.serve()

    async def handshake(self, server_hello: ServerHello | None = None):
        """The hello exchange (or only its post-hello step when ``server_hello`` is given);
        returns the server's hello.  Raises SessionRefused."""
        if self._secure:
            return await self._secure_handshake()
        return await self._handshake(server_hello)

    async def serve(self) -> None:
        """Clock sync, writer events and the receive loop, until the connection closes.
        A pairing the activation asked for starts here, once the connection is admitted."""
        try:
            await self._serve()
        except* ConnectionClosed as group:  # the close surfaced in a send (clock sync, ...)
            self._closed(group.exceptions[0].reason)
            raise

    async def _serve(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._clock.run, self._conn.send_text, self._time_replies)
            nursery.start_soon(self._forward_writer_events)
            try:
                if self._secure:
                    nursery.start_soon(self._initial_state_when_synced)
                    nursery.start_soon(self._pairing_timeout)
                    if self._deferred_pairing is not None:
                        msg, self._deferred_pairing = self._deferred_pairing, None
                        await self._start_pairing(msg)
                await self._receive_loop()
                nursery.cancel_scope.cancel()
            finally:
                if self._roles is not None:
                    self._roles.clear()
                await self._stop_announcement()

    def _closed(self, reason) -> None:
        if self._era is not None:
            self._era.closed(str(reason), local_now_us())

    async def send_controller_commands(self, commands) -> None:
        """``client/command`` for each (controller role active; nothing otherwise)."""
        if not any(r.split("@", 1)[0] == "controller" for r in self._active_roles):
            log.info("not sending %s: the server has not activated the controller role",
                     ", ".join(c.command for c in commands))
            return
        for command in commands:
            await self._conn.send_text(command.to_json())

    async def _stop_announcement(self) -> None:
        """Transport gone: the announcement ends and its ducking is released (spec)."""
        if self._announcement is None:
            return
        with trio.move_on_after(1.0) as scope:
            scope.shield = True
            await self._to_writer.send(self._announcement.stop())

    def _announcement_active(self) -> bool:
        return self._announcement is not None and any(
            r.split("@", 1)[0] == "announcement" for r in self._active_roles)

    @property
    def encrypted(self) -> bool:
        return self._secure

    @property
    def server_era(self) -> str | None:
        """What this Sendspin server has shown of its release (None: a Resonate server)."""
        return self._era.summary() if self._era is not None else None

    @property
    def active_roles(self) -> tuple[str, ...]:
        return tuple(self._active_roles)

    @property
    def speaking_pairing_code(self) -> bool:
        return self._speaking

    @property
    def activities(self) -> frozenset[str]:
        """The activities of the last admissible ``server/activate`` (empty in plaintext)."""
        return frozenset(self._activities)

    @property
    def pairing_attempt_active(self) -> bool:
        """A pairing attempt is under way (spec: it is not displaced by another server)."""
        return self._pairing_psk is not None or self._code_attempt is not None

    async def abort_pairing(self, reason: str) -> None:
        """``pair/abort`` with ``reason`` (bounded in time), ending any attempt in progress."""
        self._deferred_pairing = None
        self._end_pairing_attempt()
        await self._stop_speaking()
        await send_last_words(self._conn, pair_abort_json(reason))

    async def goodbye(self, reason: str) -> None:
        if self._resonate:
            return  # Resonate has no client/goodbye
        await send_last_words(self._conn, client_goodbye_json(reason))

    async def _handshake(self, server_hello: ServerHello | None = None) -> ServerHello:
        if server_hello is not None:
            return await self._after_hello(server_hello)
        await self._conn.send_text(resonate_hello_json(self._hello) if self._resonate
                                   else self._hello.to_json())
        with trio.move_on_after(HELLO_TIMEOUT_S):
            while True:
                received = await self._conn.receive()
                if not isinstance(received.data, str):
                    continue
                msg = self._parse(received.data)
                if isinstance(msg, ServerError):
                    raise SessionRefused(f"server refused us: {msg.reason}")
                if isinstance(msg, ServerHello):
                    return await self._after_hello(msg)
        raise SessionRefused(f"no server/hello within {HELLO_TIMEOUT_S:.0f} s")

    async def _after_hello(self, msg: ServerHello) -> ServerHello:
        self._refuse_downgrade(msg.server_id)
        self._active_roles = tuple(msg.active_roles)
        self.info.server_id, self.info.server_name = msg.server_id, msg.name
        log.info("connected to server %r (%s)%s", msg.name, msg.server_id,
                 ", Resonate dialect" if self._resonate else "")
        if self._resonate:
            await self._send_player_update(playing=False)
        else:
            self._era = ProfileKeeper(self._state.server_profiles, self._save_state, msg.server_id)
            if self._era.choose() is None:
                raise SessionRefused(f"server {msg.server_id} {self._era.summary()}")
            await self._send_state(self._full_state("synchronized"))
        return msg

    async def _send_secure_hello(self) -> None:
        unpaired_access = self._security.unpaired_access if self._security else True
        spoken_code = self._security.spoken_code if self._security else False
        await self._conn.send_text(self._hello.to_secure_json(
            unpaired_access, spoken_code, older_noise=self._conn.noise_variant == NOISE_OLDER))

    async def _send_state(self, state: ClientState) -> None:
        """A plaintext client/state; a close right after the full one (the one that declares
        the era's commands), unanswered, is a refusal."""
        text = state.to_json()
        if self._era is not None and state.player is not None \
                and state.player.supported_commands is not None:
            self._era.sent(text, local_now_us())
        await self._conn.send_text(text)

    async def _send_player_update(self, playing: bool) -> None:
        await self._conn.send_text(player_update_json(self._state.volume, self._state.muted, playing))

    def _refuse_downgrade(self, server_id: str) -> None:
        store = self._security.pairing_store if self._security is not None else None
        if store is not None and store.by_server_id(server_id) is not None:
            raise SessionRefused(f"server {server_id} is paired with us but offered plaintext: "
                                 "refusing the downgrade")

    async def _secure_handshake(self) -> None:
        """server/hello → client/hello → server/activate (spec order under encryption)."""
        hello = await self._expect(SecureServerHello, HELLO_TIMEOUT_S, "server/hello")
        self.info.server_id, self.info.server_name = self._conn.server_id, hello.name
        log.info("connected to server %r (%s), encrypted, %s PSK", hello.name, self._conn.server_id,
                 {"lt": "paired: long-term", "pr": "pairing", "sn": "unpaired: Sentinel"}
                 [self._conn.psk_category])
        self._era = ProfileKeeper(self._state.server_profiles, self._save_state, self._conn.server_id)
        self._era.noise(self._conn.noise_variant)
        if self._era.choose() is None:
            raise SessionRefused(f"server {self._conn.server_id} {self._era.summary()}")
        await self._send_secure_hello()
        activate = await self._expect(ServerActivate, ACTIVATE_TIMEOUT_S, "server/activate")
        await self._on_activate(activate)
        if not self._active_roles:
            log.info("server %r holds this speaker idle (no roles): %s", hello.name,
                     "waiting for the operator to approve or pair it" if self._conn.psk_category != "lt"
                     else "waiting for the server")
        return hello

    async def _expect(self, kind: type, timeout_s: float, what: str):
        with trio.move_on_after(timeout_s):
            while True:
                received = await self._conn.receive()
                if not isinstance(received.data, str):
                    continue
                msg = self._parse(received.data)
                if isinstance(msg, kind):
                    return msg
                log.warning("ignoring %s while waiting for %s", type(msg).__name__, what)
        raise SessionRefused(f"no {what} within {timeout_s:.0f} s")

    async def _on_announcement_state(self, state: str) -> None:
        if self._announcement is None or not self._announcement.writer_state(state):
            return
        if self._announcement_active():
            await self._conn.send_text(
                ClientState(announcement=self._announcement.state_object()).to_json())

    def _full_state(self, state: str) -> ClientState:
        announcement = self._announcement.state_object() if self._announcement_active() else None
        if self._secure:  # current spec: "available" and the complete player object, always
            return ClientState(None, self._player_object(), available=True,
                               announcement=announcement)
        return ClientState(state, self._player_object(), announcement=announcement)

    def _player_object(self) -> PlayerState:
        return self._shaped(PlayerState(
            volume=self._state.volume, muted=self._state.muted,
            output_delay_ms=self._state.output_delay_ms,
            required_lead_time_ms=REQUIRED_LEAD_TIME_MS + self._extra_lead_time_ms,
            min_buffer_ms=MIN_BUFFER_MS,
            supported_commands=CURRENT_COMMANDS))

    def _shaped(self, player: PlayerState) -> PlayerState:
        return shape_player(self._era.shape if self._era is not None else CURRENT, player,
                            self._state.output_delay_ms)

    async def _initial_state_when_synced(self) -> None:
        """Spec: a player reports ``available: true`` once its clock is synchronised (we wait
        at most ``SYNC_BEFORE_AVAILABLE_S`` for that, then report anyway)."""
        while True:
            await self._initial_state_event.wait()
            self._initial_state_event = trio.Event()
            with trio.move_on_after(SYNC_BEFORE_AVAILABLE_S):
                while self._clock.updates < 2:
                    await trio.sleep(0.05)
            if self._initial_state_due and self._player_active:
                self._initial_state_due = False
                await self._conn.send_text(self._full_state("synchronized").to_json())

    # ------------------------------------------------------------------ receiving
    async def _receive_loop(self) -> None:
        """Until the connection closes, or the server is silent for ``SERVER_SILENCE_S``
        (clock sync makes it answer every few seconds: a dead peer or path, closed)."""
        while True:
            if self._closing:
                return
            try:
                with trio.move_on_after(SERVER_SILENCE_S) as silence:
                    received = await self._conn.receive()
            except ConnectionClosed as exc:
                log.warning("connection closed: %s", exc.reason)
                self._closed(exc.reason)
                return
            if silence.cancelled_caught:
                log.warning("nothing from the server for %.0f s: closing the connection",
                            SERVER_SILENCE_S)
                await self._leave("restart")
                return
            self.last_received_local_us = received.local_us
            if isinstance(received.data, str):
                msg = self._parse(received.data)
                if msg is not None:
                    await self._on_message(msg, received.local_us)
            else:
                await self._on_binary(received.data)

    def _parse(self, text: str):
        try:
            if self._resonate:
                return parse_resonate_message(text)
            return parse_server_message(text, secure=self._secure)
        except ProtocolError as exc:
            self._limited.log(logging.ERROR, "malformed", "ignoring malformed message: %s", exc)
            return None

    async def _on_message(self, msg, received_local_us: int) -> None:
        if self._era is not None and isinstance(msg, (ServerTime, ServerCommand, StreamStart)):
            self._era.answered()
        if isinstance(msg, ServerTime):
            try:
                self._time_replies_send.send_nowait(TimeReply(msg, received_local_us))
            except trio.WouldBlock:
                pass
        elif isinstance(msg, StreamStart):
            if msg.announcement is not None and self._announcement_active():
                cmd = await self._announcement.on_stream_start(msg.announcement)
                if cmd is not None:
                    await self._to_writer.send(cmd)
            await self._on_stream_start(msg)
            if self._resonate and self._decoder is not None:
                await self._send_player_update(playing=True)
        elif isinstance(msg, StreamClear):
            if msg.concerns_player():
                await self._to_writer.send(Flush())
        elif isinstance(msg, StreamEnd):
            if msg.concerns_announcement() and self._announcement_active():
                end = self._announcement.on_stream_end()
                if end is not None:
                    await self._to_writer.send(end)
            if msg.concerns_player():
                self._decoder = None
                self.info.stream_format = None
                await self._to_writer.send(EndStream())
                if self._resonate:
                    await self._send_player_update(playing=False)
        elif isinstance(msg, ServerCommand):
            await self._on_command(msg)
        elif isinstance(msg, GroupUpdate):
            self._on_group_update(msg)
        elif isinstance(msg, ServerState):
            if self._roles is not None:
                self._roles.on_server_state(msg.payload)
        elif isinstance(msg, SessionUpdate):  # Resonate's group/update
            self._on_group_update(GroupUpdate(msg.playback_state, msg.group_id, None))
        elif isinstance(msg, ServerError):
            log.error("server error: %s", msg.reason)
        elif self._secure and isinstance(msg, ServerActivate):
            await self._on_activate(msg)
        elif self._secure and isinstance(msg, SecureServerHello):
            await self._send_secure_hello()  # older Noise: the hellos again after a re-handshake
        elif self._secure and isinstance(msg, ServerPairFinalize):
            self._on_pair_finalize()
            await self._stop_speaking()
        elif self._secure and isinstance(msg, PairAbort):
            if self._pairing_psk is not None or self._code_attempt is not None:
                log.warning("server aborted the pairing: %s", msg.reason)
            self._end_pairing_attempt()
            await self._stop_speaking()
        elif self._secure and isinstance(msg, ServerPairStep):
            await self._on_pair_step(msg)
        elif self._secure and isinstance(msg, ServerUnpair):
            await self._on_unpair()
        elif isinstance(msg, UnknownMessage):
            self._complain_once(msg.type, f"ignoring message type {msg.type!r}")

    # ------------------------------------------------------------------ encrypted: activation, pairing
    async def _on_activate(self, msg: ServerActivate) -> None:
        conn, sec = self._conn, self._security
        unpaired_access = sec.unpaired_access if sec is not None else True
        category = conn.psk_category
        resync = conn.handshakes != self._handshakes_seen
        if resync:  # a new Noise handshake: pairing_index counts from 0 again
            self._handshakes_seen, self._pairing_index = conn.handshakes, 0
        self._end_pairing_attempt()  # any server/activate ends the attempt in progress
        await self._stop_speaking()
        activities = set(msg.activities)
        if msg.active_roles is not None:
            roles = msg.active_roles
        elif activities_allowed(category, activities | {"playback"}, unpaired_access):
            roles = self._active_roles
        else:
            roles = ()
        has_roles = bool(roles)
        reason = refusal_reason(msg, category, has_roles, unpaired_access, self._pairing_acceptable(msg))
        if reason is not None:
            log.error("server/activate %s roles %s not allowed on a %s-PSK session "
                      "(unpaired access %s): closing with %s", sorted(msg.activities), list(roles),
                      category, "on" if unpaired_access else "off", reason)
            await self._leave(reason)
            raise SessionRefused(f"server/activate refused ({reason})")
        was_player = self._player_active
        self._activities, self._active_roles = activities, tuple(roles)
        self._player_active = any(r.split("@", 1)[0] == "player" for r in roles)
        if "playback" in activities and self.info.server_id:
            if self._state.last_played_server_id != self.info.server_id:
                self._state.last_played_server_id = self.info.server_id
                self._save_state()
        if was_player and not self._player_active:
            self._decoder = None
            self.info.stream_format = None
            await self._to_writer.send(EndStream())
        if self._player_active and (resync or not was_player or self._initial_state_due):
            if not was_player and self._clock.updates < 2:
                self._initial_state_due = True  # sent once the clock is synchronised
                self._initial_state_event.set()
            else:
                self._initial_state_due = False
                await self._conn.send_text(self._full_state("synchronized").to_json())
        if "pairing" in activities:
            if self._nursery is None:  # provisional: pair only once admitted
                self._deferred_pairing = msg
            else:
                await self._start_pairing(msg)

    def _pairing_acceptable(self, msg: ServerActivate) -> bool:
        spoken = self._security is not None and self._security.spoken_code
        return pairing_acceptable(msg, self._conn.psk_category, spoken)

    async def _start_pairing(self, msg: ServerActivate) -> None:
        self._pairing_index += 1
        if not self._pairing_acceptable(msg):
            log.warning("refusing pairing method %r on a %s-PSK session", msg.pairing_method,
                        self._conn.psk_category)
            await self._conn.send_text(pair_abort_json("method_not_supported"))
            return
        if msg.pairing_method == "dynamic_pairing_code":
            await self._start_code_attempt()
            return
        # Pairing PSK flow: pair-init (not with the older Noise variant) then, without
        # waiting, pair-finalize with a fresh
        # long-term PSK; it is persisted when the server acknowledges (server/pair-finalize).
        self._pairing_psk = secrets.token_bytes(32)
        self._pairing_deadline = trio.current_time() + PAIRING_ATTEMPT_TIMEOUT_S
        self._pairing_started.set()
        from resonate_embedded.identity import b64url_encode

        if self._conn.noise_variant != NOISE_OLDER:  # the older Noise has no pair-init here
            await self._conn.send_text(client_pair_init_json(self._pairing_index))
        await self._conn.send_text(client_pair_finalize_json(b64url_encode(self._pairing_psk)))
        log.info("pairing with server %r (%s) by Pairing PSK", self.info.server_name,
                 self.info.server_id)

    async def _start_code_attempt(self) -> None:
        from resonate_embedded.pairing import DynamicCodeAttempt

        store = self._security.pairing_store
        if store.code_round_limit_reached:
            # Spec: at the round limit attempts are held back until an operator action.
            await self._conn.send_text(client_message_json("client/pair-pending", {
                "pairing_index": self._pairing_index,
                "message": "Too many wrong pairing codes: run 'resonate-embedded pairings "
                           "reset-code-limit' on the speaker, then try again."}))
            log.warning("pairing-code attempts held back: %d rounds without a correct code",
                        store.code_rounds)
            return
        self._code_attempt = DynamicCodeAttempt(self._conn.handshake_hash, self._pairing_index,
                                                self._conn.suite)
        self._pairing_deadline = trio.current_time() + PAIRING_ATTEMPT_TIMEOUT_S
        self._pairing_started.set()
        await self._conn.send_text(client_message_json("client/pair-init", self._code_attempt.pair_init()))
        log.info("pairing with server %r (%s) by a pairing code spoken through the speaker",
                 self.info.server_name, self.info.server_id)

    async def _on_pair_step(self, msg: ServerPairStep) -> None:
        from resonate_embedded.pairing import PairingProtocolError

        attempt = self._code_attempt
        if attempt is None:
            log.debug("discarding %s outside a pairing-code attempt", msg.type)
            return
        store = self._security.pairing_store
        try:
            if msg.type == "server/pair-init":
                code = attempt.on_pair_init(msg.payload)
                store.record_code_round()
                # Not in the receive loop: speaking may have to wait for clock sync, whose
                # replies this loop delivers.
                self._nursery.start_soon(self._speak, code, attempt)
            elif msg.type == "server/pair-auth":
                await self._conn.send_text(client_message_json(
                    "client/pair-auth", attempt.on_pair_auth(msg.payload)))
            elif attempt.on_pair_confirm(msg.payload):
                store.reset_code_rounds()
                confirm, finalize = attempt.confirm_and_finalize()
                self._pairing_psk = attempt.psk  # persisted on server/pair-finalize
                await self._conn.send_text(client_message_json("client/pair-confirm", confirm))
                await self._conn.send_text(client_message_json("client/pair-finalize", finalize))
            elif store.code_round_limit_reached:
                log.warning("wrong pairing code entered; round limit reached: aborting")
                self._end_pairing_attempt()
                await self._stop_speaking()
                await self._conn.send_text(pair_abort_json("pairing_code_mismatch"))
            else:
                log.warning("wrong pairing code entered on the server (round %d): asking for "
                            "another round", attempt.round)
                attempt.retry()
                await self._conn.send_text(client_message_json("client/pair-retry", {}))
        except PairingProtocolError as exc:
            # Spec: a pairing protocol error closes the connection without another message.
            log.warning("pairing protocol error from %s: %s: closing", self.info.server_id, exc)
            self._end_pairing_attempt()
            await self._stop_speaking()
            self._closing = True
            await self._conn.close()

    async def _speak(self, code: str, attempt) -> None:
        """Say the code through our own output, on the server's timeline (clock-synced)."""
        from resonate_embedded.audio.spoken_code import render_code

        shape = self._hello.formats[0].pcm_shape()
        pcm = render_code(code, shape)
        with trio.move_on_after(10.0):
            while self._clock.updates < 2:
                await trio.sleep(0.05)
        mapping = self._clock.mapping
        if self._code_attempt is not attempt:
            return  # the attempt ended meanwhile
        if mapping is None:
            log.error("cannot speak the pairing code: no clock synchronisation with the server")
            return
        await self._stop_speaking(restore_volume=False)
        self._speaking = True  # the out-channel is ours (server audio dropped) until the attempt ends
        if self._state.muted or self._state.volume < SPEAK_MIN_VOLUME:
            self._volume_lifted = True
            await self._to_writer.send(SetVolume(max(self._state.volume, SPEAK_MIN_VOLUME), False))
        start = mapping.server_from_local(local_now_us() + SPEAK_LEAD_US)
        rate, step = shape.sample_rate, shape.sample_rate // 10
        for i in range(0, pcm.shape[0], step):
            if self._code_attempt is not attempt:
                break  # the attempt ended while we queued the audio
            block = pcm[i:i + step]
            await self._to_writer.send(PcmChunk(start + i * 1_000_000 // rate, block, shape, block.nbytes))
        log.info("speaking the pairing code (round %d)", attempt.round)

    async def _stop_speaking(self, restore_volume: bool = True) -> None:
        if self._speaking:
            self._speaking = False
            await self._to_writer.send(EndStream())
        if restore_volume and self._volume_lifted:
            self._volume_lifted = False
            await self._to_writer.send(SetVolume(self._state.volume, self._state.muted))

    def _on_pair_finalize(self) -> None:
        psk = self._pairing_psk
        self._end_pairing_attempt()
        if psk is None or self._security is None:
            log.warning("ignoring server/pair-finalize outside a pairing attempt")
            return
        store = self._security.pairing_store
        store.add_pairing(self._conn.server_id, psk, self.info.server_name or "",
                          self._security.url, protected=(self._conn.server_id,))

    def _end_pairing_attempt(self) -> None:
        self._pairing_psk = None
        self._pairing_deadline = None
        self._code_attempt = None

    async def _pairing_timeout(self) -> None:
        while True:
            await self._pairing_started.wait()
            self._pairing_started = trio.Event()
            while self._pairing_deadline is not None:
                await trio.sleep(max(0.0, self._pairing_deadline - trio.current_time()) + 0.01)
                if self._pairing_deadline is not None and trio.current_time() > self._pairing_deadline:
                    log.warning("pairing attempt timed out")
                    self._end_pairing_attempt()
                    await self._stop_speaking()
                    await self._conn.send_text(pair_abort_json("attempt_timeout"))

    async def _on_unpair(self) -> None:
        if self._conn.psk_category != "lt":
            return  # an unpaired session ignores server/unpair
        if self._security is not None:
            self._security.pairing_store.remove(self._conn.server_id)
        log.warning("server %s dropped our pairing (server/unpair)", self._conn.server_id)
        await self._leave("unpaired")

    async def _leave(self, reason: str) -> None:
        await self.goodbye(reason)
        self._closing = True
        with trio.move_on_after(3) as scope:
            scope.shield = True
            try:
                await self._conn.close()
            except Exception:  # noqa: BLE001 - already gone is fine
                pass

    # ------------------------------------------------------------------ streams
    async def _on_stream_start(self, msg: StreamStart) -> None:
        if msg.format is None:
            return
        try:
            self._decoder = await open_decoder(msg.format, msg.codec_header)
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
        if self._roles is not None:
            self._roles.on_group_update(msg.playback_state, msg.group_name)

    async def _on_command(self, cmd: ServerCommand) -> None:
        if cmd.command == "volume" and cmd.volume is not None:
            self._state.volume = cmd.volume
            delta, to_writer = PlayerState(volume=cmd.volume), SetVolume(cmd.volume, self._state.muted)
        elif cmd.command == "mute" and cmd.mute is not None:
            self._state.muted = cmd.mute
            delta, to_writer = PlayerState(muted=cmd.mute), SetVolume(self._state.volume, cmd.mute)
        elif cmd.command in ("set_output_delay", "set_static_delay") and cmd.output_delay_ms is not None:
            if self._era is not None:
                self._era.delay_named(cmd.delay_key)
            self._state.output_delay_ms = cmd.output_delay_ms
            delta = PlayerState(output_delay_ms=cmd.output_delay_ms)
            to_writer = SetOutputDelay(cmd.output_delay_ms * 1000)
        else:
            log.error("ignoring server command %r without a usable value", cmd.command)
            return
        self._save_state()
        await self._to_writer.send(to_writer)
        if self._resonate:
            await self._send_player_update(playing=self._decoder is not None)
        elif self._secure:  # current spec: every client/state carries the full player object
            await self._conn.send_text(self._full_state("synchronized").to_json())
        else:
            await self._send_state(ClientState(player=self._shaped(delta)))

    async def _on_binary(self, frame: bytes) -> None:
        if frame and frame[0] == ANNOUNCEMENT_BINARY and self._announcement_active():
            audio = self._announcement.on_chunk(frame)
            if audio is not None:
                await self._to_writer.send(audio)
            return
        try:
            chunk = (parse_resonate_audio_frame(frame) if self._resonate
                     else parse_audio_frame(frame, header_size=self._header_size))
        except BinaryFrameError as exc:
            self._limited.log(logging.ERROR, "binary", "ignoring binary frame: %s", exc)
            return
        if chunk is None:
            return
        if self._speaking:
            return  # the pairing code owns the output
        if self._decoder is None:
            self._complain_once("audio-without-stream", "ignoring audio received outside a stream")
            return
        try:
            pcm = self._decoder.decode(chunk.payload)
        except DecodeError as exc:
            self._limited.log(logging.ERROR, "undecodable", "dropping undecodable chunk at %d: %s",
                              chunk.server_ts_us, exc)
            return
        if pcm.shape[0]:
            await self._to_writer.send(
                PcmChunk(chunk.server_ts_us, pcm, self._decoder.shape, len(chunk.payload)))

    def _complain_once(self, key: str, text: str) -> None:
        """At most once per ``key`` per interval (``key`` may be server-chosen: the limiter
        bounds how many there can be)."""
        self._limited.log(logging.WARNING, key, text)

    # ------------------------------------------------------------------ writer → server
    async def _forward_writer_events(self) -> None:
        async for event in self._writer_events:
            if event.state.startswith("announcement:"):
                await self._on_announcement_state(event.state.split(":", 1)[1])
                continue
            if self._resonate:
                continue  # Resonate has no error state to report
            if self._secure:
                # The current spec has no "error" state: a player stays available and
                # the server learns nothing from a local underrun.
                log.debug("writer state %s (not reported on an encrypted session)", event.state)
                continue
            await self._conn.send_text(ClientState(state=event.state).to_json())
