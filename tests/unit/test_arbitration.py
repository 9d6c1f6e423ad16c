"""Multi-server arbitration: the pure rule table, then Admission over a real listener
with real WebSocket peers playing the servers (they dial us, as in server-initiated mode)."""

from __future__ import annotations

import json

import attrs
import pytest
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from resonate_embedded.protocol.arbitration import Admission, Candidate, admits
from resonate_embedded.protocol.connection import Connection
from resonate_embedded.protocol.listener import IncomingConnection, open_listener
from resonate_embedded.protocol.messages import client_goodbye_json, pair_abort_json

PLAY = frozenset({"playback"})
PAIR = frozenset({"pairing"})
NONE = frozenset()


@pytest.mark.parametrize("held, incoming, last_played, admitted", [
    (None, ("b", NONE), None, True),
    (("a", NONE), ("b", PLAY), None, True),          # playback takes over
    (("a", PLAY), ("b", PLAY), None, True),          # equal (non-empty) rank: newest wins
    (("a", PLAY), ("b", NONE), "b", False),          # discovery never displaces playback
    (("a", PLAY), ("b", PAIR), None, False),
    (("a", PAIR), ("b", PLAY), None, True),
    (("a", NONE), ("b", NONE), None, False),         # both idle: keep the existing one
    (("a", NONE), ("b", NONE), "b", True),           # ... unless the newcomer played last
    (("a", NONE), ("b", NONE), "a", False),
    (("a", PLAY), ("a", NONE), None, True),          # same server reconnecting
    (("a", PAIR), ("b", PAIR), None, True),          # no attempt under way yet: newest wins
])
def test_admission_rules(held, incoming, last_played, admitted):
    held_c = Candidate(*held) if held else None
    assert admits(held_c, Candidate(*incoming), last_played) is admitted


@pytest.mark.parametrize("incoming", [("b", PLAY), ("b", PAIR), ("b", NONE)])
def test_a_pairing_attempt_in_progress_is_not_displaced(incoming):
    assert not admits(Candidate("a", PAIR), Candidate(*incoming), "b", held_pairing_attempt=True)
    # ... except by the same server, reconnecting
    assert admits(Candidate("a", PAIR), Candidate("a", PLAY), None, held_pairing_attempt=True)


def test_candidate_from_v1_connection_reason():
    assert Candidate.from_connection_reason("s", "playback").rank == 2
    assert Candidate.from_connection_reason("s", "discovery").rank == 0
    assert Candidate.from_connection_reason("s", None) == Candidate("s")


# --------------------------------------------------------------------------- real sockets


@attrs.define(eq=False)
class RawSession:
    """The smallest Provisional: a v1 hello exchange, then read until closed."""

    conn: Connection
    candidate: Candidate
    served: trio.Event = attrs.field(factory=trio.Event)
    pairing_attempt_active: bool = False

    async def serve(self) -> None:
        self.served.set()
        try:
            while True:
                if (await self.conn.receive()).data == "attempt over":
                    self.pairing_attempt_active = False
        except ConnectionClosed:
            pass

    async def goodbye(self, reason: str) -> None:
        await self.conn.send_text(client_goodbye_json(reason))

    async def abort_pairing(self, reason: str) -> None:
        await self.conn.send_text(pair_abort_json(reason))


async def handshake(conn: IncomingConnection) -> RawSession | None:
    """v1 hello; a fake server standing for an encrypted one adds (test-only) ``activities``
    and ``attempt`` (a pairing attempt starts once admitted) to its server/hello."""
    await conn.send_text(json.dumps({"type": "client/hello", "payload": {"client_id": "p"}}))
    try:
        with trio.move_on_after(60):
            hello = json.loads((await conn.receive()).data)["payload"]
    except ConnectionClosed:
        return None
    if "activities" not in hello:
        return RawSession(conn, Candidate.from_connection_reason(hello["server_id"],
                                                                 hello.get("connection_reason")))
    return RawSession(conn, Candidate(hello["server_id"], frozenset(hello["activities"]), True),
                      pairing_attempt_active=hello.get("attempt", False))


@attrs.define(eq=False)
class FakeServer:
    """A peer that dials the listener like a Sendspin server and records what it gets."""

    server_id: str
    reason: str | None
    received: list[dict] = attrs.field(factory=list)
    closed: trio.Event = attrs.field(factory=trio.Event)
    answer: bool = True
    activities: tuple[str, ...] | None = None  # stands for an encrypted server's activation
    attempt: bool = False
    ws: object = None

    async def run(self, port: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with open_websocket_url(f"ws://127.0.0.1:{port}/sendspin") as ws:
            self.ws = ws
            task_status.started()
            try:
                while True:
                    msg = json.loads(await ws.get_message())
                    self.received.append(msg)
                    if msg["type"] == "client/hello" and self.answer:
                        payload = {"server_id": self.server_id, "name": self.server_id, "version": 1}
                        if self.reason:
                            payload["connection_reason"] = self.reason
                        if self.activities is not None:
                            payload.update(activities=list(self.activities), attempt=self.attempt)
                        await ws.send_message(json.dumps({"type": "server/hello", "payload": payload}))
            except ConnectionClosed:
                self.closed.set()

    def goodbyes(self) -> list[str]:
        return [m["payload"]["reason"] for m in self.received if m["type"] == "client/goodbye"]

    def aborts(self) -> list[str]:
        return [m["payload"]["reason"] for m in self.received if m["type"] == "pair/abort"]


async def wait_until(predicate, timeout=10.0):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


def test_one_admitted_losers_get_goodbye_and_are_closed():
    async def main():
        async with open_listener(0, "127.0.0.1") as listener, trio.open_nursery() as nursery:
            admission = Admission(handshake, lambda: "last")
            nursery.start_soon(admission.run, listener.incoming)
            a, b, c, last = (FakeServer("a", "discovery"), FakeServer("b", "playback"),
                             FakeServer("c", "discovery"), FakeServer("last", None))

            await nursery.start(a.run, listener.port)
            await wait_until(lambda: admission.admitted == Candidate("a"))

            await nursery.start(b.run, listener.port)       # playback displaces discovery
            await wait_until(lambda: admission.admitted == Candidate("b", PLAY))
            await wait_until(a.closed.is_set)
            assert a.goodbyes() == ["another_server"]

            await nursery.start(c.run, listener.port)       # discovery is rejected
            await wait_until(c.closed.is_set)
            assert c.goodbyes() == ["another_server"]
            await nursery.start(last.run, listener.port)    # last-played does not beat playback
            await wait_until(last.closed.is_set)
            assert admission.admitted == Candidate("b", PLAY) and not b.closed.is_set()
            assert b.goodbyes() == []
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_pairing_attempt_keeps_the_speaker_and_losers_get_the_current_reasons():
    """Encrypted servers: a pairing attempt under way turns away playback (client/goodbye
    concurrent_attempt) and pairing (pair/abort concurrent_attempt); once held without an
    attempt, a playback server displaces it with pair/abort."""
    async def main():
        async with open_listener(0, "127.0.0.1") as listener, trio.open_nursery() as nursery:
            admission = Admission(handshake, lambda: None)
            nursery.start_soon(admission.run, listener.incoming)
            pairing = FakeServer("pairing", None, activities=("pairing",), attempt=True)
            player = FakeServer("player", None, activities=("playback",))
            other = FakeServer("other", None, activities=("pairing",))
            await nursery.start(pairing.run, listener.port)
            await wait_until(lambda: admission.admitted is not None)
            for loser in (player, other):
                await nursery.start(loser.run, listener.port)
                await wait_until(loser.closed.is_set)
            assert player.goodbyes() == ["concurrent_attempt"] and player.aborts() == []
            assert other.aborts() == ["concurrent_attempt"] and other.goodbyes() == []
            assert admission.admitted.server_id == "pairing" and not pairing.closed.is_set()

            await pairing.ws.send_message("attempt over")
            await trio.sleep(0.2)
            quiet = FakeServer("quiet", None, activities=("pairing",))   # no attempt yet
            await nursery.start(quiet.run, listener.port)
            await wait_until(lambda: admission.admitted.server_id == "quiet")
            await wait_until(pairing.closed.is_set)                      # equal rank: newest
            assert pairing.aborts() == ["concurrent_attempt"]
            await nursery.start(player.run, listener.port)
            await wait_until(lambda: admission.admitted.server_id == "player")
            await wait_until(quiet.closed.is_set)
            assert quiet.aborts() == ["concurrent_attempt"] and quiet.goodbyes() == []
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_last_played_server_wins_a_tie_of_idle_servers():
    async def main():
        async with open_listener(0, "127.0.0.1") as listener, trio.open_nursery() as nursery:
            admission = Admission(handshake, lambda: "home")
            nursery.start_soon(admission.run, listener.incoming)
            other, home = FakeServer("other", "discovery"), FakeServer("home", "discovery")
            await nursery.start(other.run, listener.port)
            await wait_until(lambda: admission.admitted == Candidate("other"))
            await nursery.start(home.run, listener.port)
            await wait_until(lambda: admission.admitted == Candidate("home"))
            await wait_until(other.closed.is_set)
            assert other.goodbyes() == ["another_server"] and home.goodbyes() == []
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_silent_provisional_connection_is_dropped_after_the_timeout():
    async def main():
        async with open_listener(0, "127.0.0.1") as listener, trio.open_nursery() as nursery:
            admission = Admission(handshake, lambda: None, provisional_timeout_s=0.5)
            nursery.start_soon(admission.run, listener.incoming)
            mute = FakeServer("mute", None, answer=False)
            start = trio.current_time()
            await nursery.start(mute.run, listener.port)
            await wait_until(mute.closed.is_set)
            assert 0.4 < trio.current_time() - start < 8
            assert [m["type"] for m in mute.received] == ["client/hello"]
            assert admission.admitted is None
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_listener_rejects_unknown_paths_and_hands_over_known_ones():
    async def main():
        async with open_listener(0, "127.0.0.1") as listener:
            with pytest.raises(HandshakeError):
                async with open_websocket_url(f"ws://127.0.0.1:{listener.port}/other"):
                    pass
            async with open_websocket_url(f"ws://127.0.0.1:{listener.port}/resonate?x=1") as ws:
                with trio.fail_after(10):
                    conn = await listener.incoming.receive()
                async with conn:
                    assert (conn.path, conn.dialect) == ("/resonate", "resonate")
                    await ws.send_message("hi")
                    assert (await conn.receive()).data == "hi"
                    await conn.send_text("ho")
                    assert await ws.get_message() == "ho"
                with pytest.raises(ConnectionClosed):
                    await ws.get_message()

    trio.run(main)
