"""replace_file: all or nothing, the mode asked for, no temp file left behind."""
from __future__ import annotations

import os

import pytest

from resonate_embedded.atomic_file import replace_file


def test_replaces_content_and_sets_the_mode(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    replace_file(path, b"new", 0o640)
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o640
    replace_file(path, b"newer")  # mode None: whatever the file system gives
    assert path.read_bytes() == b"newer"
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "config.txt"
    path.write_text("old")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        replace_file(path, b"new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["config.txt"]
