"""Hypothesis fuzzing of what is read back from the state dir: state.json, identity.json,
pairings.json.  Contract: loading never raises; garbage is moved aside, defaults used."""

from __future__ import annotations

import json
from pathlib import Path
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resonate_embedded.identity import IDENTITY_FILE, load_or_create
from resonate_embedded.pairing import PAIRINGS_FILE, PairingStore
from resonate_embedded.state_store import STATE_FILE, PersistentState, StateStore

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
           | st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=15)
state_keys = st.sampled_from(["client_id", "volume", "muted", "output_delay_ms",
                              "last_played_server_id"]) | st.text(max_size=8)
contents = (st.binary(max_size=300)
            | st.dictionaries(state_keys, json_values, max_size=6).map(lambda d: json.dumps(d).encode())
            | json_values.map(lambda v: json.dumps(v).encode()))


@FUZZ
@given(contents)
def test_any_state_file_loads(content):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / STATE_FILE).write_bytes(content)
        store = StateStore(Path(d))
        state = store.load()
        assert isinstance(state, PersistentState)
        assert 0 <= state.volume <= 100 and isinstance(state.muted, bool)
        assert 0 <= state.output_delay_ms <= 5000 and isinstance(state.client_id, str)
        store.save(state)  # as the player does at once
        assert StateStore(Path(d)).load() == state


record_keys = st.sampled_from(["server_id", "psk", "server_name", "created", "last_used", "urls"])
pairing_contents = (contents | st.builds(
    lambda recs, rounds: json.dumps({"version": 1, "records": recs, "code_rounds": rounds}).encode(),
    st.lists(st.dictionaries(record_keys, json_values, max_size=6) | json_values, max_size=4),
    json_values))


@FUZZ
@given(pairing_contents)
def test_any_pairings_file_loads(content):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / PAIRINGS_FILE).write_bytes(content)
        store = PairingStore(Path(d))
        assert isinstance(store.records(), list)
        assert isinstance(store.code_rounds, int)


identity_contents = (contents | st.builds(
    lambda v, a, b: json.dumps({"version": v, "private_key": a, "pairing_psk": b}).encode(),
    st.sampled_from([1, 2, "1", None]), json_values | st.text(alphabet="AB-_", max_size=50),
    json_values | st.text(alphabet="AB-_", max_size=50)))


@FUZZ
@given(identity_contents)
def test_any_identity_file_loads(content):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / IDENTITY_FILE).write_bytes(content)
        ident = load_or_create(Path(d))
        assert len(ident.client_id) == 43
        assert load_or_create(Path(d)) == ident
