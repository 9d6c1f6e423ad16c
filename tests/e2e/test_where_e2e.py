"""'Where is my speaker?' end to end, no server needed: the player process in listener mode
(no --server: it waits to be dialled) on the paced device; ``resonate-embedded control
say_where`` makes it say its name and address, and the paced device's log shows audio
that is not silence."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import trio

from resonate_bench.scenario import stop_process
from resonate_bench.paced_log import read_paced_log_sections

pytestmark = pytest.mark.e2e

TIMEOUT = 60.0


def test_control_say_where_plays_the_address_on_the_device(tmp_path):
    state, plog, out_path = tmp_path / "state", tmp_path / "paced.log", tmp_path / "player.log"
    cfg = tmp_path / "player.toml"
    cfg.write_text(f'[player]\nlisten_port = 0\nmdns_interface = "127.0.0.1"\n'
                   f'state_dir = "{state}"\nname = "Den"\ninput_devices = "none"\n'
                   f'say_where_at_first_boot = false\n')

    def log_text() -> str:
        return out_path.read_text(errors="replace")

    async def main():
        with open(out_path, "wb") as out:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "resonate_embedded.cli", "run", "--config", str(cfg),
                 "--device", f"paced:LOG={plog}"],
                stdout=out, stderr=subprocess.STDOUT)
        try:
            with trio.fail_after(TIMEOUT):
                while "waiting for servers on port" not in log_text():
                    assert proc.returncode is None, log_text()[-3000:]
                    await trio.sleep(0.2)
            await trio.sleep(1.0)
            # nothing audible yet (the writer proves the device at start with silence)
            assert not any(section.all_samples().any()
                           for section in read_paced_log_sections(plog))
            control = await trio.run_process(
                [sys.executable, "-m", "resonate_embedded.cli", "control", "say_where",
                 "--state-dir", str(state)], capture_stdout=True, capture_stderr=True,
                check=False)
            assert control.returncode == 0, control.stdout + control.stderr
            assert b"say_where" in control.stdout
            with trio.fail_after(TIMEOUT):  # played out (the message is ~17 s): device closed
                while "announcement finished" not in log_text():
                    await trio.sleep(0.5)
            await trio.sleep(1.0)
        finally:
            code = await stop_process(proc)
        return code

    code = trio.run(main)
    text = log_text()
    assert code == 0, text[-3000:]
    assert "where (control say_where): saying name 'Den' and address 127.0.0.1" in text
    samples = np.concatenate([s.all_samples() for s in read_paced_log_sections(plog)])
    loud = np.abs(samples.astype(np.int64)).max(axis=1)
    assert loud.max() > 3000, "only silence was played"
    assert (loud > 1000).sum() > 48000 * 3, "less than 3 s of audible audio"
    assert "Traceback" not in text
