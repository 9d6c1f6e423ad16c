"""A server whose encrypted handshake cannot be completed, end to end: the player process
against a real aiosendspin 10 server behind a man in the middle (``resonate_bench/mitm.py``)
that corrupts Noise message 1, or answers ``client/init`` with ``server/error``.

* encryption required: no plaintext; the failure is logged with what the server sent, a
  repeat holds the server off (no redial loop: two attempts, then 15 s of quiet) and
  ``status`` shows why on its ``era`` line; a ``server/error`` refusal likewise;
* ``auto`` with no pairing held: the one encryption policy falls back to plaintext, and
  the speaker plays (bit-exact, on time).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from resonate_bench import harness
from resonate_bench.mitm import Mitm
from resonate_embedded.identity import b64url_decode, b64url_encode
from resonate_embedded.protocol.server_profile import HANDSHAKE_BACKOFF_S
from test_downgrade_e2e import plays_in_plaintext
from test_encrypted_e2e import (
    PlayerProc, assert_bit_exact_on_time, cli, needs_server, operator_server_python,
)

pytestmark = pytest.mark.e2e

REFUSAL = json.dumps({"type": "server/error", "payload": {"reason": "not_allowed"}})


class Breaker:
    """Flip one bit of every Noise message 1 (or, ``refuse``: answer client/init with
    server/error); count the connections that sent client/init."""

    def __init__(self) -> None:
        self.inits: list[int] = []
        self.refuse = False

    def __call__(self, direction: str, _index: int, msg, conn_no: int):
        if not isinstance(msg, str):
            return msg
        obj = json.loads(msg)
        if direction == "c2s" and obj.get("type") == "client/init":
            self.inits.append(conn_no)
        if direction == "s2c" and obj.get("type") == "server/init" and self.refuse:
            return REFUSAL
        if direction == "s2c" and obj.get("type") == "noise/handshake":
            data = bytearray(b64url_decode(obj["payload"]["data"]))
            data[-1] ^= 1
            obj["payload"]["data"] = b64url_encode(bytes(data))
            return json.dumps(obj)
        return msg


async def held_off(tmp_path: Path, url: str, breaker: Breaker, name: str):
    """A player that requires encryption, until it holds the server off; (player, the
    client/init count, its status screen)."""
    state = tmp_path / name
    player = PlayerProc(tmp_path, name, url, state, "--encryption", "required")
    since = len(breaker.inits)
    await player.start()
    try:
        with trio.fail_after(60):
            while "not redialling for" not in player.output:
                await trio.sleep(0.2)
        await trio.sleep(HANDSHAKE_BACKOFF_S / 2)
        status = await trio.to_thread.run_sync(cli, "status", "--state-dir", str(state))
    finally:
        assert await player.stop() == 0
    assert status.returncode == 0, status.stderr
    return player, len(breaker.inits) - since, status.stdout


def assert_held_off(player: PlayerProc, inits: int, status: str, why: str) -> None:
    out = player.output
    assert inits == 2  # the second failure held the server off
    assert f"the encrypted handshake failed 2 times in a row: {why}" in out
    assert '(its answer to client/init: {"' in out  # what the server sent
    era = [line for line in status.splitlines() if line.startswith("era")]
    assert era and f"encrypted handshake failed 2 times in a row: {why}" in era[0], status


@needs_server
def test_a_failing_handshake_is_held_off_and_shown_or_falls_back_to_plaintext(tmp_path, monkeypatch):
    monkeypatch.delenv("RESONATE_TEST_AUTOTRUST", raising=False)  # plaintext stays welcome
    fresh_state = tmp_path / "fresh"

    async def main():
        async with harness.start_test_server(operator_server_python(tmp_path), port=0,
                                             log_path=tmp_path / "server.log") as srv, \
                trio.open_nursery() as nursery:
            breaker = Breaker()
            port = (await nursery.start(Mitm(srv.url, breaker).serve)).port
            url = f"ws://127.0.0.1:{port}/sendspin"
            corrupted = await held_off(tmp_path, url, breaker, "corrupted")
            breaker.refuse = True
            refused = await held_off(tmp_path, url, breaker, "refused")
            breaker.refuse = False

            fresh = PlayerProc(tmp_path, "fresh", url, fresh_state)
            fresh_id = cli("pair-token", "--state-dir", str(fresh_state), "--no-qr")
            fresh_id = fresh_id.stderr.split("client_id ")[1].split()[0]
            events = await plays_in_plaintext(srv, fresh, fresh_id)
            nursery.cancel_scope.cancel()
        return corrupted, refused, fresh, events

    corrupted, refused, fresh, events = trio.run(main)
    assert_held_off(*corrupted, "Noise message 1 did not authenticate")
    assert ("handshake could not be completed; no plaintext fallback: encryption is required"
            in corrupted[0].output)
    assert_held_off(*refused, "server rejected client/init: not_allowed")

    assert ("Noise message 1 did not authenticate (InvalidTag): its encrypted handshake could "
            "not be completed: using plaintext") in fresh.output
    assert_bit_exact_on_time(fresh.log_path, events, 2.5)
    for player in (corrupted[0], refused[0], fresh):
        assert "Traceback" not in player.output
