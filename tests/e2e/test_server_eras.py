"""Every aiosendspin era a user may run, end to end: the real server release in its own
Python 3.12 venv, the real player process, the paced ALSA device.

One test per era.  The player plays the index signal bit-exact and on time (ground truth:
the paced device's log against the server's chunk log), obeys the server's own volume
API, and, where the release has one, its delay API (``set_static_delay`` up to 9.x,
``set_output_delay`` in 10.x): both releases define a positive delay as "the speaker plays
that much earlier" (9.x: "effective play time" = timestamp - static delay), which is
asserted on the first-sample times of the device log.  Releases 5.x-9.x refuse the
current ``client/state`` shape: the player must learn that from the refusal, remember it
for that server_id and play on the first retry.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import numpy as np
import pytest
import trio

from resonate_embedded.audio.volume import gain_q15
from resonate_bench.harness import (
    SENDSPIN_V1_SCRIPT, HarnessCommandError, find_era_python, find_server_python, requires_venv,
    start_test_server,
)
from resonate_bench.measure import summarize
from resonate_bench.scenario import Scenario, ScenarioResult, run_scenario
from resonate_embedded.clock.local import local_now_ns
from test_encrypted_e2e import cli, operator_server_python, pair_by_token_then_reconnect

pytestmark = pytest.mark.e2e

ON_TIME_US = 1000
DELAY_MS = 20


@attrs.frozen
class Era:
    name: str
    venv: str
    python: str | None
    script: str | None = None  # None: sendspin_test_server.py (5.x-10.x)
    server_args: tuple[str, ...] = ()
    player_args: tuple[str, ...] = ()
    delay_api: bool = True  # the release can set the player's delay
    refuses_current: bool = False  # closes the connection on the current client/state shape
    encrypted: bool = False


def older(major: int, name: str | None = None, **kwargs) -> Era:
    """aiosendspin ``major``.x in .venv-sendspin<major> (setup_legacy_venvs.sh)."""
    venv = f".venv-sendspin{major}"
    return Era(name or f"{major}.x", venv, find_era_python(venv, f"{major}."), **kwargs)


V1 = {"script": str(SENDSPIN_V1_SCRIPT), "server_args": ("--raw-clock",), "delay_api": False}
PUSH = {"server_args": ("--wire-truth",), "refuses_current": True}
PLAIN = ("--encryption", "off")  # 7.x-9.x: their plaintext transition mode
NOISE = {"server_args": ("--wire-truth",), "encrypted": True}  # 7.x-9.x: the older Noise variant
ERAS = [older(1, **V1), older(2, **V1), older(5, **PUSH), older(6, **PUSH),
        older(7, player_args=PLAIN, **PUSH), older(9, player_args=PLAIN, **PUSH),
        older(7, name="7.x-noise", **NOISE), older(9, name="9.x-noise", **NOISE),
        Era("10.x", ".venv-server", find_server_python(), encrypted=True)]


def peaks_after(result: ScenarioResult, after_ns: int) -> list[int]:
    """Channel-0 peaks of 100 ms windows of what the device played after ``after_ns``."""
    parts = [span.samples[span.play_times_ns() > after_ns, 0] for span in result.log.spans]
    samples = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    return [int(np.abs(w).max()) for w in np.array_split(samples, max(1, len(samples) // 4800))]


async def declared_command(srv, cmd: dict, timeout_s: float = 10.0) -> int:
    """Send ``cmd`` through the server's own API until the server holds a connected player
    that declared it (it refuses the command while none does, e.g. for a moment while the
    player reconnects on a loaded machine);
    returns the local time (ns) at which the accepted attempt was sent."""
    with trio.fail_after(timeout_s):
        while True:
            sent_ns = local_now_ns()
            try:
                await srv.command(cmd)
                return sent_ns
            except HarnessCommandError as exc:
                if "declared" not in str(exc) and "no connected client" not in str(exc):
                    raise
            await trio.sleep(0.2)


@pytest.mark.parametrize("era", [
    pytest.param(e, id=e.name, marks=requires_venv(e.python, e.venv)) for e in ERAS])
def test_era_plays_on_time_with_the_servers_volume_and_delay(tmp_path: Path, era: Era):
    marks: dict[str, int] = {}

    async def during(srv):
        await trio.sleep(3.5)
        if era.delay_api:
            await declared_command(srv, {"cmd": "set_output_delay", "ms": DELAY_MS})
            marks["delay_ns"] = local_now_ns()
            await trio.sleep(3.0)
        marks["volume_ns"] = await declared_command(srv, {"cmd": "volume", "value": 50})
        await trio.sleep(2.0)

    sc = Scenario(f"era{era.name.split('.')[0]}", seconds=0, trust_unpaired=era.encrypted,
                  extra_player_args=era.player_args, server_args=era.server_args,
                  server_script=era.script)
    result = trio.run(run_scenario, sc, tmp_path, during, era.python)
    out = result.player_output
    assert result.player_exit == 0, out[-3000:]
    m = result.matched
    # A plaintext server may start the stream before the first clock sync (it registers the
    # player on its first client/state): the device may run dry once before the aligned start.
    assert [t for t in result.log.xruns_ns if t >= m.play_ns[0]] == [], "underrun while playing"
    nominal = m.play_ns < marks.get("delay_ns", marks["volume_ns"])
    assert nominal.sum() > 48000, f"only {nominal.sum()} frames identified before any change"
    assert m.bit_exact[nominal].all(), f"{(~m.bit_exact[nominal]).sum()} frames not bit-exact"
    steps = np.diff(m.k[nominal])
    assert np.isin(steps, (0, 1, 2)).all(), "a correction larger than one frame"
    t_s = (m.play_ns[nominal] - m.play_ns[0]) / 1e9
    steady = m.error_us[nominal][t_s >= 1.0]
    assert summarize(steady).max_abs_us < ON_TIME_US, summarize(steady).line()

    if era.delay_api:
        delayed = (m.play_ns > marks["delay_ns"] + 500_000_000) & (m.play_ns < marks["volume_ns"])
        early = m.error_us[delayed] + DELAY_MS * 1000  # positive delay: played that much earlier
        assert delayed.sum() > 48000 and np.abs(early).max() < ON_TIME_US, \
            summarize(m.error_us[delayed]).line()
        echoes = [e for e in result.events if e.get("event") == "output_delay_changed"]
        assert echoes and echoes[-1]["output_delay_ms"] == DELAY_MS, "the server did not hear back"

    peaks = peaks_after(result, marks["volume_ns"] + 300_000_000)
    half = (32767 * gain_q15(50, False)) >> 15
    assert peaks and max(peaks) <= half + 2 and any(abs(p - half) <= 2 for p in peaks), peaks

    state = json.loads((tmp_path / f"{sc.name}.state" / "state.json").read_text())
    assert state["volume"] == 50
    assert state["output_delay_ms"] == (DELAY_MS if era.delay_api else 0)
    profiles = state.get("server_profiles", {})
    if era.refuses_current:
        (profile,) = profiles.values()
        assert profile["refused"] == ["current"], profile
        assert profile["said_shape"] == "static", profile  # its set_static_delay said so
        assert "right after our current-shaped client/state" in out
        assert out.count("refused our client/state in every shape") == 0
    else:
        assert all(not p["refused"] for p in profiles.values()), profiles
    if era.encrypted:
        assert "), encrypted, " in out, "the session was not encrypted"
        (profile,) = profiles.values()
        assert profile["noise"] == ("current" if era.name == "10.x" else "older"), profile


NINE = older(9, name="9.x-noise", **NOISE)


@requires_venv(NINE.python, NINE.venv)
def test_9x_pairs_by_token_over_its_older_noise(tmp_path: Path, monkeypatch):
    """The Pairing PSK flow with aiosendspin 9.x, as with 10.x (test_encrypted_e2e.py)."""
    monkeypatch.delenv("RESONATE_TEST_AUTOTRUST", raising=False)  # the operator approves nobody
    state = tmp_path / "state"
    token_run = cli("pair-token", "--state-dir", str(state), "--no-qr")
    client_id = token_run.stderr.split("client_id ")[1].split()[0]

    async def main():
        async with start_test_server(operator_server_python(tmp_path, NINE.python), port=0,
                                     extra_args=list(NINE.server_args),
                                     log_path=tmp_path / "server.log") as srv:
            return await pair_by_token_then_reconnect(srv, tmp_path, state,
                                                      token_run.stdout.strip(), client_id)

    for player in trio.run(main):
        assert "Traceback" not in player.output
    (profile,) = json.loads((state / "state.json").read_text())["server_profiles"].values()
    assert (profile["noise"], profile["said_shape"]) == ("older", "static"), profile
