"""Server-initiated mode against real servers: they dial our listener.

* aiosendspin 10.2 (``connect_to_client``) reaches ``/sendspin``, the hello exchange
  completes and its audio arrives on the accepted connection;
* aioresonate 0.13.2 reaches ``/resonate`` and answers the Resonate hello;
* two aiosendspin 10 servers dial at once: a ``playback`` dial displaces the admitted
  ``discovery`` one, which gets ``client/goodbye another_server``; a later
  ``discovery`` dial is turned away the same way.
"""

from __future__ import annotations

import attrs
import pytest
import trio

from resonate_embedded.audio.formats import StreamFormat
from resonate_bench.harness import (
    RESONATE_SCRIPT, TestServer, find_resonate_python, find_server_python, index_signal,
    pcm_bytes_to_samples, requires_venv, start_test_server,
)
from resonate_embedded.protocol.arbitration import Admission, Candidate
from resonate_embedded.protocol.binary import parse_audio_frame
from resonate_embedded.protocol.connection import Connection, ConnectionClosed
from resonate_embedded.protocol.listener import IncomingConnection, open_listener
from resonate_embedded.protocol.messages import (
    ClientHello, ClientState, DeviceInfo, PlayerState, client_goodbye_json,
)
from resonate_embedded.protocol.resonate_dialect import await_server_hello, resonate_hello_json

pytestmark = pytest.mark.e2e

S10_PYTHON = find_server_python()
R_PYTHON = find_resonate_python()
needs_s10 = requires_venv(S10_PYTHON, ".venv-server")
needs_r = requires_venv(R_PYTHON, ".venv-resonate")
TIMEOUT = 60.0
PCM16 = StreamFormat("pcm", 48000, 2, 16)


def hello(client_id: str) -> ClientHello:
    return ClientHello(client_id, client_id, DeviceInfo("test", "test", "0"), (PCM16,), 32_000_000)


async def v1_handshake(conn: Connection, client_id: str) -> Candidate | None:
    """client/hello → server/hello → client/state, as a plain v1 player."""
    await conn.send_text(hello(client_id).to_json())
    server_hello = await await_server_hello(conn, TIMEOUT)
    if server_hello is None:
        return None
    await conn.send_text(ClientState("synchronized", PlayerState(
        volume=100, muted=False, supported_commands=("volume", "mute"))).to_json())
    return Candidate.from_connection_reason(server_hello.server_id, server_hello.connection_reason)


async def next_connection(listener) -> IncomingConnection:
    with trio.fail_after(TIMEOUT):
        return await listener.incoming.receive()


@needs_s10
def test_sendspin10_dials_the_listener_and_streams():
    async def main():
        async with open_listener(0, "127.0.0.1") as listener, \
                start_test_server(S10_PYTHON, port=0) as srv:
            url = f"ws://127.0.0.1:{listener.port}/sendspin"
            await srv.command({"cmd": "connect_to_client", "url": url})
            async with await next_connection(listener) as conn:
                assert (conn.path, conn.dialect) == ("/sendspin", "sendspin")
                candidate = await v1_handshake(conn, "dialled-1")
                assert candidate == Candidate(srv.ready["server_id"])  # connection_reason discovery
                await srv.wait_event("client_added", TIMEOUT,
                                     predicate=lambda e: e["client_id"] == "dialled-1")
                mark = srv.mark()
                await srv.command({"cmd": "start", "format": {"sample_rate": 48000, "bit_depth": 16,
                                                              "channels": 2}, "duration_s": 0.5})
                chunks = []
                with trio.fail_after(TIMEOUT):
                    while len(chunks) < 20:
                        data = (await conn.receive()).data
                        if isinstance(data, bytes):
                            chunks.append(parse_audio_frame(data))
                log = srv.chunks(mark)[:20]
                assert [c.server_ts_us for c in chunks] == [e["server_ts_us"] for e in log]
                for chunk, event in zip(chunks, log):
                    got = pcm_bytes_to_samples(chunk.payload, 16, 2)
                    assert (got == index_signal(event["first_frame"], event["frames"], 16, 2)).all()

    trio.run(main)


@needs_r
def test_resonate_dials_the_listener_on_its_path():
    async def main():
        async with open_listener(0, "127.0.0.1") as listener, \
                start_test_server(R_PYTHON, port=0, script=RESONATE_SCRIPT) as srv:
            await srv.command({"cmd": "connect_to_client",
                               "url": f"ws://127.0.0.1:{listener.port}/resonate"})
            async with await next_connection(listener) as conn:
                assert conn.dialect == "resonate"
                await conn.send_text(resonate_hello_json(hello("dialled-r")))
                server_hello = await await_server_hello(conn, TIMEOUT)
                assert server_hello is not None
                assert server_hello.server_id == srv.ready["server_id"]
                assert server_hello.connection_reason is None and server_hello.active_roles == ()
                await srv.wait_event("client_added", TIMEOUT,
                                     predicate=lambda e: e["client_id"] == "dialled-r")
                await srv.command({"cmd": "disconnect_from_client",
                                   "url": f"ws://127.0.0.1:{listener.port}/resonate"})

    trio.run(main)


@attrs.define(eq=False)
class V1Provisional:
    conn: Connection
    candidate: Candidate
    pairing_attempt_active = False

    async def serve(self) -> None:
        try:
            while True:
                await self.conn.receive()
        except ConnectionClosed:
            pass

    async def goodbye(self, reason: str) -> None:
        with trio.move_on_after(2):
            await self.conn.send_text(client_goodbye_json(reason))

    async def abort_pairing(self, reason: str) -> None:
        raise AssertionError("a plaintext v1 server never pairs")


async def provisional(conn: IncomingConnection) -> V1Provisional | None:
    candidate = await v1_handshake(conn, "contested")
    return V1Provisional(conn, candidate) if candidate is not None else None


async def goodbye_reason(srv: TestServer, since: int) -> str | None:
    event = await srv.wait_event("client_disconnected", TIMEOUT, since=since,
                                 predicate=lambda e: e["client_id"] == "contested")
    return event["goodbye_reason"]


@needs_s10
def test_playback_dial_displaces_discovery_and_later_discovery_is_turned_away():
    async def main():
        async with open_listener(0, "127.0.0.1") as listener, trio.open_nursery() as nursery, \
                start_test_server(S10_PYTHON, port=0, name="A") as a, \
                start_test_server(S10_PYTHON, port=0, name="B") as b:
            admission = Admission(provisional, lambda: None)
            nursery.start_soon(admission.run, listener.incoming)
            url = f"ws://127.0.0.1:{listener.port}/sendspin"
            a_id, b_id = a.ready["server_id"], b.ready["server_id"]

            await a.command({"cmd": "connect_to_client", "url": url})
            await a.wait_event("client_added", TIMEOUT)
            with trio.fail_after(TIMEOUT):
                while admission.admitted != Candidate(a_id):
                    await trio.sleep(0.05)

            mark_a = a.mark()
            await b.command({"cmd": "connect_to_client", "url": url,
                             "connection_reason": "playback"})
            assert await goodbye_reason(a, mark_a) == "another_server"
            await b.wait_event("client_added", TIMEOUT)
            assert admission.admitted == Candidate(b_id, frozenset({"playback"}))

            mark_a = a.mark()
            await a.command({"cmd": "disconnect_from_client", "url": url})
            await a.command({"cmd": "connect_to_client", "url": url})
            assert await goodbye_reason(a, mark_a) == "another_server"
            assert admission.admitted == Candidate(b_id, frozenset({"playback"}))
            assert not b.events_of("client_disconnected")
            nursery.cancel_scope.cancel()

    trio.run(main)
