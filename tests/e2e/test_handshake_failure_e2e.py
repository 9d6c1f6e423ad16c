"""A server whose encrypted handshake cannot be completed, end to end: the player process
against a real aiosendspin 10 server behind a man in the middle (``bench/mitm.py``) that
corrupts Noise message 1.

* encryption required: no plaintext; the failure is logged with what the server sent, a
  repeat holds the server off (no redial loop: two attempts, then 15 s of quiet) and
  ``status`` shows why on its ``era`` line;
* ``auto`` with no pairing held: the one encryption policy falls back to plaintext, and
  the speaker plays (bit-exact, on time).
"""

from __future__ import annotations

import json

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


class CorruptMessage1:
    """Flip one bit of every Noise message 1; count the connections that sent client/init."""

    def __init__(self) -> None:
        self.inits: list[int] = []

    def __call__(self, direction: str, _index: int, msg, conn_no: int):
        if not isinstance(msg, str):
            return msg
        obj = json.loads(msg)
        if direction == "c2s" and obj.get("type") == "client/init":
            self.inits.append(conn_no)
        if direction == "s2c" and obj.get("type") == "noise/handshake":
            data = bytearray(b64url_decode(obj["payload"]["data"]))
            data[-1] ^= 1
            obj["payload"]["data"] = b64url_encode(bytes(data))
            return json.dumps(obj)
        return msg


@needs_server
def test_a_failing_handshake_is_held_off_and_shown_or_falls_back_to_plaintext(tmp_path, monkeypatch):
    monkeypatch.delenv("RESONATE_TEST_AUTOTRUST", raising=False)  # plaintext stays welcome
    strict_state, fresh_state = tmp_path / "strict", tmp_path / "fresh"

    async def main():
        async with harness.start_test_server(operator_server_python(tmp_path), port=0,
                                             log_path=tmp_path / "server.log") as srv, \
                trio.open_nursery() as nursery:
            attack = CorruptMessage1()
            port = (await nursery.start(Mitm(srv.url, attack).serve)).port
            url = f"ws://127.0.0.1:{port}/sendspin"

            strict = PlayerProc(tmp_path, "strict", url, strict_state, "--encryption", "required")
            await strict.start()
            try:
                with trio.fail_after(60):
                    while "not redialling for" not in strict.output:
                        await trio.sleep(0.2)
                await trio.sleep(HANDSHAKE_BACKOFF_S / 2)
                status = await trio.to_thread.run_sync(
                    cli, "status", "--state-dir", str(strict_state))
            finally:
                assert await strict.stop() == 0
            strict_inits = list(attack.inits)

            fresh = PlayerProc(tmp_path, "fresh", url, fresh_state)
            fresh_id = cli("pair-token", "--state-dir", str(fresh_state), "--no-qr")
            fresh_id = fresh_id.stderr.split("client_id ")[1].split()[0]
            events = await plays_in_plaintext(srv, fresh, fresh_id)
            nursery.cancel_scope.cancel()
        return strict, strict_inits, status, fresh, events

    strict, strict_inits, status, fresh, events = trio.run(main)
    out = strict.output
    assert len(strict_inits) == 2, strict_inits  # the second failure held the server off
    assert "Noise message 1 did not authenticate" in out
    assert "the encrypted handshake failed 2 times in a row" in out
    assert '(server/init {"' in out  # what the server sent is in the log line
    assert "handshake could not be completed; no plaintext fallback: encryption is required" in out
    assert status.returncode == 0, status.stderr
    era = [line for line in status.stdout.splitlines() if line.startswith("era")]
    assert era and "encrypted handshake failed 2 times in a row" in era[0], status.stdout

    assert ("Noise message 1 did not authenticate (InvalidTag): its encrypted handshake could "
            "not be completed: using plaintext") in fresh.output
    assert_bit_exact_on_time(fresh.log_path, events, 2.5)
    for player in (strict, fresh):
        assert "Traceback" not in player.output
