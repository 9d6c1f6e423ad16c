"""Pairing records and the pairing token.

A pairing record is the long-term PSK this speaker shares with one server
(keyed by the server's ``server_id``), created by a successful pairing and
found again by its ``psk_id`` when that server connects.  Records live in
``pairings.json`` in the state directory (mode 0600, atomic writes).  The store
holds at least :data:`RECORD_CAPACITY` (≥ 5, the spec's minimum); a pairing at
capacity evicts the least recently used record that does not back an open
connection, so a pairing never fails for lack of room.

The pairing token (``SP:`` + version + base32 body) carries this speaker's
public key and its pairing PSK to the server's operator (spec pairing.md,
"Pairing Token"); :func:`encode_pairing_token`/:func:`decode_pairing_token`
implement it, the decoder leniently as the spec asks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Iterable

import attrs

from resonate_embedded.identity import (
    KEY_SIZE, PSK_SIZE, b64url_decode, b64url_encode, peer_key, read_secret_file,
    write_secret_file,
)

log = logging.getLogger(__name__)

PAIRINGS_FILE = "pairings.json"
RECORD_CAPACITY = 8
MAX_URLS_PER_RECORD = 4
PSK_ID_LABEL = b"sendspin-psk-id-v1"
TOKEN_PREFIX = "SP:"
PSK_TOKEN_VERSION = "0"
CODE_TOKEN_VERSION = "1"
QR_CODE_SIZE = 24
ROUND_LIMIT = 20  # spec: pairing-code rounds since the last verified server_kc, then hold back


def psk_id_for(psk: bytes) -> str:
    """``base64url(SHA-256("sendspin-psk-id-v1" || PSK))`` (43 characters)."""
    if len(psk) != PSK_SIZE:
        raise ValueError("a PSK is 32 bytes")
    return b64url_encode(hashlib.sha256(PSK_ID_LABEL + psk).digest())


# --------------------------------------------------------------------------- records


@attrs.frozen
class PairingRecord:
    server_id: str
    psk: bytes = attrs.field(repr=False)
    server_name: str = ""
    created: float = 0.0  # wall clock, for people
    last_used: float = 0.0  # wall clock; the eviction order
    urls: tuple[str, ...] = ()  # where this server was reached (downgrade protection)

    @property
    def psk_id(self) -> str:
        return psk_id_for(self.psk)

    def to_dict(self) -> dict:
        return {"server_id": self.server_id, "psk": b64url_encode(self.psk),
                "server_name": self.server_name, "created": self.created,
                "last_used": self.last_used, "urls": list(self.urls)}

    @classmethod
    def from_dict(cls, d: dict) -> PairingRecord:
        server_id = d["server_id"]
        peer_key(server_id)
        psk = b64url_decode(d["psk"])
        if len(psk) != PSK_SIZE:
            raise ValueError("PSK of the wrong size")
        urls = tuple(u for u in d.get("urls", ()) if isinstance(u, str))
        return cls(server_id, psk, str(d.get("server_name", "")), float(d.get("created", 0.0)),
                   float(d.get("last_used", 0.0)), urls)


class PairingStore:
    """The speaker's pairing records, persisted on every change."""

    def __init__(self, state_dir: Path, capacity: int = RECORD_CAPACITY) -> None:
        if capacity < 5:
            raise ValueError("the spec requires room for at least 5 pairing records")
        self.capacity = capacity
        self._path = state_dir / PAIRINGS_FILE
        self._records: dict[str, PairingRecord] = {}
        self.code_rounds = 0  # dynamic-pairing-code rounds since the last verified server_kc
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(read_secret_file(self._path))
            records = data["records"] if isinstance(data, dict) else None
            if not isinstance(records, list):
                raise ValueError("no record list")
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            # Moved aside, not overwritten by the next save: the records may be recoverable.
            from resonate_embedded.state_store import move_aside

            aside = move_aside(self._path)
            log.error("pairing records %s unreadable (%s)%s: starting with none; servers that "
                      "paired this speaker will fall back to unpaired sessions", self._path,
                      type(exc).__name__, f", moved aside to {aside.name}" if aside else "")
            return
        rounds = data.get("code_rounds", 0)
        self.code_rounds = rounds if isinstance(rounds, int) and rounds >= 0 else ROUND_LIMIT
        for item in records:
            try:
                if not isinstance(item, dict):
                    raise TypeError("a record is not an object")
                record = PairingRecord.from_dict(item)
            except (ValueError, KeyError, TypeError, OverflowError):
                log.error("dropping a malformed pairing record from %s", self._path)
                continue
            self._records[record.server_id] = record

    def _save(self) -> None:
        data = {"version": 1, "records": [r.to_dict() for r in self._records.values()],
                "code_rounds": self.code_rounds}
        write_secret_file(self._path, json.dumps(data, indent=1))

    # -- queries --------------------------------------------------------------------------
    def records(self) -> list[PairingRecord]:
        return sorted(self._records.values(), key=lambda r: r.last_used, reverse=True)

    def by_server_id(self, server_id: str) -> PairingRecord | None:
        return self._records.get(server_id)

    def by_psk_id(self, psk_id: str) -> PairingRecord | None:
        for record in self._records.values():
            if record.psk_id == psk_id:
                return record
        return None

    def knows_url(self, url: str) -> bool:
        """Whether a paired server was reached at ``url`` (then never speak plaintext there)."""
        return any(url in r.urls for r in self._records.values())

    # -- changes --------------------------------------------------------------------------
    def put(self, record: PairingRecord, protected: Iterable[str] = ()) -> PairingRecord | None:
        """Store ``record`` (replacing any for its server); returns an evicted record, if any.

        ``protected`` are the ``server_id``s of records backing open connections, which
        are never evicted.
        """
        evicted = None
        if record.server_id not in self._records and len(self._records) >= self.capacity:
            keep = set(protected)
            candidates = [r for r in self._records.values() if r.server_id not in keep]
            if not candidates:  # the caller broke the open-connection cap; never fail a pairing
                candidates = list(self._records.values())
            evicted = min(candidates, key=lambda r: r.last_used)
            del self._records[evicted.server_id]
            log.warning("pairing store full (%d): forgot the least recently used server %s (%s)",
                        self.capacity, evicted.server_id, evicted.server_name or "unnamed")
        self._records[record.server_id] = record
        self._save()
        return evicted

    def add_pairing(self, server_id: str, psk: bytes, server_name: str = "", url: str | None = None,
                    protected: Iterable[str] = ()) -> PairingRecord:
        now = time.time()
        record = PairingRecord(server_id, psk, server_name, now, now, (url,) if url else ())
        self.put(record, protected)
        log.info("paired with server %s (%s)", server_id, server_name or "unnamed")
        return record

    def mark_used(self, server_id: str, url: str | None = None) -> None:
        record = self._records.get(server_id)
        if record is None:
            return
        urls = record.urls
        if url and url not in urls:
            urls = (url, *urls)[:MAX_URLS_PER_RECORD]
        self._records[server_id] = attrs.evolve(record, last_used=time.time(), urls=urls)
        self._save()

    def record_code_round(self) -> int:
        """Count a pairing-code round (persisted: a reconnect must not reset the limit)."""
        self.code_rounds += 1
        self._save()
        return self.code_rounds

    def reset_code_rounds(self) -> None:
        if self.code_rounds:
            self.code_rounds = 0
            self._save()

    @property
    def code_round_limit_reached(self) -> bool:
        return self.code_rounds >= ROUND_LIMIT

    def remove(self, server_id: str) -> bool:
        if self._records.pop(server_id, None) is None:
            return False
        self._save()
        log.info("forgot the pairing with server %s", server_id)
        return True


# --------------------------------------------------------------------------- token


def _encode_token(version: str, payload: bytes) -> str:
    body = base64.b32encode(payload).decode("ascii").rstrip("=").replace("2", "9")
    return f"{TOKEN_PREFIX}{version}{body}"


def _decode_token(text: str, expect_version: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError("a pairing token is a string")
    text = text.strip()
    if not text.isascii():
        raise ValueError("malformed pairing token")
    text = text.upper()
    if text.startswith(TOKEN_PREFIX):
        text = text[len(TOKEN_PREFIX):]
    if not text:
        raise ValueError("malformed pairing token")
    version, body = text[0], text[1:]
    if version != expect_version:
        raise ValueError(f"pairing token version {version!r} is not {expect_version!r}")
    body = body.replace("9", "2")
    if any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567" for c in body):
        raise ValueError("malformed pairing token")
    try:
        return base64.b32decode(body + "=" * (-len(body) % 8))
    except ValueError:
        raise ValueError("malformed pairing token") from None


def encode_pairing_token(client_key: bytes, pairing_psk: bytes) -> str:
    """Version-0 token: ``client_key (32) || pairing_psk (32)``."""
    if len(client_key) != KEY_SIZE or len(pairing_psk) != PSK_SIZE:
        raise ValueError("a pairing token carries a 32-byte key and a 32-byte PSK")
    return _encode_token(PSK_TOKEN_VERSION, client_key + pairing_psk)


def decode_pairing_token(text: str) -> tuple[bytes, bytes]:
    """(client_key, pairing_psk) from a version-0 token; extra payload bytes are ignored."""
    payload = _decode_token(text, PSK_TOKEN_VERSION)
    if len(payload) < KEY_SIZE + PSK_SIZE:
        raise ValueError("pairing token payload too short")
    return payload[:KEY_SIZE], payload[KEY_SIZE:KEY_SIZE + PSK_SIZE]


def encode_code_token(code: bytes) -> str:
    """Version-1 token: a 24-byte dynamic pairing code (``qr_code`` format)."""
    if len(code) != QR_CODE_SIZE:
        raise ValueError("a QR pairing code is 24 bytes")
    return _encode_token(CODE_TOKEN_VERSION, code)


def decode_code_token(text: str) -> bytes:
    payload = _decode_token(text, CODE_TOKEN_VERSION)
    if len(payload) < QR_CODE_SIZE:
        raise ValueError("pairing token payload too short")
    return payload[:QR_CODE_SIZE]


# --------------------------------------------------------------------------- dynamic pairing code

PAIR_COMMIT_LABEL = b"sendspin-pair-commit-v1"
CODE_DERIVE_LABEL = b"sendspin-pairing-code-derive-v1"
PAKE_SID_LABEL = b"sendspin-pair-pake-v1"
PSK_WRAP_LABEL = b"sendspin-pair-psk-wrap-v1"
NONCE_WRAP_LABEL = b"sendspin-pair-nonce-wrap-v1"
PAKE_AD_SERVER = b"server"
PAKE_AD_CLIENT = b"client"


class PairingProtocolError(ValueError):
    """A pairing message no conformant server sends: close the connection silently."""


def derive_digits(handshake_hash: bytes, nonce_a: bytes, nonce_b: bytes) -> str:
    """The 6-digit dynamic pairing code (spec pairing.md, "Pairing code derivation")."""
    digest = hashlib.sha256(CODE_DERIVE_LABEL + handshake_hash + nonce_a + nonce_b).digest()
    return f"{int.from_bytes(digest, 'big') % 1_000_000:06d}"


def pake_sid(handshake_hash: bytes, pairing_index: int, round_number: int) -> bytes:
    return (PAKE_SID_LABEL + handshake_hash + pairing_index.to_bytes(4, "big")
            + round_number.to_bytes(4, "big"))


def _aead(suite: str, key: bytes):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    return AESGCM(key) if "AESGCM" in suite else ChaCha20Poly1305(key)


def _field_bytes(payload: dict, key: str, size: int) -> bytes:
    try:
        value = b64url_decode(payload[key])
    except (KeyError, ValueError, TypeError):
        raise PairingProtocolError(f"missing or malformed {key}") from None
    if len(value) != size:
        raise PairingProtocolError(f"{key} is {len(value)} bytes, not {size}")
    return value


class DynamicCodeAttempt:
    """The speaker's side of one Dynamic Pairing Code attempt (``digits`` format).

    Driven by the session: ``pair_init`` → (per round) ``on_pair_init`` (returns the
    code to emit) → ``on_pair_auth`` → ``on_pair_confirm`` → ``confirm_and_finalize``.
    Holds ``nonce_B`` and the new long-term PSK; neither is ever logged.
    """

    def __init__(self, handshake_hash: bytes, pairing_index: int, suite: str) -> None:
        import secrets

        self._h = handshake_hash
        self.pairing_index = pairing_index
        self._suite = suite
        self._nonce_b = secrets.token_bytes(32)
        self.round = 0
        self.code: str | None = None
        self._cpace = None
        self._sid = b""
        self._round_expected = True
        self.psk: bytes | None = None

    def __repr__(self) -> str:
        return f"DynamicCodeAttempt(pairing_index={self.pairing_index}, round={self.round})"

    def pair_init(self) -> dict:
        commit = hashlib.sha256(PAIR_COMMIT_LABEL + self._nonce_b).digest()
        return {"pairing_index": self.pairing_index, "commit_B": b64url_encode(commit)}

    def on_pair_init(self, payload: dict) -> str:
        """A new round; returns the code to emit (the same in every round)."""
        from cpace import CPace, CPaceError, CPaceRole

        if self.round == 0:
            nonce_a = _field_bytes(payload, "nonce_A", 32)
            self.code = derive_digits(self._h, nonce_a, self._nonce_b)
        elif payload.get("nonce_A") is not None:
            raise PairingProtocolError("server/pair-init carries nonce_A after the first round")
        if not self._round_expected:
            raise PairingProtocolError("server/pair-init without a client/pair-init or client/pair-retry")
        self._round_expected = False
        self.round += 1
        self._sid = pake_sid(self._h, self.pairing_index, self.round)
        try:
            self._cpace = CPace.start(role=CPaceRole.RESPONDER, prs=self.code.encode("ascii"),
                                      sid=self._sid, ad=PAKE_AD_CLIENT)
        except CPaceError:
            raise PairingProtocolError("CPace could not start") from None
        return self.code

    def on_pair_auth(self, payload: dict) -> dict:
        from cpace import CPaceError

        if self._cpace is None:
            raise PairingProtocolError("server/pair-auth before server/pair-init")
        share = _field_bytes(payload, "pake_msg_1", 32)
        try:
            self._cpace.derive(share, PAKE_AD_SERVER)
        except CPaceError:
            raise PairingProtocolError("invalid CPace share") from None
        return {"pake_msg_2": b64url_encode(self._cpace.public_share)}

    def on_pair_confirm(self, payload: dict) -> bool:
        if self._cpace is None:
            raise PairingProtocolError("server/pair-confirm before server/pair-auth")
        tag = _field_bytes(payload, "server_kc", 64)
        try:
            ok = bool(self._cpace.verify(tag))
        except Exception:  # noqa: BLE001 - CPaceError: not derived yet
            raise PairingProtocolError("server/pair-confirm before server/pair-auth") from None
        self._cpace_done = True
        return ok

    def retry(self) -> None:
        """The client asks for another round (client/pair-retry)."""
        self._round_expected = True

    def confirm_and_finalize(self) -> tuple[dict, dict]:
        """client/pair-confirm and client/pair-finalize payloads (the PSK sealed under CPace)."""
        import secrets

        isk = self._cpace.isk
        nonce_key = hashlib.sha256(NONCE_WRAP_LABEL + self._sid + isk).digest()
        psk_key = hashlib.sha256(PSK_WRAP_LABEL + self._sid + isk).digest()
        self.psk = secrets.token_bytes(32)
        zero = bytes(12)
        confirm = {"client_kc": b64url_encode(self._cpace.tag()),
                   "wrapped_nonce_B": b64url_encode(_aead(self._suite, nonce_key).encrypt(zero, self._nonce_b, None))}
        finalize = {"wrapped_psk": b64url_encode(_aead(self._suite, psk_key).encrypt(zero, self.psk, None))}
        return confirm, finalize
