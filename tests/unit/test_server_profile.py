"""The server's era as learned from its own words: shapes, refusals, hold-off, persistence."""

from __future__ import annotations

import json

from resonate_embedded.control_socket import StatusSnapshot, status_screen
from resonate_embedded.protocol.messages import ClientState, PlayerState
from resonate_embedded.protocol.server_profile import (
    CURRENT, HANDSHAKE_BACKOFF_S, HOLD_OFF_S, REFUSAL_WINDOW_US, STATIC, ProfileKeeper,
    ServerProfile, handshake_failed, held_off,
    load_profiles, refused, said, shape_player,
)

FULL = PlayerState(volume=40, muted=False, output_delay_ms=20, required_lead_time_ms=150,
                   min_buffer_ms=1000, supported_commands=("volume", "mute", "set_output_delay"))


def player_payload(player: PlayerState) -> dict:
    return json.loads(ClientState("synchronized", player).to_json())["payload"]["player"]


def test_an_unknown_server_gets_the_current_shape_and_the_owner_is_told_why():
    p = ServerProfile()
    assert p.shape(0) == CURRENT
    assert "not told yet" in p.summary(0)


def test_a_refusal_moves_one_shape_older_and_the_last_one_holds_the_server_off():
    p = refused(ServerProfile(), CURRENT, "closed", now_s=100)
    assert p.shape(100) == STATIC and p.hold_off_s(100) == 0
    p = refused(p, STATIC, "closed again", now_s=200)
    assert p.shape(200) is None
    assert p.hold_off_s(200) == HOLD_OFF_S
    assert "refuses every message shape" in p.summary(200)
    assert p.shape(200 + HOLD_OFF_S) == CURRENT  # tried again from the newest, later


def test_the_servers_own_naming_wins_and_forgets_an_old_refusal_of_it():
    p = refused(ServerProfile(), CURRENT, "closed", now_s=0)
    assert said(p, CURRENT, "named output_delay_ms").shape(0) == CURRENT
    assert said(ServerProfile(), STATIC, "named static_delay_ms").shape(0) == STATIC


def test_shapes_of_the_player_object():
    assert player_payload(shape_player(CURRENT, FULL, 20)) == {
        "volume": 40, "muted": False, "required_lead_time_ms": 150, "min_buffer_ms": 1000,
        "output_delay_ms": 20, "supported_commands": ["volume", "mute", "set_output_delay"]}
    static = player_payload(shape_player(STATIC, FULL, 20))
    assert static["static_delay_ms"] == 20 and "output_delay_ms" not in static
    assert static["supported_commands"] == ["set_static_delay"]
    # a delta: 5.x reads a missing static_delay_ms as 0, so the static shape carries it
    assert player_payload(shape_player(STATIC, PlayerState(volume=50), 35)) == {
        "volume": 50, "static_delay_ms": 35}
    assert player_payload(shape_player(CURRENT, PlayerState(volume=50), 35)) == {"volume": 50}


def test_profiles_survive_a_round_trip_and_garbage_gives_defaults():
    p = refused(ServerProfile(), CURRENT, "closed", now_s=5)
    assert load_profiles({"srv": p.to_dict()}) == {"srv": p}
    assert load_profiles({"srv": {"said_shape": "x", "refused": ["current", 3], "evidence": 7,
                                  "refused_all_at_s": True}}) == {
        "srv": ServerProfile(refused=(CURRENT,))}
    assert load_profiles("nonsense") == {} and load_profiles({"srv": []}) == {"srv": ServerProfile()}


def test_keeper_counts_only_an_unanswered_close_right_after_our_state():
    profiles, saves = {}, []
    keeper = ProfileKeeper(profiles, lambda: saves.append(1), "srv")
    assert keeper.choose() == CURRENT
    keeper.sent('{"type":"client/state"}', 1_000)
    keeper.answered()
    keeper.closed("1000", 2_000)
    assert profiles == {} and saves == []
    keeper.sent('{"type":"client/state"}', 10_000)
    keeper.closed("1000", 10_000 + REFUSAL_WINDOW_US + 1)  # long after: an ordinary close
    assert profiles == {}
    keeper.sent('{"type":"client/state"}', 20_000)
    keeper.closed("1000", 21_000)
    assert ServerProfile.from_dict(profiles["srv"]).refused == (CURRENT,) and saves == [1]
    assert ProfileKeeper(profiles, lambda: None, "srv").choose() == STATIC


def test_a_held_off_server_is_shown_by_status():
    p = refused(refused(ServerProfile(), CURRENT, "a", now_s=0), STATIC, "b", now_s=0)
    seconds, why = held_off({"srv": p.to_dict()}, now_s=10)
    assert seconds == HOLD_OFF_S - 10 and why.startswith("server srv refuses every message shape")
    screen = status_screen(StatusSnapshot(server_era=why).to_dict())
    assert "era         server srv refuses every message shape" in screen
    assert held_off({"srv": p.to_dict()}, now_s=HOLD_OFF_S + 1) == (0.0, None)


def test_the_older_noise_variant_is_kept_and_means_the_static_shape():
    profiles: dict = {}
    keeper = ProfileKeeper(profiles, lambda: None, "srv")
    keeper.noise("older")
    assert keeper.choose() == STATIC and "7.x-9.x variant" in keeper.summary()
    assert load_profiles(profiles)["srv"].noise == "older"
    keeper.noise("current")
    assert load_profiles(profiles)["srv"].noise == "current"
    assert keeper.choose() == CURRENT and "current variant" in keeper.summary()


def test_a_repeated_handshake_failure_holds_the_server_off_doubling_and_status_says_why():
    profiles: dict = {}
    first = handshake_failed(profiles, "srv", "no psk_id (server/init {...})", False, now_s=0)
    assert first.hold_off_s(0) == 0  # one failure: the ordinary redial
    waits = [handshake_failed(profiles, "srv", "again", False, now_s=t).hold_off_s(t)
             for t in (1, 2, 3)]
    assert waits == [HANDSHAKE_BACKOFF_S, 2 * HANDSHAKE_BACKOFF_S, 4 * HANDSHAKE_BACKOFF_S]
    for t in range(4, 20):
        held = handshake_failed(profiles, "srv", "again", False, now_s=t)
    assert held.hold_off_s(19) == HOLD_OFF_S
    seconds, why = held_off(profiles, now_s=19)
    assert seconds == HOLD_OFF_S and why.startswith("server srv encrypted handshake failed 20 times")
    assert "era         server srv encrypted handshake failed" in status_screen(
        StatusSnapshot(server_era=why).to_dict())
    assert load_profiles(profiles)["srv"] == held  # persisted as is
    keeper = ProfileKeeper(profiles, lambda: None, "srv")
    keeper.noise("current")  # a completed handshake forgets the failures
    assert held_off(profiles, now_s=20) == (0.0, None)


def test_a_handshake_failure_with_a_plaintext_fallback_holds_nothing_off():
    profiles: dict = {}
    for t in range(5):
        p = handshake_failed(profiles, "srv", "x", True, now_s=t)
    assert p.handshake_failures == 5 and p.hold_off_s(5) == 0
