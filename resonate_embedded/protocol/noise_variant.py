"""Which Noise variant a server speaks: the current one (aiosendspin 10.x) or the older
one (aiosendspin 7.x-9.x, whose noise code is the same in 7.0.0 and 9.1.1), recognised
from the server's Noise message 1.

Shared byte for byte: ``client/init`` (``client_id``, ``version`` 1, ``suite``),
``server/init`` (``server_id``, ``version`` 1: no field tells the variants apart), the
prologue (wire bytes of client/init then server/init), ``Noise_KKpsk2`` with the PSK
mixed at message 2 (two messages; there is no message 3 in either), the Sentinel PSK
(SHA-256 of ``sendspin-sentinel-psk-v1``), ``psk_id`` (SHA-256 labelled
``sendspin-psk-id-v1``), the message 2 payload ``{}``, and type byte 0 = JSON in
transport mode.

What differs (older → current):

* message 1 payload: ``{"psk_id"}`` → ``{"psk_id", "psk_category"}``.  The older
  client resolves the PSK by ``psk_id`` alone (so do we: Sentinel, Pairing PSK, then
  the long-term store; a record bound to another ``server_id`` still fails);
* the older server always admits (its record for the client, a staged Pairing PSK,
  else the Sentinel) and has no ``server/error``;
* fragments: type 2 (first: the original type follows; or middle) and 3 (last) → type
  1 with a flags byte;
* audio chunk header of an encrypted session: 9 bytes (type, timestamp) → 13
  (+ ``send_ahead``);
* ``client/hello``: ``player@v1_support.supported_commands`` (volume, mute) is
  required and ``supported_pair_methods`` is a list of ``{"method": …}``; the delay is
  the *static* delay (``set_static_delay``), as in plaintext with those releases;
* an in-band re-handshake (pairing) is followed by ``server/hello`` and our
  ``client/hello`` again, then ``server/activate`` → by ``server/activate`` alone;
* pairing: the older Dynamic PIN derivation differs, so only the Pairing PSK is offered;
  its flow is ``client/pair-finalize`` alone (no ``client/pair-init`` before it).

The variant is kept per ``server_id`` in the server profile (``server_profile.py``).
"""

from __future__ import annotations

import json

import attrs

CURRENT = "current"
OLDER = "older"
CATEGORIES = ("lt", "pr", "sn")
RESOLUTION_ORDER = ("sn", "pr", "lt")  # older variant: the category is found, not named
AUDIO_HEADER_SIZE = {CURRENT: 13, OLDER: 9}
QUIET_UNTIL = {CURRENT: "server/activate", OLDER: "server/hello"}  # after a re-handshake
FRAGMENT = 1  # current: a flags byte follows
FRAG_LAST = 0x01
FRAG_FIRST = 0x02
FRAG_RESERVED = 0xFC
OLDER_FRAG_MORE = 2  # older: first or middle fragment (the first carries the original type)
OLDER_FRAG_END = 3


class Message1Error(ValueError):
    """The message 1 payload is not one of either variant."""


@attrs.frozen
class Message1:
    psk_id: str
    category: str | None  # None: the older variant names none

    @property
    def variant(self) -> str:
        return OLDER if self.category is None else CURRENT

    def categories(self) -> tuple[str, ...]:
        """The PSK categories to look the ``psk_id`` up in, in order."""
        return RESOLUTION_ORDER if self.category is None else (self.category,)


def parse_message_1(plaintext: bytes) -> Message1:
    try:
        obj = json.loads(plaintext.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Message1Error("Noise message 1 payload is not UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise Message1Error("Noise message 1 payload is not an object")
    psk_id, category = obj.get("psk_id"), obj.get("psk_category")
    if not isinstance(psk_id, str) or len(psk_id) != 43:
        raise Message1Error(f"Noise message 1 payload lacks a valid psk_id: {_keys(obj)}")
    if category is not None and category not in CATEGORIES:
        raise Message1Error(f"Noise message 1 names an unknown psk_category {str(category)[:20]!r}")
    return Message1(psk_id, category)


def _keys(obj: dict) -> str:
    return "fields " + ", ".join(sorted(str(k)[:40] for k in obj)[:8]) if obj else "empty"


def fragments(variant: str, plaintext: bytes, cap: int) -> list[bytes]:
    """``plaintext`` (type byte first) as ``variant``'s fragments of at most ``cap`` bytes."""
    older = variant == OLDER
    first_head = bytes([OLDER_FRAG_MORE, plaintext[0]] if older
                       else [FRAGMENT, FRAG_FIRST, plaintext[0]])
    data = memoryview(plaintext)[1:]
    first_cap, cont_cap = cap - len(first_head), cap - (1 if older else 2)
    chunks = [data[:first_cap]] + [data[i:i + cont_cap] for i in range(first_cap, len(data), cont_cap)]
    frames = []
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        if older:
            head = first_head if i == 0 else bytes([OLDER_FRAG_END if last else OLDER_FRAG_MORE])
        else:
            head = bytes([FRAGMENT, (FRAG_FIRST if i == 0 else 0) | (FRAG_LAST if last else 0)]) + (
                first_head[2:] if i == 0 else b"")
        frames.append(head + bytes(chunk))
    return frames


class Reassembly:
    """Reassembles ``variant``'s fragments; ``ValueError`` on a malformed sequence."""

    def __init__(self, variant: str, limit: int) -> None:
        self._older = variant == OLDER
        self._buf: bytearray | None = None  # original type byte first
        self._limit = limit

    def feed(self, plaintext: bytes) -> bytes | None:
        """The message ``plaintext`` completes: itself when it is no fragment, the whole
        message on a last fragment, None while more are to come."""
        kinds = (OLDER_FRAG_MORE, OLDER_FRAG_END) if self._older else (FRAGMENT,)
        if plaintext[0] not in kinds:
            if self._buf is not None:
                raise ValueError("unfragmented message inside a fragmented one")
            return plaintext
        first, last, body = self._parse(plaintext)
        if first != (self._buf is None) or (first and (not body or body[0] in kinds)):
            raise ValueError("malformed first fragment" if first else
                             "continuation fragment without a first one")
        self._buf = bytearray(body) if first else self._buf + body
        if len(self._buf) > self._limit:
            raise ValueError("fragmented message too large")
        if not last:
            return None
        message, self._buf = bytes(self._buf), None
        return message

    def _parse(self, plaintext: bytes) -> tuple[bool, bool, bytes]:
        """(first, last, body: the original type byte first on a first fragment)."""
        if self._older:
            if self._buf is None and plaintext[0] == OLDER_FRAG_END:
                raise ValueError("a last fragment without a first one")
            return self._buf is None, plaintext[0] == OLDER_FRAG_END, plaintext[1:]
        if len(plaintext) < 2 or plaintext[1] & FRAG_RESERVED:
            raise ValueError("malformed fragment")
        return bool(plaintext[1] & FRAG_FIRST), bool(plaintext[1] & FRAG_LAST), plaintext[2:]
