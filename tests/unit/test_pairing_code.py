"""The Dynamic Pairing Code attempt (speaker side) against a server side written from the spec
(pairing.md: derivation, commitment, CPace sid/AD, MCF tags, wrapping), and the spoken code."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from cpace import CPace, CPaceRole
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from resonate_embedded.audio.formats import PcmShape
from resonate_embedded.audio.spoken_code import digit_clip, render_code
from resonate_embedded.identity import b64url_decode, b64url_encode
from resonate_embedded.pairing import (
    ROUND_LIMIT, DynamicCodeAttempt, PairingProtocolError, PairingStore, derive_digits,
)

SUITE = "25519_ChaChaPoly_SHA256"


class Server:
    """The server's side of one attempt, straight from the spec text."""

    def __init__(self, h: bytes, pairing_index: int, commit_b: bytes) -> None:
        self.h, self.index, self.commit_b = h, pairing_index, commit_b
        self.nonce_a = os.urandom(32)
        self.round = 0

    def pair_init(self) -> dict:
        self.round += 1
        return {"nonce_A": b64url_encode(self.nonce_a)} if self.round == 1 else {}

    def sid(self) -> bytes:
        return (b"sendspin-pair-pake-v1" + self.h + self.index.to_bytes(4, "big")
                + self.round.to_bytes(4, "big"))

    def auth(self, entered: str) -> dict:
        self.entered = entered
        self.cpace = CPace.start(role=CPaceRole.INITIATOR, prs=entered.encode(), sid=self.sid(), ad=b"server")
        return {"pake_msg_1": b64url_encode(self.cpace.public_share)}

    def confirm(self, client_auth: dict) -> dict:
        self.cpace.derive(b64url_decode(client_auth["pake_msg_2"]), b"client")
        return {"server_kc": b64url_encode(self.cpace.tag())}

    def finish(self, confirm: dict, finalize: dict) -> bytes:
        assert self.cpace.verify(b64url_decode(confirm["client_kc"]))
        key = lambda label: hashlib.sha256(label + self.sid() + self.cpace.isk).digest()  # noqa: E731
        nonce_b = ChaCha20Poly1305(key(b"sendspin-pair-nonce-wrap-v1")).decrypt(
            bytes(12), b64url_decode(confirm["wrapped_nonce_B"]), None)
        assert hashlib.sha256(b"sendspin-pair-commit-v1" + nonce_b).digest() == self.commit_b
        digest = hashlib.sha256(b"sendspin-pairing-code-derive-v1" + self.h + self.nonce_a + nonce_b).digest()
        assert f"{int.from_bytes(digest, 'big') % 10**6:06d}" == self.entered
        wrapped = b64url_decode(finalize["wrapped_psk"])
        assert len(wrapped) == 48 and len(finalize["wrapped_psk"]) == 64
        return ChaCha20Poly1305(key(b"sendspin-pair-psk-wrap-v1")).decrypt(bytes(12), wrapped, None)


def test_code_attempt_with_a_wrong_round_then_the_right_code():
    h = os.urandom(32)
    att = DynamicCodeAttempt(h, 3, SUITE)
    init = att.pair_init()
    assert init["pairing_index"] == 3 and len(init["commit_B"]) == 43
    srv = Server(h, 3, b64url_decode(init["commit_B"]))
    code = att.on_pair_init(srv.pair_init())
    assert len(code) == 6 and code.isdigit()
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    reply = att.on_pair_auth(srv.auth(wrong))
    assert att.on_pair_confirm(srv.confirm(reply)) is False
    att.retry()
    assert att.on_pair_init(srv.pair_init()) == code  # same code, new round
    assert att.round == 2
    reply = att.on_pair_auth(srv.auth(code))
    assert att.on_pair_confirm(srv.confirm(reply)) is True
    confirm, finalize = att.confirm_and_finalize()
    assert srv.finish(confirm, finalize) == att.psk and len(att.psk) == 32
    assert code not in repr(att)


def test_protocol_errors():
    h = os.urandom(32)
    att = DynamicCodeAttempt(h, 1, SUITE)
    att.pair_init()
    with pytest.raises(PairingProtocolError):
        att.on_pair_auth({"pake_msg_1": b64url_encode(os.urandom(32))})  # before pair-init
    with pytest.raises(PairingProtocolError):
        att.on_pair_init({})  # first round without nonce_A
    att.on_pair_init({"nonce_A": b64url_encode(os.urandom(32))})
    with pytest.raises(PairingProtocolError):
        att.on_pair_init({})  # a second round without client/pair-retry
    with pytest.raises(PairingProtocolError):
        att.on_pair_auth({"pake_msg_1": "short"})
    with pytest.raises(PairingProtocolError):
        att.on_pair_auth({"pake_msg_1": b64url_encode(bytes(32))})  # low-order point
    att2 = DynamicCodeAttempt(h, 1, SUITE)
    att2.on_pair_init({"nonce_A": b64url_encode(os.urandom(32))})
    att2.on_pair_auth({"pake_msg_1": b64url_encode(CPace.start(
        role=CPaceRole.INITIATOR, prs=b"000000", sid=b"x", ad=b"server").public_share)})
    with pytest.raises(PairingProtocolError):
        att2.on_pair_confirm({"server_kc": b64url_encode(os.urandom(10))})
    with pytest.raises(PairingProtocolError):
        att2.on_pair_init({"nonce_A": b64url_encode(os.urandom(32))})


def test_digits_derivation_matches_the_spec_formula():
    h, a, b = bytes(32), bytes(range(32)), bytes(range(32, 64))
    d = hashlib.sha256(b"sendspin-pairing-code-derive-v1" + h + a + b).digest()
    assert derive_digits(h, a, b) == f"{int.from_bytes(d, 'big') % 1000000:06d}"


def test_round_limit_is_persisted(tmp_path):
    store = PairingStore(tmp_path)
    for _ in range(ROUND_LIMIT):
        store.record_code_round()
    assert PairingStore(tmp_path).code_round_limit_reached  # a reconnect or restart keeps it
    store.reset_code_rounds()
    assert not PairingStore(tmp_path).code_round_limit_reached


def test_spoken_code_is_grouped_digit_clips():
    shape = PcmShape(48000, 2, 16)
    pcm = render_code("123456", shape, repeats=1)
    assert pcm.dtype == np.int16 and pcm.shape[1] == 2 and np.array_equal(pcm[:, 0], pcm[:, 1])
    x = pcm[:, 0].astype(np.int64)
    # the clips appear in order, separated by silence, the group gap longer than the digit gap
    pos, starts = 0, []
    for d in "123456":
        clip = np.rint(digit_clip(int(d), 48000)).astype(np.int64)
        found = next(i for i in range(pos, x.size - clip.size + 1, 1)
                     if x[i] == clip[0] and np.array_equal(x[i:i + clip.size], clip))
        starts.append((found, found + clip.size))
        pos = found + clip.size
    gaps = [starts[i + 1][0] - starts[i][1] for i in range(5)]
    assert gaps[2] > gaps[0] == gaps[1] == gaps[3] == gaps[4]
    assert render_code("123456", PcmShape(44100, 1, 24)).dtype == np.int32
    with pytest.raises(ValueError):
        render_code("12a456", shape)
