"""``update install``'s verification with the REAL host ``rauc`` (1.8) on real bundles.

A throw-away CA and signing certificate are made with openssl, a tiny ext4 root (``mke2fs
-d``) is bundled with ``rauc bundle`` (format=verity).  The good bundle passes verification and
then fails only because no RAUC service runs here: ``rauc install`` talks to the service over
D-Bus, and the test points D-Bus at nowhere so that nothing can be installed on this machine.
A payload with one flipped byte, a bundle signed under another CA and a file that is no bundle
are refused with one line each, before ``rauc install`` is run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from resonate_embedded import cli
from resonate_bench.harness import MISSING_DEPENDENCY
from resonate_embedded.boot_slots import BootSlots
from resonate_embedded.system_commands import CommandResult, run_command
from resonate_embedded.system_update import (
    EXIT_INSTALL_FAILED, EXIT_REFUSED, Updater, load_record, verify_bundle,
)

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("rauc", "openssl", "mke2fs", "mksquashfs")),
    reason=f"{MISSING_DEPENDENCY} the rauc CLI, openssl, mke2fs or mksquashfs "
           "(apt install rauc squashfs-tools openssl e2fsprogs)")

COMPATIBLE = "resonate-embedded-test"
NO_DBUS = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/rauc-test-bus"}


def sh(*argv: str | Path, cwd: Path) -> None:
    subprocess.run([str(a) for a in argv], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> tuple[Path, Path, Path]:
    """(CA certificate, signing certificate, signing key) under a new CA called ``name``."""
    d.mkdir()
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
       "-out", "ca.pem", "-days", "30", "-subj", f"/CN={name} CA",
       "-addext", "basicConstraints=critical,CA:TRUE",
       "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "signer.key",
       "-out", "signer.csr", "-subj", f"/CN={name} signer", cwd=d)
    (d / "ext.cnf").write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n")
    sh("openssl", "x509", "-req", "-in", "signer.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
       "-CAcreateserial", "-out", "signer.pem", "-days", "30", "-extfile", "ext.cnf", cwd=d)
    return d / "ca.pem", d / "signer.pem", d / "signer.key"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """The keyring and a good bundle, a byte-flipped copy, one signed under another CA,
    a non-bundle file, and a system.conf."""
    d = tmp_path_factory.mktemp("rauc")
    ca, cert, key = make_ca(d / "ca", "Speaker")
    _, other_cert, other_key = make_ca(d / "other", "Stranger")
    root = d / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "resonate-image-release").write_text("VERSION=2026.12.0\n")
    (root / "etc" / "noise").write_bytes(os.urandom(600_000))  # > 128 blocks: two tree levels
    content = d / "content"
    content.mkdir()
    sh("mke2fs", "-q", "-t", "ext4", "-d", root, content / "rootfs.ext4", "4M", cwd=d)
    (content / "manifest.raucm").write_text(
        f"[update]\ncompatible={COMPATIBLE}\nversion=2026.12.0\n\n[bundle]\nformat=verity\n\n"
        "[image.rootfs]\nfilename=rootfs.ext4\n")
    good, stranger = d / "good.raucb", d / "stranger.raucb"
    sh("rauc", "bundle", f"--cert={cert}", f"--key={key}", f"--keyring={ca}", content, good, cwd=d)
    sh("rauc", "bundle", f"--cert={other_cert}", f"--key={other_key}", content, stranger, cwd=d)
    flipped = d / "flipped.raucb"
    data = bytearray(good.read_bytes())
    data[len(data) // 3] ^= 0x01  # inside the squashfs payload
    flipped.write_bytes(bytes(data))
    junk = d / "junk.raucb"
    junk.write_bytes(b"this is a holiday photo, not an update\n" * 100)
    conf = d / "system.conf"
    conf.write_text(f"[system]\ncompatible={COMPATIBLE}\nbootloader=custom\n")
    return {"keyring": ca, "good": good, "flipped": flipped, "stranger": stranger, "junk": junk,
            "conf": conf}


def no_service_runner(argv) -> CommandResult:
    """The real commands, with D-Bus pointed at nowhere: ``rauc install`` cannot reach a
    service (there is none on a build host anyway)."""
    assert list(argv[:2]) in (["rauc", "info"], ["rauc", "install"]), argv
    done = subprocess.run(list(argv), capture_output=True, text=True, env=NO_DBUS)
    return CommandResult(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def updater(tmp_path, bundles):
    boot = tmp_path / "firmware"
    boot.mkdir()
    for name in ("config.txt", "tryboot.txt"):
        (boot / name).write_text("[all]\nos_prefix=slot-a/\ninclude resonate-hat.txt\n")
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("root=/dev/mmcblk0p2 ro rauc.slot=A quiet\n")
    lines: list[str] = []
    return Updater(slots=BootSlots(boot_dir=boot, cmdline=cmdline),
                   state_file=tmp_path / "update" / "state.json", keyring=bundles["keyring"],
                   system_conf=bundles["conf"], run=no_service_runner, say=lines.append,
                   warn=lines.append), lines


def test_good_bundle_verifies(bundles):
    info = verify_bundle(bundles["good"], bundles["keyring"], bundles["conf"], run_command)
    assert (info.compatible, info.version) == (COMPATIBLE, "2026.12.0")
    assert info.verity_size > 4096  # more than one tree level, checked like RAUC builds it


def test_good_bundle_fails_only_for_want_of_the_service(updater, bundles):
    up, lines = updater
    assert up.install(bundles["good"], reboot=False) == EXIT_INSTALL_FAILED
    assert lines == [
        "bundle 2026.12.0 verified; installing into slot B",
        "update install: install failed: the RAUC service is not running (rauc.service over "
        "D-Bus): nothing was installed; slot A still runs"]
    record = load_record(up.state_file)
    assert (record.result, record.version, record.target_slot) == ("failed", "2026.12.0", "B")


@pytest.mark.parametrize("name, line", [
    ("flipped", "refused: the bundle's content does not match its signed hash (tampered or damaged)"),
    ("stranger", "refused: signed by an unknown signer (not trusted by {keyring})"),
    ("junk", "refused: {bundle} is not a RAUC bundle (or it is truncated)"),
])
def test_bad_bundles_are_refused_before_installing(updater, bundles, name, line):
    up, lines = updater
    calls: list[list[str]] = []
    up.run = lambda argv: calls.append(list(argv)) or no_service_runner(argv)
    assert up.install(bundles[name], reboot=False) == EXIT_REFUSED
    expected = line.format(keyring=bundles["keyring"], bundle=bundles[name])
    assert lines == [f"update install: {expected}"]
    assert [c[1] for c in calls] == ["info"]  # rauc install never ran
    assert load_record(up.state_file).message == expected


def test_cli_refuses_with_one_line_on_stderr(bundles, tmp_path, capsys):
    boot = tmp_path / "firmware"
    boot.mkdir()
    (boot / "config.txt").write_text("[all]\nos_prefix=slot-a/\n")
    (tmp_path / "cmdline").write_text("rauc.slot=A\n")
    code = cli.main(["update", "install", str(bundles["flipped"]), "--no-reboot",
                     "--boot-dir", str(boot), "--cmdline", str(tmp_path / "cmdline"),
                     "--state-file", str(tmp_path / "state.json"),
                     "--keyring", str(bundles["keyring"]), "--system-conf", str(bundles["conf"])])
    captured = capsys.readouterr()
    assert code == EXIT_REFUSED and captured.out == ""
    assert captured.err == ("update install: refused: the bundle's content does not match its "
                            "signed hash (tampered or damaged)\n")
