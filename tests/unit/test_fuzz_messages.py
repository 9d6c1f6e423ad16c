"""Hypothesis fuzzing of the wire parsers: JSON messages (Sendspin and Resonate dialects) and
binary frames.  Contract: a typed result or the parser's own error, never anything else."""

from __future__ import annotations

import json
import struct

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from resonate_embedded.protocol.binary import (
    AudioChunk, BinaryFrameError, parse_audio_frame,
)
from resonate_embedded.protocol.messages import _PARSERS, ProtocolError, parse_server_message
from resonate_embedded.protocol.resonate_dialect import (
    parse_resonate_audio_frame, parse_resonate_message,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**30), max_value=10**30)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=20)
FIELDS = ["server_id", "name", "version", "active_roles", "connection_reason", "client_transmitted",
          "server_received", "server_transmitted", "playback_state", "group_id", "group_name",
          "player", "command", "volume", "mute", "output_delay_ms", "static_delay_ms", "codec",
          "sample_rate", "channels", "bit_depth", "codec_header", "roles", "reason", "activities",
          "pairing", "method", "format", "languages"]
payloads = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=8)
# the player sub-object gets realistic keys too, so deep validation paths are reached
player_objects = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)
TYPES = sorted(_PARSERS) + ["session/update", "stream/update", "unknown/x", ""]
envelopes = st.builds(
    lambda t, p, player, with_player: {"type": t, "payload": {**p, **({"player": player} if with_player else {})}},
    st.sampled_from(TYPES), payloads, player_objects, st.booleans())
texts = (st.text(max_size=200) | envelopes.map(json.dumps)
         | json_values.map(lambda v: json.dumps(v, allow_nan=True))
         | st.builds(lambda t, p: json.dumps({"type": t, "payload": p}, allow_nan=True),
                     st.sampled_from(TYPES) | json_values, json_values))


@FUZZ
@given(texts, st.booleans())
@example('{"type": "server/time", "payload": {"client_transmitted": ' + "9" * 5000 + "}}", False)
def test_parse_server_message_never_raises_anything_else(text, secure):
    try:
        msg = parse_server_message(text, secure=secure)
    except ProtocolError as exc:
        assert str(exc) and "\n" not in str(exc)[:200]
        return
    assert type(msg).__module__.endswith("messages")


@FUZZ
@given(texts)
def test_parse_resonate_message_never_raises_anything_else(text):
    try:
        parse_resonate_message(text)
    except ProtocolError:
        pass


@FUZZ
@given(st.binary(max_size=64), st.sampled_from([9, 13]))
def test_binary_frames_parse_or_are_refused(frame, header_size):
    try:
        chunk = parse_audio_frame(frame, header_size=header_size)
    except BinaryFrameError:
        assert not frame or frame[0] == 4 and len(frame) < header_size
        return
    if chunk is None:
        assert frame[0] != 4
        return
    assert isinstance(chunk, AudioChunk)
    assert chunk.server_ts_us == struct.unpack_from(">q", frame, 1)[0]
    assert chunk.payload == frame[header_size:]


@FUZZ
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.binary(max_size=32),
       st.integers(min_value=0, max_value=2**32 - 1))
def test_audio_frames_round_trip(ts, payload, send_ahead):
    frame = struct.pack(">BqI", 4, ts, send_ahead) + payload
    assert parse_audio_frame(frame, 13) == AudioChunk(ts, payload, send_ahead)
    assert parse_audio_frame(frame[:9] + payload, 9) == AudioChunk(ts, payload, None)


@FUZZ
@given(st.binary(max_size=64))
def test_resonate_binary_frames_parse_or_are_refused(frame):
    try:
        parse_resonate_audio_frame(frame)
    except BinaryFrameError:
        pass


def test_oversized_inputs_are_refused_cheaply():
    try:
        parse_server_message(" " * ((1 << 20) + 1))
    except ProtocolError as exc:
        assert "too large" in str(exc)
    try:
        parse_audio_frame(b"\x04" + bytes((4 << 20) + 9))
    except BinaryFrameError as exc:
        assert "too large" in str(exc)
