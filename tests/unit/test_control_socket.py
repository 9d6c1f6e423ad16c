"""Status socket: a real Unix socket in tmp_path, owner-only, one JSON request and one JSON
reply per connection (status snapshot, or an action handed to the player); the `status`
CLI's screen and JSON, and the `control` CLI."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest
import trio

from resonate_embedded import cli, control_socket
from resonate_embedded.control_socket import (
    RequestError, StatusSnapshot, StatusUnavailable, SyncInfo, fetch_status, parse_request,
    send_action, serve_status, socket_path, status_screen,
)
from resonate_embedded.roles.controller import ACTIONS, Action
from resonate_embedded.unix_address import unix_address


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


def serve_and(tmp_path, client, snap=lambda: snapshot().to_dict(), on_action=None):
    """Run the server, call ``client(path)`` in a worker thread (the CLI blocks), return its result."""
    path = socket_path(tmp_path)
    result = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_status, path, snap, on_action)
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
    assert "versions    player " in out and "slots       " in out  # the system lines
    data = json.loads(out[out.index("\n{") + 1:])
    assert data["now_playing"]["title"] == "Song"
    assert data["system"]["player_version"] and "booted_slot" in data["system"]


def test_cli_status_without_player(tmp_path, capsys):
    assert cli.main(["status", "--state-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "is the player running" in captured.err
    assert "versions    player " in captured.out  # versions and slots come from files
    assert cli.main(["status", "--state-dir", str(tmp_path), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert "is the player running" in data["error"] and data["system"]["player_version"]


# --------------------------------------------------------------------------- actions


class Recorder:
    """An ``on_action`` like ``Player.act``: records the actions, returns ``returns``."""

    def __init__(self, returns=None):
        self.actions: list[Action] = []
        self.returns = returns

    async def __call__(self, action: Action):
        self.actions.append(action)
        return self.returns


def raw_exchange(path, data: bytes | None, shut_write: bool = True) -> dict:
    """Send ``data`` as is (None: nothing), optionally close our side, read the reply."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    try:
        sock.connect(str(path))
        if data:
            sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    finally:
        sock.close()
    return json.loads(reply)


def test_parse_request():
    assert parse_request(b"") == {"request": "status"}
    assert parse_request(b'{"request": "status"}') == {"request": "status"}
    assert parse_request(b"{}") == {"request": "status"}
    assert parse_request(b'{"request": "action", "action": "next"}') == \
        {"request": "action", "action": "next", "steps": 1}
    assert parse_request(b'{"request":"action","action":"volume","steps":-3}')["steps"] == -3
    for name in ACTIONS:
        assert parse_request(json.dumps({"request": "action", "action": name}).encode())
    for bad, reason in [
        (b"play", "not JSON"), (b"[1]", "not a JSON object"),
        (b'{"request": "reboot"}', "unknown request"),
        (b'{"request": "action", "action": "self_destruct"}', "unknown action"),
        (b'{"request": "action"}', "unknown action"),
        (b'{"request": "action", "action": "next", "steps": 2}', "only apply to volume"),
        (b'{"request": "action", "action": "volume_up", "steps": 0}', "outside"),
        (b'{"request": "action", "action": "volume_up", "steps": -1}', "outside"),
        (b'{"request": "action", "action": "volume_up", "steps": 101}', "outside"),
        (b'{"request": "action", "action": "volume", "steps": 0}', "outside"),
        (b'{"request": "action", "action": "volume_up", "steps": true}', "not an integer"),
        (b'{"request": "action", "action": "volume_up", "steps": 1.5}', "not an integer"),
    ]:
        with pytest.raises(RequestError, match=reason):
            parse_request(bad)


def test_action_is_handed_to_the_player_and_the_reply_says_what_happens(tmp_path, caplog):
    rec = Recorder()
    caplog.set_level("INFO")

    def client(path):
        return (send_action(path, "play_pause"), send_action(path, "volume_down", 3),
                fetch_status(path))

    connected = snapshot().to_dict()  # the group is playing
    connected["controller"] = {"supported_commands": ["pause", "play", "volume"], "volume": 40,
                               "muted": False}
    first, second, status = serve_and(tmp_path, client, lambda: connected, rec)
    assert rec.actions == [Action("play_pause"), Action("volume_down", 3)]
    assert first["ok"] is True and (first["action"], first["steps"]) == ("play_pause", 1)
    assert first["result"] == "sent to Music Assistant as client/command pause"
    assert second["result"] == "sent to Music Assistant as client/command volume"
    assert second["steps"] == 3 and status["name"] == "Kitchen"
    assert sum("control socket: volume_down ×3" in r.getMessage() for r in caplog.records) == 1


def test_an_unsupported_command_is_reported_as_not_sent(tmp_path):
    rec = Recorder()
    connected = snapshot().to_dict()
    connected["controller"] = {"supported_commands": ["volume", "mute", "switch"], "volume": 100,
                               "muted": False}

    def client(path):
        return [send_action(path, name)["result"] for name in ("next", "volume_up", "mute")]

    nxt, up, mute = serve_and(tmp_path, client, lambda: connected, rec)
    assert nxt == ("not sent: nothing Music Assistant supports now "
                   "(supported_commands: mute, switch, volume)")
    assert up.startswith("not sent")  # already at 100
    assert mute == "sent to Music Assistant as client/command mute"
    assert len(rec.actions) == 3  # the player decides; the reply only predicts


def test_action_without_a_server_says_it_changes_this_speaker(tmp_path):
    rec = Recorder()
    alone = StatusSnapshot(name="Kitchen").to_dict()
    reply = serve_and(tmp_path, lambda p: send_action(p, "volume_up"), lambda: alone, rec)
    assert reply["ok"] and "this speaker" in reply["result"]
    reply = serve_and(tmp_path, lambda p: send_action(p, "next"), lambda: alone, rec)
    assert reply["ok"] and "nothing to do" in reply["result"]
    assert [a.name for a in rec.actions] == ["volume_up", "next"]


def test_on_action_result_text_is_the_reply(tmp_path):
    rec = Recorder(returns="volume 35 (this speaker)")
    reply = serve_and(tmp_path, lambda p: send_action(p, "volume_down"), on_action=rec)
    assert reply["result"] == "volume 35 (this speaker)"


def test_bad_requests_are_one_log_line_each_and_the_server_goes_on(tmp_path, caplog):
    rec = Recorder()
    caplog.set_level("INFO")

    def client(path):
        out = [raw_exchange(path, b'{"request": "action", "action": "explode"}\n'),
               raw_exchange(path, b"not json\n"),
               raw_exchange(path, b'{"request": "action", "action": "mute", "steps": 5}\n'),
               raw_exchange(path, b"x" * (control_socket.MAX_REQUEST_BYTES + 10)),
               fetch_status(path)]
        return out

    *errors, status = serve_and(tmp_path, client, on_action=rec)
    assert "unknown action 'explode'" in errors[0]["error"]
    assert "not JSON" in errors[1]["error"]
    assert "steps only apply" in errors[2]["error"]
    assert "longer than" in errors[3]["error"]
    assert all(set(e) == {"error"} for e in errors)
    assert status["name"] == "Kitchen" and rec.actions == []
    refused = [r for r in caplog.records if "refused a request" in r.getMessage()]
    assert len(refused) == 4 and all(r.levelname == "WARNING" for r in refused)


def test_actions_refused_when_the_player_takes_none(tmp_path):
    reply = serve_and(tmp_path, lambda p: send_action(p, "play"))
    assert "takes no actions" in reply["error"]


def test_a_player_that_does_not_take_the_action_is_reported_busy(tmp_path, monkeypatch):
    monkeypatch.setattr(control_socket, "ACTION_TIMEOUT_S", 0.2)

    async def stuck(action):
        await trio.sleep_forever()

    reply = serve_and(tmp_path, lambda p: send_action(p, "play", timeout_s=20), on_action=stuck)
    assert "did not take the action" in reply["error"]


def test_a_client_that_sends_nothing_gets_the_status(tmp_path, monkeypatch):
    monkeypatch.setattr(control_socket, "REQUEST_TIMEOUT_S", 0.2)

    def client(path):
        return (raw_exchange(path, None, shut_write=True),  # EOF at once
                raw_exchange(path, None, shut_write=False),  # silent: the timeout
                raw_exchange(path, b'{"request": "status"}', shut_write=True))  # no newline

    for reply in serve_and(tmp_path, client):
        assert reply["name"] == "Kitchen"


def test_cli_control(tmp_path, capsys):
    rec = Recorder()
    alone = StatusSnapshot(name="Kitchen").to_dict()

    def client(path):
        return (cli.main(["control", "volume_down", "--steps", "2", "--state-dir", str(tmp_path)]),
                cli.main(["control", "volume", "--steps", "-3", "--socket", str(path)]),
                cli.main(["control", "next", "--steps", "2", "--socket", str(path)]))

    assert serve_and(tmp_path, client, lambda: alone, rec) == (0, 0, 2)
    captured = capsys.readouterr()
    assert "volume_down ×2: applied to this speaker" in captured.out
    assert "volume ×-3: applied to this speaker" in captured.out
    assert "the player refused: next: steps only apply to volume actions" in captured.err
    assert rec.actions == [Action("volume_down", 2), Action("volume", -3)]


def test_cli_control_without_player(tmp_path, capsys):
    assert cli.main(["control", "play_pause", "--state-dir", str(tmp_path)]) == 1
    assert "is the player running" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["control", "self_destruct", "--state-dir", str(tmp_path)])


def long_state_dir(tmp_path: Path) -> Path:
    """A state directory whose socket path is far past sun_path's 107 bytes."""
    state = tmp_path
    while 200 - len(str(state)) > 60:
        state = state / ("d" * 49)
    state = state / ("s" * (200 - len(str(state)) - 1))
    assert len(str(state)) == 200
    return state


def test_a_200_character_state_dir_still_answers(tmp_path, capsys, caplog):
    state = long_state_dir(tmp_path)
    rec = Recorder()

    def client(path):
        assert path.parent == state and stat.S_ISSOCK(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        return (fetch_status(path)["name"],
                cli.main(["status", "--state-dir", str(state), "--json"]),
                cli.main(["control", "volume_up", "--state-dir", str(state)]))

    assert serve_and(state, client, lambda: StatusSnapshot(name="Kitchen").to_dict(),
                     rec) == ("Kitchen", 0, 0)
    assert json.loads(capsys.readouterr().out.split("\nvolume_up")[0])["name"] == "Kitchen"
    assert rec.actions == [Action("volume_up", 1)]
    assert not socket_path(state).exists()
    assert not any("not available" in r.getMessage() for r in caplog.records)


def test_a_long_state_dir_stale_socket_is_replaced_and_a_missing_one_is_reported(tmp_path):
    state = long_state_dir(tmp_path)
    with pytest.raises(StatusUnavailable, match="does not exist"):
        fetch_status(socket_path(state))
    state.mkdir(parents=True)
    with unix_address(socket_path(state)) as address:
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(address)
        stale.close()
    assert socket_path(state).exists()
    assert serve_and(state, fetch_status)["name"] == "Kitchen"
