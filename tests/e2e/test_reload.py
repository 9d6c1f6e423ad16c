"""SIGHUP reloads the configuration of a running player process (real server, paced device).

A changed name reconnects (``client/goodbye restart``) under the new name; a changed
volume applies at once and is persisted; a bad file is one error line and the running
configuration is kept (the session is not touched); SIGTERM still ends it cleanly.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from resonate_bench.harness import (
    TestServer, find_server_python, requires_venv, start_test_server,
)
from resonate_bench.scenario import stop_process

pytestmark = pytest.mark.e2e

SERVER_PYTHON = find_server_python()
TIMEOUT = 60.0


def write_config(path: Path, url: str, state: Path, name: str, volume: int | str) -> None:
    path.write_text(f'[player]\nserver = "{url}"\ndevice = "paced"\nstate_dir = "{state}"\n'
                    f'name = "{name}"\nvolume = {volume}\nformats = ["pcm:48000:16:2"]\n')


async def client_named(srv: TestServer, name: str) -> dict:
    with trio.fail_after(TIMEOUT):
        while True:
            clients = (await srv.command({"cmd": "status"}))["clients"]
            found = [c for c in clients if c.get("connected") and c.get("name") == name]
            if found:
                return found[0]
            await trio.sleep(0.2)


@requires_venv(SERVER_PYTHON, ".venv-server")
def test_sighup_reloads_and_a_bad_file_keeps_the_running_configuration(tmp_path):
    cfg, state, log_path = tmp_path / "player.toml", tmp_path / "state", tmp_path / "player.log"

    async def main():
        async with start_test_server(SERVER_PYTHON, port=0) as srv:
            write_config(cfg, srv.url, state, "Kitchen", 40)
            with open(log_path, "wb") as out:
                proc = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "resonate_embedded.cli", "run", "--config", str(cfg)],
                    stdout=out, stderr=subprocess.STDOUT)
            try:
                await client_named(srv, "Kitchen")
                mark = srv.mark()
                write_config(cfg, srv.url, state, "Bathroom", 25)
                proc.send_signal(signal.SIGHUP)
                ev = await srv.wait_event("client_disconnected", TIMEOUT, since=mark)
                assert ev["goodbye_reason"] == "restart"
                await client_named(srv, "Bathroom")
                assert json.loads((state / "state.json").read_text())["volume"] == 25

                mark = srv.mark()
                write_config(cfg, srv.url, state, "Garage", 500)  # out of range
                proc.send_signal(signal.SIGHUP)
                await trio.sleep(3)
                assert not srv.events_of("client_disconnected", since=mark)
                await client_named(srv, "Bathroom")
            finally:
                exit_code = await stop_process(proc)
        return exit_code

    exit_code = trio.run(main)
    log = log_path.read_text()
    assert exit_code == 0, log[-3000:]
    assert "SIGHUP: configuration reloaded; changed: name, volume" in log
    assert "SIGHUP: keeping the running configuration: volume=500" in log
    assert "Traceback" not in log
