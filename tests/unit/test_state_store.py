"""Corrupt or unreadable state files: reported, moved aside, defaults used, never a crash."""

from __future__ import annotations

import json
import logging
import os

import pytest

from resonate_embedded.identity import IDENTITY_FILE, load_or_create
from resonate_embedded.pairing import PAIRINGS_FILE, PairingStore
from resonate_embedded.state_store import STATE_FILE, PersistentState, StateStore, move_aside

CORRUPT = [
    pytest.param(b"{torn", id="torn-json"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\xff\xfe\x00garbage\x80", id="binary"),
    pytest.param(b"[1, 2, 3]", id="not-an-object"),
    pytest.param(b"null", id="null"),
    pytest.param(b"[" * 100_000, id="deep-nesting"),
    pytest.param(b"\x00" * 4096, id="zeros-after-power-cut"),
]


def _asides(tmp_path, name):
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(name + ".corrupt-"))


@pytest.mark.parametrize("content", CORRUPT)
def test_corrupt_state_is_reported_moved_aside_and_replaced_by_defaults(tmp_path, caplog, content):
    (tmp_path / STATE_FILE).write_bytes(content)
    state = StateStore(tmp_path).load()
    assert state.volume == 100 and state.muted is False and state.output_delay_ms == 0
    asides = _asides(tmp_path, STATE_FILE)
    assert len(asides) == 1, asides
    assert (tmp_path / asides[0]).read_bytes() == content, "the corrupt file must be kept as it was"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "unreadable" in errors[0].getMessage()
    assert asides[0] in errors[0].getMessage()
    # the defaults were written: the next start reads them without complaint
    caplog.clear()
    again = StateStore(tmp_path).load()
    assert again.client_id == state.client_id
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_two_corruptions_in_the_same_second_keep_both_files(tmp_path):
    for content in (b"{one", b"{two"):
        (tmp_path / STATE_FILE).write_bytes(content)
        StateStore(tmp_path).load()
    kept = {(tmp_path / n).read_bytes() for n in _asides(tmp_path, STATE_FILE)}
    assert kept == {b"{one", b"{two"}


def test_a_directory_in_place_of_the_state_file(tmp_path, caplog):
    (tmp_path / STATE_FILE).mkdir()
    state = StateStore(tmp_path).load()
    assert state.volume == 100
    assert (tmp_path / STATE_FILE).is_file()
    assert len(_asides(tmp_path, STATE_FILE)) == 1
    assert "unreadable" in caplog.text


def test_unusable_fields_are_reported_and_the_rest_kept(tmp_path, caplog):
    (tmp_path / STATE_FILE).write_text(json.dumps({
        "client_id": "keep-me", "volume": 250, "muted": "yes", "output_delay_ms": 20,
        "last_played_server_id": 7, "future_key": 1}))
    state = StateStore(tmp_path).load()
    assert (state.client_id, state.volume, state.muted, state.output_delay_ms,
            state.last_played_server_id) == ("keep-me", 100, False, 20, None)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    for key in ("volume=250", "muted='yes'", "last_played_server_id=7"):
        assert key in warnings[0]
    assert not _asides(tmp_path, STATE_FILE), "a readable file with bad fields is not moved aside"


def test_read_only_state_dir_still_loads(tmp_path, caplog):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    (tmp_path / STATE_FILE).write_text("{torn")
    tmp_path.chmod(0o500)
    try:
        state = StateStore(tmp_path).load()
    finally:
        tmp_path.chmod(0o700)
    assert state.volume == 100
    assert "could not move it aside" in caplog.text


def test_unwritable_state_is_reported_not_raised(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = StateStore(blocker / "state")  # a state dir under a regular file: cannot exist
    state = store.load()
    assert isinstance(state, PersistentState)
    store.save(state)
    assert "cannot save state" in caplog.text


def test_move_aside_of_a_missing_file_is_none(tmp_path):
    assert move_aside(tmp_path / "nothing") is None


@pytest.mark.parametrize("content", CORRUPT)
def test_corrupt_identity_gives_a_new_one_and_keeps_the_old_file(tmp_path, caplog, content):
    first = load_or_create(tmp_path)
    (tmp_path / IDENTITY_FILE).write_bytes(content)
    second = load_or_create(tmp_path)
    assert second.client_id != first.client_id
    assert load_or_create(tmp_path).client_id == second.client_id
    kept = [p for p in tmp_path.iterdir() if p.name.startswith(IDENTITY_FILE + ".")
            and not p.name.endswith(".tmp")]
    assert len(kept) == 1 and kept[0].read_bytes() == content
    assert "must pair again" in caplog.text


@pytest.mark.parametrize("content", CORRUPT + [pytest.param(b'{"records": [1, "x", null]}',
                                                           id="records-not-objects")])
def test_corrupt_pairing_records_start_empty_and_are_kept_aside(tmp_path, caplog, content):
    (tmp_path / PAIRINGS_FILE).write_bytes(content)
    store = PairingStore(tmp_path)
    assert store.records() == []
    if b"records" in content:
        return  # readable, each bad record dropped with a line
    assert "unreadable" in caplog.text
    asides = _asides(tmp_path, PAIRINGS_FILE)
    assert len(asides) == 1 and (tmp_path / asides[0]).read_bytes() == content
