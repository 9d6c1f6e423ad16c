"""The player: the tasks of a speaker under one supervisor (resonate_embedded.supervisor).

Tasks: the ALSA writer (lives as long as the player), the connection — the dial loop
(connect, run a session, reconnect with backoff forever) when a server URL is given or
``--discover``, otherwise the listener (servers dial us; mDNS advertised; one server
admitted at a time) — the signal handler, the systemd notifier and optionally a status
line.  SIGINT/SIGTERM end the player cleanly (``client/goodbye shutdown``, device
closed); SIGHUP reloads the configuration.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable
from functools import partial

import attrs
import trio
from trio_websocket import HandshakeError

from resonate_embedded import __version__
from resonate_embedded.audio.alsa_output import OutputConfig
from resonate_embedded.audio.commands import EndStream, SetOutputDelay, SetVolume
from resonate_embedded.audio.decoders import decodable_formats
from resonate_embedded.audio.writer import Writer
from resonate_embedded.clock.sync import ClockSync
from resonate_embedded.config import Config, ConfigError
from resonate_embedded.identity import load_or_create as load_identity
from resonate_embedded.pairing import PairingStore
from resonate_embedded.protocol.connection import ConnectionClosed, connect
from resonate_embedded.protocol.messages import ClientHello, DeviceInfo
from resonate_embedded.protocol.noise_transport import (
    HandshakeFailed, InitRejected, NotNoiseServer, client_handshake, make_resolver,
)
from resonate_embedded.protocol.arbitration import Admission, Candidate
from resonate_embedded.protocol import encryption_policy as policy
from resonate_embedded.protocol.listener import IncomingConnection, open_listener
from resonate_embedded.protocol.resonate_dialect import (
    NoServerHello, connect_speaking, dialect_candidates, dialect_for, resonate_hello_json,
)
from resonate_embedded.protocol.server_profile import handshake_failed, held_off
from resonate_embedded.protocol.session import Security, Session, SessionRefused
from resonate_embedded.roles.announcement import AnnouncementRole
from resonate_embedded.roles.hub import RoleHub
from resonate_embedded.state_store import StateStore, adopt_client_id
from resonate_embedded.control_socket import serve_status, socket_path
from resonate_embedded.controls.evdev_input import InputReader
from resonate_embedded.light import StatusLight
from resonate_embedded.roles.controller import LOCAL_ACTIONS, Action, apply_locally
from resonate_embedded.amplifier import Amplifier, AmplifierError, open_switch
from resonate_embedded.audio.announcement import AnnouncementAudio, AnnouncementEnd, AnnouncementStart
from resonate_embedded.status import format_status, light_state, snapshot
from resonate_embedded.supervisor import Supervisor
from resonate_embedded.systemd import Notifier, notify_service
from resonate_embedded.clock.local import local_now_us

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 2.0  # a speaker is back within 3 s of its server's return; a LAN dial is cheap
STABLE_SESSION_S = 10.0
STATUS_INTERVAL_S = 5.0
WRITER_STALL_US = 3_000_000
SESSION_STALL_US = 60_000_000  # twice the session's own silence limit
DISCOVER_TIMEOUT_S = 10.0
WHERE_FLAG = "where-spoken"  # in the state dir: the first-boot "where is it" was said
WHERE_WAIT_S = 300.0  # first boot: how long to wait for a network address
WHERE_LEAD_US = 300_000  # the spoken address starts this far ahead
WHERE_MIN_VOLUME = 50  # said audibly even on a quiet speaker (mute still silences it)
WHERE_DUCK_DB = 20  # music playing meanwhile is this much quieter


@attrs.define(eq=False)
class _Dialled:
    """A server that dialled us, its handshake done (arbitration's Provisional)."""

    player: Player
    session: Session
    candidate: Candidate

    async def serve(self) -> None:
        self.player.session = self.session
        try:
            await self.session.serve()
        except* (ConnectionClosed, trio.BrokenResourceError) as group:
            log.info("server %s closed the connection (%s)", self.candidate.server_id,
                     group.exceptions[0])
        finally:
            if self.player.session is self.session:
                self.player.session = None
            self.player.clock.reset()
            with trio.move_on_after(1.0) as scope:
                scope.shield = True
                await self.player._to_writer.send(EndStream())

    @property
    def pairing_attempt_active(self) -> bool:
        return self.session.pairing_attempt_active

    async def goodbye(self, reason: str) -> None:
        await self.session.goodbye(reason)

    async def abort_pairing(self, reason: str) -> None:
        await self.session.abort_pairing(reason)


def _output_config(config: Config) -> OutputConfig:
    return OutputConfig(config.device, config.period_us, config.periods)


# What a SIGHUP can change without a restart, by the task that has to start again.
_OUTPUT_KEYS = {"device", "period_us", "periods", "dac_latency_us"}
_CONNECTION_KEYS = {"server", "name", "formats", "buffer_seconds", "encryption",
                    "plaintext_servers", "unpaired_access", "announcements", "spoken_pairing_code",
                    "listen_port", "discover", "advertise_resonate", "mdns_interface", "client_id"}
_NEEDS_RESTART = {"state_dir", "stats", "amp_gpio_chip", "amp_gpio_line", "amp_active_low",
                  "amp_warmup_ms", "amp_idle_off_s"}


class Player:
    def __init__(self, config: Config,
                 load_config: Callable[[], Config] | None = None) -> None:
        """``load_config`` reads the configuration again (SIGHUP); None: no reload."""
        self.config = config
        self._store = StateStore(config.state_dir)
        self.state = self._store.load()
        self.identity = load_identity(config.state_dir)
        adopt_client_id(self.state, self.identity.client_id, announce=self._store.existed)
        self.pairings = PairingStore(config.state_dir)
        self._resolver = make_resolver(self.identity, self.pairings)
        if config.volume is not None:
            self.state.volume = config.volume
        if config.output_delay_ms is not None:
            self.state.output_delay_ms = config.output_delay_ms
        self._store.save(self.state)
        self.clock = ClockSync()
        self._to_writer, writer_commands = trio.open_memory_channel(4096)
        events_send, self._writer_events = trio.open_memory_channel(16)
        self.writer = Writer(
            _output_config(config), config.dac_latency_us,
            self.clock, writer_commands, events_send, self.state.volume, self.state.muted,
            self.state.output_delay_ms * 1000,
            max_queued_s=max(30, 2 * config.buffer_seconds),
            first_shape=config.formats[0].pcm_shape())  # the format offered first
        self.amplifier = self._open_amplifier(config)
        self.writer.power = self.amplifier
        self.session: Session | None = None
        self.roles = RoleHub(self._server_to_local_us, config.announcements)
        self._actions_send, self._actions = trio.open_memory_channel(64)
        self._supervisor = Supervisor()
        self._load_config = load_config
        self._learned: dict[str, str] = {}  # url → the dialect that answered last time
        self._closed_after_init = policy.ClosedAfterInit()  # listening: plaintext next time
        self.connection_ready = trio.Event()  # see wait_ready; set by the connection task

    def hello(self, legacy_roles: bool = False) -> ClientHello:
        """Our client/hello; ``legacy_roles``: only the roles pre-encryption servers know
        (aiosendspin 1.x/2.x refuse a hello naming a role they do not know)."""
        usable = set(decodable_formats())
        formats = tuple(f for f in self.config.formats if (f.codec, f.bit_depth) in usable)
        if not formats:
            raise SystemExit("none of the configured formats can be decoded by this build")
        byte_rate = max(f.sample_rate * f.channels * f.bit_depth // 8 for f in formats)
        # An encrypted session's client_id is the public key (client/init); --client-id
        # only renames the speaker towards plaintext-only servers.
        return ClientHello(
            client_id=self.config.client_id or self.state.client_id, name=self.config.name,
            device_info=DeviceInfo("resonate_embedded", "resonate_embedded", __version__),
            formats=formats, buffer_capacity=byte_rate * self.config.buffer_seconds,
            other_roles=self.roles.hello_roles(legacy_roles))

    async def run(self) -> None:
        """Play until SIGINT/SIGTERM or :meth:`stop`; every task under one supervisor.
        Raises :class:`~resonate_embedded.supervisor.GaveUp` when tasks keep failing."""
        sup = self._supervisor
        sup.add("writer", self.writer.run)
        sup.add("connection", self._connection)
        sup.add("signals", self._on_signals)
        sup.add("systemd", partial(notify_service, Notifier(), self.wait_ready, self.alive,
                                   lambda: format_status(self), STATUS_INTERVAL_S))
        sup.add("status socket", partial(serve_status, socket_path(self.config.state_dir),
                                         lambda: snapshot(self).to_dict(), self.act))
        sup.add("controls", self._controls)
        sup.add("status light", partial(StatusLight(self.config.led_config()).run,
                                        lambda: light_state(self), self.roles.colors.rgb_at))
        sup.add("track log", self._log_track_changes)
        if self.amplifier is not None:
            sup.add("amplifier", self.amplifier.run)
        sup.add("where at first boot", self._say_where_at_first_boot)
        if self.config.stats:
            sup.add("status line", self._print_status)
        try:
            await sup.run()
        finally:
            if self.amplifier is not None:
                self.amplifier.close()

    @staticmethod
    def _open_amplifier(config: Config) -> Amplifier | None:
        """The amplifier's power switch (None: not configured, or its GPIO cannot be used:
        then the speaker plays without switching it, after one error line)."""
        try:
            switch = open_switch(config)
        except AmplifierError as exc:
            log.error("amplifier power control off: %s", exc)
            return None
        if switch is None:
            return None
        log.info("amplifier power on %s line %d%s: warm-up %d ms, off after %d s idle",
                 config.amp_gpio_chip, config.amp_gpio_line,
                 " (active low)" if config.amp_active_low else "", config.amp_warmup_ms,
                 config.amp_idle_off_s)
        return Amplifier(switch, config.amp_warmup_ms, config.amp_idle_off_s)

    async def say_where(self, why: str) -> str:
        """Say this speaker's name and IPv4 address through the DAC (offline voice,
        ``audio/spoken_where.py``), mixed over any music like an announcement."""
        from resonate_embedded.audio.spoken_where import SHAPE, local_ipv4, render_where

        ip = local_ipv4(self.config.mdns_interface)
        if ip is None:
            log.warning("where (%s): this speaker has no IPv4 address (no network): "
                        "nothing to say", why)
            return "no IPv4 address (no network): nothing said"
        name = self.config.name
        log.info("where (%s): saying name %r and address %s through the speaker", why, name, ip)
        pcm = await trio.to_thread.run_sync(render_where, ip, name)
        mapping = self.clock.mapping
        start = mapping.server_from_local(local_now_us() + WHERE_LEAD_US) if mapping else 0
        await self._to_writer.send(AnnouncementStart(
            SHAPE, start, media_duck_db=WHERE_DUCK_DB,
            volume=max(self.state.volume, WHERE_MIN_VOLUME)))
        await self._to_writer.send(AnnouncementAudio(pcm, SHAPE))
        await self._to_writer.send(AnnouncementEnd())
        if self.state.muted:
            log.warning("where: this speaker is muted: the address is not audible")
        return f"saying name {name!r} and address {ip} through the speaker"

    async def _say_where_at_first_boot(self) -> None:
        """Once per state dir (flag file ``where-spoken``): say where the speaker is as soon
        as it has an address (waiting up to ``WHERE_WAIT_S`` for the network)."""
        from resonate_embedded.audio.spoken_where import local_ipv4

        flag = self.config.state_dir / WHERE_FLAG
        if not self.config.say_where_at_first_boot or flag.exists():
            return
        with trio.move_on_after(WHERE_WAIT_S):
            while local_ipv4(self.config.mdns_interface) is None:
                await trio.sleep(2.0)
        if local_ipv4(self.config.mdns_interface) is None:
            log.warning("where (first boot): no network address within %.0f s: "
                        "not said (next start tries again)", WHERE_WAIT_S)
            return
        await self.say_where("first boot")
        flag.write_text("the first-boot 'where is it' was said; delete to hear it again\n")

    async def _connection(self) -> None:
        if self.config.server or self.config.discover:
            await self._connection_loop()  # client-initiated: we dial
        else:
            await self._listen()  # server-initiated: servers dial us

    def _server_to_local_us(self, server_us: int) -> int | None:
        mapping = self.clock.mapping
        return mapping.local_from_server(server_us) if mapping is not None else None

    async def act(self, action: Action) -> str | None:
        """A control action (button, encoder, remote, ``resonate-embedded control``): a
        ``client/command`` to the group when the server takes it, otherwise (no server, no
        controller role) volume and mute change on this speaker and are persisted."""
        await self._actions_send.send(action)
        if action.name == "say_where":
            return "saying this speaker's name and address through the speaker"
        return None

    async def _controls(self) -> None:
        async with trio.open_nursery() as nursery:
            if self.config.input_devices != "none":
                nursery.start_soon(InputReader(self.config.keymap(), self.config.input_devices,
                                               self._actions_send.clone()).run)
            async for action in self._actions:
                await self._carry_out(action)

    async def _carry_out(self, action: Action) -> None:
        if action.name in LOCAL_ACTIONS:  # say_where: this speaker, whatever the server
            await self.say_where(f"control {action.name}")
            return
        session = self.session
        if session is not None and self.roles.controller is not None:
            commands = self.roles.commands_for(action, self.config.volume_step)
            if commands:
                await session.send_controller_commands(commands)
            else:
                log.info("control %s: nothing the server supports", action.name)
            return
        volume, muted = apply_locally(action, self.state.volume, self.state.muted,
                                      self.config.volume_step)
        if (volume, muted) != (self.state.volume, self.state.muted):
            self.state.volume, self.state.muted = volume, muted
            self._store.save(self.state)
            await self._to_writer.send(SetVolume(volume, muted))
            log.info("control %s: volume %d%s (this speaker)", action.name, volume,
                     ", muted" if muted else "")

    async def _log_track_changes(self) -> None:
        send, receive = trio.open_memory_channel(8)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.roles.now_playing.run, send)
            async for line in receive:
                log.info("%s", line)

    def alive(self) -> bool:
        """The writer makes progress and the session (if any) hears from its server: what
        the systemd watchdog is fed on (a hung writer or session stops the pings)."""
        now_us = local_now_us()
        if now_us - self.writer.stats.heartbeat_local_us > WRITER_STALL_US:
            return False
        session = self.session
        return session is None or now_us - session.last_received_local_us < SESSION_STALL_US

    async def wait_ready(self) -> None:
        """Return once the speaker can do its job: the writer opened the device and wrote
        to it, and the connection is up or waiting as configured (dialling: the first
        session's hello exchange is done or its attempt ended; listening: the port is
        bound).  What systemd's READY=1, and so an update's commit, waits for."""
        await self.writer.output_proven.wait()
        await self.connection_ready.wait()

    async def stop(self, reason: str = "shutdown") -> None:
        """Say goodbye to the server and end :meth:`run`."""
        if self.session is not None:
            await self.session.goodbye(reason)
        self._supervisor.stop()

    async def _on_signals(self) -> None:
        """SIGINT/SIGTERM: goodbye and stop; SIGHUP: reload the configuration."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self.reload()
                    continue
                log.info("%s: saying goodbye", signal.Signals(signum).name)
                await self.stop()
                return

    async def reload(self) -> None:
        """Read the configuration again; a bad one is reported and the running one kept.
        Changed output settings restart the writer, changed connection settings the
        connection (with ``client/goodbye restart``); volume and delay apply at once."""
        if self._load_config is None:
            log.warning("SIGHUP: nothing to reload (no configuration source)")
            return
        try:
            new = self._load_config()
        except ConfigError as exc:
            log.error("SIGHUP: keeping the running configuration: %s", exc)
            return
        changed = {f.name for f in attrs.fields(Config)
                   if getattr(new, f.name) != getattr(self.config, f.name)}
        log.info("SIGHUP: configuration reloaded; changed: %s", ", ".join(sorted(changed)) or "nothing")
        self.config = new
        if changed & _NEEDS_RESTART:
            log.warning("SIGHUP: %s take effect at the next start",
                        ", ".join(sorted(changed & _NEEDS_RESTART)))
        if changed & {"volume", "output_delay_ms"}:
            await self._apply_levels(new)
        if changed & _OUTPUT_KEYS:
            self.writer.reconfigure(_output_config(new), new.dac_latency_us)
            self._supervisor.restart("writer")
        if changed & _CONNECTION_KEYS:
            if self.session is not None:
                await self.session.goodbye("restart")
            self._supervisor.restart("connection")

    async def _apply_levels(self, config: Config) -> None:
        if config.volume is not None:
            self.state.volume = config.volume
            await self._to_writer.send(SetVolume(self.state.volume, self.state.muted))
        if config.output_delay_ms is not None:
            self.state.output_delay_ms = config.output_delay_ms
            await self._to_writer.send(SetOutputDelay(config.output_delay_ms * 1000))
        self._store.save(self.state)

    async def _connection_loop(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            started = trio.current_time()
            try:
                await self._one_session()
            except Exception:  # crash-only: a session's bug must not end the speaker
                log.exception("session failed")
            self.connection_ready.set()  # the first attempt ended: waiting to redial
            self.clock.reset()
            await self._to_writer.send(EndStream())
            if trio.current_time() - started > STABLE_SESSION_S:
                backoff = BACKOFF_MIN_S
            hold_off_s, why = held_off(self.state.server_profiles, time.time())
            if hold_off_s > backoff:
                log.error("not redialling for %.0f s: %s", hold_off_s, why)
            log.info("reconnecting in %.1f s", max(backoff, hold_off_s))
            await trio.sleep(max(backoff, hold_off_s))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _one_session(self) -> None:
        """One connection, encrypted or plaintext as the encryption policy decides
        (``protocol/encryption_policy.py``: no downgrade once a pairing is held)."""
        url = self.config.server or await self._discover()
        if url is None:
            return
        # Resonate servers (aioresonate) cannot encrypt: a /resonate URL, or one that
        # answered in Resonate last time.
        resonate = (dialect_for(url) or self._learned.get(url)) == "resonate"
        situation = policy.situation_for(self.config, self.pairings, "dial",
                                         "resonate" if resonate else "sendspin",
                                         policy.parse_address(url), url)
        try:
            decision = policy.decide(situation)
            if decision.action is policy.Action.ENCRYPT:
                decision = await self._dial_encrypted(url, situation, decision)
            if decision.action is policy.Action.REFUSE:
                raise SessionRefused(decision.reason)
            if decision.action is policy.Action.PLAINTEXT:
                log.info("%s: %s", url, decision.reason)
                await self._plaintext_session(url, legacy_roles=not resonate and
                                              situation.mode != "off")
        except* (SessionRefused, NoServerHello) as group:
            log.error("%s: %s", url, group.exceptions[0])
        except* InitRejected as group:
            log.error("%s: %s", url, group.exceptions[0])
        except* HandshakeFailed as group:
            log.warning("%s: encrypted handshake failed: %s", url, group.exceptions[0])
        except* (OSError, HandshakeError, ConnectionClosed, trio.BrokenResourceError) as group:
            log.warning("connection to %s lost: %s", url, group.exceptions[0])
        finally:
            self.session = None

    async def _dial_encrypted(self, url: str, situation: policy.Situation,
                              plan: policy.Decision) -> policy.Decision:
        """The encrypted session at ``url``; or, with a server that does not speak Noise,
        what the policy says to do instead (the session ran: ``Action.ENCRYPT``)."""
        async with connect(url) as raw:
            try:
                conn = await client_handshake(raw, self.identity, self._resolver,
                                              first_reply_timeout_s=plan.first_reply_timeout_s)
            except NotNoiseServer as exc:
                return policy.decide(situation.after_init(exc.silent, str(exc)))
            except HandshakeFailed as exc:  # a server/error refusal is no cue for plaintext
                rejected = isinstance(exc, InitRejected)
                decision = None if rejected else policy.decide(
                    situation.after_handshake_failed(str(exc)))
                handshake_failed(self.state.server_profiles, exc.server_id or url,
                                 f"{exc} (its answer to client/init: {exc.seen or 'none'})",
                                 decision is not None and decision.action is policy.Action.PLAINTEXT,
                                 time.time())
                self._store.save(self.state)
                if decision is None:
                    raise
                return decision
            if conn.psk_category == "lt":
                self.pairings.mark_used(conn.server_id, url)
            await self._run_session(conn, url)
        return plan  # ENCRYPT: the session ran

    @property
    def _mdns_interfaces(self) -> list[str] | None:
        return [self.config.mdns_interface] if self.config.mdns_interface else None

    async def _discover(self) -> str | None:
        from resonate_embedded.discovery.mdns import discover_server

        server = await discover_server(DISCOVER_TIMEOUT_S, interfaces=self._mdns_interfaces)
        if server is None:
            log.warning("no server found by mDNS within %.0f s", DISCOVER_TIMEOUT_S)
            return None
        log.info("found server %r at %s by mDNS", server.name, server.url)
        return server.url

    async def _plaintext_session(self, url: str, legacy_roles: bool) -> None:
        """Plaintext Sendspin or Resonate: the dialect the URL implies, else Sendspin first
        and Resonate if no server/hello came (PROTOCOL.md §0)."""
        h = self.hello(legacy_roles)
        async with connect_speaking(
                url, lambda d: resonate_hello_json(h) if d == "resonate" else h.to_json(),
                candidates=dialect_candidates(url, self._learned.get(url))) as sp:
            self._learned[url] = sp.dialect
            await self._run_session(sp.conn, url, dialect=sp.dialect, server_hello=sp.hello,
                                    legacy_roles=legacy_roles)

    def _new_session(self, conn, url: str | None, dialect: str = "sendspin",
                     legacy_roles: bool = False) -> Session:
        return Session(conn, self.hello(legacy_roles), self.state, lambda: self._store.save(self.state),
                       self.clock, self._to_writer, self._writer_events,
                       security=Security(self.pairings, self.config.unpaired_access, url,
                                         self.config.spoken_pairing_code),
                       dialect=dialect,
                       announcement=AnnouncementRole() if self.config.announcements else None,
                       roles=self.roles,
                       extra_lead_time_ms=self.amplifier.lead_time_ms if self.amplifier else 0)

    async def _run_session(self, conn, url: str, dialect: str = "sendspin",
                           server_hello=None, legacy_roles: bool = False) -> None:
        self.session = self._new_session(conn, url, dialect, legacy_roles)
        await self.session.handshake(server_hello)
        self.connection_ready.set()
        await self.session.serve()

    # ------------------------------------------------------------------ server-initiated mode
    async def _listen(self) -> None:
        """Be dialled: listen, advertise by mDNS, admit one server at a time (spec rules).
        No reconnect loop: servers redial."""
        from resonate_embedded.discovery.mdns import Advertisement, advertise

        async with open_listener(self.config.listen_port) as listener:
            log.info("waiting for servers on port %d", listener.port)
            self.connection_ready.set()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(
                    advertise, Advertisement(self.config.client_id or self.state.client_id,
                                             self.config.name, listener.port,
                                             resonate=self.config.advertise_resonate),
                    interfaces=self._mdns_interfaces, addresses=self._mdns_interfaces))
                await Admission(self._provisional,
                                lambda: self.state.last_played_server_id).run(listener.incoming)

    async def _provisional(self, conn: IncomingConnection) -> _Dialled | None:
        """A server dialled us: the encrypted handshake first, as on the way out; then the
        hello exchange (and, encrypted, the first ``server/activate``) that ranks it."""
        channel = await self._secure_incoming(conn)
        if channel is None:
            return None
        legacy = channel is conn and self.config.encryption != "off"
        session = self._new_session(channel, None, conn.dialect, legacy)
        hello_came = False
        try:
            h = await session.handshake()
            hello_came = True
        except SessionRefused as exc:
            log.error("%s: %s", conn.remote, exc)
            return None
        finally:
            if channel is conn and not hello_came:  # plaintext got no server/hello here
                self._closed_after_init.forget(conn.host)
        if channel is not conn:
            if channel.psk_category == "lt":
                self.pairings.mark_used(channel.server_id)
            return _Dialled(self, session, Candidate(channel.server_id, session.activities,
                                                     encrypted=True))
        return _Dialled(self, session, Candidate.from_connection_reason(h.server_id,
                                                                        h.connection_reason))

    async def _secure_incoming(self, conn: IncomingConnection):
        """The channel to speak on: Noise (``client/init`` first) or the plaintext socket, as
        the encryption policy decides; None when refused (or plaintext only next time)."""
        situation = policy.situation_for(self.config, self.pairings, "listen", conn.dialect,
                                         (conn.host, None),
                                         observed=self._closed_after_init.observed(conn.host))
        decision = policy.decide(situation)
        if decision.action is policy.Action.ENCRYPT:
            try:
                return await client_handshake(
                    conn, self.identity, self._resolver, keep_open_if_silent=decision.fallback,
                    first_reply_timeout_s=decision.first_reply_timeout_s)
            except NotNoiseServer as exc:
                decision = policy.decide(situation.after_init(exc.silent, str(exc)))
            except HandshakeFailed as exc:
                log.warning("%s: encrypted handshake failed: %s", conn.remote, exc)
                return None
        if decision.action is policy.Action.PLAINTEXT:
            log.info("%s: %s", conn.remote, decision.reason)
            return conn
        if decision.action is policy.Action.PLAINTEXT_NEXT_TIME:
            self._closed_after_init.remember(conn.host)
        log.warning("%s: %s", conn.remote, decision.reason)
        return None

    async def _print_status(self) -> None:
        while True:
            await trio.sleep(0.5)
            sys.stderr.write("\r" + format_status(self) + "\x1b[K")
            sys.stderr.flush()
