"""Protocol parsers: typed results, tolerance, clear errors, fuzzed with hypothesis."""

import json

import pytest
from hypothesis import given, settings, strategies as st

from resonate_embedded.audio.formats import StreamFormat
from resonate_embedded.protocol.binary import BinaryFrameError, parse_audio_frame
from resonate_embedded.protocol.messages import (
    ClientHello, ClientState, DeviceInfo, PlayerState, ProtocolError, ServerCommand, ServerHello,
    ServerState, StreamClear, StreamEnd, StreamStart, UnknownMessage, parse_server_message,
)


def msg(t, payload=None, **extra):
    d = {"type": t, **extra}
    if payload is not None:
        d["payload"] = payload
    return json.dumps(d)


def test_server_hello_with_unknown_keys():
    m = parse_server_message(msg("server/hello", {"server_id": "s", "name": "N", "version": 1,
                                                  "active_roles": ["player@v1"], "new_thing": 3}))
    assert m == ServerHello("s", "N", 1, ("player@v1",), None)


def test_stream_start_with_flac_header():
    m = parse_server_message(msg("stream/start", {"server_transmitted": 5, "player": {
        "codec": "flac", "sample_rate": 48000, "channels": 2, "bit_depth": 16,
        "codec_header": "ZkxhQw=="}}))
    assert m == StreamStart(StreamFormat("flac", 48000, 2, 16), b"fLaC")


def test_stream_end_without_payload_and_versioned_roles():
    assert parse_server_message('{"type":"stream/end"}') == StreamEnd(None)
    assert parse_server_message(msg("stream/end", {"roles": ["player@v1"]})).concerns_player()
    assert not parse_server_message(msg("stream/clear", {"roles": ["artwork"]})).concerns_player()
    assert parse_server_message(msg("stream/clear", {"roles": ["player"]})) == StreamClear(("player",))


def test_commands():
    assert parse_server_message(msg("server/command", {"player": {"command": "volume", "volume": 55}})) \
        == ServerCommand("volume", volume=55)
    assert parse_server_message(msg("server/command", {"player": {"command": "set_static_delay",
                                                                  "static_delay_ms": 9000}})) \
        == ServerCommand("set_static_delay", output_delay_ms=5000, delay_key="static_delay_ms")
    assert parse_server_message(msg("server/command", {"player": {"command": "set_output_delay",
                                                                  "output_delay_ms": 20}})) \
        == ServerCommand("set_output_delay", output_delay_ms=20, delay_key="output_delay_ms")
    with pytest.raises(ProtocolError, match="volume"):
        parse_server_message(msg("server/command", {"player": {"command": "volume", "volume": 101}}))
    with pytest.raises(ProtocolError, match="mute"):
        parse_server_message(msg("server/command", {"player": {"command": "mute", "mute": "yes"}}))


def test_unknown_type_is_tolerated():
    assert parse_server_message(msg("server/future", {"x": {}})) == UnknownMessage("server/future")


def test_server_state_carries_the_role_objects_for_the_roles_to_parse():
    assert parse_server_message(msg("server/state", {"metadata": {"title": "x"}})) == \
        ServerState({"metadata": {"title": "x"}})


@pytest.mark.parametrize("text", [
    "", "nope", "[]", '{"type": 3}', msg("server/time", {"client_transmitted": "x"}),
    msg("server/time", {"client_transmitted": 1, "server_received": True, "server_transmitted": 3}),
    msg("stream/start", {"player": {"codec": "mp3", "sample_rate": 1, "channels": 1, "bit_depth": 16}}),
    msg("stream/start", {"player": {"codec": "pcm", "sample_rate": 48000, "channels": 2,
                                    "bit_depth": 16, "codec_header": "!!"}}),
    msg("server/hello", {"name": "x"}), msg("group/update", []), "[" * 100000,
])
def test_malformed_gives_protocol_error(text):
    with pytest.raises(ProtocolError):
        parse_server_message(text)


@settings(max_examples=500, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                    lambda c: st.lists(c) | st.dictionaries(st.text(), c), max_leaves=20),
       st.sampled_from(["server/hello", "server/time", "group/update", "server/command",
                        "stream/start", "stream/clear", "stream/end", "server/error", "x/y"]))
def test_fuzzed_payloads_never_crash(payload, t):
    try:
        parse_server_message(json.dumps({"type": t, "payload": payload}))
    except ProtocolError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_fuzzed_binary_never_crashes(frame):
    try:
        parse_audio_frame(frame)
    except BinaryFrameError:
        pass


def test_binary_headers():
    frame = bytes([4]) + (1234567).to_bytes(8, "big", signed=True) + b"\x01\x02"
    c = parse_audio_frame(frame)
    assert (c.server_ts_us, c.payload) == (1234567, b"\x01\x02")
    c13 = parse_audio_frame(bytes([4]) + (-5).to_bytes(8, "big", signed=True) + (9).to_bytes(4, "big") + b"x",
                            header_size=13)
    assert (c13.server_ts_us, c13.send_ahead_us, c13.payload) == (-5, 9, b"x")
    assert parse_audio_frame(bytes([8, 0])) is None
    with pytest.raises(BinaryFrameError):
        parse_audio_frame(bytes([4, 1, 2]))


def test_hello_and_state_json():
    hello = json.loads(ClientHello("id", "Kitchen", DeviceInfo("p", "m", "1"),
                                   (StreamFormat("pcm", 48000, 2, 16),), 1000).to_json())
    p = hello["payload"]
    assert p["supported_roles"] == ["player@v1"]
    assert p["player@v1_support"] == p["player_support"]
    assert p["player@v1_support"]["supported_formats"][0] == {
        "codec": "pcm", "sample_rate": 48000, "channels": 2, "bit_depth": 16}
    state = json.loads(ClientState("synchronized", PlayerState(volume=5, muted=False,
                                                               output_delay_ms=3)).to_json())
    assert state == {"type": "client/state", "payload": {"state": "synchronized", "player": {
        "volume": 5, "muted": False, "output_delay_ms": 3}}}


def test_secure_hello_in_the_current_and_the_older_noise_form():
    hello = ClientHello("id", "Kitchen", DeviceInfo("p", "m", "1"),
                        (StreamFormat("pcm", 48000, 2, 16),), 1000)
    current = json.loads(hello.to_secure_json(True, spoken_code=True))["payload"]
    older = json.loads(hello.to_secure_json(True, spoken_code=True, older_noise=True))["payload"]
    assert "supported_commands" not in current["player@v1_support"]
    assert set(current["supported_pair_methods"]) == {"pairing_psk", "dynamic_pairing_code"}
    # aiosendspin 7.x-9.x: commands required in the hello, methods a list, Pairing PSK only
    assert older["player@v1_support"]["supported_commands"] == ["volume", "mute"]
    assert older["supported_pair_methods"] == [{"method": "pairing_psk", "locations": ["device"]}]
    assert "client_id" not in older and older["unpaired_access"] == {"enabled": True}
