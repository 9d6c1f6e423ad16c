"""The speaker's encrypted-Sendspin identity: an X25519 key pair and a pairing PSK.

Both are drawn from the operating system's CSPRNG the first time the player
starts and kept in ``identity.json`` in the state directory, readable by the
owner only (mode 0600), written atomically like the rest of the state.  The
public key *is* the speaker's ``client_id`` (base64url, no padding, 43
characters).  The private key and the pairing PSK never appear in logs or
reprs; the only way to read the pairing PSK out is the pairing token
(:func:`resonate_embedded.pairing.encode_pairing_token`).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import stat
import time
from pathlib import Path

import attrs
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from resonate_embedded.atomic_file import replace_file

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"
KEY_SIZE = 32
PSK_SIZE = 32
PEER_ID_LENGTH = 43
FILE_VERSION = 1


class IdentityError(ValueError):
    """An identity file that cannot be used."""


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict-ish base64url without padding; raises ValueError on anything else."""
    if not isinstance(text, str) or not text.isascii():
        raise ValueError("not an ASCII string")
    if any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def peer_key(peer_id: str) -> bytes:
    """The 32-byte X25519 public key of a ``client_id``/``server_id``; ValueError if malformed."""
    if not isinstance(peer_id, str) or len(peer_id) != PEER_ID_LENGTH:
        raise ValueError("a peer id is 43 base64url characters")
    key = b64url_decode(peer_id)
    if len(key) != KEY_SIZE or b64url_encode(key) != peer_id:
        raise ValueError("a peer id is the canonical base64url of 32 bytes")
    return key


def public_key_of(private_key: bytes) -> bytes:
    # public_bytes(Raw, Raw), not public_bytes_raw(): the image's Debian cryptography is 38
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)


@attrs.frozen
class Identity:
    private_key: bytes = attrs.field(repr=False)
    public_key: bytes
    pairing_psk: bytes = attrs.field(repr=False)

    @property
    def client_id(self) -> str:
        return b64url_encode(self.public_key)

    @classmethod
    def generate(cls) -> Identity:
        private = secrets.token_bytes(KEY_SIZE)
        # X25519 clamps the scalar itself; any 32 random bytes are a valid private key.
        return cls(private, public_key_of(private), secrets.token_bytes(PSK_SIZE))

    def to_json(self) -> str:
        return json.dumps({"version": FILE_VERSION, "private_key": b64url_encode(self.private_key),
                           "pairing_psk": b64url_encode(self.pairing_psk)})

    @classmethod
    def from_json(cls, text: str) -> Identity:
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("version") != FILE_VERSION:
                raise IdentityError("unknown identity file version")
            private = b64url_decode(data["private_key"])
            psk = b64url_decode(data["pairing_psk"])
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise IdentityError(f"malformed identity file ({type(exc).__name__})") from None
        if len(private) != KEY_SIZE or len(psk) != PSK_SIZE:
            raise IdentityError("identity file holds keys of the wrong size")
        return cls(private, public_key_of(private), psk)


def write_secret_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600 (:func:`atomic_file.replace_file`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, text.encode(), 0o600)


def read_secret_file(path: Path) -> str:
    """Read a secret file, tightening its mode to 0600 if someone loosened it."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s was readable by others (mode %o): setting it to 0600", path, mode)
        os.chmod(path, 0o600)
    return path.read_text()


def load_or_create(state_dir: Path) -> Identity:
    """The identity kept in ``state_dir``, generated (and saved) on first use.

    An unreadable file is moved aside (never deleted: it may be recoverable) and a
    new identity is made; the speaker then has a new ``client_id`` and every server
    has to pair it again, which is logged.
    """
    path = state_dir / IDENTITY_FILE
    try:
        identity = Identity.from_json(read_secret_file(path))
    except FileNotFoundError:
        identity = Identity.generate()
        write_secret_file(path, identity.to_json())
        log.info("generated this speaker's identity: client_id %s", identity.client_id)
        return identity
    except (OSError, ValueError) as exc:  # IdentityError; UnicodeDecodeError (binary garbage)
        aside = path.with_name(f"{path.name}.bad-{int(time.time())}")
        try:
            os.replace(path, aside)
        except OSError:
            aside = None
        identity = Identity.generate()
        write_secret_file(path, identity.to_json())
        log.error("identity file %s unusable (%s)%s: generated a new identity, client_id %s; "
                  "servers that paired the old one must pair again", path, exc,
                  f", kept as {aside}" if aside else "", identity.client_id)
        return identity
    return identity
