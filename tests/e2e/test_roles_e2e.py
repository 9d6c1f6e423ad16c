"""The controller, metadata and color roles end to end: a player process (encrypted, on the
paced device, its own state dir) against the real aiosendspin 10 server (the test harness
plus a small wrapper, written below, that adds the operator's side of these roles).

* ``resonate-embedded control ACTION`` goes through the player's control socket and the
  same path a button takes: ``client/command`` to the group for the commands the server
  lists in ``supported_commands``, nothing for the others (one log line), the speaker's own
  volume when no server is connected (persisted in ``state.json``);
* metadata and colours set through the server's own API (``MetadataGroupRole.set_metadata``,
  ``ColorGroupRole.set_color`` with a future ``timestamp_us``) show up in
  ``resonate-embedded status --json`` at their time, not before; one ``now playing`` line per
  track change;
* malformed role objects (raw ``server/state`` text on the server's own connection send
  path, encrypted like everything else) are one log line each, and the session goes on.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from resonate_bench import harness
from resonate_bench.harness import find_server_python, requires_venv
from resonate_bench.scenario import stop_process
from resonate_embedded.control_socket import StatusUnavailable, fetch_status, socket_path

pytestmark = pytest.mark.e2e

SERVER_PYTHON = find_server_python()
needs_server = requires_venv(SERVER_PYTHON, ".venv-server")

VOLUME_STEP = 7  # not the default 5: the group volume must move by the configured step
START_VOLUME = 50
SCHEDULE_AHEAD_US = 2_000_000
EARLY_MARGIN_US = 100_000  # clock mapping uncertainty allowed when judging "not before"

_WRAPPER = r'''
"""The harness server plus operator commands for the controller/metadata/color roles
(written by tests/e2e/test_roles_e2e.py)."""
import dataclasses
import importlib.util
import json
import sys

from aiosendspin.models.types import MediaCommand
from aiosendspin.server.roles.color.state import Color
from aiosendspin.server.roles.controller.group import ControllerGroupRole
from aiosendspin.server.roles.metadata.state import Metadata

args = [a for a in sys.argv[1:] if a != "-u"]
spec = importlib.util.spec_from_file_location("sendspin_test_server", args[0])
mod = importlib.util.module_from_spec(spec)
sys.modules["sendspin_test_server"] = mod
spec.loader.exec_module(mod)
emit = mod.emit

# What the server received and what it emitted for its application.
_handle = ControllerGroupRole.handle_command


def handle_command(self, cmd):
    emit("controller_command", command=cmd.command.value, volume=cmd.volume, mute=cmd.mute,
         supported=[c.value for c in self._get_supported_commands()])
    return _handle(self, cmd)


def emit_group_event(self, event):
    fields = dataclasses.asdict(event) if dataclasses.is_dataclass(event) else {}
    emit("controller_event", kind=type(event).__name__, **fields)
    self._group._signal_event(event)


ControllerGroupRole.handle_command = handle_command
ControllerGroupRole.emit_group_event = emit_group_event


class RawText:
    """A message the connection's writer sends as is (``_send_message`` calls ``to_json``)."""

    def __init__(self, text):
        self._text = text

    def to_json(self):
        return self._text


def _group(self, cmd):
    return self._client(cmd.get("client_id")).group


async def cmd_roles(self, cmd):
    client = self._client(cmd.get("client_id"))
    return {"roles": sorted(client.active_role_ids), "group_id": client.group.group_id}


async def cmd_supported(self, cmd):
    role = _group(self, cmd).group_role("controller")
    role.set_supported_commands([MediaCommand(c) for c in cmd["commands"]])
    return {"supported": [c.value for c in role._get_supported_commands()]}


async def cmd_group(self, cmd):
    role = _group(self, cmd).group_role("controller")
    return {"volume": role.volume, "muted": role.muted,
            "supported": [c.value for c in role._get_supported_commands()]}


async def cmd_metadata(self, cmd):
    now = self.server.clock.now_us()
    ts = now + int(cmd.get("delay_us", 0)) if cmd.get("delay_us") else None
    metadata = Metadata(title=cmd.get("title"), artist=cmd.get("artist"),
                        album=cmd.get("album"), track_progress=cmd.get("progress_ms", 0),
                        track_duration=cmd.get("duration_ms", 200_000), playback_speed=1000)
    _group(self, cmd).group_role("metadata").set_metadata(metadata, timestamp_us=ts)
    return {"now_us": now, "timestamp_us": ts if ts is not None else now}


async def cmd_color(self, cmd):
    now = self.server.clock.now_us()
    ts = now + int(cmd.get("delay_us", 0)) if cmd.get("delay_us") else None
    color = Color(**{k: tuple(v) for k, v in cmd["colors"].items()})
    _group(self, cmd).group_role("color").set_color(color, timestamp_us=ts)
    return {"now_us": now, "timestamp_us": ts if ts is not None else now}


async def cmd_raw(self, cmd):
    """One raw text message on the client's connection (what a broken server would send)."""
    conn = self._client(cmd.get("client_id")).connection
    if conn is None:
        raise mod.CommandError("not connected")
    conn.send_message(RawText(json.dumps(cmd["message"], separators=(",", ":"))))
    return {}


async def cmd_server_now(self, cmd):
    return {"now_us": self.server.clock.now_us()}


for _name, _fn in list(globals().items()):
    if _name.startswith("cmd_"):
        setattr(mod.Harness, _name, _fn)
sys.exit(mod.main(args[1:]))
'''


def roles_server_python(workdir: Path) -> str:
    d = workdir / "roles-server"
    d.mkdir(parents=True, exist_ok=True)
    (d / "wrapper.py").write_text(_WRAPPER)
    launcher = d / "python"
    launcher.write_text(f'#!/bin/sh\nexec "{SERVER_PYTHON}" -u "{d / "wrapper.py"}" "$@"\n')
    launcher.chmod(0o755)
    return str(launcher)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Speaker:
    """One player process: paced device, its own state dir, no input devices (the host's
    keyboard must not press buttons), ``volume_step`` = :data:`VOLUME_STEP`."""

    def __init__(self, tmp: Path, url: str, name: str = "Shelf") -> None:
        self.state = tmp / "state"
        self.out_path = tmp / f"{name}.player.log"
        config = tmp / f"{name}.toml"
        config.write_text(f'[player]\ninput_devices = "none"\nvolume_step = {VOLUME_STEP}\n')
        self.cmd = [sys.executable, "-m", "resonate_embedded.cli", "run", "--server", url,
                    "--config", str(config), "--device", f"paced:LOG={tmp / f'{name}.plog'}",
                    "--state-dir", str(self.state), "--formats", "pcm:48000:16:2",
                    "--name", name, "--volume", str(START_VOLUME)]
        self.proc: trio.Process | None = None

    async def start(self) -> None:
        with open(self.out_path, "wb") as out:
            self.proc = await trio.lowlevel.open_process(self.cmd, stdout=out,
                                                         stderr=subprocess.STDOUT)

    async def stop(self) -> int:
        assert self.proc is not None
        return await stop_process(self.proc)

    @property
    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def count(self, text: str) -> int:
        return self.output.count(text)

    async def cli(self, *args: str) -> subprocess.CompletedProcess:
        return await trio.run_process(
            [sys.executable, "-m", "resonate_embedded.cli", *args, "--state-dir", str(self.state)],
            capture_stdout=True, capture_stderr=True, check=False)

    async def control(self, action: str, *extra: str) -> str:
        done = await self.cli("control", action, *extra)
        out = done.stdout.decode()
        assert done.returncode == 0, (out, done.stderr.decode())
        return out

    async def status_json(self) -> dict:
        done = await self.cli("status", "--json")
        assert done.returncode == 0, done.stderr.decode()
        return json.loads(done.stdout)

    async def status(self) -> dict:
        """The snapshot straight from the socket (no process start: for fine polling)."""
        return await trio.to_thread.run_sync(fetch_status, socket_path(self.state))

    async def wait_status(self, pred, timeout: float = 30.0) -> dict:
        with trio.fail_after(timeout):
            while True:
                try:
                    snap = await self.status()
                except StatusUnavailable:
                    snap = None
                if snap is not None and pred(snap):
                    return snap
                await trio.sleep(0.05)

    async def wait_log(self, text: str, timeout: float = 30.0) -> None:
        with trio.fail_after(timeout):
            while text not in self.output:
                await trio.sleep(0.1)

    def saved_volume(self) -> tuple[int, bool]:
        data = json.loads((self.state / "state.json").read_text())
        return data["volume"], data["muted"]


async def wait_server(srv, cmd: dict, pred, timeout: float = 30.0) -> dict:
    with trio.fail_after(timeout):
        while True:
            answer = await srv.command(cmd)
            if pred(answer):
                return answer
            await trio.sleep(0.1)


def clock_now_us(srv) -> int:
    """The server's clock (the harness names the kernel clock it reads)."""
    return time.clock_gettime_ns(getattr(time, srv.clock)) // 1000


async def poll_until_shown(srv, speaker: Speaker, due_us: int, shown, timeout: float = 30.0):
    """Poll the player's snapshot until ``shown(snap)``; every poll answered before
    ``due_us`` (server clock, less the mapping margin) must not show it yet.  Returns the
    snapshot and how many polls saw the old state before the due time."""
    early = 0
    with trio.fail_after(timeout):
        while True:
            snap = await speaker.status()
            answered = clock_now_us(srv)
            if shown(snap):
                assert answered >= due_us - EARLY_MARGIN_US, \
                    f"shown {(due_us - answered) / 1000:.0f} ms before its time"
                return snap, early
            if answered < due_us - EARLY_MARGIN_US:
                early += 1
            await trio.sleep(0.02)


@needs_server
def test_controller_metadata_color_against_aiosendspin(tmp_path):
    async def main():
        async with harness.start_test_server(roles_server_python(tmp_path), port=0,
                                             log_path=tmp_path / "server.log") as srv:
            speaker = Speaker(tmp_path, srv.url)
            await speaker.start()
            try:
                await run_checks(srv, speaker)
            finally:
                rc = await speaker.stop()
            assert rc == 0, speaker.output[-3000:]
            assert "Traceback" not in speaker.output
            server_log = (tmp_path / "server.log").read_text()
            assert "Received unsupported command" not in server_log, \
                "the player sent a command the server does not support"

    trio.run(main)


async def run_checks(srv, speaker: Speaker) -> None:
    added = await srv.wait_event("client_added", timeout=60)
    cid = added["client_id"]
    roles = await wait_server(srv, {"cmd": "roles", "client_id": cid},
                              lambda a: {"controller@v1", "metadata@v1", "color@v1"}
                              <= set(a["roles"]))
    assert "player@v1" in roles["roles"], roles
    snap = await speaker.wait_status(lambda s: s["connected"] and s["controller"] is not None)
    assert snap["encrypted"] is True
    assert snap["volume"] == START_VOLUME and snap["controller"]["volume"] == START_VOLUME

    # ---- (a) controller: only what the server lists is sent
    group = await srv.command({"cmd": "group", "client_id": cid})
    assert "next" not in group["supported"] and "play" not in group["supported"]
    mark = srv.mark()
    out = await speaker.control("next")
    assert out.startswith("next: not sent: nothing Sendspin Test Server supports now"), out
    await speaker.wait_log("control next: nothing the server supports")
    out = await speaker.control("play_pause")
    assert "not sent" in out, out
    await speaker.wait_log("control play_pause: nothing the server supports")
    await trio.sleep(1.0)  # anything sent would have arrived by now
    assert srv.events_of("controller_command", since=mark) == []
    assert srv.events_of("controller_event", since=mark) == []

    supported = (await srv.command({"cmd": "supported", "client_id": cid,
                                    "commands": ["play", "pause", "stop"]}))["supported"]
    assert {"play", "pause", "volume", "mute"} <= set(supported) and "next" not in supported
    await speaker.wait_status(lambda s: "play" in (s["controller"] or {}).get(
        "supported_commands", []))

    mark = srv.mark()
    out = await speaker.control("play_pause")
    assert out.startswith("play_pause: sent to Sendspin Test Server as client/command "), out
    ev = await srv.wait_event("controller_event", since=mark, timeout=30)
    assert ev["kind"] in ("ControllerPlayEvent", "ControllerPauseEvent"), ev
    cmd = srv.events_of("controller_command", since=mark)[0]
    assert cmd["command"] in ("play", "pause") and cmd["command"] in cmd["supported"]

    mark = srv.mark()
    out = await speaker.control("volume_up")
    assert "client/command volume" in out, out
    ev = await srv.wait_event("controller_event", since=mark, timeout=30,
                              predicate=lambda e: e["kind"] == "ControllerVolumeEvent")
    assert ev["volume"] == START_VOLUME + VOLUME_STEP
    group = await wait_server(srv, {"cmd": "group", "client_id": cid},
                              lambda g: g["volume"] == START_VOLUME + VOLUME_STEP)
    # The group volume reached this speaker (server/command player volume) and was kept.
    await speaker.wait_status(lambda s: s["volume"] == START_VOLUME + VOLUME_STEP)
    assert speaker.saved_volume()[0] == START_VOLUME + VOLUME_STEP

    mark = srv.mark()
    await speaker.control("volume_down", "--steps", "2")
    ev = await srv.wait_event("controller_event", since=mark, timeout=30,
                              predicate=lambda e: e["kind"] == "ControllerVolumeEvent")
    assert ev["volume"] == START_VOLUME - VOLUME_STEP
    await wait_server(srv, {"cmd": "group", "client_id": cid},
                      lambda g: g["volume"] == START_VOLUME - VOLUME_STEP)

    mark = srv.mark()
    await speaker.control("mute")
    ev = await srv.wait_event("controller_event", since=mark, timeout=30,
                              predicate=lambda e: e["kind"] == "ControllerMuteEvent")
    assert ev["muted"] is True
    await wait_server(srv, {"cmd": "group", "client_id": cid}, lambda g: g["muted"] is True)
    await speaker.wait_status(lambda s: s["muted"] is True)

    # "next" once the server lists it
    await srv.command({"cmd": "supported", "client_id": cid,
                       "commands": ["play", "pause", "stop", "next"]})
    await speaker.wait_status(lambda s: "next" in s["controller"]["supported_commands"])
    mark = srv.mark()
    await speaker.control("next")
    ev = await srv.wait_event("controller_event", since=mark, timeout=30)
    assert ev["kind"] == "ControllerNextEvent", ev
    assert speaker.count("control next: nothing the server supports") == 1

    # ---- (b) metadata: now, then one scheduled 2 s ahead
    await srv.command({"cmd": "metadata", "client_id": cid, "title": "Song A",
                       "artist": "Band A", "album": "First"})
    snap = await speaker.wait_status(lambda s: (s["now_playing"] or {}).get("title") == "Song A")
    assert snap["now_playing"]["artist"] == "Band A"
    await speaker.wait_log('now playing: "Song A" by Band A from First')
    sched = await srv.command({"cmd": "metadata", "client_id": cid, "title": "Song B",
                               "artist": "Band B", "album": "Second",
                               "delay_us": SCHEDULE_AHEAD_US})
    pending = await speaker.wait_status(
        lambda s: "Song B" in ((s["now_playing"] or {}).get("next_title"),
                               (s["now_playing"] or {}).get("title")))
    if pending["now_playing"]["next_title"] == "Song B":
        assert pending["now_playing"]["title"] == "Song A"  # known, not yet in effect
    snap, early = await poll_until_shown(
        srv, speaker, sched["timestamp_us"],
        lambda s: (s["now_playing"] or {}).get("title") == "Song B")
    assert early > 0, "no poll before the scheduled time (machine too slow to tell)"
    assert snap["now_playing"]["artist"] == "Band B" and snap["now_playing"]["album"] == "Second"
    full = await speaker.status_json()  # the CLI shows the same
    assert (full["now_playing"]["title"], full["now_playing"]["artist"]) == ("Song B", "Band B")
    # The same track again (a new position only): no new line.
    await srv.command({"cmd": "metadata", "client_id": cid, "title": "Song B",
                       "artist": "Band B", "album": "Second", "progress_ms": 30_000})
    await speaker.wait_status(lambda s: (s["now_playing"] or {}).get("position_ms", 0) >= 30_000)
    await speaker.wait_log('now playing: "Song B" by Band B from Second')
    await trio.sleep(1.0)
    assert speaker.count('now playing: "Song A"') == 1
    assert speaker.count('now playing: "Song B"') == 1

    # ---- (c) colour, scheduled 2 s ahead
    sched = await srv.command({"cmd": "color", "client_id": cid, "delay_us": SCHEDULE_AHEAD_US,
                               "colors": {"primary": [200, 30, 60], "accent": [20, 120, 240]}})
    snap, early = await poll_until_shown(
        srv, speaker, sched["timestamp_us"],
        lambda s: (s["colors"] or {}).get("primary") == "#c81e3c")
    assert early > 0
    assert snap["colors"]["accent"] == "#1478f0"
    full = await speaker.status_json()
    assert full["colors"]["primary"] == "#c81e3c"

    # ---- malformed role objects: one log line each, state kept, session goes on
    mark = srv.mark()
    now = clock_now_us(srv)
    bad = [
        ({"metadata": {"timestamp": "soon", "title": "Nope"}},
         "metadata.timestamp=soon is not a usable integer: ignored"),
        ({"color": {"timestamp": "later", "primary": [1, 2, 3]}},
         "color.timestamp=later is not a usable integer: ignored"),
        ({"controller": {"supported_commands": "all", "volume": 10, "muted": False}},
         "controller.supported_commands is not a list of strings"),
        ({"controller": {"supported_commands": ["play"], "volume": "loud", "muted": False}},
         "controller.volume is str, not an integer"),
        ({"metadata": ["Song C"]}, "metadata is list, not an object: ignored"),
    ]
    for payload, _ in bad:
        await srv.command({"cmd": "raw", "client_id": cid,
                           "message": {"type": "server/state", "payload": payload}})
    for _, line in bad:
        await speaker.wait_log(line, timeout=30)
    # A wrong-typed field drops that field only (full state: the rest is taken).
    await srv.command({"cmd": "raw", "client_id": cid, "message": {
        "type": "server/state",
        "payload": {"color": {"timestamp": now, "primary": [300, 0, 0], "accent": [1, 2, 3]}}}})
    await speaker.wait_log("color.primary=[300, 0, 0] is not [R, G, B] in 0-255: ignored")
    await trio.sleep(1.0)
    for _, line in bad:
        assert speaker.count(line) == 1, line
    snap = await speaker.status()
    assert snap["connected"] and snap["now_playing"]["title"] == "Song B"
    assert snap["controller"]["volume"] == START_VOLUME - VOLUME_STEP
    assert "next" in snap["controller"]["supported_commands"]
    assert snap["colors"]["primary"] is None and snap["colors"]["accent"] == "#010203"
    assert srv.events_of("client_disconnected", since=mark) == []
    # ... and the controller still works.
    mark = srv.mark()
    await speaker.control("mute")
    ev = await srv.wait_event("controller_event", since=mark, timeout=30,
                              predicate=lambda e: e["kind"] == "ControllerMuteEvent")
    assert ev["muted"] is False


@pytest.mark.skipif(sys.platform != "linux", reason="Unix socket, paced device")
def test_control_without_server_changes_and_keeps_the_local_volume(tmp_path):
    """(d) No server (nothing listens at the URL): volume keys act on this speaker and the
    volume is persisted; transport actions do nothing."""

    async def main():
        speaker = Speaker(tmp_path, f"ws://127.0.0.1:{free_port()}/sendspin")
        await speaker.start()
        try:
            snap = await speaker.wait_status(lambda s: True, timeout=60)
            assert not snap["connected"] and snap["volume"] == START_VOLUME
            out = await speaker.control("volume_down")
            assert "applied to this speaker" in out
            await speaker.wait_status(lambda s: s["volume"] == START_VOLUME - VOLUME_STEP)
            assert speaker.saved_volume() == (START_VOLUME - VOLUME_STEP, False)
            await speaker.wait_log(f"control volume_down: volume {START_VOLUME - VOLUME_STEP} "
                                   "(this speaker)")
            await speaker.control("volume", "--steps", "-2")
            await speaker.wait_status(lambda s: s["volume"] == START_VOLUME - 3 * VOLUME_STEP)
            await speaker.control("mute")
            await speaker.wait_status(lambda s: s["muted"] is True)
            assert speaker.saved_volume() == (START_VOLUME - 3 * VOLUME_STEP, True)
            out = await speaker.control("next")
            assert "nothing to do" in out
            await trio.sleep(0.5)
            snap = await speaker.status_json()
            assert (snap["volume"], snap["muted"]) == (START_VOLUME - 3 * VOLUME_STEP, True)
            refused = await speaker.cli("control", "next", "--steps", "3")
            assert refused.returncode == 2 and b"steps only apply" in refused.stderr
        finally:
            assert await speaker.stop() == 0
        assert speaker.count("control socket: refused a request") == 1
        # Kept across a restart (no --volume this time).
        speaker.cmd.remove("--volume")
        speaker.cmd.remove(str(START_VOLUME))
        await speaker.start()
        try:
            snap = await speaker.wait_status(lambda s: True, timeout=60)
            assert (snap["volume"], snap["muted"]) == (START_VOLUME - 3 * VOLUME_STEP, True)
        finally:
            assert await speaker.stop() == 0

    trio.run(main)


@pytest.mark.skipif(sys.platform != "linux", reason="Unix socket, paced device")
def test_status_and_control_socket_with_a_200_character_state_dir(tmp_path):
    """The control socket's path is past sun_path's 107 bytes: the player still answers
    ``status --state-dir`` and ``control`` (and says nothing about the socket)."""
    base = tmp_path
    while 200 - len(str(base / "state")) > 60:
        base = base / ("d" * 49)
    base = base / ("b" * (200 - len(str(base / "state")) - 1))
    base.mkdir(parents=True)

    async def main():
        speaker = Speaker(base, f"ws://127.0.0.1:{free_port()}/sendspin")
        assert len(str(speaker.state)) == 200
        await speaker.start()
        try:
            with trio.fail_after(60):
                while (await speaker.cli("status", "--json")).returncode != 0:
                    await trio.sleep(0.2)
            snap = await speaker.status_json()
            assert snap["name"] == "Shelf" and snap["volume"] == START_VOLUME
            assert "applied to this speaker" in await speaker.control("volume_down")
            await speaker.wait_status(lambda s: s["volume"] == START_VOLUME - VOLUME_STEP)
            screen = await speaker.cli("status")
            assert screen.returncode == 0 and b"Shelf" in screen.stdout
        finally:
            assert await speaker.stop() == 0
        assert speaker.count("not available") == 0

    trio.run(main)
