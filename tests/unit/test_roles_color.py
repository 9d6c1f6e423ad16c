"""Color role: parsing, nulls, scheduling into an RGB timeline."""

from __future__ import annotations

from resonate_embedded.roles.color import ColorTimeline, Colors, parse_color

OFFSET = 5_000_000


def to_local(server_us: int) -> int:
    return server_us - OFFSET


def test_parse_and_led_preference():
    colors, problems = parse_color({"timestamp": 7, "primary": [1, 2, 3], "accent": [4, 5, 6]})
    assert problems == () and colors == Colors(7, primary=(1, 2, 3), accent=(4, 5, 6))
    assert colors.led_rgb() == (1, 2, 3)
    assert Colors(7, accent=(4, 5, 6), on_light=(9, 9, 9)).led_rgb() == (4, 5, 6)
    assert Colors(7).led_rgb() is None


def test_bad_fields_are_one_problem_each():
    colors, problems = parse_color({"timestamp": 1, "primary": [1, 2], "accent": [0, 0, 256],
                                    "on_dark": [1, 2, True], "background_dark": "red",
                                    "on_light": [10, 20, 30]})
    assert colors.on_light == (10, 20, 30) and colors.primary is None
    assert len(problems) == 4 and all(p.startswith("color.") for p in problems)
    assert parse_color([])[0] is None and len(parse_color([])[1]) == 1
    assert "without timestamp" in parse_color({"primary": [1, 1, 1]})[1][0]
    assert parse_color(None) == (None, ())


def test_timeline_schedules_and_replaces():
    tl = ColorTimeline(to_local)
    tl.receive({"timestamp": OFFSET, "primary": [255, 0, 0]}, now_us=0)
    tl.receive({"timestamp": OFFSET + 1_000_000, "primary": [0, 255, 0]}, now_us=10)
    assert tl.pending_due_local_us() == 1_000_000
    assert tl.rgb_at(999_999) == (255, 0, 0)
    assert tl.rgb_at(1_000_000) == (0, 255, 0)
    # a future update replaced by another, then cancelled by a present one
    tl.receive({"timestamp": OFFSET + 3_000_000, "primary": [0, 0, 255]}, now_us=1_000_001)
    tl.receive({"timestamp": OFFSET + 4_000_000, "primary": [9, 9, 9]}, now_us=1_000_002)
    assert tl.pending.primary == (9, 9, 9)
    tl.receive({"timestamp": OFFSET + 1_000_000, "primary": [0, 255, 0]}, now_us=1_000_003)
    assert tl.pending is None and tl.rgb_at(10_000_000) == (0, 255, 0)


def test_full_replacement_and_null_clear():
    tl = ColorTimeline(to_local, now_us=lambda: 0)
    tl.receive({"timestamp": 0, "primary": [1, 1, 1], "accent": [2, 2, 2]})
    tl.receive({"timestamp": 0, "accent": [3, 3, 3], "primary": None})
    assert tl.current().primary is None and tl.rgb_at() == (3, 3, 3)
    assert tl.snapshot()["accent"] == "#030303"
    tl.receive(None)
    assert tl.current() is None and tl.rgb_at() is None and tl.snapshot() is None


def test_clock_moving_moves_the_due_time():
    offset = [OFFSET]
    tl = ColorTimeline(lambda s: s - offset[0])
    tl.receive({"timestamp": OFFSET + 1_000_000, "primary": [1, 2, 3]}, now_us=0)
    offset[0] += 500_000  # the filter's estimate changes: the update is due 0.5 s earlier
    assert tl.rgb_at(600_000) == (1, 2, 3)


def test_bad_object_keeps_the_current_colour():
    tl = ColorTimeline(to_local, now_us=lambda: 0)
    tl.receive({"timestamp": 0, "primary": [1, 1, 1]})
    assert tl.receive({"primary": [2, 2, 2]})  # no timestamp: refused
    assert tl.rgb_at() == (1, 1, 1)
