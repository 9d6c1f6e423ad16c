"""Identity, pairing records and the pairing token (spec pairing.md)."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat

import pytest

from resonate_embedded.identity import (
    IDENTITY_FILE, Identity, b64url_encode, load_or_create, peer_key,
)
from resonate_embedded.pairing import (
    PAIRINGS_FILE, PairingRecord, PairingStore, decode_code_token, decode_pairing_token,
    encode_code_token, encode_pairing_token, psk_id_for,
)
from resonate_embedded.state_store import PersistentState, StateStore, adopt_client_id

# Reference vectors from the spec (pairing.md, "Pairing Token" and "QR-code emission").
PSK_TOKEN = ("SP:0AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQTCQKRMFYYDENBWHA5DYP6BYPC4PSOLZXH5DU6V97M5XXO74HR6"
             "LZ7J5PW674PT6X37T6757Y")
CODE_TOKEN = "SP:14DQ6FY7E4XTOP9HJ5LV6Z3PO57YPD4XT6T97N5Y"
SENTINEL_ID = "GFsV9tLaSQm9HcFWpKsgYQOr7wFTvNUtkmFwuVz3zoo"


def test_token_reference_vectors():
    key, psk = bytes(range(32)), bytes(range(0xE0, 0x100))
    assert encode_pairing_token(key, psk) == PSK_TOKEN
    assert decode_pairing_token(PSK_TOKEN) == (key, psk)
    code = bytes(range(0xE0, 0xF8))
    assert encode_code_token(code) == CODE_TOKEN
    assert decode_code_token(CODE_TOKEN) == code


def test_token_decoding_is_lenient_and_strict_where_it_must_be():
    key, psk = decode_pairing_token(PSK_TOKEN)
    assert decode_pairing_token("  " + PSK_TOKEN.lower() + "\n") == (key, psk)
    assert decode_pairing_token(PSK_TOKEN[3:]) == (key, psk)  # SP: is optional
    # Bytes beyond the payload are reserved: ignored.
    body = base64.b32encode(key + psk + b"\x01\x02\x03\x04\x05").decode().rstrip("=")
    assert decode_pairing_token("SP:0" + body.replace("2", "9")) == (key, psk)
    for bad in ("", "SP:", "SP:1" + PSK_TOKEN[4:], "SP:0ABC", PSK_TOKEN[:-10],
                PSK_TOKEN.replace("A", "!", 1), "SP:0" + "É" * 10, CODE_TOKEN):
        with pytest.raises(ValueError):
            decode_pairing_token(bad)
    with pytest.raises(ValueError):
        decode_code_token(PSK_TOKEN)


def test_psk_id_and_peer_ids():
    import hashlib

    assert psk_id_for(hashlib.sha256(b"sendspin-sentinel-psk-v1").digest()) == SENTINEL_ID
    ident = Identity.generate()
    assert len(ident.client_id) == 43 and peer_key(ident.client_id) == ident.public_key
    for bad in ("x" * 43, ident.client_id + "=", ident.client_id[:-1], "+" * 43):
        with pytest.raises(ValueError):
            peer_key(bad)


def test_identity_is_persisted_0600_and_never_shown(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    a = load_or_create(tmp_path)
    path = tmp_path / IDENTITY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    b = load_or_create(tmp_path)
    assert (a.client_id, a.private_key, a.pairing_psk) == (b.client_id, b.private_key, b.pairing_psk)
    assert a.private_key != a.pairing_psk and len(set(a.private_key)) > 8
    secrets_ = [b64url_encode(a.private_key), b64url_encode(a.pairing_psk), a.private_key.hex(),
                a.pairing_psk.hex()]
    for s in secrets_:
        assert s not in repr(a) and s not in caplog.text
    # A loosened mode is tightened again on the next load.
    os.chmod(path, 0o644)
    load_or_create(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_corrupt_identity_is_kept_aside_and_replaced(tmp_path, caplog):
    a = load_or_create(tmp_path)
    (tmp_path / IDENTITY_FILE).write_text("{not json")
    b = load_or_create(tmp_path)
    assert b.client_id != a.client_id
    assert list(tmp_path.glob(IDENTITY_FILE + ".bad-*"))
    assert "must pair again" in caplog.text


def test_two_speakers_never_share_keys(tmp_path):
    ids = {load_or_create(tmp_path / str(i)).client_id for i in range(5)}
    assert len(ids) == 5


def test_records_persist_0600_and_evict_lru_but_never_a_protected_one(tmp_path):
    store = PairingStore(tmp_path)
    assert store.capacity >= 5
    servers = [Identity.generate().client_id for _ in range(store.capacity + 2)]
    for i, sid in enumerate(servers[:store.capacity]):
        store.put(PairingRecord(sid, os.urandom(32), f"S{i}", 100.0 + i, 100.0 + i))
    assert stat.S_IMODE((tmp_path / PAIRINGS_FILE).stat().st_mode) == 0o600
    # Full: the least recently used (S0) goes, unless it backs an open connection.
    evicted = store.put(PairingRecord(servers[-2], os.urandom(32), "new", 500.0, 500.0),
                        protected=[servers[0]])
    assert evicted is not None and evicted.server_id == servers[1]
    assert store.by_server_id(servers[0]) is not None
    # Replacing a server's record never evicts anything.
    assert store.put(PairingRecord(servers[0], os.urandom(32), "S0 again", 600.0, 600.0)) is None
    assert len(store.records()) == store.capacity
    again = PairingStore(tmp_path)
    assert {r.server_id for r in again.records()} == {r.server_id for r in store.records()}
    rec = again.by_server_id(servers[0])
    assert again.by_psk_id(rec.psk_id) == rec and rec.server_name == "S0 again"
    text = (tmp_path / PAIRINGS_FILE).read_text()
    assert rec.psk.hex() not in repr(rec)
    assert json.loads(text)["version"] == 1


def test_mark_used_remembers_urls_and_remove(tmp_path):
    store = PairingStore(tmp_path)
    sid = Identity.generate().client_id
    store.add_pairing(sid, os.urandom(32), "Kitchen server", "ws://a/sendspin")
    assert store.knows_url("ws://a/sendspin") and not store.knows_url("ws://b/sendspin")
    store.mark_used(sid, "ws://b/sendspin")
    assert PairingStore(tmp_path).knows_url("ws://b/sendspin")
    assert store.remove(sid) and not store.remove(sid)
    assert not PairingStore(tmp_path).knows_url("ws://a/sendspin")


def test_unreadable_records_start_empty(tmp_path, caplog):
    (tmp_path / PAIRINGS_FILE).write_text("[]garbage")
    assert PairingStore(tmp_path).records() == []
    assert "unreadable" in caplog.text
    good = Identity.generate().client_id
    (tmp_path / PAIRINGS_FILE).write_text(json.dumps({"version": 1, "records": [
        {"server_id": "bad", "psk": "x"},
        {"server_id": good, "psk": b64url_encode(bytes(32))}]}))
    assert [r.server_id for r in PairingStore(tmp_path).records()] == [good]


def test_plaintext_era_state_keeps_its_settings(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    store = StateStore(tmp_path)
    old = PersistentState(client_id="resonate-0123456789ab", volume=37, muted=True, output_delay_ms=12)
    store.save(old)
    state = StateStore(tmp_path).load()
    ident = load_or_create(tmp_path)
    assert adopt_client_id(state, ident.client_id)
    assert "resonate-0123456789ab" in caplog.text and "public key" in caplog.text
    store.save(state)
    again = StateStore(tmp_path).load()
    assert (again.client_id, again.volume, again.muted, again.output_delay_ms) == (
        ident.client_id, 37, True, 12)
    assert not adopt_client_id(again, ident.client_id)
