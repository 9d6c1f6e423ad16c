"""Status socket: a real Unix socket in tmp_path, owner-only, one JSON snapshot per connection;
the `status` CLI's screen and JSON."""

from __future__ import annotations

import json
import os
import socket
import stat

import pytest
import trio

from resonate_embedded import cli
from resonate_embedded.control_socket import (
    StatusSnapshot, StatusUnavailable, SyncInfo, fetch_status, serve_status, socket_path,
    status_screen,
)


def snapshot() -> StatusSnapshot:
    return StatusSnapshot(
        name="Kitchen", client_id="abc", version="0.1.0", player_state="playing", uptime_s=3725,
        connected=True, server_name="Music Assistant", server_id="srv", encrypted=True,
        connected_for_s=61, roles=["player@v1", "controller@v1", "metadata@v1"],
        group_name="Downstairs", playback_state="playing",
        stream_format="flac 48000 Hz 16 bit 2 ch", output_state="synchronized", buffer_ms=812,
        underruns=0, sync=SyncInfo(True, 1234.5, 0.42, 35, 900, -12, 3), volume=40, muted=False,
        output_delay_ms=0,
        now_playing={"title": "Song", "artist": "Band", "album": "LP", "position_ms": 61_000,
                     "duration_ms": 200_000, "playback_speed": 1000},
        pairing="paired", paired_servers=1)


def serve_and(tmp_path, client, snap=lambda: snapshot().to_dict()):
    """Run the server, call ``client(path)`` in a worker thread (the CLI blocks), return its result."""
    path = socket_path(tmp_path)
    result = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_status, path, snap)
            result["value"] = await trio.to_thread.run_sync(client, path)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return result["value"]


def test_socket_is_owner_only_and_answers_json(tmp_path):
    def client(path):
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        return mode, fetch_status(path), fetch_status(path)

    mode, first, second = serve_and(tmp_path, client)
    assert mode == 0o600
    assert first == second == json.loads(json.dumps(snapshot().to_dict()))
    assert first["sync"]["uncertainty_us"] == 35 and first["snapshot_version"] == 1
    assert not socket_path(tmp_path).exists()  # removed when the task ends


def test_stale_socket_is_replaced_and_a_live_one_is_not_stolen(tmp_path, caplog):
    path = socket_path(tmp_path)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # file left behind, nobody listening
    assert serve_and(tmp_path, fetch_status)["name"] == "Kitchen"

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_status, path, lambda: {"who": "first"})
            await nursery.start(serve_status, path, lambda: {"who": "second"})
            answer = await trio.to_thread.run_sync(fetch_status, path)
            assert answer == {"who": "first"}
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert any("another player" in r.getMessage() for r in caplog.records)


def test_snapshot_failure_is_an_error_answer_not_a_crash(tmp_path):
    def broken():
        raise RuntimeError("boom")

    assert serve_and(tmp_path, fetch_status, broken) == {"error": "snapshot failed: boom"}


def test_no_player(tmp_path):
    with pytest.raises(StatusUnavailable, match="does not exist"):
        fetch_status(socket_path(tmp_path))


def test_screen_has_every_section():
    screen = status_screen(snapshot().to_dict())
    for text in ("Kitchen  [playing]  up 1h 02m 05s", "Music Assistant", "encrypted",
                 "player@v1, controller@v1, metadata@v1", "Downstairs (playing)",
                 "flac 48000 Hz 16 bit 2 ch", "offset +1.234 ms ±35 us", "drift +0.42 ppm",
                 "error -12 us", "buffer      812 ms", "volume      40", "output delay 0 ms",
                 "Song - Band (LP)  1:01 / 3:20", "pairing     paired (1 paired server)"):
        assert text in screen, text
    bare = status_screen(StatusSnapshot().to_dict())
    assert "not connected" in bare and "clock not synchronised" in bare and "now playing -" in bare
    assert status_screen({}).startswith("speaker")  # tolerant of missing keys


def test_cli_status_screen_and_json(tmp_path, capsys):
    def client(path):
        return (cli.main(["status", "--socket", str(path)]),
                cli.main(["status", "--state-dir", str(tmp_path), "--json"]))

    assert serve_and(tmp_path, client) == (0, 0)
    out = capsys.readouterr().out
    assert "Kitchen  [playing]" in out
    data = json.loads(out[out.index("\n{") + 1:])
    assert data["now_playing"]["title"] == "Song"


def test_cli_status_without_player(tmp_path, capsys):
    assert cli.main(["status", "--state-dir", str(tmp_path)]) == 1
    assert "is the player running" in capsys.readouterr().err
