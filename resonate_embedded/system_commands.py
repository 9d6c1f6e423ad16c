"""The speaker's system commands (mount, rauc, systemctl) for the update, boot-slot and
first-boot code, run one way. (The setup hotspot's ``nmcli`` calls keep their own runner in
:mod:`resonate_embedded.setup.hotspot`: they need a timeout and parse the output.)

* :func:`run_command` runs a command and captures its output; it never raises (a missing
  program is exit status 127, as in a shell). Callers take a :data:`Runner`, so tests inject a
  fake one instead of a system.
* :func:`read_write` opens a read-only mount (the FAT boot partition) for writing for the
  duration of a ``with`` block and closes it again afterwards, also when the block fails.
"""

from __future__ import annotations

import logging
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import attrs

log = logging.getLogger(__name__)


@attrs.frozen
class CommandResult:
    returncode: int
    stdout: str = ""
    stderr: str = ""

    def failure(self, argv: Sequence[str]) -> str:
        """One line naming the command, its status and the last line it said (the error)."""
        said = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return f"{' '.join(argv)} failed ({self.returncode})" + (f": {said[-1]}" if said else "")


Runner = Callable[[Sequence[str]], CommandResult]


class CommandError(Exception):
    """A command that had to succeed failed; the message is :meth:`CommandResult.failure`."""


def run_command(argv: Sequence[str]) -> CommandResult:
    """The real :data:`Runner`: runs ``argv``, captures its output (a missing program is
    exit status 127, as in a shell)."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True)
    except OSError as exc:
        return CommandResult(127, "", f"{argv[0]}: {exc.strerror or exc}")
    return CommandResult(done.returncode, done.stdout, done.stderr)


def is_read_only_mount(path: Path) -> bool:
    """``path`` is a mount point mounted read-only."""
    return os.path.ismount(path) and bool(os.statvfs(path).f_flag & os.ST_RDONLY)


@contextmanager
def read_write(mount_dir: Path, run: Runner = run_command,
               is_read_only: Callable[[Path], bool] = is_read_only_mount) -> Iterator[None]:
    """Remount the read-only mount point ``mount_dir`` read-write for the block, then sync
    and remount it read-only, also when the block raised. A directory that is not a read-only
    mount point is written as it is (nothing is remounted). Raises :class:`CommandError` if it
    cannot be made writable; a failed remount back to read-only is logged (the writes are done)."""
    if not is_read_only(mount_dir):
        yield
        return
    argv = ["mount", "-o", "remount,rw", str(mount_dir)]
    result = run(argv)
    if result.returncode != 0:
        raise CommandError(result.failure(argv))
    try:
        yield
    finally:
        os.sync()
        argv = ["mount", "-o", "remount,ro", str(mount_dir)]
        result = run(argv)
        if result.returncode != 0:
            log.warning("%s: stays read-write until the next boot", result.failure(argv))
