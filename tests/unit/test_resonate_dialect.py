"""The Resonate (aioresonate 0.13.2) dialect: hello lists, messages, binary, dialect choice."""

import itertools
import json
import struct

import pytest
from hypothesis import given, strategies as st

from resonate_embedded.audio.formats import StreamFormat
from resonate_embedded.protocol.binary import BinaryFrameError
from resonate_embedded.protocol.messages import (
    ClientHello, DeviceInfo, ProtocolError, ServerHello, StreamEnd, StreamStart, UnknownMessage,
)
from resonate_embedded.protocol.resonate_dialect import (
    SessionUpdate, dialect_candidates, dialect_for, parse_resonate_audio_frame,
    parse_resonate_message, player_update_json, resonate_hello_json, resonate_player_support,
)

F = StreamFormat


@pytest.mark.parametrize("text, expected", [
    ("/resonate", "resonate"),
    ("/sendspin", "sendspin"),
    ("ws://10.0.0.5:8927/resonate", "resonate"),
    ("ws://host:8927/sendspin?x=1", "sendspin"),
    ("_resonate._tcp.local.", "resonate"),
    ("_resonate-server._tcp.local.", "resonate"),
    ("_sendspin-server._tcp.local.", "sendspin"),
    ("_sendspin._tcp", "sendspin"),
    ("ws://host:8927/", None),
    ("/other", None),
    ("_http._tcp.local.", None),
])
def test_dialect_for(text, expected):
    assert dialect_for(text) == expected


def test_dialect_candidates_hint_then_learned_then_sendspin_first():
    assert dialect_candidates("ws://h:1/resonate") == ("resonate",)
    assert dialect_candidates("ws://h:1/resonate", learned="sendspin") == ("resonate",)
    assert dialect_candidates("ws://h:1/") == ("sendspin", "resonate")
    assert dialect_candidates("ws://h:1/", learned="resonate") == ("resonate", "sendspin")


def test_hello_shape_matches_aioresonate():
    hello = ClientHello("p1", "Kitchen", DeviceInfo("x", "y", "1"),
                        (F("flac", 48000, 2, 24), F("flac", 48000, 2, 16), F("pcm", 48000, 2, 16),
                         F("flac", 44100, 2, 16)), 2_000_000)
    msg = json.loads(resonate_hello_json(hello))
    assert msg["type"] == "client/hello"
    p = msg["payload"]
    assert p["client_id"] == "p1" and p["name"] == "Kitchen" and p["version"] == 1
    assert p["supported_roles"] == ["player"]
    assert "device_info" not in p and "player@v1_support" not in p
    assert p["player_support"] == {"support_codecs": ["flac"], "support_channels": [2],
                                   "support_sample_rates": [48000, 44100],
                                   "support_bit_depth": [16], "buffer_capacity": 2_000_000}


def r_choice(support, source):
    """aioresonate 0.13.2 PlayerClient.determine_optimal_format, transcribed."""
    rate, bits, ch = source
    rates = support["support_sample_rates"]
    if rate not in rates:
        lower = [r for r in rates if r < rate]
        rate = max(lower) if lower else min(rates)
    if bits not in support["support_bit_depth"]:
        bits = 16
    if ch not in support["support_channels"]:
        ch = 2 if 2 in support["support_channels"] else 1
    for codec in ("flac", "opus", "pcm"):
        if codec not in support["support_codecs"]:
            continue
        if codec == "opus":
            opus = next((c for c, ok in ((8000, rate <= 8000), (12000, rate <= 12000),
                                         (16000, rate <= 16000), (24000, rate <= 24000),
                                         (48000, True)) if ok and c in rates), None)
            if opus is None:
                continue
            rate = opus
        return F(codec, rate, ch, bits)
    raise AssertionError("no codec")


FORMATS = st.lists(st.builds(F, st.sampled_from(["pcm", "flac", "opus"]),
                             st.sampled_from([44100, 48000, 96000]), st.sampled_from([1, 2, 6]),
                             st.sampled_from([16, 24])), min_size=1, max_size=8)


@given(FORMATS)
def test_whatever_r_picks_is_a_format_we_listed(formats):
    usable = [f for f in formats if f.bit_depth == 16 and f.channels in (1, 2)
              and (f.codec != "opus" or f.sample_rate == 48000)]
    if not usable:
        with pytest.raises(ValueError):
            resonate_player_support(formats, 1)
        return
    support = resonate_player_support(formats, 1)
    for source in itertools.product([8000, 22050, 44100, 48000, 96000, 192000], [16, 24], [1, 2]):
        assert r_choice(support, source) in formats
    assert support["support_codecs"] == [usable[0].codec]


def test_player_update():
    assert json.loads(player_update_json(130, True, playing=True)) == {
        "type": "player/update", "payload": {"state": "playing", "volume": 100, "muted": True}}
    assert json.loads(player_update_json(40, False, playing=False))["payload"]["state"] == "idle"


def test_parse_the_r_server_messages():
    assert parse_resonate_message(
        '{"payload":{"server_id":"s","name":"N","version":1},"type":"server/hello"}'
    ) == ServerHello("s", "N", 1, (), None)
    assert parse_resonate_message(
        '{"payload":{"player":{"codec":"pcm","sample_rate":48000,"channels":2,"bit_depth":16}},'
        '"type":"stream/start"}') == StreamStart(F("pcm", 48000, 2, 16), None)
    end = parse_resonate_message('{"type":"stream/end"}')
    assert end == StreamEnd(None) and end.concerns_player()
    assert parse_resonate_message(
        '{"payload":{"group_id":"g","playback_state":"playing","metadata":{"title":"t"}},'
        '"type":"session/update"}') == SessionUpdate("g", "playing")
    assert parse_resonate_message('{"type":"session/update","payload":{"group_id":"g"}}') \
        == SessionUpdate("g", None)
    assert parse_resonate_message('{"type":"group/update","payload":{}}') == UnknownMessage("group/update")
    with pytest.raises(ProtocolError):
        parse_resonate_message('{"type":"session/update","payload":{"group_id":5}}')
    with pytest.raises(ProtocolError):
        parse_resonate_message("nope")


def test_binary_type_1_with_unsigned_timestamp():
    chunk = parse_resonate_audio_frame(struct.pack(">BQ", 1, 2**63 + 5) + b"pcm")
    assert chunk.server_ts_us == 2**63 + 5 and chunk.payload == b"pcm"
    assert parse_resonate_audio_frame(struct.pack(">BQ", 2, 7) + b"art") is None
    assert parse_resonate_audio_frame(struct.pack(">BQ", 4, 7)) is None
    for bad in (b"", b"\x01\x00\x00"):
        with pytest.raises(BinaryFrameError):
            parse_resonate_audio_frame(bad)
