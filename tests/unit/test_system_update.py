"""The update state machine (install → trial → good | rolled back) with rauc and systemctl
replaced by :class:`FakeSystem`, which does to the boot files what RAUC and the firmware do.
The real rauc is in tests/e2e/test_rauc_bundle.py; the real boot is the lead's QEMU test."""

from __future__ import annotations

import json
import os
import stat
import struct

import attrs
import pytest
from test_boot_slots import CONFIG_TXT, firmware_boot, make_boot_dir
from test_update_health import FakeUnit, watch

from resonate_embedded import cli
from resonate_embedded.boot_slots import CONFIG, TRYBOOT, BootSlots, other_slot
from resonate_embedded.status import read_image_release, system_info, system_screen
from resonate_embedded.system_update import (
    DEADLINE_UNIT, EXIT_INSTALL_FAILED, EXIT_OK, EXIT_REFUSED, EXIT_UNAVAILABLE,
    Updater, explain_rauc_error, load_record, verity_tree,
)
from resonate_embedded.system_commands import CommandResult

COMPATIBLE = "resonate-embedded-armel"
OK = CommandResult(0)


def make_bundle(path, version="2026.12.0", compatible=COMPATIBLE, blocks=3):
    """A file laid out like a verity bundle (payload, hash tree, signature, its size) and the
    ``rauc info`` output RAUC 1.8 prints for it."""
    payload = os.urandom(4096 * blocks)
    salt = os.urandom(32)
    root, tree = verity_tree((payload[i:i + 4096] for i in range(0, len(payload), 4096)), salt)
    signature = b"not really CMS" * 50
    path.write_bytes(payload + tree + signature + struct.pack(">Q", len(signature)))
    info = (f"Compatible: \t'{compatible}'\nVersion:    \t'{version}'\nDescription:\t'(null)'\n"
            f"Build:      \t'(null)'\nHooks:      \t''\nBundle Format: \tverity\n"
            f"  Verity Salt: \t'{salt.hex()}'\n  Verity Hash: \t'{root.hex()}'\n"
            f"  Verity Size: \t{len(tree)}\n\n1 Image:\n  [rootfs]\n\tFilename:  rootfs.ext4\n")
    return path, CommandResult(0, info, "rauc-Message: Verified inline signature by 'CN = x'\n")


@attrs.define
class FakeSystem:
    """rauc, systemctl and systemd-run as far as the updater uses them."""

    slots: BootSlots
    info: dict[str, CommandResult] = attrs.field(factory=dict)  # bundle path -> rauc info
    install_result: CommandResult = OK
    mark_good_result: CommandResult = OK
    calls: list[list[str]] = attrs.field(factory=list)
    deadline_active: bool = False
    reboots: list[list[str]] = attrs.field(factory=list)
    out: list[str] = attrs.field(factory=list)  # what the updater said ("ERR ": on stderr)
    player: FakeUnit = attrs.field(factory=FakeUnit)  # the player's unit, healthy by default

    def __call__(self, argv) -> CommandResult:
        argv = list(argv)
        self.calls.append(argv)
        match argv:
            case ["rauc", "info", keyring, bundle]:
                assert keyring.startswith("--keyring=")
                return self.info.get(bundle, CommandResult(
                    1, "", "Invalid bundle format: Signature size (1234) exceeds bundle size\n"))
            case ["rauc", "install", _]:
                if self.install_result.returncode == 0:  # what RAUC asks of the backend
                    target = other_slot(self.slots.booted())
                    self.slots.set_state(target, "bad")
                    self.slots.set_primary(target)
                return self.install_result
            case ["rauc", "status", "mark-good"]:
                if self.mark_good_result.returncode == 0:
                    self.slots.set_state(self.slots.booted(), "good")
                return self.mark_good_result
            case ["systemctl", "reboot", *how]:
                self.reboots.append(how)
                return OK
            case ["systemctl", "is-active", "--quiet", unit]:
                assert unit == f"{DEADLINE_UNIT}.timer"
                return CommandResult(0 if self.deadline_active else 3)
            case ["systemd-run", on_active, unit, "systemctl", "reboot"]:
                assert on_active.startswith("--on-active=") and unit == f"--unit={DEADLINE_UNIT}"
                self.deadline_active = True
                return OK
            case ["systemctl", "stop", unit]:
                assert unit == f"{DEADLINE_UNIT}.timer"
                self.deadline_active = False
                return OK
        raise AssertionError(f"unexpected command {argv}")

    def commands(self) -> list[str]:
        return [" ".join(c[:3]) for c in self.calls]


@pytest.fixture
def system(tmp_path):
    slots = make_boot_dir(tmp_path)
    fake = FakeSystem(slots)
    conf = tmp_path / "system.conf"
    conf.write_text(f"[system]\ncompatible={COMPATIBLE}\nbootloader=custom\n\n"
                    "[slot.rootfs.0]\ndevice=/dev/mmcblk0p2\nbootname=A\n")
    updater = Updater(slots=slots, state_file=tmp_path / "data" / "update" / "state.json",
                      keyring=tmp_path / "keyring.pem", system_conf=conf, run=fake,
                      say=fake.out.append, warn=lambda line: fake.out.append("ERR " + line),
                      watch=lambda run: watch(fake.player))
    return updater, fake


def good_bundle(updater, fake, tmp_path, **kwargs):
    bundle, info = make_bundle(tmp_path / "update.raucb", **kwargs)
    fake.info[str(bundle)] = info
    return bundle


def record(updater):
    return load_record(updater.state_file)


# --------------------------------------------------------------------------- whole sequences


def test_install_trial_good(system, tmp_path):
    updater, fake = system
    bundle = good_bundle(updater, fake, tmp_path)
    assert updater.install(bundle) == EXIT_OK
    assert fake.commands() == ["rauc info --keyring=" + str(updater.keyring), f"rauc install {bundle}",
                               "systemctl reboot 0 tryboot"]
    r = record(updater)
    assert (r.result, r.version, r.from_slot, r.target_slot) == ("installed", "2026.12.0", "A", "B")
    assert r.reboot_requested_at and r.installed_at
    assert firmware_boot(fake.slots, tryboot=True) == "B"

    assert updater.boot_check(deadline_s=120) == EXIT_OK
    assert ["systemd-run", "--on-active=120", f"--unit={DEADLINE_UNIT}", "systemctl",
            "reboot"] in fake.calls
    assert record(updater).result == "trial" and fake.deadline_active

    assert updater.confirm() == EXIT_OK
    r = record(updater)
    assert (r.result, r.message, r.target_slot) == ("good", "", "B") and r.finished_at
    assert not fake.deadline_active
    assert fake.slots.view().primary == "B"
    assert firmware_boot(fake.slots) == "B"
    fake.calls.clear()
    assert updater.boot_check() == EXIT_OK and updater.confirm() == EXIT_OK
    assert fake.calls == [] and record(updater).result == "good"
    assert fake.out[-2:] == ["slot B booted normally", "slot B is the primary: nothing to confirm"]


def test_install_trial_no_ready_rolls_back(system, tmp_path):
    updater, fake = system
    assert updater.install(good_bundle(updater, fake, tmp_path)) == EXIT_OK
    firmware_boot(fake.slots, tryboot=True)
    assert updater.boot_check() == EXIT_OK  # trial; the player never gets READY
    assert firmware_boot(fake.slots) == "A"  # the deadline's plain reboot
    assert updater.boot_check() == EXIT_OK
    r = record(updater)
    assert (r.result, r.message) == ("rolled-back", "rolled back: slot B did not become ready")
    view = fake.slots.view()
    assert (view.primary, view.trial, view.state("B")) == ("A", None, "bad")
    assert fake.out[-1] == "rolled back: slot B did not become ready"
    assert fake.slots.boot_dir.joinpath(CONFIG).read_bytes() == CONFIG_TXT
    assert updater.boot_check() == EXIT_OK and record(updater).result == "rolled-back"


def test_trial_that_dies_before_boot_check_rolls_back(system, tmp_path):
    """A kernel that panics in the trial never runs boot-check: the reset boots A, and the
    recorded tryboot reboot says B was tried."""
    updater, fake = system
    updater.install(good_bundle(updater, fake, tmp_path))
    firmware_boot(fake.slots, tryboot=True)
    firmware_boot(fake.slots)
    assert updater.boot_check() == EXIT_OK
    assert record(updater).result == "rolled-back" and fake.slots.view().state("B") == "bad"


def test_no_reboot_then_plain_reboot_is_no_rollback(system, tmp_path):
    updater, fake = system
    assert updater.install(good_bundle(updater, fake, tmp_path), reboot=False) == EXIT_OK
    assert fake.reboots == [] and 'systemctl reboot "0 tryboot"' in fake.out[-1]
    firmware_boot(fake.slots)  # a plain reboot: B was never tried
    assert updater.boot_check() == EXIT_OK
    assert record(updater).result == "installed" and fake.slots.view().trial == "B"
    firmware_boot(fake.slots, tryboot=True)
    updater.boot_check()
    updater.confirm()
    assert record(updater).result == "good"


def test_boot_check_twice_in_a_trial(system, tmp_path):
    updater, fake = system
    updater.install(good_bundle(updater, fake, tmp_path))
    firmware_boot(fake.slots, tryboot=True)
    updater.boot_check()
    started = record(updater).trial_started_at
    fake.calls.clear()
    assert updater.boot_check() == EXIT_OK
    assert [c[0] for c in fake.calls] == ["systemctl"]  # is-active only: no second timer
    assert record(updater).trial_started_at == started


def test_trial_without_a_recorded_install(system):
    """A tryboot into B that no install recorded (state lost) is still a trial with a deadline."""
    updater, fake = system
    fake.slots.set_primary("B")
    firmware_boot(fake.slots, tryboot=True)
    assert updater.boot_check() == EXIT_OK
    r = record(updater)
    assert (r.result, r.target_slot, r.message) == ("trial", "B", "trial boot without a recorded install")
    assert fake.deadline_active


def test_confirm_waits_out_the_healthy_period_before_the_commit(system, tmp_path):
    updater, fake = system
    updater.install(good_bundle(updater, fake, tmp_path))
    firmware_boot(fake.slots, tryboot=True)
    updater.boot_check()
    assert updater.confirm(healthy_s=45) == EXIT_OK
    assert fake.out[-2:] == ["the player (pid 321) has been ready and healthy for 45 s",
                             "slot B confirmed: it is the primary slot now"]
    assert fake.player.reads >= 2 and fake.slots.view().primary == "B"


def test_a_player_that_crashes_in_its_healthy_period_is_never_committed(system, tmp_path):
    """The trial's player restarts 20 s after READY (its first stream, say): no mark-good,
    the deadline stays armed, and the next boot records the rollback and why."""
    updater, fake = system
    updater.install(good_bundle(updater, fake, tmp_path))
    firmware_boot(fake.slots, tryboot=True)
    updater.boot_check()
    fake.player.script[20] = {"MainPID": 400, "InvocationID": "77aa", "NRestarts": 1}
    assert updater.confirm() == EXIT_INSTALL_FAILED
    assert fake.out[-1].startswith("ERR update confirm: slot B not confirmed: the player "
                                   "restarted during its healthy period (pid 321 -> 400")
    assert fake.out[-1].endswith("the trial deadline reboots into slot A")
    assert ["rauc", "status", "mark-good"] not in fake.calls
    assert fake.deadline_active and fake.slots.view().primary == "A"
    r = record(updater)
    assert r.result == "trial" and r.message.startswith("not confirmed: the player restarted")
    firmware_boot(fake.slots)  # the deadline's plain reboot
    assert updater.boot_check() == EXIT_OK
    r = record(updater)
    assert r.result == "rolled-back" and r.message.startswith(
        "rolled back: slot B did not become ready (not confirmed: the player restarted")
    assert fake.slots.view().state("B") == "bad"


def test_confirm_failure_keeps_the_deadline(system, tmp_path):
    updater, fake = system
    updater.install(good_bundle(updater, fake, tmp_path))
    firmware_boot(fake.slots, tryboot=True)
    updater.boot_check()
    fake.mark_good_result = CommandResult(1, "", "Failed marking slot: D-Bus timeout\n")
    assert updater.confirm() == EXIT_INSTALL_FAILED
    assert fake.out[-1] == ("ERR update confirm: mark good: rauc status mark-good failed (1): "
                               "Failed marking slot: D-Bus timeout")
    assert fake.deadline_active and record(updater).result == "trial"
    assert fake.slots.view().primary == "A"


def test_confirm_after_a_power_cut_between_commit_and_record(system, tmp_path):
    updater, fake = system
    updater.install(good_bundle(updater, fake, tmp_path))
    firmware_boot(fake.slots, tryboot=True)
    updater.boot_check()
    fake.slots.set_state("B", "good")  # committed; the power went before "good" was saved
    firmware_boot(fake.slots)
    assert updater.confirm() == EXIT_OK
    assert record(updater).result == "good"
    assert ["rauc", "status", "mark-good"] not in fake.calls


def test_interrupted_install_is_recorded_as_failed(system, tmp_path):
    updater, fake = system
    bundle = good_bundle(updater, fake, tmp_path)
    fake.install_result = CommandResult(-9)  # rauc killed by the power cut, say
    updater.install(bundle)
    r = record(updater)
    r.result = "installing"
    updater._save(r)
    assert updater.boot_check() == EXIT_OK
    r = record(updater)
    assert (r.result, r.message) == ("failed", "the install was interrupted (power cut or crash)")


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("stderr, line", [
    ("signature verification failed: Verify error: unable to get local issuer certificate",
     "refused: signed by an unknown signer (not trusted by {keyring})"),
    ("signature verification failed: error:1700009E:CMS routines::verification failure",
     "refused: the signature does not match the bundle (modified after signing, or damaged)"),
    ("signature verification failed: Verify error: certificate has expired",
     "refused: the bundle's signing certificate has expired"),
    ("signature verification failed: Verify error: certificate is not yet valid",
     "refused: the bundle's signing certificate is not valid yet: is the speaker's clock right "
     "(network time)?"),
    ("Invalid bundle format: Failed to seek to end of bundle: Error seeking in file",
     "refused: {bundle} is not a RAUC bundle (or it is truncated)"),
])
def test_refused_by_rauc_info(system, tmp_path, stderr, line):
    updater, fake = system
    bundle = good_bundle(updater, fake, tmp_path)
    fake.info[str(bundle)] = CommandResult(1, "", f"rauc-Message: 01:02:03: Reading bundle\n{stderr}\n")
    assert updater.install(bundle) == EXIT_REFUSED
    expected = line.format(bundle=bundle, keyring=updater.keyring)
    assert fake.out == [f"ERR update install: {expected}"]
    assert [c[1] for c in fake.calls] == ["info"]
    r = record(updater)
    assert (r.result, r.message, r.target_slot) == ("failed", expected, "B")
    assert fake.slots.view().trial is None


@pytest.mark.parametrize("where", ["payload", "tree"])
def test_refused_when_the_content_was_changed(system, tmp_path, where):
    updater, fake = system
    bundle = good_bundle(updater, fake, tmp_path)
    data = bytearray(bundle.read_bytes())
    data[100 if where == "payload" else 3 * 4096 + 7] ^= 0x01
    bundle.write_bytes(bytes(data))
    assert updater.install(bundle) == EXIT_REFUSED
    assert fake.out == ["ERR update install: refused: the bundle's content does not match its "
                           "signed hash (tampered or damaged)"]
    assert [c[1] for c in fake.calls] == ["info"]


def test_refused_for_another_system(system, tmp_path):
    updater, fake = system
    bundle = good_bundle(updater, fake, tmp_path, compatible="resonate-embedded-arm64")
    assert updater.install(bundle) == EXIT_REFUSED
    assert fake.out == ["ERR update install: refused: the bundle is for "
                           "'resonate-embedded-arm64', this system is 'resonate-embedded-armel'"]


def test_refused_plain_bundle(system, tmp_path):
    updater, fake = system
    bundle = good_bundle(updater, fake, tmp_path)
    info = fake.info[str(bundle)]
    fake.info[str(bundle)] = CommandResult(0, info.stdout.replace("Format: \tverity", "Format: \tplain"))
    assert updater.install(bundle) == EXIT_REFUSED
    assert "only 'verity' bundles are accepted" in fake.out[-1]


def test_missing_bundle_and_missing_system_conf(system, tmp_path):
    updater, fake = system
    assert updater.install(tmp_path / "nope.raucb") == EXIT_REFUSED
    assert fake.out[-1] == f"ERR update install: {tmp_path / 'nope.raucb'}: no such file"
    updater.system_conf.unlink()
    assert updater.install(good_bundle(updater, fake, tmp_path)) == EXIT_UNAVAILABLE
    assert "cannot be updated with RAUC" in fake.out[-1]


def test_install_failure_leaves_the_running_slot(system, tmp_path):
    updater, fake = system
    fake.install_result = CommandResult(2, "", "Error creating proxy: Could not connect: No such "
                                               "file or directory\nD-Bus error while installing\n")
    assert updater.install(good_bundle(updater, fake, tmp_path)) == EXIT_INSTALL_FAILED
    assert fake.out[-1] == ("ERR update install: install failed: the RAUC service is not running "
                               "(rauc.service over D-Bus): nothing was installed; slot A still runs")
    assert record(updater).result == "failed" and fake.reboots == []


def test_no_install_during_a_trial(system, tmp_path):
    updater, fake = system
    updater.install(good_bundle(updater, fake, tmp_path))
    firmware_boot(fake.slots, tryboot=True)
    fake.calls.clear()
    assert updater.install(good_bundle(updater, fake, tmp_path)) == EXIT_UNAVAILABLE
    assert "would overwrite slot A, the fallback" in fake.out[-1] and fake.calls == []


def test_not_an_ab_image(system, tmp_path):
    updater, fake = system
    updater.slots.cmdline.write_text("console=tty1 root=/dev/sda2\n")
    (updater.slots.boot_dir / CONFIG).unlink()  # a PC has no such file either
    assert updater.boot_check() == EXIT_OK and updater.confirm() == EXIT_OK
    assert updater.install(good_bundle(updater, fake, tmp_path)) == EXIT_UNAVAILABLE
    assert fake.out == ["not an A/B image: nothing to check", "not an A/B image: nothing to confirm",
                           "ERR update install: not an A/B image (no rauc.slot= on the kernel "
                           "command line)"]
    assert fake.calls == []


def test_malformed_boot_files_are_one_line(system):
    updater, fake = system
    (updater.slots.boot_dir / TRYBOOT).write_bytes(b"[all]\n")
    assert updater.boot_check() == EXIT_UNAVAILABLE
    assert fake.out == [f"ERR update boot-check: boot files: {updater.slots.boot_dir / TRYBOOT}: "
                           "no os_prefix= line (expected os_prefix=slot-a/ or slot-b/)"]


def test_explain_unknown_rauc_error():
    assert explain_rauc_error("rauc-Message: x\nsomething new broke\n", "b", "k") == \
        "rauc: something new broke"


# --------------------------------------------------------------------------- the state file


def test_state_file_schema_and_modes(system, tmp_path):
    updater, fake = system
    updater.install(good_bundle(updater, fake, tmp_path))
    data = json.loads(updater.state_file.read_text())
    assert set(data) == {"schema", "result", "message", "bundle", "version", "from_slot",
                         "target_slot", "started_at", "installed_at", "reboot_requested_at",
                         "trial_started_at", "finished_at", "updated_at"}
    assert data["schema"] == 1 and data["result"] == "installed"
    assert data["updated_at"].endswith("+00:00")
    assert stat.S_IMODE(updater.state_file.stat().st_mode) == 0o644
    assert stat.S_IMODE(updater.state_file.parent.stat().st_mode) == 0o755
    assert [p.name for p in updater.state_file.parent.iterdir()] == ["state.json"]


@pytest.mark.parametrize("content", [b"{torn", b"[]", b'{"result": "exploded"}', b"\x00" * 64])
def test_unusable_state_file_is_no_record(tmp_path, content):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    assert load_record(path) is None


# --------------------------------------------------------------------------- status


def test_image_release_parsing(tmp_path):
    path = tmp_path / "release"
    path.write_text('VERSION=2026.12.0\nARCH=armel\nKERNEL="6.1.0-28-rpi"\n# note\nBUILT=2026-12-01T10:00:00Z\n'
                    "not a key line\n")
    assert read_image_release(path) == {"VERSION": "2026.12.0", "ARCH": "armel",
                                        "KERNEL": "6.1.0-28-rpi", "BUILT": "2026-12-01T10:00:00Z"}
    assert read_image_release(tmp_path / "missing") is None


def test_status_on_an_ab_image(system, tmp_path, capsys):
    updater, fake = system
    updater.install(good_bundle(updater, fake, tmp_path))
    release = tmp_path / "release"
    release.write_text("VERSION=2026.11.0\nARCH=armel\nKERNEL=6.1.0-28-rpi\nBUILT=2026-11-29\n")
    args = ["--boot-dir", str(updater.slots.boot_dir), "--cmdline", str(updater.slots.cmdline),
            "--release", str(release), "--state-file", str(updater.state_file)]
    assert cli.main(["update", "status", *args]) == 0
    screen = capsys.readouterr().out.splitlines()
    assert screen[0].startswith("versions    player ")
    assert screen[0].endswith(", image 2026.11.0 (arch armel, kernel 6.1.0-28-rpi, built 2026-11-29)")
    assert screen[1] == "slots       booted A, primary A, trial of B armed (A good, B good)"
    assert screen[2].startswith("update      installed: 2026.12.0 on slot B (")
    assert cli.main(["update", "status", "--json", *args]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["booted_slot"], data["primary_slot"], data["trial_slot"]) == ("A", "A", "B")
    assert data["image"]["VERSION"] == "2026.11.0" and data["last_update"]["result"] == "installed"


def test_status_on_a_dev_machine(tmp_path):
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("BOOT_IMAGE=/vmlinuz root=/dev/nvme0n1p2 ro quiet\n")
    info = system_info(tmp_path / "no-boot", cmdline, tmp_path / "no-release", tmp_path / "no-state")
    assert system_screen(info).splitlines()[1:] == [
        "slots       not an A/B image (no rauc.slot= on the kernel command line)",
        "update      none yet"]
    assert "image none (not an SD image: no release file)" in system_screen(info)


def test_status_with_broken_boot_files(system, tmp_path):
    updater, _ = system
    (updater.slots.boot_dir / CONFIG).write_bytes(b"")
    info = system_info(updater.slots.boot_dir, updater.slots.cmdline, tmp_path / "r", tmp_path / "s")
    assert info.booted_slot is None and "no os_prefix= line" in info.slots_problem


def test_cli_status_shows_the_system_without_a_player(tmp_path, capsys):
    assert cli.main(["status", "--state-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "is the player running" in captured.err
    assert "versions    player " in captured.out and "update      " in captured.out


def test_cli_confirm_without_a_readable_player_commits_nothing(system, tmp_path, capsys):
    """``update confirm --healthy-seconds``, with the real systemctl: on a machine where the
    player's unit cannot be read as ready, the trial is not committed (exit 4)."""
    updater, fake = system
    updater.install(good_bundle(updater, fake, tmp_path))
    firmware_boot(fake.slots, tryboot=True)
    args = ["--boot-dir", str(updater.slots.boot_dir), "--cmdline", str(updater.slots.cmdline),
            "--state-file", str(updater.state_file)]
    assert cli.main(["update", "confirm", "--healthy-seconds", "5", "--ready-timeout", "0",
                     *args]) == EXIT_INSTALL_FAILED
    err = capsys.readouterr().err
    assert "update confirm: slot B not confirmed: " in err and "slot A" in err
    assert fake.slots.view().primary == "A" and record(updater).result == "installed"
