"""End to end, encrypted: the player process against the real servers.

* aiosendspin 10.2.1 through the test harness, with a small wrapper (written below)
  that adds the operator's actions the harness has no command for: approve an
  unpaired speaker (``trust_unpaired``), pair it from its pairing token through the
  server's own API (``initiate_pairing`` with a ``PairingAttempt`` made from
  ``aiosendspin.noise.decode_psk_token``), ``unpair``, forget a record offline, and
  report a connection's PSK category / active roles;
* ``sendspin serve`` (sendspin 9.x) playing a WAV file of the index signal;
* a man-in-the-middle proxy between the player and the real server for the
  negative cases (tampered client/init, bit-flipped / replayed transport frames,
  an oversized handshake message).

What the paced device played is matched frame by frame to the server's chunk log,
as in test_player_e2e.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import trio

from resonate_bench import harness
from resonate_bench.harness import (
    decode_frame_index, find_server_python, index_samples_for, index_signal, requires_venv,
)
from resonate_bench.measure import ChunkTable, match
from resonate_bench.mitm import Mitm
from resonate_bench.scenario import Scenario, run_scenario, stop_process
from resonate_embedded.identity import b64url_encode
from resonate_bench.paced_log import read_paced_log

pytestmark = pytest.mark.e2e

ON_TIME_US = 1000
SERVER_PYTHON = find_server_python()
needs_server = requires_venv(SERVER_PYTHON, ".venv-server")

_WRAPPER = r'''
"""The harness server plus operator commands (written by tests/e2e/test_encrypted_e2e.py)."""
import asyncio
import importlib.util
import os
import sys

from aiosendspin.models.types import PairMethod
from aiosendspin.noise import InMemoryServerPairingStore, TrustedUnpairedClient
from aiosendspin.noise.pairing import PairingAttempt
from aiosendspin.noise import pairing_token

decode_psk_token = getattr(pairing_token, "decode_psk_token", None) or pairing_token.decode_token  # <10

args = [a for a in sys.argv[1:] if a != "-u"]
spec = importlib.util.spec_from_file_location("sendspin_test_server", args[0])
mod = importlib.util.module_from_spec(spec)
sys.modules["sendspin_test_server"] = mod
spec.loader.exec_module(mod)
AUTOTRUST = os.environ.get("RESONATE_TEST_AUTOTRUST") == "1"


class Store(InMemoryServerPairingStore):
    async def trusted_unpaired(self, client_id):
        found = await super().trusted_unpaired(client_id)
        if found is None and AUTOTRUST:
            return TrustedUnpairedClient(client_id)
        return found


_Server = mod.SendspinServer


class Server(_Server):
    """The harness's server with this store, whatever store the harness itself picks."""

    def __init__(self, *args, **kwargs):
        kwargs["pairing_store"] = Store()
        super().__init__(*args, **kwargs)


mod.SendspinServer = Server


async def cmd_trust(self, cmd):
    await self.server.trust_unpaired(cmd["client_id"])
    return {}


async def cmd_pair(self, cmd):
    token = decode_psk_token(cmd["token"])
    bound = {"client_id": token.client_id} if "client_id" in PairingAttempt.__dataclass_fields__ else {}
    attempt = PairingAttempt(method=PairMethod.PAIRING_PSK, pairing_psk=token.pairing_psk, **bound)
    await asyncio.wait_for(self.server.initiate_pairing(token.client_id, attempt), 60)
    record = await self.server.pairing_store.record_by_client_id(token.client_id)
    return {"client_id": token.client_id, "psk_id": record.psk_id if record else None}


async def cmd_unpair(self, cmd):
    await self.server.unpair(cmd["client_id"])
    return {}


async def cmd_forget(self, cmd):
    await self.server.pairing_store.remove_record(cmd["client_id"])
    return {}


async def cmd_records(self, cmd):
    return {"records": [{"client_id": r.client_id, "psk_id": r.psk_id}
                        for r in await self.server.pairing_store.list_records()]}


async def cmd_conn(self, cmd):
    client = self.server.get_client(cmd["client_id"])
    conn = client.connection if client is not None else None
    if conn is None:
        return {"connected": False}
    category = conn.psk_category
    return {"connected": True, "encrypted": conn.is_encrypted,
            "psk": None if category is None else getattr(category, "code", None) or {
                "long_term": "lt", "pairing": "pr", "sentinel": "sn"}[category.value],
            "credential_mismatch": bool(getattr(conn, "_credential_mismatch", False)),
            "roles": list(client.active_role_ids)}


async def cmd_pair_code(self, cmd):
    from aiosendspin.models.types import PairingCodeFormat

    self._codes = asyncio.Queue()

    async def provider():
        return await self._codes.get()

    attempt = PairingAttempt(method=PairMethod.DYNAMIC_PAIRING_CODE,
                             pairing_format=PairingCodeFormat.DIGITS, pairing_code_provider=provider)
    self._pair_task = asyncio.ensure_future(self.server.initiate_pairing(cmd["client_id"], attempt))
    return {}


async def cmd_enter_code(self, cmd):
    self._codes.put_nowait(cmd["code"])
    return {}


async def cmd_pair_result(self, cmd):
    try:
        await asyncio.wait_for(asyncio.shield(self._pair_task), cmd.get("timeout", 30))
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "error": repr(exc)}
    return {"ok": True}


for _name, _fn in list(globals().items()):
    if _name.startswith("cmd_"):
        setattr(mod.Harness, _name, _fn)
rest = args[1:]
if "--no-approve-unpaired" in open(args[0]).read():  # a harness that approves by itself
    rest.append("--no-approve-unpaired")  # approval here is the Store's (RESONATE_TEST_AUTOTRUST)
sys.exit(mod.main(rest))
'''


def operator_server_python(workdir: Path, server_python: str | None = SERVER_PYTHON) -> str:
    """The harness server of ``server_python`` (10.x by default; 9.x works too) with the
    operator's commands."""
    d = workdir / "operator-server"
    d.mkdir(parents=True, exist_ok=True)
    (d / "wrapper.py").write_text(_WRAPPER)
    launcher = d / "python"
    launcher.write_text(f'#!/bin/sh\nexec "{server_python}" -u "{d / "wrapper.py"}" "$@"\n')
    launcher.chmod(0o755)
    return str(launcher)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resonate_embedded.cli", *args],
                          capture_output=True, text=True, timeout=60)


class PlayerProc:
    """One player process on the paced device."""

    def __init__(self, tmp: Path, name: str, url: str, state: Path, *extra: str) -> None:
        self.log_path = tmp / f"{name}.plog"
        self.out_path = tmp / f"{name}.player.log"
        self.cmd = [sys.executable, "-m", "resonate_embedded.cli", "run", "--server", url,
                    "--device", f"paced:LOG={self.log_path}", "--state-dir", str(state),
                    "--formats", "pcm:48000:16:2", "--name", name, "-v", *extra]
        self.proc: trio.Process | None = None

    async def start(self) -> None:
        self.log_path.unlink(missing_ok=True)
        with open(self.out_path, "wb") as out:
            self.proc = await trio.lowlevel.open_process(self.cmd, stdout=out, stderr=subprocess.STDOUT)

    async def stop(self) -> int:
        assert self.proc is not None
        return await stop_process(self.proc)

    @property
    def output(self) -> str:
        return self.out_path.read_text(errors="replace")


def secrets_of(state: Path) -> list[str]:
    """Every secret this speaker holds, in the encodings a careless log line might use."""
    out = []
    ident = json.loads((state / "identity.json").read_text())
    raw = [ident["private_key"], ident["pairing_psk"]]
    if (state / "pairings.json").exists():
        raw += [r["psk"] for r in json.loads((state / "pairings.json").read_text())["records"]]
    from resonate_embedded.identity import b64url_decode

    for s in raw:
        b = b64url_decode(s)
        out += [s, b.hex(), repr(b)[2:-1]]
    return out


def assert_no_secrets(text: str, state: Path) -> None:
    for s in secrets_of(state):
        assert s not in text, "key material in a log"


def assert_bit_exact_on_time(log_path: Path, events: list, min_seconds: float) -> None:
    m = match(read_paced_log(log_path), ChunkTable.from_events(events))
    assert m.k.size >= min_seconds * 48000, f"only {m.k.size} frames identified"
    assert m.unidentified_frames == 0
    corrections = int((np.diff(m.k) != 1).sum())
    assert (~m.bit_exact).sum() <= corrections
    t = (m.play_ns - m.play_ns[0]) / 1e9
    assert np.abs(m.error_us[t >= 1.0]).max() < ON_TIME_US


async def play_for(srv, client_id: str, seconds: float) -> None:
    await srv.command({"cmd": "start", "client_id": client_id,
                       "format": {"sample_rate": 48000, "bit_depth": 16, "channels": 2}})
    await trio.sleep(seconds)
    await srv.command({"cmd": "stop"})


async def wait_conn(srv, client_id: str, pred, timeout: float = 20.0) -> dict:
    with trio.fail_after(timeout):
        while True:
            info = await srv.command({"cmd": "conn", "client_id": client_id})
            if pred(info):
                return info
            await trio.sleep(0.1)


# ======================================================================== unpaired, harness


@needs_server
@pytest.mark.parametrize("offer, bits", [("pcm:48000:16:2", 16), ("flac:48000:24:2", 24)])
def test_unpaired_encrypted_session_is_bit_exact_and_on_time(tmp_path, offer, bits):
    """The default player (no flags) against aiosendspin 10.2.1 in transition mode: it speaks
    Noise (Sentinel PSK, 13-byte audio header) and plays bit-exact once approved."""
    result = trio.run(run_scenario, Scenario(f"enc-{bits}", offer=offer, bits=bits, seconds=5),
                      tmp_path)
    m = result.matched
    assert result.player_exit == 0, result.player_output
    assert "encrypted, unpaired: Sentinel PSK" in result.player_output
    assert m.k.size >= 3 * 48000 and m.unidentified_frames == 0
    assert (~m.bit_exact).sum() <= int((np.diff(m.k) != 1).sum())
    t = (m.play_ns - m.play_ns[0]) / 1e9
    assert np.abs(m.error_us[t >= 1.0]).max() < ON_TIME_US
    server_log = (tmp_path / f"enc-{bits}.server.log").read_text()
    assert "noncompli" not in server_log.lower(), "the server flagged a spec violation"


# ======================================================================== pairing, harness


async def pair_by_token_then_reconnect(srv, tmp_path: Path, state: Path, token: str,
                                       client_id: str) -> tuple[PlayerProc, PlayerProc]:
    """Unpaired and unapproved: idle; the operator enters the token: paired, plays
    bit-exact and on time; a new process reconnects on the long-term PSK and plays."""
    server_id = srv.ready["server_id"]
    # 1. Unpaired, not approved: connected, encrypted, idle.
    p1 = PlayerProc(tmp_path, "p1", srv.url, state)
    await p1.start()
    try:
        ev = await srv.wait_event("client_added", timeout=30)
        assert ev["client_id"] == client_id and ev["roles"] == []
        info = await srv.command({"cmd": "conn", "client_id": client_id})
        assert (info["encrypted"], info["psk"], info["roles"]) == (True, "sn", [])
        # 2. The operator enters the token: re-handshake to the pairing PSK, pairing,
        #    re-handshake to the new long-term PSK, playback without any approval.
        paired = await srv.command({"cmd": "pair", "token": token}, timeout=60)
        assert paired["psk_id"]
        info = await wait_conn(srv, client_id, lambda i: "player@v1" in (i.get("roles") or []))
        assert info["psk"] == "lt"
        listing = cli("pairings", "--state-dir", str(state))
        assert server_id in listing.stdout and "Sendspin Test Server" in listing.stdout
        mark = srv.mark()
        await play_for(srv, client_id, 4.0)
    finally:
        assert await p1.stop() == 0
    assert_bit_exact_on_time(p1.log_path, srv.events[mark:], 2.5)
    assert "paired with server" in p1.output
    # 3. Reconnect (new process): the handshake itself uses the long-term PSK.
    p2 = PlayerProc(tmp_path, "p2", srv.url, state)
    mark = srv.mark()
    await p2.start()
    try:
        await srv.wait_event("client_connected", since=mark, timeout=30)
        # and added (after its first client/state): 9.x holds back what it streams before
        await srv.wait_event("client_added", since=mark, timeout=30)
        info = await wait_conn(srv, client_id, lambda i: "player@v1" in (i.get("roles") or []))
        assert info["psk"] == "lt" and not info["credential_mismatch"]
        mark = srv.mark()
        await play_for(srv, client_id, 4.0)
    finally:
        assert await p2.stop() == 0
    assert "encrypted, paired: long-term PSK" in p2.output
    assert_bit_exact_on_time(p2.log_path, srv.events[mark:], 2.5)
    return p1, p2


@needs_server
def test_pair_by_token_then_long_term_reconnect_then_forget_on_each_side(tmp_path, monkeypatch):
    monkeypatch.delenv("RESONATE_TEST_AUTOTRUST", raising=False)
    state = tmp_path / "state"
    token_run = cli("pair-token", "--state-dir", str(state), "--no-qr")
    assert token_run.returncode == 0, token_run.stderr
    token = token_run.stdout.strip()
    assert re.fullmatch(r"SP:0[A-Z0-9]{103}", token), token
    client_id = re.search(r"client_id (\S+)", token_run.stderr).group(1)

    async def main():
        async with harness.start_test_server(operator_server_python(tmp_path), port=0,
                                             log_path=tmp_path / "server.log") as srv:
            server_id = srv.ready["server_id"]
            p1, p2 = await pair_by_token_then_reconnect(srv, tmp_path, state, token, client_id)
            secrets = secrets_of(state)  # now including the long-term PSK
            # 4. The speaker forgets the pairing: the server references a PSK the speaker no
            #    longer holds -> Sentinel fallback, an authenticated credential mismatch: the
            #    session is up but the server activates nothing, even when approved.
            forget = cli("pairings", "forget", server_id, "--state-dir", str(state))
            assert forget.returncode == 0 and "forgot" in forget.stdout
            assert "no pairings" in cli("pairings", "--state-dir", str(state)).stdout
            p3 = PlayerProc(tmp_path, "p3", srv.url, state)
            mark = srv.mark()
            await p3.start()
            try:
                await srv.wait_event("client_connected", since=mark, timeout=30)
                info = await wait_conn(srv, client_id, lambda i: i.get("connected"))
                await srv.command({"cmd": "trust", "client_id": client_id})
                await trio.sleep(1.0)
                info = await srv.command({"cmd": "conn", "client_id": client_id})
                assert (info["psk"], info["credential_mismatch"], info["roles"]) == ("sn", True, [])
                assert (await srv.command({"cmd": "records"}))["records"], "server kept its record"
                # ... and re-pairing (what the server offers its operator) restores service.
                await srv.command({"cmd": "pair", "token": token}, timeout=60)
                info = await wait_conn(srv, client_id, lambda i: "player@v1" in (i.get("roles") or []))
                assert info["psk"] == "lt"
                secrets += secrets_of(state)  # the new long-term PSK
                # 5. The server forgets (unpair while connected): server/unpair -> the speaker
                #    drops its record and says goodbye "unpaired"; it comes back as an unpaired
                #    speaker (the pairing discarded the earlier approval, spec: so it idles).
                mark = srv.mark()
                await srv.command({"cmd": "unpair", "client_id": client_id})
                ev = await srv.wait_event("client_disconnected", since=mark, timeout=20)
                assert ev["goodbye_reason"] == "unpaired"
                await srv.wait_event("client_connected", since=mark, timeout=30)
                info = await wait_conn(srv, client_id, lambda i: i.get("psk") == "sn")
                assert not info["credential_mismatch"] and info["roles"] == []
                assert (await srv.command({"cmd": "records"}))["records"] == []
            finally:
                assert await p3.stop() == 0
            out = p3.output
            assert "this speaker does not hold" in out and "continuing unpaired" in out
            assert "dropped our pairing" in out
            assert "no pairings" in cli("pairings", "--state-dir", str(state)).stdout
            server_log = (tmp_path / "server.log").read_text()
            assert "admitted on the Sentinel PSK" in server_log
            for p in (p1, p2, p3):
                assert "Traceback" not in p.output
                for secret in secrets:
                    assert secret not in p.output and secret not in server_log, "key material logged"

    trio.run(main)


@needs_server
def test_unpaired_access_off_plays_only_once_paired(tmp_path, monkeypatch):
    monkeypatch.setenv("RESONATE_TEST_AUTOTRUST", "1")  # the operator approves everyone
    state = tmp_path / "state"
    token = cli("pair-token", "--state-dir", str(state), "--no-qr").stdout.strip()

    async def main():
        async with harness.start_test_server(operator_server_python(tmp_path), port=0,
                                             log_path=tmp_path / "server.log") as srv:
            p = PlayerProc(tmp_path, "strict", srv.url, state, "--unpaired-access", "off")
            await p.start()
            try:
                ev = await srv.wait_event("client_added", timeout=30)
                cid = ev["client_id"]
                await trio.sleep(1.0)
                info = await srv.command({"cmd": "conn", "client_id": cid})
                assert (info["psk"], info["roles"]) == ("sn", []), info
                await srv.command({"cmd": "pair", "token": token}, timeout=60)
                info = await wait_conn(srv, cid, lambda i: "player@v1" in (i.get("roles") or []))
                assert info["psk"] == "lt"
                mark = srv.mark()
                await play_for(srv, cid, 4.0)
            finally:
                assert await p.stop() == 0
            assert_bit_exact_on_time(p.log_path, srv.events[mark:], 2.5)

    trio.run(main)


def spoken_codes(log_path: Path) -> list[str]:
    """Every complete 6-digit code the speaker said, read back from what the device played.

    The played audio is cut at silences into utterances; each is recognised as the digit
    clip it correlates best with (> 0.95: the player's sync corrections may have dropped
    or repeated a frame inside a clip, so an exact comparison would be fragile)."""
    from resonate_embedded.audio.spoken_code import digit_clip

    if not log_path.exists():
        return []
    try:
        log = read_paced_log(log_path)
    except Exception:  # noqa: BLE001 - being written
        return []
    if not log.spans:
        return []
    x = np.concatenate([sp.samples[:, 0] for sp in log.spans]).astype(np.float64)
    temps = [np.rint(digit_clip(d, 48000)) for d in range(10)]
    nz = np.flatnonzero(x)
    if nz.size == 0:
        return []
    cuts = np.flatnonzero(np.diff(nz) > 2400)  # >= 50 ms of digital silence
    bounds = zip(np.r_[nz[0], nz[cuts + 1]], np.r_[nz[cuts], nz[-1]] + 1)
    utterances = []
    for a, b in bounds:
        seg = x[a:b]
        best, best_d = 0.0, "?"
        for d, t in enumerate(temps):
            t = t[np.flatnonzero(t)[0]:np.flatnonzero(t)[-1] + 1]
            if abs(seg.size - t.size) > 0.02 * t.size:
                continue
            n = min(seg.size, t.size)
            for lag in range(-4, 5):
                u, v = (seg[lag:n], t[:n - lag]) if lag >= 0 else (seg[:n + lag], t[-lag:n])
                c = float(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-9)
                if c > best:
                    best, best_d = c, str(d)
        utterances.append((best_d if best > 0.95 else "?", a, b))
    # A code is 6 digits, 0.25 s apart except 0.7 s between the groups of 3; anything else
    # (a repetition cut short by a new round, an unknown sound) starts a new code.
    codes, run, last_end = [], "", None
    for d, a, b in utterances:
        gap = (a - last_end) / 48000 if last_end is not None else 99.0
        last_end = b
        if d == "?":
            run = ""
            continue
        expect_group_gap = len(run) == 3
        if not run or (gap > 0.5) != expect_group_gap or gap > 0.85:
            run = ""
        run += d
        if len(run) == 6:
            codes.append(run)
            run = ""
    return codes


@needs_server
def test_dynamic_pairing_code_spoken_through_the_speaker(tmp_path, monkeypatch):
    """Dynamic Pairing Code flow with aiosendspin 10's own server code: the speaker says the
    code (read back here from what the paced device played), a wrong entry costs a round
    (client/pair-retry), the right one pairs; the next connection is long-term and plays."""
    monkeypatch.delenv("RESONATE_TEST_AUTOTRUST", raising=False)
    state = tmp_path / "state"

    async def wait_codes(p: PlayerProc, n: int, timeout: float = 40.0) -> list[str]:
        with trio.fail_after(timeout):
            while True:
                codes = spoken_codes(p.log_path)
                if len(codes) >= n:
                    return codes
                await trio.sleep(0.5)

    async def main():
        async with harness.start_test_server(operator_server_python(tmp_path), port=0,
                                             log_path=tmp_path / "server.log") as srv:
            p = PlayerProc(tmp_path, "speaker", srv.url, state)
            await p.start()
            try:
                ev = await srv.wait_event("client_added", timeout=30)
                cid = ev["client_id"]
                assert ev["roles"] == []
                await srv.command({"cmd": "pair_code", "client_id": cid})
                first = await wait_codes(p, 1)
                code = first[0]
                wrong = code[:5] + str((int(code[5]) + 1) % 10)
                await srv.command({"cmd": "enter_code", "code": wrong[:3] + "-" + wrong[3:]})
                # round 2: the same code, said again
                again = await wait_codes(p, len(spoken_codes(p.log_path)) + 1)
                assert again[-1] == code
                await srv.command({"cmd": "enter_code", "code": code})
                result = await srv.command({"cmd": "pair_result", "timeout": 30}, timeout=40)
                assert result["ok"], result
                info = await wait_conn(srv, cid, lambda i: i.get("psk") == "lt")
                assert "player@v1" in info["roles"]
            finally:
                assert await p.stop() == 0
            out = p.output
            assert "wrong pairing code entered on the server (round 1)" in out
            assert "paired with server" in out and code not in out
            # reconnect: long-term PSK, plays bit-exact
            p2 = PlayerProc(tmp_path, "after", srv.url, state)
            mark = srv.mark()
            await p2.start()
            try:
                await srv.wait_event("client_connected", since=mark, timeout=30)
                await wait_conn(srv, cid, lambda i: "player@v1" in (i.get("roles") or []) and i["psk"] == "lt")
                mark = srv.mark()
                await play_for(srv, cid, 4.0)
            finally:
                assert await p2.stop() == 0
            assert_bit_exact_on_time(p2.log_path, srv.events[mark:], 2.5)
            assert_no_secrets(out + p2.output, state)
            assert "pairing_code_mismatch" not in (tmp_path / "server.log").read_text()

    trio.run(main)


# ======================================================================== sendspin serve


def _sendspin_python() -> str | None:
    here = Path(__file__).resolve().parents[2]
    for cand in (os.environ.get("SENDSPIN_SERVE_PYTHON", ""), str(here / ".venv-ref/bin/python"),
                 "/tmp/venv-ref/bin/python", "/tmp/venv_sendspin/bin/python"):
        if cand and Path(cand).exists():
            ok = subprocess.run([cand, "-c", "import sendspin.serve"], capture_output=True,
                                env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
            if ok.returncode == 0:
                return cand
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_index_wav(path: Path, seconds: float) -> None:
    samples = index_signal(0, int(48000 * seconds), 16, 2).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(samples.tobytes())


@requires_venv(_sendspin_python(), ".venv-ref")
def test_plays_bit_exact_from_sendspin_serve_with_no_extra_flags(tmp_path):
    """``resonate-embedded run --server ws://127.0.0.1:PORT/sendspin`` (plus only the test's
    device and state dir) plays what ``sendspin serve FILE`` streams, bit-exact."""
    py = _sendspin_python()
    wav = tmp_path / "index.wav"
    write_index_wav(wav, 30.0)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    server_out = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen(
        [py, "-c", "import sys; from sendspin.cli import main; sys.argv[0] = 'sendspin'; "
                   "sys.exit(main())", "serve", "--port", str(port), "--name", "Serve", str(wav)],
        stdout=server_out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    log_path = tmp_path / "serve.plog"
    state = tmp_path / "state"
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                trio.run(trio.sleep, 0.1)
        player = subprocess.Popen(
            [sys.executable, "-m", "resonate_embedded.cli", "run", "--server",
             f"ws://127.0.0.1:{port}/sendspin", "--device", f"paced:LOG={log_path}",
             "--state-dir", str(state)],
            stdout=open(tmp_path / "player.log", "wb"), stderr=subprocess.STDOUT)
        try:
            trio.run(trio.sleep, 9.0)
        finally:
            player.send_signal(signal.SIGTERM)
            assert player.wait(timeout=15) == 0
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    out = (tmp_path / "player.log").read_text()
    assert "encrypted, unpaired: Sentinel PSK" in out, out
    log = read_paced_log(log_path)
    samples = np.concatenate([s.samples for s in log.spans])
    sound = samples[samples.any(axis=1)]
    assert sound.shape[0] > 5 * 48000, f"only {sound.shape[0]} frames of sound"
    k = decode_frame_index(sound, 16)
    exact = (sound == index_samples_for(k, 16, 2)).all(axis=1)
    steps = np.diff(k)
    corrections = int((steps != 1).sum())
    assert (~exact).sum() <= corrections, f"{(~exact).sum()} frames not the index signal"
    assert np.all(np.isin(steps[exact[1:] & exact[:-1]], (0, 1, 2))), "audio skipped or repeated"
    # sendspin serve stamps in its own clock, which may run (NTP-slewed) a few hundred ppm
    # off the paced DAC's: at 48 kHz, 100 ppm is ~5 single-frame corrections a second
    assert corrections <= 12 * sound.shape[0] / 48000
    assert_no_secrets(out, state)


# ======================================================================== man in the middle


def _flip_bit(msg):
    b = bytearray(msg)
    b[len(b) // 2] ^= 0x10
    return bytes(b)


ATTACKS = {
    # the first frame the player sends is client/init: re-encode it (same meaning, other bytes)
    "tampered client/init": lambda d, i, m, c: m.replace('","', '", "') if d == "c2s" and i == 0 and c == 1 else m,
    # the server's third message is Noise message 1: make it 1 MB
    "oversized handshake": lambda d, i, m, c: (json.dumps({"type": "noise/handshake", "payload": {
        "data": b64url_encode(os.urandom(700_000))}}) if d == "s2c" and i == 1 and c == 1 else m),
    # an audio frame (binary, s2c) with one bit flipped
    "bit-flipped frame": lambda d, i, m, c: _flip_bit(m) if (
        d == "s2c" and c == 1 and isinstance(m, bytes) and i == 40) else m,
    # a transport frame delivered twice
    "replayed frame": lambda d, i, m, c: [m, m] if (
        d == "s2c" and c == 1 and isinstance(m, bytes) and i == 40) else m,
}


@needs_server
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_tampering_closes_silently_and_the_player_recovers(tmp_path, attack, monkeypatch):
    monkeypatch.setenv("RESONATE_TEST_AUTOTRUST", "1")
    state = tmp_path / "state"

    async def main():
        async with harness.start_test_server(operator_server_python(tmp_path), port=0,
                                             log_path=tmp_path / "server.log") as srv:
            mitm = Mitm(srv.url, ATTACKS[attack])
            async with trio.open_nursery() as n:
                listeners = await n.start(mitm.serve)
                url = f"ws://127.0.0.1:{listeners.port}/sendspin"
                p = PlayerProc(tmp_path, "victim", url, state)
                await p.start()
                try:
                    ev = await srv.wait_event("client_added", timeout=40)
                    with trio.fail_after(40):  # the player survived and came back
                        while mitm.connections < 2:
                            await trio.sleep(0.2)
                    await wait_conn(srv, ev["client_id"], lambda i: "player@v1" in (i.get("roles") or []))
                    mark = srv.mark()
                    await play_for(srv, ev["client_id"], 4.0)
                    assert p.proc.returncode is None, "the player died"
                finally:
                    assert await p.stop() == 0
                n.cancel_scope.cancel()
            out = p.output
            assert "Traceback" not in out and "session failed" not in out, out[-3000:]
            if attack in ("tampered client/init", "oversized handshake"):
                assert "encrypted handshake failed" in out
            else:
                assert "failed authentication" in out
            assert_no_secrets(out, state)
            # and it plays again, bit-exact and on time, on the new connection
            assert_bit_exact_on_time(p.log_path, srv.events[mark:], 2.5)

    trio.run(main)


# ======================================================================== CPU cost (manual)


def measure_cpu(seconds: float, runs: int, workdir: Path, offers: tuple[str, ...]) -> list[dict]:
    """Player CPU seconds per minute of audio, encrypted vs plaintext, same server and signal.

    ``python tests/e2e/test_encrypted_e2e.py --seconds 60 --runs 2`` (not part of the suite).
    """
    from resonate_bench.scenario import figures

    rows = []
    for offer in offers:
        bits = int(offer.split(":")[2])
        for run_no in range(runs):
            for mode in ("required", "off"):
                name = f"cpu-{offer.replace(':', '-')}-{mode}-{run_no}"
                sc = Scenario(name, offer=offer, bits=bits, seconds=seconds,
                              extra_player_args=("--encryption", mode))
                res = trio.run(run_scenario, sc, workdir / name)
                fig = figures(res.players[0], res.streamed_s)
                encrypted = "encrypted," in res.player_output
                assert encrypted == (mode == "required"), res.player_output[-2000:]
                rows.append({"offer": offer, "encrypted": encrypted, "run": run_no,
                             "cpu_s_per_min": fig.cpu_s_per_min, "frames": fig.frames,
                             "not_bit_exact": fig.not_bit_exact, "rss_mb": fig.rss_mb})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def measure_cpu_paired(seconds: float, offer: str, workdir: Path) -> dict:
    """One encrypted and one plaintext player in the same group, same stream, same time: both
    see the same machine load, so their CPU difference is the encryption (a paired sample)."""
    from resonate_bench.scenario import trusting_server_python, usage_of

    workdir.mkdir(parents=True, exist_ok=True)

    async def main():
        py = trusting_server_python(SERVER_PYTHON, workdir)
        async with harness.start_test_server(py, port=0, log_path=workdir / "server.log") as srv:
            players = {}
            for mode in ("required", "off"):
                p = PlayerProc(workdir, f"cpu-{mode}", srv.url, workdir / f"{mode}.state",
                               "--encryption", mode)
                p.cmd[p.cmd.index("--formats") + 1] = offer
                p.cmd.remove("-v")
                await p.start()
                ev = await srv.wait_event("client_added", timeout=30,
                                          predicate=lambda e, n=f"cpu-{mode}": e.get("name") == n)
                players[mode] = (p, ev["client_id"])
            await srv.command({"cmd": "join", "client_id": players["off"][1],
                               "to": players["required"][1]})
            try:
                await srv.command({"cmd": "start", "client_id": players["required"][1], "format": {
                    "sample_rate": 48000, "bit_depth": int(offer.split(":")[2]), "channels": 2}})
                await trio.sleep(3.0)  # settle: start-up costs are not per-minute costs
                before = {m: usage_of(p.proc.pid).cpu_s for m, (p, _) in players.items()}
                await trio.sleep(seconds)
                after = {m: usage_of(p.proc.pid).cpu_s for m, (p, _) in players.items()}
                await srv.command({"cmd": "stop"})
            finally:
                for p, _ in players.values():
                    await p.stop()
            out = {}
            for mode, (p, _) in players.items():
                assert ("encrypted," in p.output) == (mode == "required"), p.output[-2000:]
                m = match(read_paced_log(p.log_path), ChunkTable.from_events(srv.events))
                t = (m.play_ns - m.play_ns[0]) / 1e9
                out[mode] = {"cpu_s_per_min": (after[mode] - before[mode]) * 60.0 / seconds,
                             "corrections_per_min": float((np.diff(m.k) != 1).sum() / (t[-1] / 60)),
                             "max_err_us_after_1s": float(np.abs(m.error_us[t >= 1.0]).max()),
                             "not_bit_exact": int((~m.bit_exact).sum())}
            return out

    return trio.run(main)


def crypto_microbench() -> dict:
    """Cost of the Noise transport alone: decrypt (+ encrypt) of typical audio messages."""
    import time

    from resonate_embedded.identity import Identity
    from resonate_embedded.protocol.noise_transport import NoiseResponder

    from noise.connection import Keypair, NoiseConnection  # noqa: I001

    out = {}
    for suite in ("25519_ChaChaPoly_SHA256", "25519_AESGCM_SHA256"):
        server, client = Identity.generate(), Identity.generate()
        r = NoiseResponder(suite, client.private_key, server.public_key, b"p")
        i = NoiseConnection.from_name(f"Noise_KKpsk2_{suite}".encode())
        i.set_as_initiator()
        i.set_keypair_from_private_bytes(Keypair.STATIC, server.private_key)
        i.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, client.public_key)
        i.set_prologue(b"p")
        i.set_psks(psks=[bytes(32)])
        i.start_handshake()
        r.read_message_1(bytes(i.write_message(b"{}")))
        i.read_message(r.write_message_2(bytes(32)))
        for size, label in ((4813, "pcm 25 ms"), (10_000, "flac 96 ms")):
            cts = [i.encrypt(os.urandom(size)) for _ in range(2000)]
            t0 = time.process_time()
            for ct in cts:
                r.decrypt(ct)
            out[f"{suite} decrypt {label} ({size} B) us"] = (time.process_time() - t0) / len(cts) * 1e6
        if suite.startswith("25519_ChaChaPoly"):
            out.update(_receive_path_cost(i, r))
    return out


def _receive_path_cost(initiator, responder) -> dict:
    """Incremental CPU of SecureConnection.receive (decrypt, unframe, dispatch) per message,
    against the same frames handed over by a socket stub (so the socket's own cost cancels)."""
    import time

    from resonate_embedded.identity import Identity
    from resonate_embedded.protocol.connection import Received
    from resonate_embedded.protocol.noise_transport import SecureConnection, SENTINEL

    out = {}
    for size, label in ((4813 + 13, "pcm 25 ms"), (10_000 + 13, "flac 96 ms")):
        frames = [b"\x04" + os.urandom(size - 1) for _ in range(3000)]
        cts = [initiator.encrypt(f) for f in frames]

        class Stub:
            def __init__(self, items):
                self.items = iter(items)

            async def receive(self):
                return Received(next(self.items), 0)

        async def drain(conn, n):
            for _ in range(n):
                await conn.receive()

        t0 = time.process_time()
        trio.run(drain, Stub(frames), len(frames))
        plain = time.process_time() - t0
        sec = SecureConnection(Stub(cts), responder, server_id=Identity.generate().client_id,
                               matched=SENTINEL, credential_mismatch=False,
                               identity=Identity.generate(), resolver=lambda *a: None)
        t0 = time.process_time()
        trio.run(drain, sec, len(cts))
        enc = time.process_time() - t0
        out[f"receive path overhead {label} us/message"] = (enc - plain) / len(frames) * 1e6
    return out


if __name__ == "__main__":
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description="CPU cost of encryption for the player")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--offer", action="append", help="formats (default flac:48000:16:2)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--paired", action="store_true",
                    help="encrypted and plaintext player in one group at the same time")
    a = ap.parse_args()
    print(json.dumps(crypto_microbench(), indent=1))
    wd = a.workdir or Path(tempfile.mkdtemp(prefix="enc-cpu-"))
    if a.paired:
        for offer in a.offer or ["flac:48000:16:2"]:
            for run_no in range(a.runs):
                r = measure_cpu_paired(a.seconds, offer, wd / f"paired-{offer.replace(':', '-')}-{run_no}")
                print(json.dumps({"offer": offer, "run": run_no, "cpu_s_per_min": r}), flush=True)
        sys.exit(0)
    rows = measure_cpu(a.seconds, a.runs, wd, tuple(a.offer or ["flac:48000:16:2"]))
    for offer in sorted({r["offer"] for r in rows}):
        for enc in (True, False):
            v = [r["cpu_s_per_min"] for r in rows if r["offer"] == offer and r["encrypted"] == enc]
            print(f"{offer} {'encrypted' if enc else 'plaintext'}: CPU s per minute of audio "
                  f"{np.mean(v):.3f} (runs: {', '.join(f'{x:.3f}' for x in v)})")
