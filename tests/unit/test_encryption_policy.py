"""The encryption policy: every row of the rule, both directions, and the opt-in list."""

from __future__ import annotations

import itertools

import pytest

from resonate_embedded.protocol.encryption_policy import (
    Action, ClosedAfterInit, Observed, Situation, decide, opted_in, parse_address,
)

E, P, NEXT, R = Action.ENCRYPT, Action.PLAINTEXT, Action.PLAINTEXT_NEXT_TIME, Action.REFUSE
NOTHING, SILENT, CLOSED, LAST, FAILED = (Observed.NOTHING_YET, Observed.SILENT, Observed.CLOSED,
                                         Observed.CLOSED_LAST_TIME, Observed.HANDSHAKE_FAILED)

# mode, direction, dialect, holds_pairings, address_paired, opted_in, observed
#   -> action, fallback, words in the reason
ROWS = [
    # off: always plaintext, whatever else holds
    ("off", "dial", "sendspin", True, True, False, NOTHING, P, False, "off"),
    ("off", "listen", "sendspin", True, False, False, NOTHING, P, False, "off"),
    ("off", "listen", "resonate", True, False, False, NOTHING, P, False, "off"),
    # required: Noise with no fallback; never plaintext
    ("required", "dial", "sendspin", False, False, False, NOTHING, E, False, "required"),
    ("required", "listen", "sendspin", False, False, True, NOTHING, E, False, "required"),
    ("required", "dial", "sendspin", False, False, True, SILENT, R, False, "required"),
    ("required", "listen", "sendspin", False, False, False, CLOSED, R, False, "required"),
    ("required", "listen", "sendspin", False, False, False, LAST, R, False, "required"),
    ("required", "dial", "sendspin", False, False, True, FAILED, R, False, "required"),
    ("required", "dial", "resonate", False, False, True, NOTHING, R, False, "Resonate"),
    ("required", "listen", "resonate", False, False, False, NOTHING, R, False, "Resonate"),
    # auto, no pairing held: Noise first, plaintext with a server that cannot encrypt
    ("auto", "dial", "sendspin", False, False, False, NOTHING, E, True, "allowed"),
    ("auto", "listen", "sendspin", False, False, False, NOTHING, E, True, "allowed"),
    ("auto", "dial", "sendspin", False, False, False, SILENT, P, False, "does not speak"),
    ("auto", "dial", "sendspin", False, False, False, CLOSED, P, False, "does not speak"),
    ("auto", "listen", "sendspin", False, False, False, SILENT, P, False, "does not speak"),
    ("auto", "listen", "sendspin", False, False, False, CLOSED, NEXT, False, "next connection"),
    ("auto", "listen", "sendspin", False, False, False, LAST, P, False, "last time"),
    ("auto", "dial", "sendspin", False, False, False, FAILED, P, False, "could not be completed"),
    ("auto", "listen", "sendspin", False, False, False, FAILED, NEXT, False,
     "could not be completed: plaintext on its next"),
    ("auto", "dial", "resonate", False, False, False, NOTHING, P, False, "Resonate"),
    ("auto", "listen", "resonate", False, False, False, NOTHING, P, False, "Resonate"),
    # auto, a pairing held, this address not opted in: no plaintext at all
    ("auto", "dial", "sendspin", True, False, False, NOTHING, E, False, "plaintext_servers"),
    ("auto", "listen", "sendspin", True, False, False, NOTHING, E, False, "plaintext_servers"),
    ("auto", "dial", "sendspin", True, False, False, SILENT, R, False, "plaintext_servers"),
    ("auto", "dial", "sendspin", True, False, False, CLOSED, R, False, "plaintext_servers"),
    ("auto", "listen", "sendspin", True, False, False, SILENT, R, False, "plaintext_servers"),
    ("auto", "listen", "sendspin", True, False, False, CLOSED, R, False, "plaintext_servers"),
    ("auto", "listen", "sendspin", True, False, False, LAST, R, False, "plaintext_servers"),
    ("auto", "dial", "sendspin", True, False, False, FAILED, R, False, "plaintext_servers"),
    ("auto", "dial", "resonate", True, False, False, NOTHING, R, False, "plaintext_servers"),
    ("auto", "listen", "resonate", True, False, False, NOTHING, R, False, "plaintext_servers"),
    # auto, a pairing held, this address opted in: as if no pairing were held
    ("auto", "dial", "sendspin", True, False, True, NOTHING, E, True, "allowed"),
    ("auto", "listen", "sendspin", True, False, True, NOTHING, E, True, "allowed"),
    ("auto", "dial", "sendspin", True, False, True, SILENT, P, False, "does not speak"),
    ("auto", "listen", "sendspin", True, False, True, SILENT, P, False, "does not speak"),
    ("auto", "listen", "sendspin", True, False, True, CLOSED, NEXT, False, "next connection"),
    ("auto", "listen", "sendspin", True, False, True, LAST, P, False, "last time"),
    ("auto", "dial", "sendspin", True, False, True, FAILED, P, False, "could not be completed"),
    ("auto", "dial", "resonate", True, False, True, NOTHING, P, False, "Resonate"),
    # auto, a paired server was reached at this URL: no plaintext there, opted in or not
    ("auto", "dial", "sendspin", True, True, True, NOTHING, E, False, "paired server"),
    ("auto", "dial", "sendspin", True, True, True, SILENT, R, False, "paired server"),
    ("auto", "dial", "sendspin", True, True, False, CLOSED, R, False, "paired server"),
    ("auto", "dial", "sendspin", True, True, True, FAILED, R, False, "paired server"),
    ("auto", "dial", "resonate", True, True, True, NOTHING, R, False, "paired server"),
]


def _row_id(row) -> str:
    return "-".join(str(getattr(x, "name", x)) for x in row[:7])


@pytest.mark.parametrize("row", ROWS, ids=_row_id)
def test_every_row_of_the_rule(row):
    *inputs, action, fallback, words = row
    decision = decide(Situation(*inputs))
    assert (decision.action, decision.fallback) == (action, fallback)
    assert words in decision.reason


def test_no_combination_gives_plaintext_where_the_rule_forbids_it():
    """Exhaustively: plaintext (now or next time) only with encryption off, or in auto with
    a server that cannot encrypt, no paired server at the address, and no pairing held
    unless the address is opted in; no Noise-speaking server is ever answered in plaintext."""
    for mode, direction, dialect, holds, paired, opt, observed in itertools.product(
            ("auto", "required", "off"), ("dial", "listen"), ("sendspin", "resonate"),
            (False, True), (False, True), (False, True), list(Observed)):
        decision = decide(Situation(mode, direction, dialect, holds, paired, opt, observed))
        allowed = mode == "off" or (mode == "auto" and not paired and (opt or not holds))
        cannot_encrypt = dialect == "resonate" or observed is not NOTHING
        if decision.action in (P, NEXT):
            assert allowed and (cannot_encrypt or mode == "off")
        elif decision.action is E:
            assert dialect == "sendspin" and observed is NOTHING and decision.fallback == allowed
        else:
            assert not allowed and decision.reason


def test_the_reason_names_what_the_server_did():
    s = Situation("auto", "listen", "sendspin", True, False, False)
    refused = decide(s.after_init(silent=False, seen="closed the connection after client/init"))
    assert refused.action is R
    assert refused.reason.startswith("closed the connection after client/init: not an encrypted")
    assert decide(s.after_init(silent=True, seen="x")).action is R


def test_first_reply_timeout_is_short_only_when_silence_may_mean_plaintext():
    fallback = decide(Situation("auto", "dial", "sendspin", False, False, False))
    strict = decide(Situation("required", "dial", "sendspin", False, False, False))
    assert fallback.first_reply_timeout_s < strict.first_reply_timeout_s


@pytest.mark.parametrize("entry, address", [
    ("192.168.1.10", ("192.168.1.10", None)),
    ("192.168.1.10:8927", ("192.168.1.10", 8927)),
    ("Music-Server.local:8927", ("music-server.local", 8927)),
    ("[fe80::1]:8927", ("fe80::1", 8927)),
    ("ws://10.0.0.5:8927/sendspin", ("10.0.0.5", 8927)),
    ("ws://10.0.0.5/sendspin", ("10.0.0.5", 80)),
    ("wss://10.0.0.5/sendspin", ("10.0.0.5", 443)),
])
def test_opt_in_entries_parse(entry, address):
    assert parse_address(entry) == address


@pytest.mark.parametrize("entry, message", [
    ("", "must be a host"),
    ("http://10.0.0.5/", "ws:// or wss://"),
    ("10.0.0.5:0", "1..65535"),
    ("10.0.0.5:99999", "1..65535"),
    ("10.0.0.5:port", "1..65535"),
    ("10.0.0.5/sendspin", "must be a host"),
    ("user@10.0.0.5", "must be a host"),
    ("two words", "must be a host"),
])
def test_bad_opt_in_entries_say_what_is_wrong(entry, message):
    with pytest.raises(ValueError, match=message):
        parse_address(entry)


def test_opt_in_matching():
    entries = ("10.0.0.5", "10.0.0.6:8927", "ws://10.0.0.7:9000/sendspin")
    assert opted_in(entries, "10.0.0.5", 1234)  # no port in the entry: every port
    assert opted_in(entries, "10.0.0.6", 8927) and not opted_in(entries, "10.0.0.6", 8928)
    assert opted_in(entries, "10.0.0.7", 9000) and not opted_in(entries, "10.0.0.7", 80)
    assert opted_in(entries, "10.0.0.6", None)  # a server that dialled us: its host counts
    assert not opted_in(entries, "10.0.0.8", None) and not opted_in((), "10.0.0.5", None)


def test_closed_after_init_is_remembered_per_host_until_plaintext_fails_there():
    memory = ClosedAfterInit(capacity=2)
    memory.remember("10.0.0.1")
    assert memory.observed("10.0.0.2") is NOTHING
    assert memory.observed("10.0.0.1") is LAST
    assert memory.observed("10.0.0.1") is LAST  # an old server's redials: plaintext again
    memory.forget("10.0.0.1")  # its plaintext connection got no server/hello
    assert memory.observed("10.0.0.1") is NOTHING  # Noise first again
    memory.forget("10.0.0.9")  # forgetting an unknown host is harmless
    for host in ("a", "b", "c"):
        memory.remember(host)
    assert memory.observed("a") is NOTHING  # the oldest was forgotten
    assert (memory.observed("b"), memory.observed("c")) == (LAST, LAST)
