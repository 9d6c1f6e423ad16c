"""A/B updates end to end: bundles built by image/bundle.sh, installed by the speaker itself
under QEMU, through the firmware's tryboot choice (image/qemu-firmware.py).

One QEMU run follows the speaker through its reboots (image/rootfs/usr/local/sbin/
resonate-selftest-update drives it from a plan on the data partition):

1. slot A boots; a tampered bundle and one signed by a stranger are refused, nothing changes;
   the good bundle (a new version) is installed into slot B; reboot "0 tryboot";
2. tryboot.txt boots slot B (a trial); the player reports READY, slot B is marked good:
   config.txt now names it; the broken bundle (its player never reports READY) is installed
   into slot A; reboot "0 tryboot";
3. tryboot.txt boots slot A: the player never becomes ready; the trial deadline reboots;
4. config.txt boots slot B again: the rollback is recorded, the boot selection is B.

Needs the tree the image was built from (image/out/work-armel/tree) and its signing key.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "image" / "out"
TREE = OUT / "work-armel" / "tree"
DEADLINE_S = 480
BROKEN_PLAYER = """[Service]
ExecStart=
ExecStart=/bin/sleep infinity
"""


def bundle(version: str, overlay: Path, out: Path) -> float:
    done = subprocess.run(["bash", str(REPO / "image" / "bundle.sh"), "--version", version,
                           "--overlay", str(overlay), "--out", str(out)],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout.strip())
    return out.stat().st_size / 2**20


def selftest_overlay(path: Path) -> Path:
    """This checkout's self-test files, so the bundle's root runs the current test script."""
    for f in (REPO / "image" / "rootfs").glob("**/resonate-selftest*"):
        dest = path / f.relative_to(REPO / "image" / "rootfs")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)
    return path


def test_update_install_trial_commit_and_rollback(image, tmp_path):
    release = dict(line.split("=", 1) for line in (TREE / "etc/resonate-image-release").read_text().split())
    good_overlay = selftest_overlay(tmp_path / "good")
    broken_overlay = selftest_overlay(tmp_path / "broken")
    dropin = broken_overlay / "etc/systemd/system/resonate-embedded.service.d/broken.conf"
    dropin.parent.mkdir(parents=True)
    dropin.write_text(BROKEN_PLAYER)
    good, broken = tmp_path / "good.raucb", tmp_path / "broken.raucb"
    size_mb = bundle(release["VERSION"] + ".u1", good_overlay, good)
    bundle(release["VERSION"] + ".u2", broken_overlay, broken)
    tampered = tmp_path / "tampered.raucb"
    data = bytearray(good.read_bytes())
    data[len(data) // 3] ^= 0x40  # one bit in the payload
    tampered.write_bytes(bytes(data))
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "365", "-subj", "/CN=stranger", "-keyout", str(stranger / "key.pem"),
                    "-out", str(stranger / "cert.pem")], check=True, capture_output=True)
    foreign = tmp_path / "foreign.raucb"
    subprocess.run(["rauc", "resign", f"--cert={stranger / 'cert.pem'}", f"--key={stranger / 'key.pem'}",
                    f"--keyring={stranger / 'cert.pem'}", "--no-verify", str(good), str(foreign)],
                   check=True, capture_output=True)
    plan = tmp_path / "plan"
    plan.write_text("refused tampered.raucb\nrefused foreign.raucb\ngood good.raucb\nbroken broken.raucb\n")
    files = {"plan": plan, "good.raucb": good, "broken.raucb": broken,
             "tampered.raucb": tampered, "foreign.raucb": foreign}
    env = {**os.environ, "SELFTEST_UNIT": "resonate-selftest-update.service", "DATA_MB": "2560",
           "MAX_BOOTS": "5", "QEMU_TIMEOUT": "1500",
           # emulated boots take minutes: a trial gets 480 s instead of 300 s to report READY
           "QEMU_APPEND": f"systemd.setenv=RESONATE_UPDATE_DEADLINE_S={DEADLINE_S}",
           "DATA_FILES": " ".join(f"{p}=/update-test/{name}" for name, p in files.items())}
    log = OUT / "qemu-update.log"
    done = subprocess.run(["bash", str(REPO / "image" / "qemu-boot-test.sh"), str(image), str(log)],
                          capture_output=True, text=True, timeout=4 * 1500 + 600, env=env)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    boots = re.findall(r"^boot (\d): pi0w (\S+) -> (\S+) \((rauc\.slot=\w)\)", done.stdout, re.M)
    assert [b[1:] for b in boots] == [("config.txt", "slot-a/", "rauc.slot=A"),
                                      ("tryboot.txt", "slot-b/", "rauc.slot=B"),
                                      ("tryboot.txt", "slot-a/", "rauc.slot=A"),
                                      ("config.txt", "slot-b/", "rauc.slot=B")]
    console = log.read_text(errors="replace")
    assert console.count("selftest: ok: refused") == 2
    assert "RESONATE-MARKED-GOOD-AT" in console and "RESONATE-ROLLED-BACK-AT" in console
    assert f"version {release['VERSION']}.u1" in console  # slot B runs the bundle's root
    install_s = re.findall(r"RESONATE-INSTALL-SECONDS ([\d.]+)", console)
    good_at = re.search(r"RESONATE-MARKED-GOOD-AT ([\d.]+)", console).group(1)
    rolled = re.search(r"RESONATE-ROLLED-BACK-AT ([\d.]+)", console).group(1)
    walls = re.findall(r"^boot \d: .*after ([\d.]+)s wall", done.stdout, re.M)
    print(f"[update] bundle {size_mb:.0f} MiB; install into the inactive slot {install_s} s (QEMU); "
          f"trial boot marked good at {good_at} s uptime; broken trial rebooted by its {DEADLINE_S} s "
          f"deadline, rollback recorded at {rolled} s uptime of the next boot; boot walls {walls} s")
