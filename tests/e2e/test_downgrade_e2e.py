"""Encryption downgrade, end to end: the player process against a real aiosendspin 10
server (transition mode: it accepts plaintext too) behind a man in the middle
(``bench/mitm.py``) at an address the speaker never reached a paired server at.

The attacker drops ``client/init`` (the server never sees it, the speaker hears nothing)
and, in any plaintext session that follows, replaces the ``server_id`` in ``server/hello``
with one nobody is paired with:

* a speaker holding a pairing refuses: no plaintext ``client/hello`` leaves it, and it
  logs why;
* an unpaired speaker falls back to plaintext and plays (bit-exact, on time);
* the paired speaker with the attacker's address in ``--plaintext-server`` (the explicit
  opt-in) plays in plaintext too.
"""

from __future__ import annotations

import json

import pytest
import trio

from resonate_bench import harness
from resonate_bench.mitm import Mitm
from resonate_embedded.protocol.noise_transport import HANDSHAKE_TIMEOUT_S
from test_encrypted_e2e import (
    PlayerProc, assert_bit_exact_on_time, cli, needs_server, operator_server_python, play_for,
    wait_conn,
)

pytestmark = pytest.mark.e2e

ATTACKER_SERVER_ID = "attacker-server"


class Downgrade:
    """The attack: drop client/init, rename the server in a plaintext server/hello."""

    def __init__(self) -> None:
        self.plaintext_hellos: list[int] = []  # connections a plaintext client/hello crossed

    def __call__(self, direction: str, _index: int, msg, conn_no: int):
        if not isinstance(msg, str):
            return msg
        obj = json.loads(msg)
        if direction == "c2s" and obj.get("type") == "client/init":
            return None
        if direction == "c2s" and obj.get("type") == "client/hello":
            self.plaintext_hellos.append(conn_no)
        if direction == "s2c" and obj.get("type") == "server/hello":
            obj["payload"]["server_id"] = ATTACKER_SERVER_ID
            return json.dumps(obj)
        return msg


async def connected(srv, client_id: str, since: int) -> None:
    await srv.wait_event(None, 60, since=since, predicate=lambda e: e.get("event") in (
        "client_added", "client_connected") and e.get("client_id") == client_id)


async def plays_in_plaintext(srv, player: PlayerProc, client_id: str) -> list:
    """Start ``player``, wait for its plaintext session, stream 4 s; the chunk events."""
    since = srv.mark()
    await player.start()
    try:
        await connected(srv, client_id, since)
        info = await wait_conn(srv, client_id, lambda i: "player@v1" in (i.get("roles") or []),
                               timeout=30)
        assert info["encrypted"] is False, info
        mark = srv.mark()
        await play_for(srv, client_id, 4.0)
    finally:
        assert await player.stop() == 0
    return srv.events[mark:]


@needs_server
def test_a_forced_plaintext_session_is_refused_by_a_paired_speaker_only(tmp_path, monkeypatch):
    # The operator approves nobody: this server turns away plaintext from any client it
    # approved or paired (its own downgrade protection), which would hide the speaker's.
    monkeypatch.delenv("RESONATE_TEST_AUTOTRUST", raising=False)
    paired, fresh = tmp_path / "paired", tmp_path / "fresh"
    token = cli("pair-token", "--state-dir", str(paired), "--no-qr").stdout.strip()

    async def main():
        async with harness.start_test_server(operator_server_python(tmp_path), port=0,
                                             log_path=tmp_path / "server.log") as srv, \
                trio.open_nursery() as nursery:
            # The speaker pairs with the server, reached directly.
            pairing = PlayerProc(tmp_path, "pairing", srv.url, paired)
            await pairing.start()
            try:
                client_id = (await srv.wait_event("client_added", timeout=30))["client_id"]
                await srv.command({"cmd": "pair", "token": token}, timeout=60)
                await wait_conn(srv, client_id, lambda i: i.get("psk") == "lt")
            finally:
                assert await pairing.stop() == 0
            attack = Downgrade()
            mitm = Mitm(srv.url, attack)
            mitm_port = (await nursery.start(mitm.serve)).port
            url = f"ws://127.0.0.1:{mitm_port}/sendspin"

            # 1. Paired, through the attacker: refused, nothing in plaintext.
            victim = PlayerProc(tmp_path, "paired", url, paired)
            since = srv.mark()
            await victim.start()
            try:
                with trio.fail_after(HANDSHAKE_TIMEOUT_S + 30):
                    while "no plaintext fallback" not in victim.output:
                        await trio.sleep(0.2)
            finally:
                assert await victim.stop() == 0
            assert attack.plaintext_hellos == []
            assert not [e for e in srv.events[since:] if e.get("event") in (
                "client_added", "client_connected")]

            # 2. Unpaired, through the attacker: plaintext, and it plays.
            unpaired = PlayerProc(tmp_path, "unpaired", url, fresh)
            fresh_id = cli("pair-token", "--state-dir", str(fresh), "--no-qr")
            fresh_id = fresh_id.stderr.split("client_id ")[1].split()[0]
            unpaired_events = await plays_in_plaintext(srv, unpaired, fresh_id)

            # 3. The paired speaker with the attacker's address opted in: plaintext too (under
            #    another name: the server would turn away plaintext from the client it paired).
            opted = PlayerProc(tmp_path, "opted-in", url, paired, "--client-id", "opted-in",
                               "--plaintext-server", f"127.0.0.1:{mitm_port}")
            opted_events = await plays_in_plaintext(srv, opted, "opted-in")
            nursery.cancel_scope.cancel()
        return victim, unpaired, unpaired_events, opted, opted_events

    victim, unpaired, unpaired_events, opted, opted_events = trio.run(main)
    assert ("no answer to client/init within 30 s: not an encrypted Sendspin server; no "
            "plaintext fallback: this speaker holds a pairing and this address is not in "
            "plaintext_servers") in victim.output
    assert "using plaintext" not in victim.output
    for player, events in ((unpaired, unpaired_events), (opted, opted_events)):
        assert "no answer to client/init within 3 s: the server does not speak encrypted " \
               "Sendspin: using plaintext" in player.output
        assert f"({ATTACKER_SERVER_ID})" in player.output  # the session took the renamed hello
        assert_bit_exact_on_time(player.log_path, events, 2.5)
    for player in (victim, unpaired, opted):
        assert "Traceback" not in player.output
