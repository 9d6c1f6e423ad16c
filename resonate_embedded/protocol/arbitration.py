"""Several servers dialling one speaker: admit one, turn the others away.

The rules (spec ``connection.md`` "Multiple servers (server-initiated)"; PROTOCOL.md §1):

* a connection ranks by its highest activity: ``playback`` > ``pairing`` > none.  An
  encrypted server declares them in its first ``server/activate`` (the connection is
  provisional until then); a plain Sendspin v1 server says ``connection_reason:
  "playback"`` (rank of playback) or ``"discovery"`` (no activity); Resonate servers say
  nothing (no activity);
* after its handshake, an incoming connection is admitted if it ranks higher than or
  equal to the held one, and rejected if lower; when both have no activity, it is
  admitted only if it is the last-playback server and the held one is not;
* a pairing attempt in progress is not displaced by anyone (an incoming ``playback`` or
  ``pairing`` connection is rejected); we never hold a pairing connection alongside a
  playback one (the spec's optional exception), so an incoming pairing connection that
  loses is rejected with ``pair/abort concurrent_attempt``;
* ours, beyond the spec: a server reconnecting (same ``server_id`` as the held
  connection) always replaces its old, probably dead, connection, which is closed
  without a goodbye (a goodbye there could tell the server to stay away);
* the loser gets ``pair/abort concurrent_attempt`` if its activities include pairing,
  otherwise ``client/goodbye``: ``another_server`` when displaced, ``concurrent_attempt``
  when rejected (``another_server`` to plaintext v1 servers, which do not know the
  newer reason); then it is closed;
* a connection that has not finished its handshake (encrypted: its first
  ``server/activate``) within 30 s is dropped, and at most ``max_provisional``
  handshakes run at once (more are closed at once).

:func:`admits` is the pure decision; :class:`Admission` runs it over the connections
of a :class:`~resonate_embedded.protocol.listener.Listener`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs
import trio

from resonate_embedded.protocol.listener import IncomingConnection

log = logging.getLogger(__name__)

PROVISIONAL_TIMEOUT_S = 30.0
MAX_PROVISIONAL = 4
DISPLACED_REASON = "another_server"
REJECTED_REASON = "concurrent_attempt"
LEGACY_REJECTED_REASON = "another_server"  # plaintext v1 servers do not know concurrent_attempt
PAIRING_ABORT_REASON = "concurrent_attempt"
_RANK = {"playback": 2, "pairing": 1}


@attrs.frozen
class Candidate:
    """What the handshake told us about a server."""

    server_id: str
    activities: frozenset[str] = frozenset()
    encrypted: bool = False

    @classmethod
    def from_connection_reason(cls, server_id: str, reason: str | None) -> Candidate:
        """A plain v1 server/hello: ``playback`` means the playback activity; ``discovery``
        or no reason (Resonate) means none."""
        return cls(server_id, frozenset({"playback"}) if reason == "playback" else frozenset())

    @property
    def rank(self) -> int:
        return max((_RANK.get(a, 0) for a in self.activities), default=0)


    @property
    def pairing(self) -> bool:
        return "pairing" in self.activities


def admits(held: Candidate | None, incoming: Candidate, last_played: str | None,
           held_pairing_attempt: bool = False) -> bool:
    """Whether ``incoming`` takes over from ``held`` (see the module docstring)."""
    if held is None or incoming.server_id == held.server_id:
        return True
    if held_pairing_attempt:
        return False
    if incoming.rank != held.rank:
        return incoming.rank > held.rank
    if incoming.rank > 0:
        return True
    return incoming.server_id == last_played and held.server_id != last_played


class Provisional(Protocol):
    """A connection whose handshake is done, waiting to be admitted."""

    candidate: Candidate

    @property
    def pairing_attempt_active(self) -> bool:
        """A pairing attempt is under way on this connection."""

    async def serve(self) -> None:
        """Run the admitted session until it ends (cancelled when displaced)."""

    async def goodbye(self, reason: str) -> None:
        """Send ``client/goodbye`` (best effort, bounded in time; nothing for Resonate)."""

    async def abort_pairing(self, reason: str) -> None:
        """Send ``pair/abort`` (best effort, bounded in time)."""


async def _turn_away(provisional: Provisional, reason: str) -> None:
    """The loser's last message: ``pair/abort`` for a pairing connection, else the goodbye."""
    if provisional.candidate.pairing:
        await provisional.abort_pairing(PAIRING_ABORT_REASON)
    else:
        await provisional.goodbye(reason)


Handshake = Callable[[IncomingConnection], Awaitable[Provisional | None]]


@attrs.define(eq=False)
class _Held:
    provisional: Provisional
    scope: trio.CancelScope
    done: trio.Event = attrs.field(factory=trio.Event)


@attrs.define(eq=False)
class Admission:
    """Holds at most one admitted connection.

    ``handshake(conn)`` does the hello exchange on a new connection and returns a
    :class:`Provisional` (or None to drop it); ``last_played()`` gives the persisted
    last-played server id.  Guarantees: at most one ``serve()`` runs at a time — a
    displaced one has returned (its cancel scope cancelled and its goodbye sent) before
    the new one starts; every connection taken from the channel is closed when its
    handling ends.
    """

    handshake: Handshake
    last_played: Callable[[], str | None]
    provisional_timeout_s: float = PROVISIONAL_TIMEOUT_S
    max_provisional: int = MAX_PROVISIONAL
    _held: _Held | None = attrs.field(default=None, init=False)
    _pending: int = attrs.field(default=0, init=False)
    _lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)

    @property
    def admitted(self) -> Candidate | None:
        """The server currently held, if any."""
        return self._held.provisional.candidate if self._held is not None else None

    async def run(self, incoming: trio.MemoryReceiveChannel[IncomingConnection]) -> None:
        """Handle every connection from ``incoming`` until it closes or we are cancelled."""
        async with trio.open_nursery() as nursery:
            async for conn in incoming:
                if self._pending >= self.max_provisional:
                    log.warning("too many handshakes in progress: dropping %s", conn.remote)
                    await conn.close()
                    continue
                self._pending += 1
                nursery.start_soon(self._handle, conn)

    async def _handle(self, conn: IncomingConnection) -> None:
        async with conn:
            try:
                await self._handshake_and_serve(conn)
            except Exception:  # noqa: BLE001 - crash-only: one server's trouble must not end us
                log.exception("connection from %s failed", conn.remote)

    async def _handshake_and_serve(self, conn: IncomingConnection) -> None:
        try:
            with trio.move_on_after(self.provisional_timeout_s) as scope:
                provisional = await self.handshake(conn)
        finally:
            self._pending -= 1
        if scope.cancelled_caught:
            log.warning("%s: no handshake within %.0f s; dropped", conn.remote,
                        self.provisional_timeout_s)
            return
        if provisional is None:
            return
        held = await self._take_over(provisional)
        if held is None:
            return
        try:
            with held.scope:
                await provisional.serve()
        finally:
            if self._held is held:
                self._held = None
            held.done.set()

    async def _take_over(self, provisional: Provisional) -> _Held | None:
        """Admit ``provisional`` (displacing the holder) or reject it; None if rejected."""
        async with self._lock:
            old = self._held
            new = provisional.candidate
            if old is not None and not admits(old.provisional.candidate, new, self.last_played(),
                                              old.provisional.pairing_attempt_active):
                log.info("keeping server %s%s; rejecting %s", old.provisional.candidate.server_id,
                         " (pairing in progress)" if old.provisional.pairing_attempt_active else "",
                         new.server_id)
                await _turn_away(provisional, REJECTED_REASON if new.encrypted
                                 else LEGACY_REJECTED_REASON)
                return None
            if old is not None:
                log.info("server %s displaces %s", new.server_id,
                         old.provisional.candidate.server_id)
                if old.provisional.candidate.server_id != new.server_id:
                    await _turn_away(old.provisional, DISPLACED_REASON)
                old.scope.cancel()
                await old.done.wait()
            self._held = _Held(provisional, trio.CancelScope())
            return self._held
