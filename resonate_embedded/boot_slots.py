"""RAUC's custom bootloader backend for the Raspberry Pi firmware's A/B switch (tryboot).

The firmware reads ``config.txt`` on the FAT partition; after a reboot with the one-shot
tryboot flag (``systemctl reboot "0 tryboot"``) it reads ``tryboot.txt`` instead, once.  Each
file holds exactly one ``os_prefix=slot-a/`` or ``os_prefix=slot-b/`` line, which picks the
directory with that slot's kernel, DTBs and ``cmdline.txt`` (``rauc.slot=A|B``).  So:

* the **primary** slot is the one ``config.txt`` names: every ordinary boot, crash or reset
  boots it;
* a **trial** is armed when ``tryboot.txt`` names the other slot: only the next tryboot reboot
  boots it, once, and anything going wrong afterwards falls back to the primary;
* the **booted** slot is ``rauc.slot=`` in ``/proc/cmdline``;
* a slot RAUC marked **bad** is listed in ``slot-state.txt`` next to the configs.  That file
  lives on the FAT partition, not on ``/data``: it qualifies the boot configuration it sits
  next to, both slots see it whatever root they booted, and it survives a wiped or
  re-created data partition (a slot's state must never outlive or predate its configs).

Interface (RAUC 1.8, ``bootloader=custom``, ``bootloader-custom-backend=`` in system.conf;
rauc ``src/bootchooser.c``: ``custom_backend_get``/``custom_backend_set``).  RAUC runs
``BACKEND get-primary``, ``get-state BOOTNAME``, ``set-primary BOOTNAME`` and ``set-state
BOOTNAME good|bad``; it reads stdout of the ``get-`` commands (whitespace stripped) and treats
any non-zero exit as failure.  RAUC 1.8 has no ``get-current``: it finds the booted slot itself
from ``rauc.slot=`` on the kernel command line.

* ``get-primary`` → prints ``A`` or ``B`` (config.txt's slot).
* ``get-state X`` → prints ``good`` or ``bad``.
* ``set-primary X`` → X is no longer bad; X not booted: ``tryboot.txt`` = ``config.txt`` with
  X's prefix (the trial is armed; ``config.txt`` untouched, so any failure falls back);
  X booted: ``config.txt`` names X (unchanged unless in a trial) and ``tryboot.txt`` =
  ``config.txt`` (disarmed).  RAUC calls it after writing a slot.
* ``set-state X good`` → X is no longer bad; X booted and not primary (the trial succeeded):
  commit, ``config.txt`` names X and ``tryboot.txt`` = ``config.txt``.
* ``set-state X bad`` → X is bad; a ``tryboot.txt`` naming X is reset to ``config.txt``.
  RAUC calls it before writing a slot.

Guarantees: every other byte of ``config.txt`` is kept; every write is a temp file, fsync,
rename, fsync of the directory, with the FAT partition remounted read-write only for the
write (when it is a read-only mount point); ``config.txt`` is written last, after
``tryboot.txt``, so a power cut at any instant leaves a bootable, consistent pair.  Anything
malformed (no ``os_prefix`` line, two, an unknown prefix or bootname, a booted slot that
cannot be found) is one line on stderr and exit status 1; a usage error exits 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable

import attrs

from resonate_embedded.atomic_file import replace_file
from resonate_embedded.system_commands import (
    CommandError, Runner, is_read_only_mount, read_write, run_command,
)

DEFAULT_BOOT_DIR = Path("/boot/firmware")
DEFAULT_CMDLINE = Path("/proc/cmdline")
CONFIG = "config.txt"
TRYBOOT = "tryboot.txt"
STATE = "slot-state.txt"
PREFIXES = {"A": "slot-a/", "B": "slot-b/"}
SLOT_OF_PREFIX = {prefix: slot for slot, prefix in PREFIXES.items()}

_OS_PREFIX = re.compile(rb"^[ \t]*os_prefix[ \t]*=[ \t]*([^\s#]*)[ \t]*\r?$", re.MULTILINE)
_RAUC_SLOT = re.compile(r"(?:^|\s)rauc\.slot=(\S*)")


class BootSlotError(Exception):
    """The boot files or the command line are not what the backend can work with (one line)."""


def other_slot(slot: str) -> str:
    """The other slot's bootname."""
    return "B" if check_bootname(slot) == "A" else "A"


def check_bootname(name: str) -> str:
    """``name`` if it is a slot bootname (``A`` or ``B``); raises :class:`BootSlotError`."""
    if name not in PREFIXES:
        raise BootSlotError(f"unknown bootname {name!r} (the slots are A and B)")
    return name


def _prefix_match(data: bytes, path: Path) -> re.Match[bytes]:
    matches = list(_OS_PREFIX.finditer(data))
    if not matches:
        raise BootSlotError(f"{path}: no os_prefix= line (expected os_prefix=slot-a/ or slot-b/)")
    if len(matches) > 1:
        lines = ", ".join(str(data.count(b"\n", 0, m.start()) + 1) for m in matches)
        raise BootSlotError(f"{path}: {len(matches)} os_prefix= lines (lines {lines}); "
                            "exactly one is allowed")
    value = matches[0].group(1).decode(errors="replace")
    if value not in SLOT_OF_PREFIX:
        raise BootSlotError(f"{path}: os_prefix={value} names no slot "
                            f"(expected {' or '.join(SLOT_OF_PREFIX)})")
    return matches[0]


def slot_of_config(data: bytes, path: Path) -> str:
    """The slot a config (config.txt or tryboot.txt content) boots."""
    return SLOT_OF_PREFIX[_prefix_match(data, path).group(1).decode()]


def with_slot(data: bytes, path: Path, slot: str) -> bytes:
    """``data`` with its one os_prefix value replaced by ``slot``'s; every other byte kept."""
    m = _prefix_match(data, path)
    return data[:m.start(1)] + PREFIXES[slot].encode() + data[m.end(1):]


def booted_from_cmdline(text: str, path: Path | str = DEFAULT_CMDLINE) -> str | None:
    """The booted slot from a kernel command line; None when it has no ``rauc.slot=``
    (not an A/B image).  Raises :class:`BootSlotError` for an unknown bootname."""
    found = _RAUC_SLOT.findall(text)
    if not found:
        return None
    if len(set(found)) > 1 or found[0] not in PREFIXES:
        raise BootSlotError(f"{path}: rauc.slot={' rauc.slot='.join(found)} is not one of A, B")
    return found[0]


@attrs.frozen
class SlotView:
    """What the boot files say, read once."""

    booted: str | None  # None: no rauc.slot= on the command line (not an A/B image)
    primary: str
    trial: str | None  # the slot tryboot.txt would boot, when it differs from primary
    bad: frozenset[str]

    @property
    def in_trial(self) -> bool:
        """Booted from tryboot.txt into a slot config.txt does not name."""
        return self.booted is not None and self.booted != self.primary

    def state(self, slot: str) -> str:
        return "bad" if slot in self.bad else "good"


@attrs.define
class BootSlots:
    """The backend's operations on one boot directory (see the module docstring)."""

    boot_dir: Path = DEFAULT_BOOT_DIR
    cmdline: Path = DEFAULT_CMDLINE
    run: Runner = run_command  # for the remount commands
    is_read_only: Callable[[Path], bool] = is_read_only_mount

    # ---------------------------------------------------------------- reading

    def _read(self, name: str) -> bytes:
        path = self.boot_dir / name
        try:
            return path.read_bytes()
        except OSError as exc:
            raise BootSlotError(f"{path}: {exc.strerror or exc}") from None

    def booted(self) -> str | None:
        try:
            text = self.cmdline.read_text(errors="replace")
        except OSError as exc:
            raise BootSlotError(f"{self.cmdline}: {exc.strerror or exc}") from None
        return booted_from_cmdline(text, self.cmdline)

    def _bad(self) -> frozenset[str]:
        path = self.boot_dir / STATE
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            return frozenset()
        except OSError as exc:
            raise BootSlotError(f"{path}: {exc.strerror or exc}") from None
        bad = set()
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            slot, sep, state = (part.strip() for part in line.partition("="))
            if not sep or slot not in PREFIXES or state not in ("good", "bad"):
                raise BootSlotError(f"{path}:{number}: {raw.strip()[:60]!r} is not A|B=good|bad")
            if state == "bad":
                bad.add(slot)
        return frozenset(bad)

    def view(self) -> SlotView:
        """Booted, primary and trial slot and the bad ones (raises :class:`BootSlotError`)."""
        primary = slot_of_config(self._read(CONFIG), self.boot_dir / CONFIG)
        tryboot_path = self.boot_dir / TRYBOOT
        trial = (slot_of_config(self._read(TRYBOOT), tryboot_path)
                 if tryboot_path.exists() else primary)
        return SlotView(booted=self.booted(), primary=primary,
                        trial=trial if trial != primary else None, bad=self._bad())

    def _booted_or_fail(self) -> str:
        booted = self.booted()
        if booted is None:
            raise BootSlotError(f"{self.cmdline}: no rauc.slot= (not booted from an A/B slot)")
        return booted

    # ---------------------------------------------------------------- writing

    def _unchanged(self, name: str, data: bytes) -> bool:
        try:
            return (self.boot_dir / name).read_bytes() == data
        except OSError:
            return False

    def _write(self, files: list[tuple[str, bytes]]) -> None:
        """Write those of ``files`` whose content changes, in order, with the partition
        read-write only meanwhile (nothing changes: nothing is remounted)."""
        changed = [(name, data) for name, data in files if not self._unchanged(name, data)]
        if not changed:
            return
        try:
            with read_write(self.boot_dir, self.run, self.is_read_only):
                for name, data in changed:
                    replace_file(self.boot_dir / name, data)
        except CommandError as exc:
            raise BootSlotError(str(exc)) from None

    def _state_file(self, bad: frozenset[str]) -> tuple[str, bytes]:
        lines = "".join(f"{slot}={'bad' if slot in bad else 'good'}\n" for slot in PREFIXES)
        return STATE, b"# A/B slot states, written by resonate_embedded.boot_slots\n" + lines.encode()

    def _commit(self, slot: str, bad: frozenset[str]) -> None:
        """config.txt names ``slot``, tryboot.txt = config.txt, ``bad`` recorded."""
        config = with_slot(self._read(CONFIG), self.boot_dir / CONFIG, slot)
        self._write([self._state_file(bad), (TRYBOOT, config), (CONFIG, config)])

    def set_primary(self, slot: str) -> None:
        check_bootname(slot)
        booted, bad = self._booted_or_fail(), self._bad() - {slot}
        if slot == booted:
            self._commit(slot, bad)
            return
        config = self._read(CONFIG)
        self._write([self._state_file(bad),
                     (TRYBOOT, with_slot(config, self.boot_dir / CONFIG, slot))])

    def set_state(self, slot: str, state: str) -> None:
        check_bootname(slot)
        if state == "good":
            view = self.view()
            bad = view.bad - {slot}
            if slot == view.booted and view.in_trial:
                self._commit(slot, bad)
            else:
                self._write([self._state_file(bad)])
        elif state == "bad":
            view = self.view()
            files = [self._state_file(view.bad | {slot})]
            if view.trial == slot:
                files.append((TRYBOOT, self._read(CONFIG)))
            self._write(files)
        else:
            raise BootSlotError(f"unknown state {state!r} (good or bad)")


# -------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m resonate_embedded.boot_slots",
                                description="RAUC custom bootloader backend (Raspberry Pi "
                                            "config.txt / tryboot.txt)")
    p.add_argument("--boot-dir", type=Path, default=DEFAULT_BOOT_DIR,
                   help=f"the firmware's FAT partition (default {DEFAULT_BOOT_DIR})")
    p.add_argument("--cmdline", type=Path, default=DEFAULT_CMDLINE,
                   help=f"the kernel command line (default {DEFAULT_CMDLINE})")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("get-primary", help="print the primary slot (config.txt)")
    sub.add_parser("set-primary", help="arm a trial boot of a slot").add_argument("bootname")
    sub.add_parser("get-state", help="print good or bad").add_argument("bootname")
    set_state = sub.add_parser("set-state", help="mark a slot good (commit a trial) or bad")
    set_state.add_argument("bootname")
    set_state.add_argument("state", choices=("good", "bad"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    slots = BootSlots(boot_dir=args.boot_dir, cmdline=args.cmdline)
    try:
        if args.command == "get-primary":
            print(slots.view().primary)
        elif args.command == "get-state":
            print(slots.view().state(check_bootname(args.bootname)))
        elif args.command == "set-primary":
            slots.set_primary(args.bootname)
        else:
            slots.set_state(args.bootname, args.state)
    except (BootSlotError, OSError) as exc:
        print(f"boot_slots {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
