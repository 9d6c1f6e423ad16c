"""The Noise handshake and transport against a scripted fake server (in-process, real sockets).

The fake server is a Noise KKpsk2 *initiator* built on ``noiseprotocol`` directly,
so every message can be tampered with.  The positive path is also covered against
the real aiosendspin server in tests/e2e/test_encrypted_e2e.py.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from typing import Awaitable, Callable

import pytest
import trio
from noise.connection import Keypair, NoiseConnection
from trio_websocket import ConnectionClosed, serve_websocket

from resonate_embedded.identity import Identity, b64url_decode, b64url_encode
from resonate_embedded.pairing import PairingStore, psk_id_for
from resonate_embedded.protocol.connection import connect
from resonate_embedded.protocol.noise_transport import (
    MAX_PLAINTEXT, SENTINEL_PSK, SENTINEL_PSK_ID, ChannelBroken, HandshakeFailed, InitRejected,
    NotNoiseServer, client_handshake, make_resolver,
)

SUITE = "25519_ChaChaPoly_SHA256"


# --------------------------------------------------------------------------- the fake server


class Initiator:
    """Server side of KKpsk2 (the Noise initiator)."""

    def __init__(self, server: Identity, client_pub: bytes, prologue: bytes, psk: bytes,
                 suite: str = SUITE) -> None:
        c = NoiseConnection.from_name(f"Noise_KKpsk2_{suite}".encode())
        c.set_as_initiator()
        c.set_keypair_from_private_bytes(Keypair.STATIC, server.private_key)
        c.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, client_pub)
        c.set_prologue(prologue)
        c.set_psks(psks=[psk])
        c.start_handshake()
        self.c = c

    def msg1(self, psk_id: str, category: str | None) -> bytes:
        """Message 1; ``category`` None: the older (aiosendspin 7.x-9.x) payload, psk_id only."""
        payload = {"psk_id": psk_id} if category is None else {"psk_id": psk_id, "psk_category": category}
        return bytes(self.c.write_message(json.dumps(payload).encode()))

    def read2(self, data: bytes) -> bytes:
        return bytes(self.c.read_message(data))

    def enc(self, plaintext: bytes) -> bytes:
        return self.c.encrypt(plaintext)

    def dec(self, ciphertext: bytes) -> bytes:
        return bytes(self.c.decrypt(ciphertext))

    @property
    def h(self) -> bytes:
        return bytes(self.c.get_handshake_hash())


def hs(data: bytes) -> str:
    return json.dumps({"type": "noise/handshake", "payload": {"data": b64url_encode(data)}})


def hs_data(text: str) -> bytes:
    return b64url_decode(json.loads(text)["payload"]["data"])


def jmsg(t: str, payload: dict) -> bytes:
    return b"\x00" + json.dumps({"type": t, "payload": payload}).encode()


class Peer:
    """What a script gets: the socket, the server identity and a record of what happened."""

    def __init__(self, ws, server: Identity) -> None:
        self.ws = ws
        self.server = server
        self.init_text: str | None = None
        self.client_id: str | None = None
        self.noise: Initiator | None = None
        self.received_after_failure: list = []

    async def handshake(self, psk: bytes = SENTINEL_PSK, category: str | None = "sn",
                        psk_id: str | None = None,
                        *, tamper_init: Callable[[str], str] | None = None,
                        server_init: str | None = None, msg2_psk: bytes | None = None) -> bytes:
        """Run the server side; returns message 2's payload (raises if it does not verify)."""
        self.init_text = await self.ws.get_message()
        init = json.loads(self.init_text)["payload"]
        self.client_id = init["client_id"]
        sinit = server_init or json.dumps({"type": "server/init", "payload": {
            "server_id": self.server.client_id, "version": 1}})
        client_bytes = (tamper_init(self.init_text) if tamper_init else self.init_text).encode()
        self.noise = Initiator(self.server, b64url_decode(self.client_id), client_bytes + sinit.encode(),
                               msg2_psk or psk, init["suite"])
        await self.ws.send_message(sinit)
        await self.ws.send_message(hs(self.noise.msg1(psk_id or psk_id_for(psk), category)))
        return self.noise.read2(hs_data(await self.ws.get_message()))

    async def send(self, t: str, payload: dict) -> None:
        await self.ws.send_message(self.noise.enc(jmsg(t, payload)))

    async def send_plain(self, plaintext: bytes) -> bytes:
        ct = self.noise.enc(plaintext)
        await self.ws.send_message(ct)
        return ct

    async def recv(self) -> dict:
        pt = self.noise.dec(await self.ws.get_message())
        assert pt[0] == 0
        return json.loads(pt[1:])

    async def expect_closed(self, timeout: float = 5.0) -> None:
        """The client must close without sending another message (spec: silent failure)."""
        with trio.fail_after(timeout):
            try:
                while True:
                    self.received_after_failure.append(await self.ws.get_message())
            except ConnectionClosed:
                pass
        assert self.received_after_failure == [], "the client spoke after a silent failure"


Script = Callable[[Peer], Awaitable[None]]


async def run_against(script: Script, client: Callable[[str], Awaitable[None]],
                      server: Identity | None = None) -> None:
    server = server or Identity.generate()
    errors: list[BaseException] = []

    async def handler(request):
        ws = await request.accept()
        try:
            await script(Peer(ws, server))
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)
            raise

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(lambda task_status=trio.TASK_STATUS_IGNORED: serve_websocket(
            handler, "127.0.0.1", 0, ssl_context=None, task_status=task_status))
        port = listeners.port
        with trio.fail_after(20):
            await client(f"ws://127.0.0.1:{port}/sendspin")
            await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    if errors and not isinstance(errors[0], (trio.Cancelled,)):
        raise errors[0]


def speaker(tmp_path) -> tuple[Identity, PairingStore]:
    from resonate_embedded.identity import load_or_create

    return load_or_create(tmp_path), PairingStore(tmp_path)


# --------------------------------------------------------------------------- positive paths


def test_sentinel_session_carries_json_audio_and_fragments(tmp_path):
    ident, store = speaker(tmp_path)
    big = os.urandom(3 * MAX_PLAINTEXT)

    async def script(peer: Peer) -> None:
        assert await peer.handshake() == b"{}"
        assert json.loads(peer.init_text) == {"type": "client/init", "payload": {
            "client_id": ident.client_id, "version": 1, "suite": SUITE}}
        await peer.send("server/hello", {"name": "Fake"})
        assert (await peer.recv())["type"] == "client/hello"
        # 13-byte audio header, then a message that needs fragmenting (type 1, flags, orig_type)
        await peer.send_plain(struct.pack(">BqI", 4, 123456, 999) + b"pcm!")
        body = b"\x04" + big
        first = MAX_PLAINTEXT - 3
        await peer.send_plain(b"\x01\x02" + body[:1] + body[1:1 + first])
        rest = body[1 + first:]
        step = MAX_PLAINTEXT - 2
        for i in range(0, len(rest), step):
            last = i + step >= len(rest)
            await peer.send_plain(bytes([1, 1 if last else 0]) + rest[i:i + step])
        await peer.send("server/time", {"client_transmitted": 1, "server_received": 2,
                                        "server_transmitted": 3})
        assert (await peer.recv())["type"] == "client/goodbye"

    async def client(url: str) -> None:
        async with connect(url) as raw:
            sec = await client_handshake(raw, ident, make_resolver(ident, store))
            assert (sec.server_id, sec.psk_category, sec.audio_header_size) == (
                sec.server_id, "sn", 13)
            assert not sec.credential_mismatch
            assert json.loads((await sec.receive()).data)["type"] == "server/hello"
            await sec.send_text(json.dumps({"type": "client/hello", "payload": {}}))
            audio = (await sec.receive()).data
            assert audio == struct.pack(">BqI", 4, 123456, 999) + b"pcm!"
            assert (await sec.receive()).data == b"\x04" + big
            assert json.loads((await sec.receive()).data)["type"] == "server/time"
            await sec.send_text(json.dumps({"type": "client/goodbye", "payload": {"reason": "x"}}))

    trio.run(run_against, script, client)


@pytest.mark.parametrize("kind", ["sn", "pr", "lt"])
def test_older_variant_finds_the_psk_by_its_id_alone(tmp_path, kind):
    """aiosendspin 7.x-9.x: message 1 names no psk_category, audio headers are 9 bytes and
    fragments are typed 2 (first: the original type follows) and 3 (last), both ways."""
    ident, store = speaker(tmp_path)
    server = Identity.generate()
    psk = {"sn": SENTINEL_PSK, "pr": ident.pairing_psk, "lt": os.urandom(32)}[kind]
    if kind == "lt":
        store.add_pairing(server.client_id, psk, "Paired")
    big = os.urandom(MAX_PLAINTEXT + 100)

    async def script(peer: Peer) -> None:
        assert await peer.handshake(psk, None) == b"{}"
        await peer.send_plain(struct.pack(">Bq", 4, 123456) + b"pcm!")
        await peer.send_plain(b"\x02\x04" + big[:MAX_PLAINTEXT - 2])
        await peer.send_plain(b"\x03" + big[MAX_PLAINTEXT - 2:])
        first, last = peer.noise.dec(await peer.ws.get_message()), peer.noise.dec(await peer.ws.get_message())
        assert (first[:2], last[:1]) == (b"\x02\x00", b"\x03")
        assert json.loads(first[2:] + last[1:])["payload"]["pad"] == "x" * MAX_PLAINTEXT

    async def client(url: str) -> None:
        async with connect(url) as raw:
            sec = await client_handshake(raw, ident, make_resolver(ident, store))
            assert (sec.psk_category, sec.noise_variant, sec.audio_header_size) == (kind, "older", 9)
            assert (await sec.receive()).data == struct.pack(">Bq", 4, 123456) + b"pcm!"
            assert (await sec.receive()).data == b"\x04" + big
            await sec.send_text(json.dumps({"type": "x", "payload": {"pad": "x" * MAX_PLAINTEXT}}))

    trio.run(run_against, script, client, server)


def test_long_term_psk_is_selected_and_bound_to_its_server(tmp_path):
    ident, store = speaker(tmp_path)
    server = Identity.generate()
    lt = os.urandom(32)
    store.add_pairing(server.client_id, lt, "Paired")

    async def script(peer: Peer) -> None:
        assert await peer.handshake(lt, "lt") == b"{}"
        await peer.send("server/hello", {"name": "Paired"})

    async def client(url: str) -> None:
        async with connect(url) as raw:
            sec = await client_handshake(raw, ident, make_resolver(ident, store))
            assert sec.psk_category == "lt"
            await sec.receive()

    trio.run(run_against, script, client, server)


def test_pairing_psk_is_found_by_its_id(tmp_path):
    ident, store = speaker(tmp_path)

    async def script(peer: Peer) -> None:
        assert await peer.handshake(ident.pairing_psk, "pr") == b"{}"
        await peer.send("server/hello", {"name": "S"})

    async def client(url: str) -> None:
        async with connect(url) as raw:
            sec = await client_handshake(raw, ident, make_resolver(ident, store))
            assert sec.psk_category == "pr"
            await sec.receive()

    trio.run(run_against, script, client)


@pytest.mark.parametrize("case", ["unknown lt", "pairing psk named as lt"])
def test_lookup_miss_falls_back_to_the_sentinel(tmp_path, case, caplog):
    """Spec: on a psk_id miss in the initial handshake the client completes message 2 with the
    Sentinel PSK; the server can verify that (an authenticated credential-mismatch signal)."""
    ident, store = speaker(tmp_path)
    referenced = os.urandom(32) if case == "unknown lt" else ident.pairing_psk
    verified: list[bytes] = []

    async def script(peer: Peer) -> None:
        # The server references `referenced` but verifies message 2 under the Sentinel.
        verified.append(await peer.handshake(referenced, "lt", msg2_psk=SENTINEL_PSK))
        await peer.send("server/hello", {"name": "S"})

    async def client(url: str) -> None:
        async with connect(url) as raw:
            sec = await client_handshake(raw, ident, make_resolver(ident, store))
            assert (sec.psk_category, sec.credential_mismatch) == ("sn", True)
            await sec.receive()

    trio.run(run_against, script, client)
    assert verified == [b"{}"]
    assert "does not hold" in caplog.text


# --------------------------------------------------------------------------- negative paths


def _expect_silent_failure(tmp_path, script_body, exc=HandshakeFailed, store_setup=None, **kw):
    ident, store = speaker(tmp_path)
    if store_setup:
        store_setup(store)
    raised: list[BaseException] = []

    async def script(peer: Peer) -> None:
        await script_body(peer)
        await peer.expect_closed()

    async def client(url: str) -> None:
        async with connect(url) as raw:
            try:
                await client_handshake(raw, ident, make_resolver(ident, store), **kw)
            except Exception as e:  # noqa: BLE001
                raised.append(e)

    trio.run(run_against, script, client)
    assert len(raised) == 1 and isinstance(raised[0], exc), raised
    return raised[0]


def test_wrong_psk_fails_silently_on_the_server_side(tmp_path):
    """Server holds a different long-term PSK under the id the client resolves: message 2 does
    not verify at the server, so the server closes; the client never gets a valid frame."""
    ident, store = speaker(tmp_path)
    server = Identity.generate()
    lt = os.urandom(32)
    store.add_pairing(server.client_id, lt, "S")
    outcome = []

    async def script(peer: Peer) -> None:
        try:
            await peer.handshake(lt, "lt", msg2_psk=os.urandom(32))
        except Exception as e:  # noqa: BLE001 - what a real server sees
            outcome.append(type(e).__name__)
            await peer.ws.aclose()

    async def client(url: str) -> None:
        async with connect(url) as raw:
            sec = await client_handshake(raw, ident, make_resolver(ident, store))
            with pytest.raises(ConnectionClosed):
                await sec.receive()

    trio.run(run_against, script, client, server)
    assert outcome and outcome[0] in ("NoiseInvalidMessage", "InvalidTag")


def test_tampered_client_init_breaks_the_handshake(tmp_path):
    async def body(peer: Peer) -> None:
        # A man in the middle re-encoded client/init (different bytes, same meaning): the
        # prologue differs, message 1 does not authenticate at the client.
        await peer.handshake(tamper_init=lambda t: t.replace('","', '", "'))

    err = _expect_silent_failure(tmp_path, lambda p: _run_ignoring(body, p))
    assert "authenticate" in str(err)


def test_tampered_server_init_breaks_the_handshake(tmp_path):
    async def body(peer: Peer) -> None:
        peer_init = await peer.ws.get_message()
        init = json.loads(peer_init)["payload"]
        sent = json.dumps({"type": "server/init", "payload": {"server_id": peer.server.client_id,
                                                              "version": 1}})
        claimed = json.dumps({"type": "server/init", "payload": {"version": 1,
                                                                 "server_id": peer.server.client_id}})
        n = Initiator(peer.server, b64url_decode(init["client_id"]), peer_init.encode() + claimed.encode(),
                      SENTINEL_PSK)
        await peer.ws.send_message(sent)
        await peer.ws.send_message(hs(n.msg1(SENTINEL_PSK_ID, "sn")))

    err = _expect_silent_failure(tmp_path, body)
    assert "authenticate" in str(err)


async def _run_ignoring(body, peer) -> None:
    try:
        await body(peer)
    except ConnectionClosed:
        pass


@pytest.mark.parametrize("what", ["server/init", "noise/handshake"])
def test_oversized_handshake_messages_are_refused(tmp_path, what):
    async def body(peer: Peer) -> None:
        await peer.ws.get_message()
        pad = "x" * 200_000
        if what == "server/init":
            await peer.ws.send_message(json.dumps({"type": "server/init", "payload": {
                "server_id": peer.server.client_id, "version": 1, "pad": pad}}))
        else:
            await peer.ws.send_message(json.dumps({"type": "server/init", "payload": {
                "server_id": peer.server.client_id, "version": 1}}))
            await peer.ws.send_message(hs(os.urandom(100_000)))

    _expect_silent_failure(tmp_path, body)


@pytest.mark.parametrize("bad", [
    {"version": 2}, {"version": True}, {"version": 1.0}, {"server_id": "short"},
    {"server_id": "A" * 43 + "="}])
def test_bad_server_init_fails_silently(tmp_path, bad):
    async def body(peer: Peer) -> None:
        await peer.ws.get_message()
        payload = {"server_id": peer.server.client_id, "version": 1, **bad}
        await peer.ws.send_message(json.dumps({"type": "server/init", "payload": payload}))

    _expect_silent_failure(tmp_path, body)


@pytest.mark.parametrize("payload", [b"not json", b"[]", b'{"psk_id":"x","psk_category":"sn"}', b"{}",
                                     json.dumps({"psk_id": SENTINEL_PSK_ID, "psk_category": "zz"}).encode()])
def test_malformed_message_1_payload_fails_silently(tmp_path, payload):
    async def body(peer: Peer) -> None:
        init = json.loads(await peer.ws.get_message())["payload"]
        sinit = json.dumps({"type": "server/init", "payload": {"server_id": peer.server.client_id,
                                                               "version": 1}})
        n = Initiator(peer.server, b64url_decode(init["client_id"]),
                      (json.dumps({"type": "client/init", "payload": init},
                                  separators=(",", ":")) + sinit).encode(), SENTINEL_PSK)
        await peer.ws.send_message(sinit)
        await peer.ws.send_message(hs(bytes(n.c.write_message(payload))))

    _expect_silent_failure(tmp_path, body)


def test_misbound_long_term_psk_is_not_a_miss(tmp_path):
    """A psk_id we hold for *another* server: fail, never fall back to the Sentinel."""
    lt = os.urandom(32)

    async def body(peer: Peer) -> None:
        await peer.handshake(lt, "lt")

    _expect_silent_failure(tmp_path, lambda p: _run_ignoring(body, p),
                           store_setup=lambda s: s.add_pairing(Identity.generate().client_id, lt, "x"))


def test_handshake_timeout(tmp_path):
    async def body(peer: Peer) -> None:
        await peer.ws.get_message()
        await peer.ws.send_message(json.dumps({"type": "server/init", "payload": {
            "server_id": peer.server.client_id, "version": 1}}))
        await trio.sleep(1.0)  # never sends Noise message 1

    err = _expect_silent_failure(tmp_path, body, timeout_s=0.3)
    assert "within" in str(err)


@pytest.mark.parametrize("answer", ["hello", "close", "silence", "binary"])
def test_a_server_that_does_not_speak_noise_is_recognised(tmp_path, answer):
    async def body(peer: Peer) -> None:
        await peer.ws.get_message()
        if answer == "hello":
            await peer.ws.send_message(json.dumps({"type": "server/hello", "payload": {"server_id": "x"}}))
        elif answer == "binary":
            await peer.ws.send_message(b"\x04abc")
        elif answer == "close":
            await peer.ws.aclose()
            return
        await trio.sleep(1.0)

    async def script_body(peer: Peer) -> None:
        await body(peer)

    ident, store = speaker(tmp_path)
    raised = []

    async def script(peer: Peer) -> None:
        try:
            await script_body(peer)
        except ConnectionClosed:
            pass

    async def client(url: str) -> None:
        async with connect(url) as raw:
            try:
                await client_handshake(raw, ident, make_resolver(ident, store), first_reply_timeout_s=0.3)
            except Exception as e:  # noqa: BLE001
                raised.append(e)

    trio.run(run_against, script, client)
    assert len(raised) == 1 and isinstance(raised[0], NotNoiseServer), raised


def test_server_error_is_an_init_rejection(tmp_path):
    async def body(peer: Peer) -> None:
        await peer.ws.get_message()
        await peer.ws.send_message(json.dumps({"type": "server/error", "payload": {"reason": "unsupported_suite"}}))

    err = _expect_silent_failure(tmp_path, body, exc=InitRejected)
    assert err.reason == "unsupported_suite"


@pytest.mark.parametrize("attack", ["replay", "bitflip", "cleartext", "reorder", "bad fragment",
                                    "truncated"])
def test_transport_tampering_closes_silently(tmp_path, attack, caplog):
    ident, store = speaker(tmp_path)
    outcome: list = []

    async def script(peer: Peer) -> None:
        await peer.handshake()
        good = await peer.send_plain(jmsg("server/hello", {"name": "S"}))
        if attack == "replay":
            await peer.ws.send_message(good)
        elif attack == "bitflip":
            ct = bytearray(peer.noise.enc(jmsg("group/update", {})))
            ct[5] ^= 0x01
            await peer.ws.send_message(bytes(ct))
        elif attack == "cleartext":
            await peer.ws.send_message(json.dumps({"type": "server/command", "payload": {}}))
        elif attack == "reorder":
            a = peer.noise.enc(jmsg("group/update", {}))
            b = peer.noise.enc(jmsg("group/update", {}))
            await peer.ws.send_message(b)
            await peer.ws.send_message(a)
        elif attack == "bad fragment":
            await peer.send_plain(b"\x01\x00continuation-without-first")
        elif attack == "truncated":
            await peer.ws.send_message(peer.noise.enc(jmsg("group/update", {}))[:-3])
        await peer.expect_closed()

    async def client(url: str) -> None:
        async with connect(url) as raw:
            sec = await client_handshake(raw, ident, make_resolver(ident, store))
            assert json.loads((await sec.receive()).data)["type"] == "server/hello"
            try:
                await sec.receive()
            except ChannelBroken as e:
                outcome.append(e)
            with pytest.raises(ConnectionClosed):
                await sec.send_text("{}")

    trio.run(run_against, script, client)
    assert len(outcome) == 1


def test_rehandshake_switches_keys_and_holds_sends_until_server_activate(tmp_path):
    ident, store = speaker(tmp_path)
    server = Identity.generate()
    lt = os.urandom(32)
    order: list[str] = []

    async def script(peer: Peer) -> None:
        await peer.handshake()
        old = peer.noise
        # In-band re-handshake to the pairing PSK: message 1 as an encrypted JSON message.
        await trio.sleep(0.05)
        new = Initiator(server, b64url_decode(peer.client_id), old.h, ident.pairing_psk)
        await peer.ws.send_message(old.enc(jmsg("noise/handshake", {
            "data": b64url_encode(new.msg1(psk_id_for(ident.pairing_psk), "pr"))})))
        reply = old.dec(await peer.ws.get_message())  # message 2, under the old keys
        assert json.loads(reply[1:])["type"] == "noise/handshake"
        new.read2(hs_data(reply[1:].decode()))
        peer.noise = new
        order.append("rekeyed")
        with trio.move_on_after(0.4):  # the client's held message must not arrive before activate
            await peer.ws.get_message()
            order.append("EARLY")
        await peer.send("server/activate", {"activities": [], "active_roles": []})
        msg = await peer.recv()
        order.append(msg["type"])
        # And a re-handshake naming a PSK the client does not hold closes silently.
        bad = Initiator(server, b64url_decode(peer.client_id), new.h, lt)
        await peer.ws.send_message(new.enc(jmsg("noise/handshake", {
            "data": b64url_encode(bad.msg1(psk_id_for(lt), "lt"))})))
        await peer.expect_closed()

    async def client(url: str) -> None:
        async with connect(url) as raw:
            sec = await client_handshake(raw, ident, make_resolver(ident, store))
            h1 = sec.handshake_hash

            async def sender() -> None:
                await trio.sleep(0.15)
                order.append("send-called")
                await sec.send_text(json.dumps({"type": "client/state", "payload": {"available": True}}))

            async with trio.open_nursery() as n:
                n.start_soon(sender)
                msg = json.loads((await sec.receive()).data)
            assert msg["type"] == "server/activate"
            assert (sec.psk_category, sec.handshakes) == ("pr", 2) and sec.handshake_hash != h1
            with pytest.raises(ChannelBroken):
                await sec.receive()

    trio.run(run_against, script, client, server)
    assert order == ["rekeyed", "send-called", "client/state"]  # no "EARLY": held back


def test_no_key_material_in_logs(tmp_path, caplog):
    """Run the handshakes above at DEBUG and look for any secret in any encoding."""
    caplog.set_level(logging.DEBUG)
    test_sentinel_session_carries_json_audio_and_fragments(tmp_path / "a")
    test_lookup_miss_falls_back_to_the_sentinel(tmp_path / "b", "unknown lt", caplog)
    test_transport_tampering_closes_silently(tmp_path / "c", "bitflip", caplog)
    test_rehandshake_switches_keys_and_holds_sends_until_server_activate(tmp_path / "d")
    from resonate_embedded.identity import load_or_create

    for d in ("a", "b", "c", "d"):
        ident = load_or_create(tmp_path / d)
        for secret in (ident.private_key, ident.pairing_psk):
            for form in (b64url_encode(secret), secret.hex(), repr(secret)):
                assert form not in caplog.text
    assert caplog.text  # something was logged
