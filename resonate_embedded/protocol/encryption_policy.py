"""When the speaker may talk plaintext: one rule for both directions (no I/O).

The rule, for the ``encryption`` setting:

* ``off``: always plaintext.
* ``required``: never plaintext.
* ``auto``: Noise first (``client/init``).  Plaintext only with a server that cannot
  encrypt (a Resonate server; or one that left ``client/init`` unanswered or closed the
  socket after it, or whose encrypted handshake could not be completed after
  ``server/init``) and only if no paired server was ever reached at this address and
  either the speaker holds no pairing at all or the address is opted in
  (``plaintext_servers``).  An opt-in never covers an address where a paired server was
  reached.  So an attacker who drops ``client/init`` gets nothing from a speaker that
  holds a pairing, whatever ``server_id`` it then claims.

Beyond this rule, a plaintext ``server/hello`` from a paired ``server_id`` is refused by
the session (``protocol/session.py``).

Where the server's answer decides: dialling, a server that does not speak Noise is
redialled in plaintext at once; being dialled, one that stays silent gets the plaintext
hello on the same socket, and one that closed the socket after ``client/init``
(aiosendspin 5.x/6.x cannot parse it) is answered in plaintext on its next connection
from the same host, and on every one after while those reach a ``server/hello``
(:class:`ClosedAfterInit`): an old server's redials cost no extra connection, and a host
whose plaintext connection ends before a ``server/hello`` (it learned Noise, or another
server took its address) is tried with Noise first again.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import attrs

from resonate_embedded.protocol.noise_transport import FIRST_REPLY_TIMEOUT_S, HANDSHAKE_TIMEOUT_S
from resonate_embedded.protocol.resonate_dialect import Dialect

if TYPE_CHECKING:
    from resonate_embedded.config import Config
    from resonate_embedded.pairing import PairingStore

Mode = Literal["auto", "required", "off"]
Direction = Literal["dial", "listen"]
MEMORY_HOSTS = 32  # hosts remembered as "closed after client/init" (oldest forgotten first)


class Observed(enum.Enum):
    """What the server did with ``client/init``, as far as this decision knows."""

    NOTHING_YET = "no client/init sent yet"
    SILENT = "left client/init unanswered"
    CLOSED = "closed the socket after client/init, or answered something else"
    CLOSED_LAST_TIME = "closed the connection after client/init last time"
    HANDSHAKE_FAILED = "answered client/init, but the encrypted handshake could not be completed"


class Action(enum.Enum):
    ENCRYPT = "encrypt"  # send client/init (Decision.fallback: may plaintext follow?)
    PLAINTEXT = "plaintext"  # talk plaintext now (same socket if still open, else redial)
    PLAINTEXT_NEXT_TIME = "plaintext next time"  # drop this socket; plaintext on the next one
    REFUSE = "refuse"  # no session with this server (Decision.reason says why)


@attrs.frozen
class Situation:
    mode: Mode
    direction: Direction
    dialect: Dialect
    holds_pairings: bool  # the speaker holds at least one pairing
    address_paired: bool  # a paired server was reached at this URL
    opted_in: bool  # the address is in plaintext_servers
    observed: Observed = Observed.NOTHING_YET
    seen: str = ""  # what the server did, in words, for the reason

    def after_init(self, silent: bool, seen: str) -> Situation:
        """This situation once the server did not answer ``client/init`` like a Noise
        server: ``silent`` (nothing came back), else closed or answered something else."""
        return attrs.evolve(self, observed=Observed.SILENT if silent else Observed.CLOSED,
                            seen=seen)

    def after_handshake_failed(self, seen: str) -> Situation:
        """This situation once the encrypted handshake failed after ``server/init`` (the
        socket is closed)."""
        return attrs.evolve(self, observed=Observed.HANDSHAKE_FAILED, seen=seen)


def situation_for(config: Config, pairings: PairingStore, direction: Direction,
                  dialect: Dialect, address: tuple[str, int | None], url: str | None = None,
                  observed: Observed = Observed.NOTHING_YET) -> Situation:
    """The situation of a connection to ``address`` (host, port: None for a server that
    dialled us) or ``url``, under ``config`` and the pairings held."""
    return Situation(config.encryption, direction, dialect,
                     holds_pairings=bool(pairings.records()),
                     address_paired=url is not None and pairings.knows_url(url),
                     opted_in=opted_in(config.plaintext_servers, *address), observed=observed)


@attrs.frozen
class Decision:
    action: Action
    reason: str
    fallback: bool = False  # ENCRYPT: a server that does not speak Noise may get plaintext

    @property
    def first_reply_timeout_s(self) -> float:
        """ENCRYPT: how long the server has to answer ``client/init``: a few seconds when
        silence means "falls back to plaintext", the full handshake timeout otherwise."""
        return FIRST_REPLY_TIMEOUT_S if self.fallback else HANDSHAKE_TIMEOUT_S


def plaintext_barred(s: Situation) -> str | None:
    """Why plaintext is not allowed with this server (None: it is, if it cannot encrypt)."""
    if s.mode == "required":
        return "encryption is required"
    if s.address_paired:
        return "a paired server was reached at this address"
    if s.holds_pairings and not s.opted_in:
        return "this speaker holds a pairing and this address is not in plaintext_servers"
    return None


def decide(s: Situation) -> Decision:
    """The one rule (module docstring), for either direction."""
    if s.mode == "off":
        return Decision(Action.PLAINTEXT, "encryption is off")
    barred = plaintext_barred(s)
    if s.dialect == "resonate":
        if barred:
            return Decision(Action.REFUSE,
                            f"a Resonate server cannot encrypt; no plaintext: {barred}")
        return Decision(Action.PLAINTEXT, "a Resonate server cannot encrypt")
    if s.observed is Observed.NOTHING_YET:
        return Decision(Action.ENCRYPT, barred or "plaintext allowed if it cannot encrypt",
                        fallback=barred is None)
    seen = f"{s.seen or 'it ' + s.observed.value}: "
    cannot = ("its encrypted handshake could not be completed"
              if s.observed is Observed.HANDSHAKE_FAILED else "not an encrypted Sendspin server")
    if barred:
        return Decision(Action.REFUSE, f"{seen}{cannot}; no plaintext fallback: {barred}")
    if s.observed in (Observed.CLOSED, Observed.HANDSHAKE_FAILED) and s.direction == "listen":
        return Decision(Action.PLAINTEXT_NEXT_TIME, f"{seen}{cannot}: plaintext on its next connection")
    if s.observed is not Observed.HANDSHAKE_FAILED:
        cannot = "the server does not speak encrypted Sendspin"
    return Decision(Action.PLAINTEXT, f"{seen}{cannot}: using plaintext")


# --------------------------------------------------------------------------- opt-in list


def parse_address(entry: str) -> tuple[str, int | None]:
    """(host, port) of a ``plaintext_servers`` entry or a server URL: ``host`` (port None:
    any), ``host:port``, ``[v6]:port`` or a ``ws://``/``wss://`` URL (the port it implies).
    Raises ValueError saying what is wrong."""
    shape = f"{entry!r}: must be a host, host:port or ws:// URL"
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(shape)
    text = entry.strip()
    if any(c.isspace() for c in text):
        raise ValueError(shape)
    is_url = "://" in text
    parts = urlsplit(text if is_url else "//" + text)
    if is_url and parts.scheme not in ("ws", "wss"):
        raise ValueError(f"{entry!r}: a URL must be ws:// or wss://")
    if not is_url and (parts.path or parts.query or parts.fragment):
        raise ValueError(shape)
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(f"{entry!r}: the port must be a number in 1..65535")
    if not parts.hostname or parts.username is not None:
        raise ValueError(shape)
    if is_url and port is None:
        port = 443 if parts.scheme == "wss" else 80
    return parts.hostname, port


def opted_in(entries: Iterable[str], host: str, port: int | None) -> bool:
    """Whether ``host``/``port`` is in the opt-in list.  An entry without a port covers
    every port of its host; ``port`` None (a server that dialled us, from a passing port)
    matches its host whatever port an entry names."""
    host = host.lower()
    for entry in entries:
        e_host, e_port = parse_address(entry)
        if e_host == host and (e_port is None or port is None or e_port == port):
            return True
    return False


# --------------------------------------------------------------------------- listening memory


class ClosedAfterInit:
    """Hosts that closed the connection right after ``client/init`` (bounded, LRU).

    A host is answered in plaintext without trying Noise first from the connection after
    :meth:`remember` on, until :meth:`forget` (its plaintext connection ended before a
    ``server/hello``)."""

    def __init__(self, capacity: int = MEMORY_HOSTS) -> None:
        self._hosts: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def remember(self, host: str) -> None:
        self._hosts[host] = None
        self._hosts.move_to_end(host)
        while len(self._hosts) > self._capacity:
            self._hosts.popitem(last=False)

    def forget(self, host: str) -> None:
        self._hosts.pop(host, None)

    def observed(self, host: str) -> Observed:
        """CLOSED_LAST_TIME if ``host`` is remembered, else NOTHING_YET."""
        return Observed.CLOSED_LAST_TIME if host in self._hosts else Observed.NOTHING_YET
