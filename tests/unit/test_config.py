"""Configuration: TOML + flags, validated with clear errors."""

from pathlib import Path

import pytest

from resonate_embedded.audio.formats import StreamFormat
from resonate_embedded.config import ConfigError, build_config, load_toml, parse_formats
from resonate_embedded.state_store import StateStore


def test_formats_flag():
    assert parse_formats("flac:48000:24:2,pcm:44100:16:1") == (
        StreamFormat("flac", 48000, 2, 24), StreamFormat("pcm", 44100, 1, 16))
    with pytest.raises(ConfigError, match="codec:rate:bits:channels"):
        parse_formats("flac:48000")
    with pytest.raises(ConfigError, match="integers"):
        parse_formats("pcm:x:16:2")


@pytest.mark.parametrize("kwargs, match", [
    ({"volume": 101}, "volume"), ({"dac_latency_us": -1}, "dac_latency_us"),
    ({"formats": (StreamFormat("mp3", 48000, 2, 16),)}, "mp3"),
    ({"formats": (StreamFormat("pcm", 48000, 2, 20),)}, "bit depth"),
    ({"server": "http://x"}, "ws://"), ({"name": " "}, "name"), ({"bogus": 1}, "bogus"),
])
def test_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_config({}, kwargs)


def test_toml_then_flags(tmp_path: Path):
    f = tmp_path / "c.toml"
    f.write_text('[player]\nname = "Kitchen"\ndevice = "hw:0"\nformats = ["pcm:48000:16:2"]\n')
    cfg = build_config(load_toml(f), {"device": "paced", "name": None})
    assert (cfg.name, cfg.device, cfg.formats) == ("Kitchen", "paced", (StreamFormat("pcm", 48000, 2, 16),))


def test_bad_toml(tmp_path: Path):
    f = tmp_path / "c.toml"
    f.write_text("name = ")
    with pytest.raises(ConfigError, match="c.toml"):
        load_toml(f)
    f.write_text("colour = 1\n")
    with pytest.raises(ConfigError, match="colour"):
        load_toml(f)


def test_state_survives_and_corruption_gives_defaults(tmp_path: Path):
    store = StateStore(tmp_path)
    s = store.load()
    s.volume, s.output_delay_ms = 42, 7
    store.save(s)
    again = StateStore(tmp_path).load()
    assert (again.volume, again.output_delay_ms, again.client_id) == (42, 7, s.client_id)
    (tmp_path / "state.json").write_text("{torn")
    assert StateStore(tmp_path).load().volume == 100
    (tmp_path / "state.json").write_text('{"volume": "loud", "muted": true}')
    st = StateStore(tmp_path).load()
    assert (st.volume, st.muted) == (100, True)


def test_connection_mode_settings():
    from resonate_embedded.cli import main  # noqa: F401 - the flags parse into these keys

    cfg = build_config({}, {"listen_port": 9000, "advertise_resonate": True})
    assert (cfg.server, cfg.discover, cfg.listen_port, cfg.advertise_resonate) == (None, False, 9000, True)
    assert build_config({}, {}).listen_port == 8928
    with pytest.raises(ConfigError, match="listen_port"):
        build_config({}, {"listen_port": 70000})
    with pytest.raises(ConfigError, match="discover"):
        build_config({}, {"server": "ws://h:8927/sendspin", "discover": True})
    with pytest.raises(ConfigError, match="discover"):
        build_config({}, {"discover": "yes"})


def test_plaintext_servers_from_toml_and_flags(tmp_path: Path):
    import argparse

    from resonate_embedded.cli import _run_flags, make_config

    f = tmp_path / "c.toml"
    f.write_text('[player]\nplaintext_servers = ["192.168.1.10", "ws://10.0.0.5:8927/sendspin"]\n')
    parser = argparse.ArgumentParser()
    _run_flags(parser)
    from_file = make_config(parser.parse_args(["--config", str(f)]))
    assert from_file.plaintext_servers == ("192.168.1.10", "ws://10.0.0.5:8927/sendspin")
    flags = parser.parse_args(["--config", str(f), "--plaintext-server", "10.0.0.9:8927",
                               "--plaintext-server", "10.0.0.8"])
    assert make_config(flags).plaintext_servers == ("10.0.0.9:8927", "10.0.0.8")
    with pytest.raises(ConfigError, match=r"plaintext_servers: 'http://x': a URL must be ws://"):
        make_config(parser.parse_args(["--plaintext-server", "http://x"]))
    f.write_text('[player]\nplaintext_servers = "10.0.0.5"\n')
    with pytest.raises(ConfigError, match="must be a list"):
        make_config(parser.parse_args(["--config", str(f)]))
