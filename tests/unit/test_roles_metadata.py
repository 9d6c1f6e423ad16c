"""Metadata role: parsing, full-state replacement, nulls, scheduling, progress, track changes."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from resonate_embedded.roles.metadata import Metadata, NowPlaying, Progress, parse_metadata

OFFSET = 1_000_000_000  # server = local + OFFSET


def to_local(server_us: int) -> int:
    return server_us - OFFSET


def full(ts_local: int, **kw) -> dict:
    obj = {"timestamp": ts_local + OFFSET, "title": "Song", "artist": "Band", "album": "LP",
           "album_artist": "Band", "artwork_url": "http://x/a.jpg", "year": 1999, "track": 3,
           "progress": {"track_progress": 10_000, "track_duration": 200_000, "playback_speed": 1000}}
    obj.update(kw)
    return obj


def test_parse_full_object():
    md, problems = parse_metadata(full(0))
    assert problems == ()
    assert md == Metadata(timestamp_us=OFFSET, title="Song", artist="Band", album_artist="Band",
                          album="LP", artwork_url="http://x/a.jpg", year=1999, track=3,
                          progress=Progress(10_000, 200_000, 1000))


def test_each_bad_field_is_one_problem_and_the_rest_is_kept():
    md, problems = parse_metadata(full(0, title=5, year="1999", track=0,
                                       progress={"track_progress": -1, "track_duration": 5,
                                                 "playback_speed": True}))
    assert md is not None and md.title is None and md.year is None and md.track is None
    assert md.artist == "Band" and md.progress is None
    assert len(problems) == 5
    assert any("metadata.title" in p for p in problems)
    assert any("metadata.year" in p for p in problems)
    assert any("metadata.track=0" in p for p in problems)
    assert any("track_progress=-1" in p for p in problems)
    assert any("playback_speed" in p for p in problems)


def test_progress_missing_member_is_one_problem():
    md, problems = parse_metadata(full(0, progress={"track_progress": 1, "playback_speed": 1000}))
    assert md.progress is None
    assert problems == ("metadata.progress lacks track_duration: progress ignored",)


@pytest.mark.parametrize("obj, text", [
    ([], "not an object"), ({"title": "x"}, "without timestamp"),
    ({"timestamp": "1"}, "not a usable integer"), ({"timestamp": 2**70}, "not a usable integer"),
])
def test_unusable_objects_are_refused(obj, text):
    md, problems = parse_metadata(obj)
    assert md is None and len(problems) == 1 and text in problems[0]


def test_keeper_never_raises_and_logs_one_line_per_problem(caplog):
    np_ = NowPlaying(to_local, now_us=lambda: 0)
    with caplog.at_level(logging.WARNING):
        for junk in (1, "x", [], {"timestamp": None}, {"timestamp": 1, "progress": []},
                     {"timestamp": 1, "title": {"a": 1}}, {"timestamp": True}):
            assert np_.receive(junk)
    assert len(caplog.records) == 7


def test_each_object_replaces_the_state_wholesale_and_null_fields_mean_absent():
    np_ = NowPlaying(to_local, now_us=lambda: 100)
    np_.receive(full(0))
    np_.receive({"timestamp": OFFSET + 50, "title": "Other", "artist": None})
    md = np_.current()
    assert md.title == "Other"
    assert md.artist is None and md.album is None and md.year is None  # not merged
    assert md.progress is None  # omitting progress clears the position
    assert np_.progress_ms() is None


def test_null_role_object_clears_current_and_pending():
    np_ = NowPlaying(to_local, now_us=lambda: 0)
    np_.receive(full(0))
    np_.receive(full(5_000_000, title="Next"))
    assert np_.pending is not None
    assert np_.receive(None) == ()
    assert np_.current() is None and np_.pending is None


def test_scheduled_update_applies_at_its_time_and_replaces_a_held_one():
    np_ = NowPlaying(to_local)
    np_.receive(full(0, title="A"), now_us=0)
    np_.receive(full(2_000_000, title="B"), now_us=10)
    np_.receive(full(3_000_000, title="C"), now_us=20)  # replaces B
    assert np_.current(1_000_000).title == "A"
    assert np_.current(2_500_000).title == "A"
    assert np_.pending.title == "C"
    assert np_.current(2_999_999).title == "A"
    assert np_.current(3_000_000).title == "C"
    assert np_.pending is None


def test_present_update_discards_pending():
    np_ = NowPlaying(to_local)
    np_.receive(full(0, title="A"), now_us=0)
    np_.receive(full(2_000_000, title="B"), now_us=10)
    np_.receive(full(0, title="A2"), now_us=20)  # cancel: resend current with a past timestamp
    assert np_.pending is None
    assert np_.current(5_000_000).title == "A2"


def test_unsynchronised_clock_applies_at_once():
    np_ = NowPlaying(lambda s: None)
    np_.receive(full(10**12, title="Far"), now_us=0)
    assert np_.current(0).title == "Far"
    assert np_.progress_ms(123) == 10_000  # as sent


def test_progress_extrapolates_and_clamps():
    np_ = NowPlaying(to_local)
    np_.receive(full(1_000_000), now_us=1_000_000)
    assert np_.progress_ms(1_000_000) == 10_000
    assert np_.progress_ms(3_500_000) == 12_500
    assert np_.progress_ms(10**9) == 200_000  # clamped to the duration
    np_.receive(full(1_000_000, progress={"track_progress": 5000, "track_duration": 0,
                                          "playback_speed": 1500}), now_us=1_000_000)
    assert np_.progress_ms(3_000_000) == 8000  # 1.5x, unknown duration: not clamped above
    np_.receive(full(1_000_000, progress={"track_progress": 5000, "track_duration": 9000,
                                          "playback_speed": 0}), now_us=1_000_000)
    assert np_.progress_ms(9_000_000) == 5000  # paused
    # progress is from the current state, never the pending one
    np_.receive(full(50_000_000, progress={"track_progress": 0, "track_duration": 1,
                                           "playback_speed": 1000}), now_us=2_000_000)
    assert np_.progress_ms(2_000_000) == 5000


def test_track_change_is_described_once_per_track():
    np_ = NowPlaying(to_local, now_us=lambda: 0)
    assert np_.take_track_change() is None
    np_.receive(full(0))
    line = np_.take_track_change()
    assert line == 'now playing: "Song" by Band from LP (1999), track 3, 3:20'
    np_.receive(full(0, progress={"track_progress": 99, "track_duration": 200_000,
                                  "playback_speed": 0}))
    assert np_.take_track_change() is None  # a pause or seek is not a track change
    np_.receive(full(0, title="Two"))
    assert np_.take_track_change().startswith('now playing: "Two"')
    np_.clear()
    assert np_.take_track_change() == "now playing: nothing"
    assert np_.take_track_change() is None


def test_snapshot():
    np_ = NowPlaying(to_local, now_us=lambda: 2_000_000)
    assert np_.snapshot() is None
    np_.receive(full(1_000_000))
    snap = np_.snapshot()
    assert snap["title"] == "Song" and snap["position_ms"] == 11_000
    assert snap["duration_ms"] == 200_000 and snap["next_title"] is None


def test_run_task_applies_scheduled_update_on_time_and_reports_track_changes():
    """The task wakes for the pending update's due time (virtual trio clock drives 'local')."""
    seen: list[tuple[int, str]] = []

    async def main() -> None:
        start = trio.current_time()

        def now_us() -> int:
            return int((trio.current_time() - start) * 1e6)

        np_ = NowPlaying(to_local, now_us=now_us)
        send, receive = trio.open_memory_channel(10)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(np_.run, send)
            np_.receive(full(0, title="A"))
            np_.receive(full(3_000_000, title="B"))
            for _ in range(2):
                line = await receive.receive()
                seen.append((now_us(), line))
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert seen[0][1].startswith('now playing: "A"')
    assert seen[1][1].startswith('now playing: "B"')
    assert 3_000_000 <= seen[1][0] <= 3_001_000
