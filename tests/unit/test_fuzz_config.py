"""Hypothesis fuzzing of the configuration: TOML text → ``load_toml`` → ``build_config``.
Contract: a valid :class:`Config` or a :class:`ConfigError` naming the problem."""

from __future__ import annotations

import tempfile
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resonate_embedded.config import Config, ConfigError, build_config, load_toml

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = [f.name for f in attrs.fields(Config)]


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return '""'


safe_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF,
                                           blacklist_characters="\x7f"), max_size=20)
scalars = (st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | safe_text
           | st.sampled_from(["pcm:48000:16:2", "ws://h:1/sendspin", "auto", "off", "paced", "/tmp/x"]))
values = scalars | st.lists(scalars, max_size=3)
documents = st.dictionaries(st.sampled_from(KEYS) | st.sampled_from(["colour", "player"]), values,
                            max_size=6)


def _check(text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "config.toml"
        path.write_text(text)
        try:
            cfg = build_config(load_toml(path), {})
        except ConfigError as exc:
            assert str(exc) and "\n" not in str(exc)
            return
        assert isinstance(cfg, Config)


@FUZZ
@given(documents, st.booleans())
def test_any_config_table_gives_a_config_or_a_config_error(doc, in_player_table):
    body = "\n".join(f"{k} = {toml_value(v)}" for k, v in doc.items())
    _check(("[player]\n" + body) if in_player_table else body)


@FUZZ
@given(st.text(max_size=200))
def test_any_text_gives_a_config_or_a_config_error(text):
    _check(text)


@pytest.mark.parametrize("text", ["player = 1", "formats = [1, 2]", "state_dir = 5", "server = 5"])
def test_wrongly_typed_values_give_a_config_error(text):
    _check(text)
