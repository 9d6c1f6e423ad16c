"""End to end: the player process in its connection modes, against real servers.

* server-initiated (``run`` without ``--server``): an aiosendspin 10 server dials the
  player's listener (``connect_to_client``) and the audio plays on time;
* ``--server ws://…/resonate``: aioresonate 0.13.2 (the Resonate dialect) plays bit-exact,
  contiguous and on time once its CLOCK_MONOTONIC stamps are converted to RAW;
* ``--server ws://…/sendspin``: aiosendspin 2.x (plain Sendspin v1, no Noise) plays
  bit-exact and contiguous.

Ground truth as in ``test_player_e2e.py``: the paced device's play log matched frame by
frame (index signal) to the harness's chunk log.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trio

from resonate_bench.harness import (
    RESONATE_SCRIPT, SENDSPIN_V1_SCRIPT, TestServer, find_era_python, find_resonate_python,
    find_sendspin2_python, find_server_python, missing_venv_reason, requires_venv,
    start_test_server,
)
from resonate_bench.measure import ChunkTable, Matched, match, summarize
from resonate_bench.mitm import CLOSE, Mitm
from resonate_bench.scenario import stop_process
from resonate_bench.paced_log import read_paced_log

pytestmark = pytest.mark.e2e

S10_PYTHON = find_server_python()
R_PYTHON = find_resonate_python()
S1_PYTHON = find_sendspin2_python()
S5_PYTHON = find_era_python(".venv-sendspin5", "5.")
ON_TIME_US = 1000
TIMEOUT = 60.0
SOURCE = {"sample_rate": 48000, "bit_depth": 16, "channels": 2}
OFFER = "pcm:48000:16:2"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def player_cmd(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "resonate_embedded.cli", "run",
            "--device", f"paced:LOG={tmp_path / 'play.plog'}", "--state-dir", str(tmp_path / "state"),
            "--formats", OFFER, *args]


async def play(srv: TestServer, tmp_path: Path, args: list[str], before_start=None,
               duration_s: float = 4.0) -> list[dict]:
    """Start the player, let ``srv`` stream ``duration_s`` of the index signal to it, stop it."""
    with open(tmp_path / "player.log", "wb") as out:
        proc = await trio.lowlevel.open_process(player_cmd(tmp_path, *args), stdout=out,
                                                stderr=subprocess.STDOUT)
    try:
        if before_start is not None:
            await before_start(srv)
        await srv.wait_event("client_added", TIMEOUT)
        await trio.sleep(1.0)  # a few clock exchanges
        mark = srv.mark()
        await srv.command({"cmd": "start", "format": SOURCE, "duration_s": duration_s})
        await srv.wait_event("chunk", TIMEOUT, since=mark)
        await trio.sleep(duration_s + 2.5)
    finally:
        exit_code = await stop_process(proc)
    assert exit_code == 0, (tmp_path / "player.log").read_text()[-3000:]
    return list(srv.events)


def chunk_table(events: list[dict], shift_us: int = 0) -> ChunkTable:
    chunks = [dict(e, server_ts_us=e["server_ts_us"] + shift_us,
                   format=e.get("format") or SOURCE)
              for e in events if e.get("event") == "chunk"]
    return ChunkTable.from_events(chunks)


def assert_bit_exact_and_contiguous(m: Matched, seconds: float, tmp_path: Path) -> None:
    log = (tmp_path / "player.log").read_text()[-3000:]
    assert m.k.size >= seconds * 48000 * 0.9, f"only {m.k.size} frames identified\n{log}"
    assert m.unidentified_frames == 0
    steps = np.diff(m.k)
    corrections = int((steps != 1).sum())
    assert np.all(np.isin(steps, (0, 1, 2))), "a gap or jump in the played frames"
    assert corrections <= 2 * m.k.size / 48000 + 2, corrections
    assert (~m.bit_exact).sum() <= corrections, f"{(~m.bit_exact).sum()} frames not bit-exact"


def assert_played_on_time(events: list[dict], tmp_path: Path, shift_us: int = 0) -> None:
    """What the paced device played is the server's audio, bit-exact, contiguous and on
    time (median |error| < 1 ms); prints the sync figure (``pytest -s``)."""
    m = match(read_paced_log(tmp_path / "play.plog"), chunk_table(events, shift_us))
    assert_bit_exact_and_contiguous(m, 3, tmp_path)
    s = summarize(m.error_us)
    print(f"\n[sync] {os.environ.get('PYTEST_CURRENT_TEST', '').split(' ')[0]}: {s.line()}")
    assert np.median(np.abs(m.error_us)) < ON_TIME_US, s.line()


def raw_minus_server_us(ready: dict) -> int:
    """How far the server's clock (µs) is behind CLOCK_MONOTONIC_RAW, from ``ready``."""
    diffs = ready["clock_diffs_us"]  # server now − clock, per kernel clock
    return -int(diffs["CLOCK_MONOTONIC_RAW"])


@requires_venv(S10_PYTHON, ".venv-server")
def test_server_initiated_mode_is_dialled_and_plays_on_time(tmp_path):
    port = free_port()

    async def dial(srv: TestServer) -> None:
        url = f"ws://127.0.0.1:{port}/sendspin"
        with trio.fail_after(30):
            while True:  # until the player's listener is up
                try:
                    await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    await trio.sleep(0.1)
        await srv.command({"cmd": "connect_to_client", "url": url})

    async def main():
        async with start_test_server(S10_PYTHON, port=0) as srv:
            return await play(srv, tmp_path, ["--listen-port", str(port)], before_start=dial)

    events = trio.run(main)
    assert_played_on_time(events, tmp_path)
    assert "server connected from" in (tmp_path / "player.log").read_text()


@requires_venv(R_PYTHON, ".venv-resonate")
def test_resonate_server_plays_bit_exact_and_on_time(tmp_path):
    async def main():
        async with start_test_server(R_PYTHON, port=0, script=RESONATE_SCRIPT) as srv:
            assert srv.url.endswith("/resonate")
            return srv.ready, await play(srv, tmp_path, ["--server", srv.url])

    ready, events = trio.run(main)
    added = next(e for e in events if e.get("event") == "client_added")
    assert added["roles"] == ["player"]
    # aioresonate stamps in CLOCK_MONOTONIC; the paced log is in CLOCK_MONOTONIC_RAW
    assert_played_on_time(events, tmp_path, raw_minus_server_us(ready))
    player_log = (tmp_path / "player.log").read_text()
    assert "Resonate dialect" in player_log
    assert "encrypted" not in player_log  # a /resonate URL skips the Noise attempt


@requires_venv(S1_PYTHON, ".venv-sendspin2")
def test_sendspin_v1_server_plays_bit_exact(tmp_path):
    async def main():
        async with start_test_server(S1_PYTHON, port=0, script=SENDSPIN_V1_SCRIPT) as srv:
            assert srv.url.endswith("/sendspin")
            assert srv.ready["library_version"].startswith("2.")
            return srv.ready, await play(srv, tmp_path, ["--server", srv.url])

    ready, events = trio.run(main)
    assert_played_on_time(events, tmp_path, raw_minus_server_us(ready))


async def wait_listening(port: int) -> None:
    with trio.fail_after(30):
        while True:  # until the player's listener is up
            try:
                await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                return
            except OSError:
                await trio.sleep(0.1)


async def connected(srv: TestServer, since: int) -> dict:
    """The server's next connection of our player (first time: client_added)."""
    return await srv.wait_event(None, TIMEOUT, since=since, predicate=lambda e: e.get("event") in (
        "client_added", "client_connected"))


async def goodbye_reason(srv: TestServer, since: int) -> str | None:
    return (await srv.wait_event("client_disconnected", TIMEOUT, since=since))["goodbye_reason"]


@requires_venv(S10_PYTHON, ".venv-server")
def test_two_servers_compete_and_the_last_playback_server_wins_after_a_restart(tmp_path):
    """Two encrypted aiosendspin 10 servers dial the player process: a playback dial
    displaces a discovery one (``another_server``), a later discovery dial is turned away
    (``concurrent_attempt``); after the player restarts, of two discovery dials the
    persisted last-playback server wins."""
    port = free_port()
    url = f"ws://127.0.0.1:{port}/sendspin"
    state = tmp_path / "state"

    async def player(name: str) -> trio.Process:
        with open(tmp_path / f"{name}.log", "wb") as out:
            proc = await trio.lowlevel.open_process(
                player_cmd(tmp_path, "--listen-port", str(port), "--name", "contested"),
                stdout=out, stderr=subprocess.STDOUT)
        await wait_listening(port)
        return proc

    async def dial(srv: TestServer, reason: str = "discovery") -> int:
        mark = srv.mark()
        await srv.command({"cmd": "connect_to_client", "url": url, "connection_reason": reason})
        return mark

    async def main():
        async with start_test_server(S10_PYTHON, port=0, name="A") as a, \
                start_test_server(S10_PYTHON, port=0, name="B") as b:
            b_id = b.ready["server_id"]
            p1 = await player("p1")
            try:
                await connected(a, await dial(a))
                mark_a = a.mark()
                await connected(b, await dial(b, "playback"))
                assert await goodbye_reason(a, mark_a) == "another_server"
                await a.command({"cmd": "disconnect_from_client", "url": url})
                mark_a = await dial(a)
                assert await goodbye_reason(a, mark_a) == "concurrent_attempt"
                assert not b.events_of("client_disconnected")
            finally:
                assert await stop_process(p1) == 0
            saved = json.loads((state / "state.json").read_text())
            assert saved["last_played_server_id"] == b_id
            for srv in (a, b):
                await srv.command({"cmd": "disconnect_from_client", "url": url})

            p2 = await player("p2")
            try:
                await connected(a, await dial(a))
                mark_a = a.mark()
                await connected(b, await dial(b))  # discovery too: last-playback wins the tie
                assert await goodbye_reason(a, mark_a) == "another_server"
            finally:
                assert await stop_process(p2) == 0
        return (tmp_path / "p1.log").read_text() + (tmp_path / "p2.log").read_text()

    log = trio.run(main)
    assert "Traceback" not in log
    assert log.count("encrypted, unpaired: Sentinel PSK") >= 4


@pytest.mark.parametrize("which", ["sendspin2", "resonate"])
def test_legacy_servers_dial_the_listener_and_play_bit_exact(tmp_path, which):
    """Server-initiated, plaintext: aiosendspin 2.x leaves ``client/init`` unanswered and
    gets the plain hello on the same socket; aioresonate dials ``/resonate``."""
    python, script, path, venv = {
        "sendspin2": (S1_PYTHON, SENDSPIN_V1_SCRIPT, "/sendspin", ".venv-sendspin2"),
        "resonate": (R_PYTHON, RESONATE_SCRIPT, "/resonate", ".venv-resonate")}[which]
    if python is None:
        pytest.skip(missing_venv_reason(venv))
    port = free_port()

    async def dial(srv: TestServer) -> None:
        await wait_listening(port)
        await srv.command({"cmd": "connect_to_client", "url": f"ws://127.0.0.1:{port}{path}"})

    async def main():
        async with start_test_server(python, port=0, script=script) as srv:
            return srv.ready, await play(srv, tmp_path, ["--listen-port", str(port)],
                                         before_start=dial)

    ready, events = trio.run(main)
    assert_played_on_time(events, tmp_path, raw_minus_server_us(ready))
    log = (tmp_path / "player.log").read_text()
    assert "server connected from" in log
    if which == "sendspin2":
        assert "does not speak encrypted Sendspin" in log


@requires_venv(S1_PYTHON, ".venv-sendspin2")
def test_a_dialling_server_that_closes_after_client_init_gets_plaintext_next_time(tmp_path):
    """Server-initiated, a server that closes the socket when ``client/init`` arrives
    (aiosendspin 5.x/6.x cannot parse it): the real aiosendspin 2.x dials the player through
    a proxy that closes both sides at ``client/init`` as those releases do; the server redials
    and that connection is answered in plaintext: bit-exact and on time."""
    port = free_port()
    closed_at_init: list[int] = []

    def close_at_init(_direction: str, _index: int, msg, conn_no: int):
        if isinstance(msg, str) and '"client/init"' in msg:
            closed_at_init.append(conn_no)
            return CLOSE
        return msg

    async def main():
        async with start_test_server(S1_PYTHON, port=0, script=SENDSPIN_V1_SCRIPT) as srv, \
                trio.open_nursery() as nursery:
            proxy = Mitm(f"ws://127.0.0.1:{port}/sendspin", close_at_init)
            proxy_port = (await nursery.start(proxy.serve)).port

            async def dial(srv: TestServer) -> None:
                await wait_listening(port)
                await srv.command({"cmd": "connect_to_client",
                                   "url": f"ws://127.0.0.1:{proxy_port}/sendspin"})

            events = await play(srv, tmp_path, ["--listen-port", str(port)], before_start=dial)
            nursery.cancel_scope.cancel()
            return srv.ready, events, proxy.connections

    ready, events, connections = trio.run(main)
    assert closed_at_init == [1] and connections >= 2
    assert_played_on_time(events, tmp_path, raw_minus_server_us(ready))
    log = (tmp_path / "player.log").read_text()
    assert ("closed the connection after client/init: not an encrypted Sendspin server: "
            "plaintext on its next connection") in log
    assert ("it closed the connection after client/init last time: the server does not speak "
            "encrypted Sendspin: using plaintext") in log


@requires_venv(S5_PYTHON, ".venv-sendspin5")
def test_a_real_pre_encryption_server_dialling_the_listener_gets_plaintext(tmp_path):
    """Server-initiated, the real aiosendspin 5.x with no proxy: it closes the socket at
    ``client/init`` and refuses the current ``client/state`` shape.  The speaker answers its
    redials in plaintext, learns the older shape and plays bit-exact and on time."""
    port = free_port()

    async def main():
        async with start_test_server(S5_PYTHON, port=0, extra_args=["--wire-truth"]) as srv:
            async def dial(srv: TestServer) -> None:
                await wait_listening(port)
                await srv.command({"cmd": "connect_to_client",
                                   "url": f"ws://127.0.0.1:{port}/sendspin"})

            return await play(srv, tmp_path, ["--listen-port", str(port)], before_start=dial)

    events = trio.run(main)
    assert_played_on_time(events, tmp_path)
    log = (tmp_path / "player.log").read_text()
    assert "not an encrypted Sendspin server: plaintext on its next connection" in log
    assert "closed the connection after client/init last time" in log
    assert log.count("plaintext on its next connection") == 1, "Noise was tried again"


@requires_venv(S10_PYTHON, ".venv-server")
def test_run_without_a_server_is_found_by_mdns_and_played(tmp_path):
    """``run`` with no server flags: listener + ``_sendspin._tcp`` advertisement (kept on
    loopback here); a real aiosendspin 10 server browsing for clients finds it, dials it
    (encrypted) and plays on time."""
    port = free_port()

    async def main():
        async with start_test_server(S10_PYTHON, port=0, extra_args=["--discover-clients"]) as srv:
            return await play(srv, tmp_path, ["--listen-port", str(port),
                                              "--mdns-interface", "127.0.0.1"])

    events = trio.run(main)
    assert_played_on_time(events, tmp_path)
    log = (tmp_path / "player.log").read_text()
    assert "server connected from" in log and "encrypted, unpaired" in log
