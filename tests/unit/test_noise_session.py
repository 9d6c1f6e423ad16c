"""An encrypted Session against the scripted fake server: activation rules, Pairing PSK flow,
server/unpair, the 13-byte audio header.  (Fake peer: tests/unit/test_noise_transport.py.)"""

from __future__ import annotations

import json
import os
import struct

import pytest
import trio

from resonate_embedded.audio.commands import PcmChunk
from resonate_embedded.audio.formats import StreamFormat
from resonate_embedded.clock.local import local_now_us
from resonate_embedded.clock.sync import ClockSync
from resonate_embedded.identity import Identity, b64url_decode, b64url_encode, load_or_create
from resonate_embedded.pairing import PairingStore, psk_id_for
from resonate_embedded.protocol.connection import connect
from resonate_embedded.protocol.messages import ClientHello, DeviceInfo
from resonate_embedded.protocol.noise_transport import client_handshake, make_resolver
from resonate_embedded.protocol.session import Security, Session, SessionRefused
from resonate_embedded.state_store import PersistentState

from test_noise_transport import Initiator, Peer, jmsg, run_against  # noqa: E402 (sibling test module)

PLAYER = ["player@v1"]


async def recv_app(peer: Peer) -> dict:
    """Next client message that is not client/time (those are answered like a server would)."""
    while True:
        msg = await peer.recv()
        if msg["type"] != "client/time":
            return msg
        t = msg["payload"]["client_transmitted"]
        now = local_now_us()
        await peer.send("server/time", {"client_transmitted": t, "server_received": now,
                                        "server_transmitted": now})


async def rehandshake(peer: Peer, psk: bytes, category: str) -> None:
    old = peer.noise
    new = Initiator(peer.server, b64url_decode(peer.client_id), old.h, psk)
    await peer.ws.send_message(old.enc(jmsg("noise/handshake", {
        "data": b64url_encode(new.msg1(psk_id_for(psk), category))})))
    while True:  # the client may still have old-key messages in flight
        msg = json.loads(old.dec(await peer.ws.get_message())[1:])
        if msg["type"] == "noise/handshake":
            break
    new.read2(b64url_decode(msg["payload"]["data"]))
    peer.noise = new


async def open_session(peer: Peer, psk: bytes, category: str, activate: dict) -> dict:
    assert await peer.handshake(psk, category) == b"{}"
    await peer.send("server/hello", {"name": "Fake"})
    hello = await peer.recv()
    await peer.send("server/activate", activate)
    return hello


def run_session(tmp_path, script, *, unpaired_access=True, setup=None, server=None, check=None):
    ident = load_or_create(tmp_path)
    store = PairingStore(tmp_path)
    if setup:
        setup(store)
    outcome: dict = {}

    async def client(url: str) -> None:
        to_writer, from_session = trio.open_memory_channel(1000)
        _events_send, events = trio.open_memory_channel(10)
        hello = ClientHello("ignored", "Speaker", DeviceInfo("p", "m", "1"),
                            (StreamFormat("pcm", 48000, 2, 16),), 1_000_000)
        async with connect(url) as raw:
            sec = await client_handshake(raw, ident, make_resolver(ident, store))
            session = Session(sec, hello, PersistentState(client_id=ident.client_id), lambda: None,
                              ClockSync(), to_writer, events, Security(store, unpaired_access, url))
            try:
                await session.run()
            except* SessionRefused as group:
                outcome["refused"] = str(group.exceptions[0])
        to_writer.close()
        outcome["writer"] = [c async for c in from_session]
        outcome["session"] = session

    trio.run(run_against, script, client, server or Identity.generate())
    if check:
        check(outcome, store, ident)
    return outcome, store, ident


def test_secure_hello_and_initial_state_then_audio_with_13_byte_header(tmp_path):
    seen = {}

    async def script(peer: Peer) -> None:
        seen["hello"] = await open_session(peer, *_sentinel(), {"activities": ["playback"],
                                                               "active_roles": PLAYER})
        seen["state"] = await recv_app(peer)
        await peer.send("stream/start", {"player": {"codec": "pcm", "sample_rate": 48000,
                                                    "channels": 2, "bit_depth": 16}})
        pcm = struct.pack("<4h", 1, 2, 3, 4)
        await peer.send_plain(struct.pack(">BqI", 4, 5_000_000, 1234) + pcm)
        await trio.sleep(0.3)
        await peer.ws.aclose()

    out, _, _ = run_session(tmp_path, script)
    p = seen["hello"]["payload"]
    assert seen["hello"]["type"] == "client/hello"
    assert "client_id" not in p and "version" not in p and "player_support" not in p
    assert p["supported_pair_methods"] == {
        "pairing_psk": {"locations": ["device"]},
        "dynamic_pairing_code": {"out_channels": ["speaker"], "formats": ["digits"]}}
    assert p["unpaired_access"] == {"enabled": True}
    assert "supported_commands" not in p["player@v1_support"]
    st = seen["state"]["payload"]
    assert st["available"] is True and "state" not in st
    assert set(st["player"]) >= {"volume", "muted", "output_delay_ms", "required_lead_time_ms",
                                 "min_buffer_ms", "supported_commands"}
    chunks = [c for c in out["writer"] if isinstance(c, PcmChunk)]
    assert len(chunks) == 1 and chunks[0].server_ts_us == 5_000_000
    assert chunks[0].pcm.tolist() == [[1, 2], [3, 4]]


def _sentinel():
    from resonate_embedded.protocol.noise_transport import SENTINEL_PSK

    return SENTINEL_PSK, "sn"


def test_unpaired_access_off_refuses_playback_with_pairing_required(tmp_path):
    got = {}

    async def script(peer: Peer) -> None:
        hello = await open_session(peer, *_sentinel(), {"activities": ["playback"], "active_roles": PLAYER})
        assert hello["payload"]["unpaired_access"] == {"enabled": False}
        got["goodbye"] = await recv_app(peer)
        await peer.expect_closed()

    out, _, _ = run_session(tmp_path, script, unpaired_access=False)
    assert got["goodbye"] == {"type": "client/goodbye", "payload": {"reason": "pairing_required"}}
    assert "pairing_required" in out["refused"]


def test_unpaired_access_off_idles_on_empty_activation(tmp_path):
    async def script(peer: Peer) -> None:
        await open_session(peer, *_sentinel(), {"activities": [], "active_roles": []})
        with trio.move_on_after(0.5):
            msg = await recv_app(peer)
            raise AssertionError(f"unexpected {msg}")
        await peer.ws.aclose()

    out, _, _ = run_session(tmp_path, script, unpaired_access=False)
    assert "refused" not in out


@pytest.mark.parametrize("activate", [
    {"activities": ["pairing"], "active_roles": [], "pairing": {"method": "pairing_psk"}},
    {"activities": ["dancing"], "active_roles": []},
])
def test_long_term_session_refuses_what_the_psk_does_not_allow(tmp_path, activate):
    server = Identity.generate()
    lt = os.urandom(32)
    got = {}

    async def script(peer: Peer) -> None:
        await open_session(peer, lt, "lt", activate)
        got["goodbye"] = await recv_app(peer)
        await peer.expect_closed()

    run_session(tmp_path, script, server=server,
                setup=lambda s: s.add_pairing(server.client_id, lt, "Paired"))
    assert got["goodbye"]["payload"]["reason"] == "unauthorized"


def test_pairing_psk_flow_then_long_term_session(tmp_path):
    server = Identity.generate()
    got = {}

    async def script(peer: Peer) -> None:
        await open_session(peer, *_sentinel(), {"activities": [], "active_roles": []})
        # A format the speaker does not offer, and pairing_psk on the wrong PSK: pair/abort.
        await peer.send("server/activate", {"activities": ["pairing"], "active_roles": [],
                                            "pairing": {"method": "dynamic_pairing_code", "format": "qr_code"}})
        got["abort1"] = await recv_app(peer)
        await peer.send("server/activate", {"activities": ["pairing"], "active_roles": [],
                                            "pairing": {"method": "pairing_psk"}})
        got["abort2"] = await recv_app(peer)
        # The operator enters the token: re-handshake to the pairing PSK, then the attempt.
        ident = load_or_create(tmp_path)
        await rehandshake(peer, ident.pairing_psk, "pr")
        await peer.send("server/activate", {"activities": ["pairing"], "active_roles": [],
                                            "pairing": {"method": "pairing_psk"}})
        got["init"] = await recv_app(peer)
        got["finalize"] = await recv_app(peer)
        lt = b64url_decode(got["finalize"]["payload"]["long_term_psk"])
        await peer.send("server/pair-finalize", {})
        await rehandshake(peer, lt, "lt")
        await peer.send("server/activate", {"activities": ["playback"], "active_roles": PLAYER})
        got["state"] = await recv_app(peer)
        got["lt"] = lt
        await peer.ws.aclose()

    out, store, ident = run_session(tmp_path, script, server=server)
    assert got["abort1"]["payload"] == {"reason": "method_not_supported"}
    assert got["abort2"]["payload"] == {"reason": "method_not_supported"}
    assert got["init"] == {"type": "client/pair-init", "payload": {"pairing_index": 1}}  # counted since the re-handshake
    assert got["finalize"]["type"] == "client/pair-finalize"
    assert got["lt"] not in (ident.pairing_psk,) and len(got["lt"]) == 32
    rec = store.by_server_id(server.client_id)
    assert rec is not None and rec.psk == got["lt"] and rec.server_name == "Fake"
    assert PairingStore(tmp_path).by_server_id(server.client_id).psk == got["lt"]
    assert got["state"]["payload"]["available"] is True
    assert out["session"]._conn.psk_category == "lt"


def test_cancelled_pairing_persists_nothing(tmp_path):
    server = Identity.generate()

    async def script(peer: Peer) -> None:
        ident = load_or_create(tmp_path)
        await open_session(peer, ident.pairing_psk, "pr",
                           {"activities": ["pairing"], "active_roles": [], "pairing": {"method": "pairing_psk"}})
        assert (await recv_app(peer))["type"] == "client/pair-init"
        assert (await recv_app(peer))["type"] == "client/pair-finalize"
        await peer.send("server/activate", {"activities": [], "active_roles": []})  # cancels
        await peer.send("server/pair-finalize", {})  # stale: must not persist
        await trio.sleep(0.3)
        await peer.ws.aclose()

    _, store, _ = run_session(tmp_path, script, server=server)
    assert store.records() == []


def test_server_unpair_drops_the_record_and_says_goodbye(tmp_path):
    server = Identity.generate()
    lt = os.urandom(32)
    got = {}

    async def script(peer: Peer) -> None:
        await open_session(peer, lt, "lt", {"activities": ["playback"], "active_roles": PLAYER})
        assert (await recv_app(peer))["type"] == "client/state"
        await peer.send("server/unpair", {})
        got["goodbye"] = await recv_app(peer)
        await peer.expect_closed()

    _, store, _ = run_session(tmp_path, script, server=server,
                              setup=lambda s: s.add_pairing(server.client_id, lt, "Paired"))
    assert got["goodbye"]["payload"] == {"reason": "unpaired"}
    assert store.by_server_id(server.client_id) is None


def test_server_unpair_is_ignored_on_an_unpaired_session(tmp_path):
    async def script(peer: Peer) -> None:
        await open_session(peer, *_sentinel(), {"activities": ["playback"], "active_roles": PLAYER})
        assert (await recv_app(peer))["type"] == "client/state"
        await peer.send("server/unpair", {})
        await peer.send("server/command", {"player": {"command": "volume", "volume": 40}})
        msg = await recv_app(peer)
        assert msg["type"] == "client/state" and msg["payload"]["player"]["volume"] == 40
        assert msg["payload"]["available"] is True
        await peer.ws.aclose()

    out, _, _ = run_session(tmp_path, script)
    assert "refused" not in out


def test_plaintext_hello_from_a_paired_server_is_refused(tmp_path):
    """Downgrade protection in the plaintext path: a server_id we hold a pairing for."""
    server = Identity.generate()
    store = PairingStore(tmp_path)
    store.add_pairing(server.client_id, os.urandom(32), "Paired")
    out = {}

    async def script(peer: Peer) -> None:
        await peer.ws.get_message()  # the plaintext client/hello
        await peer.ws.send_message(json.dumps({"type": "server/hello", "payload": {
            "server_id": server.client_id, "name": "Paired", "version": 1}}))
        await trio.sleep(0.5)

    async def client(url: str) -> None:
        to_writer, _r = trio.open_memory_channel(10)
        _s, events = trio.open_memory_channel(10)
        hello = ClientHello("id", "Speaker", DeviceInfo("p", "m", "1"),
                            (StreamFormat("pcm", 48000, 2, 16),), 1_000_000)
        async with connect(url) as raw:
            session = Session(raw, hello, PersistentState(), lambda: None, ClockSync(), to_writer,
                              events, Security(store, True, url))
            try:
                await session.run()
            except* SessionRefused as g:
                out["refused"] = str(g.exceptions[0])

    trio.run(run_against, script, client, server)
    assert "downgrade" in out["refused"]
