"""resonate_embedded.system_commands: one way to run the system's commands and to write on the
read-only boot partition."""

from __future__ import annotations

import logging
import sys

import pytest

from resonate_embedded.system_commands import (
    CommandError, CommandResult, read_write, run_command,
)


def test_run_command_captures_output_and_status():
    done = run_command([sys.executable, "-c", "import sys; print('out'); sys.exit('bad thing')"])
    assert done == CommandResult(1, "out\n", "bad thing\n")


def test_a_missing_program_is_status_127_not_an_exception():
    done = run_command(["/nonexistent/resonate-no-such-program", "x"])
    assert done.returncode == 127 and "resonate-no-such-program" in done.stderr


def test_failure_names_the_command_and_its_last_line():
    done = CommandResult(2, "", "rauc-Message: reading\nFailed: no space left\n")
    assert done.failure(["rauc", "install", "b"]) == "rauc install b failed (2): Failed: no space left"
    assert CommandResult(-9).failure(["rauc"]) == "rauc failed (-9)"


class Mounts:
    """A fake runner for mount(8): records commands, fails those it is told to."""

    def __init__(self, failing=()):
        self.calls: list[str] = []
        self.failing = set(failing)

    def __call__(self, argv):
        option = argv[2]
        self.calls.append(option)
        return CommandResult(32, "", f"mount: {option}: busy") if option in self.failing else CommandResult(0)


def test_a_writable_directory_is_not_remounted(tmp_path):
    mounts = Mounts()
    with read_write(tmp_path, mounts, is_read_only=lambda path: False):
        (tmp_path / "f").write_text("x")
    assert mounts.calls == []


def test_read_only_mount_is_opened_for_the_block_and_closed_after(tmp_path):
    mounts = Mounts()
    with read_write(tmp_path, mounts, is_read_only=lambda path: True):
        assert mounts.calls == ["remount,rw"]
    assert mounts.calls == ["remount,rw", "remount,ro"]


def test_closed_again_when_the_block_fails(tmp_path):
    mounts = Mounts()
    with pytest.raises(OSError):
        with read_write(tmp_path, mounts, is_read_only=lambda path: True):
            raise OSError(28, "No space left on device")
    assert mounts.calls == ["remount,rw", "remount,ro"]


def test_cannot_open_raises_and_runs_nothing(tmp_path):
    mounts = Mounts(failing={"remount,rw"})
    ran = []
    with pytest.raises(CommandError, match=r"remount,rw .* failed \(32\): mount: remount,rw: busy"):
        with read_write(tmp_path, mounts, is_read_only=lambda path: True):
            ran.append(True)
    assert ran == [] and mounts.calls == ["remount,rw"]


def test_cannot_close_is_logged_the_writes_stand(tmp_path, caplog):
    mounts = Mounts(failing={"remount,ro"})
    with caplog.at_level(logging.WARNING):
        with read_write(tmp_path, mounts, is_read_only=lambda path: True):
            (tmp_path / "f").write_text("x")
    assert (tmp_path / "f").read_text() == "x"
    assert "stays read-write until the next boot" in caplog.text
