"""The reference player (``sendspin`` 9.x, sendspin-cli) through the same measuring rig.

``sendspin daemon`` needs Python ≥ 3.12, ``sounddevice`` and the PortAudio shared
library (Debian: ``libportaudio2``). It runs in its own venv (``.venv-ref``; make
it with ``python -m resonate_bench.reference setup``). What the rig has
to do for it, and why:

* **Device.** PortAudio can only open PCMs it enumerates, and it enumerates the
  ``pcm.*`` definitions of the ALSA configuration. ``sendspin`` resolves
  ``--audio-device`` by index, by name prefix, or as a raw ALSA name that
  ``aplay -L`` lists, so ``paced:PPM=…,LOG=…`` (a name with arguments) is
  refused. Each run therefore gets a private ``$HOME`` whose ``.asoundrc``
  defines ``pcm.<alias> { type paced; ppm …; latency_us …; log … }`` (alsa-lib
  loads ``~/.asoundrc``), and the player is started with ``--audio-device <alias>``.
  It then plays through PortAudio → alsa-lib → the paced plugin, which logs every
  frame exactly as it does for our player.
* **Format.** ``--audio-format pcm:48000:16:2`` (or ``flac:…``) so the server
  streams what it streams to our player; the index signal then arrives unchanged.
* **Volume.** ``sendspin`` starts at volume 25 (amplitude 0.125), which would
  destroy the index signal. The settings file in ``--settings-dir`` is pre-written
  with volume 100 (amplitude exactly 1), hardware volume off, MPRIS off.
* **Encryption.** sendspin 9 always connects with the Noise handshake
  (``client/init``). The harness server (aiosendspin 10.2.1,
  ``allow_unencrypted=True``) accepts the encrypted connection, but activates
  **no roles** for an unpaired client until the server side approves it
  (``SendspinServer.trust_unpaired(client_id)`` — the "approve this speaker"
  click in Music Assistant); ``client_added`` then shows ``roles: []`` and no
  audio is ever sent. The harness has no command for that, so scenarios start
  the unchanged harness through a small wrapper that approves every *encrypted
  unpaired* connection for playback (``scenario.trusting_server_python``; plain
  unencrypted clients are not affected).
* **Output delay.** The reference's only latency knob is ``--output-delay-ms``
  (9.0.0: positive = play earlier), the counterpart of our ``--dac-latency-us``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REF_PACKAGE = "sendspin"
REF_VERSION = "9.0.0"
REPO_ROOT = Path(__file__).resolve().parents[3]
PICK_PYTHON_SCRIPT = Path(__file__).resolve().with_name("python312.sh")

_PROBE = (
    "import importlib.metadata as m, sys; v = m.version('sendspin'); "
    "import sounddevice; print(v, sounddevice.get_portaudio_version()[1].split(',')[0]); "
    "sys.exit(0 if v.split('.')[0] == '9' else 3)"
)


def _probe(python: str) -> tuple[bool, str]:
    try:
        res = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{python}: {exc}"
    if res.returncode == 0:
        return True, res.stdout.strip()
    tail = (res.stderr.strip().splitlines() or ["?"])[-1]
    return False, f"{python}: {tail}"


def find_reference_python() -> tuple[str | None, str]:
    """A Python that runs sendspin 9.x with a working PortAudio, and a note saying which
    (or why none). Order: $SENDSPIN_REF_PYTHON, <repo>/.venv-ref, /tmp/venv-ref."""
    candidates = [os.environ.get("SENDSPIN_REF_PYTHON", ""),
                  str(REPO_ROOT / ".venv-ref" / "bin" / "python"), "/tmp/venv-ref/bin/python"]
    reasons = []
    for cand in candidates:
        if not cand or not (Path(cand).exists() or shutil.which(cand)):
            continue
        ok, note = _probe(cand)
        if ok:
            return cand, f"sendspin/PortAudio {note} ({cand})"
        reasons.append(note)
    if not reasons:
        reasons.append("no reference venv: run `python -m resonate_bench.reference setup`")
    return None, "; ".join(reasons)


def alsa_alias(name: str) -> str:
    return "bench_" + "".join(c if c.isalnum() else "_" for c in name)


def prepare_reference(name: str, run_dir: Path, *, ppm: float, latency_us: int,
                      log_path: Path) -> tuple[Path, Path, str]:
    """Write the private HOME (``.asoundrc`` with the paced alias) and the settings dir.
    Returns (home, settings_dir, alias)."""
    home = run_dir / "home"
    settings = run_dir / "settings"
    home.mkdir(parents=True, exist_ok=True)
    settings.mkdir(parents=True, exist_ok=True)
    alias = alsa_alias(name)
    quoted_log = str(log_path).replace("\\", "\\\\").replace('"', '\\"')
    (home / ".asoundrc").write_text(
        f"# written by resonate_bench.reference\n"
        f"pcm.{alias} {{\n\ttype paced\n\tppm \"{ppm}\"\n\tlatency_us \"{latency_us}\"\n"
        f"\tlog \"{quoted_log}\"\n}}\n")
    (settings / "settings-daemon.json").write_text(json.dumps({
        "player_volume": 100, "player_muted": False, "use_mpris": False,
        "use_hardware_volume": False, "output_delay_ms": 0.0}, indent=2) + "\n")
    return home, settings, alias


def reference_command(python: str, *, url: str, name: str, run_dir: Path, offer: str,
                      ppm: float, latency_us: int, output_delay_ms: float, log_path: Path,
                      extra_args: tuple[str, ...] = ()) -> tuple[list[str], dict[str, str]]:
    """argv and environment for ``sendspin daemon`` on a paced device logging to ``log_path``."""
    home, settings, alias = prepare_reference(name, run_dir, ppm=ppm, latency_us=latency_us,
                                              log_path=log_path)
    fmt = offer.split(",")[0]
    argv = [python, "-c", "import sys; from sendspin.cli import main; sys.argv[0] = 'sendspin'; "
                          "sys.exit(main())",
            "daemon", "--url", url, "--name", name, "--audio-device", alias,
            "--audio-format", fmt, "--settings-dir", str(settings), "--disable-mpris",
            "--hardware-volume", "false", "--log-level", "INFO"]
    if output_delay_ms:
        argv += ["--output-delay-ms", f"{output_delay_ms:g}"]
    argv += list(extra_args)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    return argv, env


# ------------------------------------------------------------------------------ setup


def _python312() -> str | None:
    """The base Python >= 3.12 every server venv uses (``python312.sh``'s ``pick_python``)."""
    picked = subprocess.run(["bash", "-c", 'source "$0" && pick_python', str(PICK_PYTHON_SCRIPT)],
                            capture_output=True, text=True, timeout=60)
    if picked.returncode != 0:
        print(picked.stderr.strip(), file=sys.stderr)
        return None
    return picked.stdout.strip()


def setup(venv: Path) -> int:
    """Create ``venv`` with sendspin==9.0.0 (and say what PortAudio needs)."""
    if not (venv / "bin" / "python").exists():
        base = _python312()
        if base is None:
            return 1
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                    f"{REF_PACKAGE}=={REF_VERSION}"], check=True)
    ok, note = _probe(str(venv / "bin" / "python"))
    print(("ok: " if ok else "NOT usable: ") + note)
    if not ok and "PortAudio" in note:
        print("install the PortAudio library: apt-get install libportaudio2", file=sys.stderr)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="reference player (sendspin 9.x) for the sync benchmark")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup", help="create the reference venv")
    s.add_argument("--venv", type=Path, default=REPO_ROOT / ".venv-ref")
    sub.add_parser("find", help="print the reference Python the benchmark would use")
    args = p.parse_args(argv)
    if args.cmd == "setup":
        return setup(args.venv)
    python, note = find_reference_python()
    print(python or "none", "-", note)
    return 0 if python else 1


if __name__ == "__main__":
    sys.exit(main())
