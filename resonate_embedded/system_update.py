"""Safe A/B system updates with RAUC: install a bundle, try it once, keep it only if it works.

The steps (``resonate-embedded update …``; the slots and the firmware's tryboot are
:mod:`resonate_embedded.boot_slots`):

* ``install BUNDLE``: the bundle is checked before anything is written (:func:`verify_bundle`:
  RAUC's signature check, the ``compatible=`` against this system's, the dm-verity payload
  against the signed root hash), then ``rauc install`` writes the other slot and arms
  its trial (the backend's ``set-primary``), then ``systemctl reboot "0 tryboot"``.
* ``boot-check`` (early, every boot): booted from a trial → a deadline is armed (a transient
  ``resonate-update-deadline`` timer that reboots normally, which falls back to config.txt's
  slot); back on the primary slot after a trial that was never confirmed → the rollback is
  recorded and that slot marked bad.
* ``confirm`` (after the player reported READY): in a trial, once the player has stayed
  healthy for a while after READY (:mod:`resonate_embedded.update_health`) → ``rauc status
  mark-good`` (the backend commits: config.txt names the slot), the deadline is cancelled.
  A player that is not healthy leaves the slot uncommitted: the deadline rolls it back.

Every step is recorded in one JSON file (:data:`STATE_FILE`, written atomically; schema in
:class:`UpdateRecord`).  Commands are run through an injectable :data:`Runner`, so the state
machine is tested without rauc or systemd.
"""

from __future__ import annotations

import configparser
import datetime
import functools
import hashlib
import itertools
import json
import logging
import os
import re
import struct
import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence

import attrs

from resonate_embedded.atomic_file import replace_file
from resonate_embedded.boot_slots import (
    BootSlotError, BootSlots, SlotView, other_slot,
)
from resonate_embedded.system_commands import Runner, run_command
from resonate_embedded.update_health import (
    HEALTHY_S, READY_TIMEOUT_S, PlayerWatch, Unhealthy,
)

log = logging.getLogger(__name__)

STATE_FILE = Path("/data/update/state.json")
KEYRING = Path("/etc/rauc/keyring.pem")
SYSTEM_CONF = Path("/etc/rauc/system.conf")
DEADLINE_UNIT = "resonate-update-deadline"
DEADLINE_S = 300
SCHEMA = 1

# exit statuses of the ``update`` commands
EXIT_OK = 0
EXIT_REFUSED = 1  # the bundle was refused: nothing was written
# 2: usage errors (argparse)
EXIT_UNAVAILABLE = 3  # no update possible here or now (no A/B image, a trial running, no config)
EXIT_INSTALL_FAILED = 4  # rauc install failed: the running slot is untouched
EXIT_REBOOT_FAILED = 5  # installed and armed, but the reboot did not start

RESULTS = ("installing", "installed", "trial", "good", "rolled-back", "failed")
PENDING = ("installed", "trial")  # written to the target slot, not yet confirmed


def utc_now() -> str:
    """Wall-clock time, ISO 8601 UTC (the speaker has no RTC: wrong until network time)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class UpdateError(Exception):
    """One clear line for the owner, and the exit status that goes with it."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --------------------------------------------------------------------------- the record


@attrs.define
class UpdateRecord:
    """The last update attempt (``state.json``; keys = these fields plus ``schema``).

    ``result``: installing → installed (written, trial armed) → trial (booted into it) →
    good (committed) | rolled-back (the trial never confirmed; back on ``from_slot``) |
    failed (refused or not installed; ``message`` says why).  Times are ISO 8601 UTC.
    """

    result: str
    message: str = ""
    bundle: str | None = None
    version: str | None = None  # the bundle's manifest version
    from_slot: str | None = None
    target_slot: str | None = None
    started_at: str | None = None  # install started
    installed_at: str | None = None
    reboot_requested_at: str | None = None  # the tryboot reboot was asked for
    trial_started_at: str | None = None
    finished_at: str | None = None  # good, rolled-back or failed
    updated_at: str | None = None

    def summary(self) -> str:
        """One line: what happened last, e.g. ``good: 2026.12.0 on slot B (2026-12-01T…)``."""
        what = f"{self.result}: {self.version or self.bundle or '?'}"
        if self.target_slot:
            what += f" on slot {self.target_slot}"
        if self.updated_at:
            what += f" ({self.updated_at})"
        return what + (f" - {self.message}" if self.message else "")


def load_record(path: Path = STATE_FILE) -> UpdateRecord | None:
    """The last attempt; None when there was none.  A file that cannot be used is logged
    and treated as none (raises nothing)."""
    try:
        data = json.loads(path.read_bytes())
        fields = attrs.fields_dict(UpdateRecord)
        record = UpdateRecord(**{k: v for k, v in data.items() if k in fields})
        if record.result not in RESULTS:
            raise ValueError(f"unknown result {record.result!r}")
        return record
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("update state %s unusable (%s): ignored", path, exc)
        return None


def save_record(record: UpdateRecord, path: Path = STATE_FILE) -> None:
    """Write ``record`` atomically (directory 0755, file 0644)."""
    record.updated_at = utc_now()
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o755)
    body = json.dumps({"schema": SCHEMA, **attrs.asdict(record)}, indent=1, sort_keys=True)
    replace_file(path, (body + "\n").encode(), mode=0o644)


# --------------------------------------------------------------------------- the bundle


@attrs.frozen
class BundleInfo:
    compatible: str
    version: str
    verity_salt: str
    verity_hash: str
    verity_size: int


_FIELD = re.compile(r"^\s*(Compatible|Version|Bundle Format|Verity Salt|Verity Hash|Verity Size):"
                    r"\s*'?([^'\n]*)'?\s*$", re.MULTILINE)
# rauc's error output → the owner's line; the first pattern found wins
_UNKNOWN_SIGNER = "refused: signed by an unknown signer (not trusted by {keyring})"
_RAUC_ERRORS = (
    ("Could not connect", "the RAUC service is not running (rauc.service over D-Bus): "
                          "nothing was installed"),
    ("No such file: ", "{bundle}: no such file"),
    ("failed to load CA file", "cannot read the keyring {keyring}"),
    ("certificate has expired", "refused: the bundle's signing certificate has expired"),
    ("certificate is not yet valid", "refused: the bundle's signing certificate is not valid "
                                     "yet: is the speaker's clock right (network time)?"),
    ("unsuitable certificate purpose", "refused: the signing certificate may not sign bundles "
                                       "(its key usage)"),
    ("local issuer certificate", _UNKNOWN_SIGNER),
    ("self-signed certificate", _UNKNOWN_SIGNER),  # OpenSSL 3
    ("self signed certificate", _UNKNOWN_SIGNER),  # OpenSSL 1.1
    ("signature verification failed", "refused: the signature does not match the bundle "
                                      "(modified after signing, or damaged)"),
    ("Invalid bundle format", "refused: {bundle} is not a RAUC bundle (or it is truncated)"),
    ("Compatible mismatch", "refused: the bundle is for another system (compatible= differs)"),
)


def explain_rauc_error(stderr: str, bundle: Path, keyring: Path) -> str:
    """One line for what rauc printed on failure (its log lines left out)."""
    for needle, line in _RAUC_ERRORS:
        if needle in stderr:
            return line.format(bundle=bundle, keyring=keyring)
    lines = [s.strip() for s in stderr.splitlines()
             if s.strip() and not s.startswith("rauc-Message")]
    return f"rauc: {lines[-1] if lines else 'failed without a message'}"


def parse_rauc_info(text: str) -> BundleInfo:
    """The fields of ``rauc info``'s readable output that matter here (RAUC 1.8 prints the
    verity parameters only there, not in its JSON or shell formats)."""
    fields = dict(_FIELD.findall(text))
    if fields.get("Bundle Format") != "verity":
        raise UpdateError(f"refused: bundle format {fields.get('Bundle Format', '?')!r}: only "
                          "'verity' bundles are accepted (format=verity in the manifest)",
                          EXIT_REFUSED)
    try:
        return BundleInfo(compatible=fields["Compatible"], version=fields["Version"],
                          verity_salt=fields["Verity Salt"], verity_hash=fields["Verity Hash"],
                          verity_size=int(fields["Verity Size"]))
    except (KeyError, ValueError):
        raise UpdateError("rauc info: unexpected output (not RAUC 1.8?)", EXIT_REFUSED) from None


BLOCK = 4096


def _hash_blocks(blocks: Iterator[bytes], salt: bytes) -> list[bytes]:
    return [hashlib.sha256(salt + block).digest() for block in blocks]


def _packed(digests: list[bytes]) -> bytes:
    data = b"".join(digests)
    return data + bytes(-len(data) % BLOCK)


def verity_tree(blocks: Iterator[bytes], salt: bytes) -> tuple[bytes, bytes]:
    """(root hash, hash tree) of a dm-verity v1 SHA-256 tree over 4 KiB ``blocks`` as RAUC
    builds it (rauc ``src/verity_hash.c``: the salt before each block, levels stored top
    level first, each padded with zeros to whole blocks)."""
    digests = _hash_blocks(blocks, salt)
    levels: list[bytes] = []
    while len(digests) > 1:
        level = _packed(digests)
        levels.append(level)
        digests = _hash_blocks((level[i:i + BLOCK] for i in range(0, len(level), BLOCK)), salt)
    if not digests:
        raise UpdateError("refused: the bundle has no payload", EXIT_REFUSED)
    return digests[0], b"".join(reversed(levels))


def check_verity_payload(bundle: Path, info: BundleInfo) -> None:
    """Raise :class:`UpdateError` unless the bundle's payload and hash tree are exactly
    what the signed root hash says.  Layout: payload, hash tree (``verity_size``), CMS
    signature, its size (8 bytes, big endian)."""
    tampered = UpdateError("refused: the bundle's content does not match its signed hash "
                           "(tampered or damaged)", EXIT_REFUSED)
    size = bundle.stat().st_size
    with open(bundle, "rb") as f:
        f.seek(size - 8)
        (sig_size,) = struct.unpack(">Q", f.read(8))
        payload_size = size - 8 - sig_size - info.verity_size
        if payload_size <= 0 or payload_size % BLOCK:
            raise tampered
        f.seek(0)
        blocks = itertools.islice(iter(functools.partial(f.read, BLOCK), b""),
                                  payload_size // BLOCK)
        root, tree = verity_tree(blocks, bytes.fromhex(info.verity_salt))
        if root.hex() != info.verity_hash.lower() or f.read(info.verity_size) != tree:
            raise tampered


def system_compatible(system_conf: Path) -> str:
    """``compatible=`` of RAUC's system.conf (raises :class:`UpdateError`)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(system_conf.read_text())
        return parser["system"]["compatible"].strip()
    except FileNotFoundError:
        raise UpdateError(f"{system_conf} not found: this system cannot be updated with RAUC",
                          EXIT_UNAVAILABLE) from None
    except (OSError, configparser.Error, KeyError) as exc:
        raise UpdateError(f"{system_conf}: no usable [system] compatible= ({exc})",
                          EXIT_UNAVAILABLE) from None


def verify_bundle(bundle: Path, keyring: Path, system_conf: Path,
                  run: Runner = run_command) -> BundleInfo:
    """Check ``bundle`` before anything is written: RAUC verifies the signature against
    ``keyring`` (``rauc info``), then ``compatible=`` against ``system_conf``, then the payload
    is checked against the signed dm-verity root hash (``rauc info`` does not read the
    payload: dm-verity would only fail while installing).  Raises :class:`UpdateError`
    with one line (:data:`EXIT_REFUSED` for a bad bundle)."""
    if not bundle.is_file():
        raise UpdateError(f"{bundle}: no such file", EXIT_REFUSED)
    done = run(["rauc", "info", f"--keyring={keyring}", str(bundle)])
    if done.returncode != 0:
        raise UpdateError(explain_rauc_error(done.stderr, bundle, keyring), EXIT_REFUSED)
    info = parse_rauc_info(done.stdout)
    expected = system_compatible(system_conf)  # before the payload: reading it takes a while
    if info.compatible != expected:
        raise UpdateError(f"refused: the bundle is for {info.compatible!r}, this system is "
                          f"{expected!r}", EXIT_REFUSED)
    check_verity_payload(bundle, info)
    return info


# --------------------------------------------------------------------------- the steps


@attrs.define
class Updater:
    """The ``update`` steps over one system; every path and command is injectable."""

    slots: BootSlots = attrs.field(factory=BootSlots)
    state_file: Path = STATE_FILE
    keyring: Path = KEYRING
    system_conf: Path = SYSTEM_CONF
    run: Runner = run_command
    say: Callable[[str], None] = print
    warn: Callable[[str], None] = attrs.field(default=lambda line: print(line, file=sys.stderr))
    watch: Callable[[Runner], PlayerWatch] = PlayerWatch  # the player's health, over ``run``

    def _view(self) -> SlotView | None:
        """The slots; None when not booted from an A/B slot (a development machine)."""
        try:
            return self.slots.view() if self.slots.booted() is not None else None
        except BootSlotError as exc:
            raise UpdateError(f"boot files: {exc}", EXIT_UNAVAILABLE) from None

    def _check(self, argv: Sequence[str], what: str, exit_code: int) -> None:
        done = self.run(argv)
        if done.returncode != 0:
            raise UpdateError(f"{what}: {done.failure(argv)}", exit_code)

    def _save(self, record: UpdateRecord) -> None:
        save_record(record, self.state_file)

    def _step(self, name: str, step: Callable[[], str]) -> int:
        """Run one step: its last line on stdout and :data:`EXIT_OK`, or one line on stderr
        and the failure's exit status.  Raises nothing but usage errors."""
        try:
            self.say(step())
            return EXIT_OK
        except UpdateError as exc:
            self.warn(f"update {name}: {exc}")
            return exc.exit_code
        except (BootSlotError, OSError) as exc:
            self.warn(f"update {name}: {exc}")
            return EXIT_UNAVAILABLE

    def install(self, bundle: Path, reboot: bool = True) -> int:
        """Verify, install into the other slot, record, reboot into its trial."""
        return self._step("install", lambda: self._install(bundle, reboot))

    def boot_check(self, deadline_s: int = DEADLINE_S) -> int:
        """Every boot: arm a trial's deadline, or record a rollback or an interrupted install."""
        return self._step("boot-check", lambda: self._boot_check(deadline_s))

    def confirm(self, healthy_s: float = HEALTHY_S,
                ready_timeout_s: float = READY_TIMEOUT_S) -> int:
        """A trial slot becomes the primary once the player has been healthy for
        ``healthy_s`` after READY; anything else is a no-op."""
        return self._step("confirm", lambda: self._confirm(healthy_s, ready_timeout_s))

    def _install(self, bundle: Path, reboot: bool) -> str:
        view = self._view()
        if view is None:
            raise UpdateError("not an A/B image (no rauc.slot= on the kernel command line)",
                              EXIT_UNAVAILABLE)
        if view.in_trial:
            raise UpdateError(f"slot {view.booted} is on trial and not confirmed yet; installing "
                              f"now would overwrite slot {view.primary}, the fallback",
                              EXIT_UNAVAILABLE)
        record = UpdateRecord(result="installing", bundle=str(bundle), from_slot=view.booted,
                              target_slot=other_slot(view.booted), started_at=utc_now())
        try:
            info = verify_bundle(bundle, self.keyring, self.system_conf, self.run)
        except UpdateError as exc:
            self._fail(record, str(exc))
            raise
        record.version = info.version
        self._save(record)
        self.say(f"bundle {info.version} verified; installing into slot {record.target_slot}")
        done = self.run(["rauc", "install", str(bundle)])
        if done.returncode != 0:
            why = explain_rauc_error(done.stderr + done.stdout, bundle, self.keyring)
            self._fail(record, f"install failed: {why}")
            raise UpdateError(f"install failed: {why}; slot {view.booted} still runs",
                              EXIT_INSTALL_FAILED)
        if self.slots.view().trial != record.target_slot:
            self._fail(record, "installed, but no trial boot is armed")
            raise UpdateError(f"installed, but tryboot.txt does not name slot "
                              f"{record.target_slot}: is system.conf's bootloader backend "
                              "boot_slots?", EXIT_INSTALL_FAILED)
        record.result, record.installed_at = "installed", utc_now()
        self._save(record)
        if not reboot:
            return (f"installed {info.version} into slot {record.target_slot}; it is tried at "
                    "the next reboot with: systemctl reboot \"0 tryboot\"")
        record.reboot_requested_at = utc_now()
        self._save(record)
        self._check(["systemctl", "reboot", "0 tryboot"], "reboot", EXIT_REBOOT_FAILED)
        return f"installed {info.version} into slot {record.target_slot}; rebooting into it"

    def _fail(self, record: UpdateRecord, message: str) -> None:
        record.result, record.message, record.finished_at = "failed", message, utc_now()
        self._save(record)

    def _boot_check(self, deadline_s: int) -> str:
        view = self._view()
        if view is None:
            return "not an A/B image: nothing to check"
        record = load_record(self.state_file)
        if view.in_trial:
            return self._start_trial(view.booted, record, deadline_s)
        if record is not None and record.result == "installing":
            self._fail(record, "the install was interrupted (power cut or crash)")
            return f"an interrupted install into slot {record.target_slot} recorded as failed"
        if (record is not None and record.result in PENDING
                and record.target_slot == other_slot(view.booted)
                and (record.result == "trial" or record.reboot_requested_at)):
            record.result, record.finished_at = "rolled-back", utc_now()
            why = f" ({record.message})" if record.message.startswith("not confirmed") else ""
            record.message = f"rolled back: slot {record.target_slot} did not become ready{why}"
            self.slots.set_state(record.target_slot, "bad")
            self._save(record)
            return record.message
        return f"slot {view.booted} booted normally"

    def _start_trial(self, slot: str, record: UpdateRecord | None, deadline_s: int) -> str:
        if record is None or record.target_slot != slot or record.result not in PENDING:
            record = UpdateRecord(result="installed", target_slot=slot, from_slot=other_slot(slot),
                                  message="trial boot without a recorded install")
        if record.result != "trial":
            record.result, record.trial_started_at = "trial", utc_now()
            self._save(record)
        if self.run(["systemctl", "is-active", "--quiet", f"{DEADLINE_UNIT}.timer"]).returncode:
            self._check(["systemd-run", f"--on-active={deadline_s}", f"--unit={DEADLINE_UNIT}",
                         "systemctl", "reboot"], "trial deadline", EXIT_UNAVAILABLE)
        return (f"trial boot of slot {slot}: it must be confirmed within {deadline_s} s, "
                "else the speaker reboots into the previous slot")

    def _player_healthy(self, view: SlotView, record: UpdateRecord | None, healthy_s: float,
                        ready_timeout_s: float) -> str:
        """The player's health (one line), or :class:`UpdateError`: the slot stays on trial
        and the reason is kept in the record."""
        try:
            return self.watch(self.run).wait_healthy(healthy_s, ready_timeout_s)
        except Unhealthy as exc:
            if record is not None:
                record.message = f"not confirmed: {exc}"
                self._save(record)
            raise UpdateError(f"slot {view.booted} not confirmed: {exc}; the trial deadline "
                              f"reboots into slot {view.primary}", EXIT_INSTALL_FAILED) from None

    def _confirm(self, healthy_s: float, ready_timeout_s: float) -> str:
        view = self._view()
        if view is None:
            return "not an A/B image: nothing to confirm"
        record = load_record(self.state_file)
        recorded = (record is not None and record.result in PENDING
                    and record.target_slot == view.booted)
        if view.in_trial:
            self.say(self._player_healthy(view, record if recorded else None, healthy_s,
                                          ready_timeout_s))
            self._check(["rauc", "status", "mark-good"], "mark good", EXIT_INSTALL_FAILED)
            if self.slots.view().primary != view.booted:
                raise UpdateError(f"rauc marked slot {view.booted} good but config.txt still "
                                  f"names slot {view.primary}", EXIT_INSTALL_FAILED)
            # The deadline now reboots into this slot anyway: a failure to stop it is harmless.
            if self.run(["systemctl", "stop", f"{DEADLINE_UNIT}.timer"]).returncode:
                self.warn(f"update confirm: could not stop {DEADLINE_UNIT}.timer")
        elif not recorded:
            return f"slot {view.booted} is the primary: nothing to confirm"
        # else: committed, but a power cut came before "good" was recorded
        if not recorded:
            record = UpdateRecord(result="trial", target_slot=view.booted,
                                  from_slot=other_slot(view.booted))
        record.result, record.message, record.finished_at = "good", "", utc_now()
        self._save(record)
        return f"slot {view.booted} confirmed: it is the primary slot now"
