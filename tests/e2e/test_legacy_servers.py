"""The older real servers, through their harnesses, against raw clients built on our modules.

* aioresonate 0.13.2 ("R"): a trio-websocket client using ``resonate_dialect`` completes
  the Resonate hello and receives type-1 audio frames whose payload is exactly the PCM the
  server was given, stamped exactly as the harness's chunk log says; ``stream/end``
  arrives without a payload and ``session/update`` follows;
* the dialect fallback: a Sendspin hello to R gets no answer, so ``connect_speaking``
  reconnects after ~3 s and speaks Resonate; a Sendspin server answers the first try;
* aiosendspin 1.2 ("S1a") and 2.x ("S1"): a plain v1 client (both support keys) receives
  ``server/command`` and type-4 frames matching the chunk log and the index signal.
"""

from __future__ import annotations

import numpy as np
import pytest
import trio

from resonate_embedded.audio.formats import StreamFormat
from resonate_bench.harness import (
    RESONATE_SCRIPT, SENDSPIN_V1_SCRIPT, TestServer, find_resonate_python,
    find_sendspin1_python, find_sendspin2_python, index_signal, requires_venv, start_test_server,
)
from resonate_embedded.protocol.binary import parse_audio_frame
from resonate_embedded.protocol.connection import Connection
from resonate_embedded.protocol.messages import (
    ClientHello, ClientState, DeviceInfo, PlayerState, ServerCommand, ServerTime, StreamEnd,
    StreamStart, client_time_json, parse_server_message,
)
from resonate_embedded.protocol.resonate_dialect import (
    SessionUpdate, connect_speaking, parse_resonate_audio_frame, parse_resonate_message,
    player_update_json, resonate_hello_json,
)

pytestmark = pytest.mark.e2e

TIMEOUT = 60.0
R_PYTHON = find_resonate_python()
S1A_PYTHON = find_sendspin1_python()
S1_PYTHON = find_sendspin2_python()
needs_r = requires_venv(R_PYTHON, ".venv-resonate")
needs_s1a = requires_venv(S1A_PYTHON, ".venv-sendspin1")
needs_s1 = requires_venv(S1_PYTHON, ".venv-sendspin2")
PCM16 = StreamFormat("pcm", 48000, 2, 16)
SOURCE = {"sample_rate": 48000, "bit_depth": 16, "channels": 2}


FLAC24 = StreamFormat("flac", 48000, 2, 24)


def hello(client_id: str, formats: tuple[StreamFormat, ...] = (FLAC24, PCM16)) -> ClientHello:
    return ClientHello(client_id, client_id, DeviceInfo("t", "t", "0"), formats, 32_000_000)


def hello_for(client_id: str, formats: tuple[StreamFormat, ...] = (FLAC24, PCM16)):
    return lambda dialect: (resonate_hello_json(hello(client_id, formats)) if dialect == "resonate"
                            else hello(client_id, formats).to_json())


def expected_pcm(event: dict) -> bytes:
    return index_signal(event["first_frame"], event["frames"], 16, 2).astype("<i2").tobytes()


async def receive_stream(conn: Connection, parse_text, parse_binary, until) -> tuple[list, list]:
    """Read text messages and audio chunks until ``until(message)`` is true."""
    texts, chunks = [], []
    with trio.fail_after(TIMEOUT):
        while True:
            data = (await conn.receive()).data
            if isinstance(data, bytes):
                chunk = parse_binary(data)
                if chunk is not None:
                    chunks.append(chunk)
                continue
            msg = parse_text(data)
            texts.append(msg)
            if until(msg):
                return texts, chunks


def check_chunks(srv: TestServer, mark: int, chunks: list) -> None:
    log = srv.chunks(mark)
    assert len(chunks) == len(log) == 40  # 1 s of 25 ms chunks, none held back
    assert [c.server_ts_us for c in chunks] == [e["server_ts_us"] for e in log]
    assert [e["first_frame"] for e in log] == list(range(0, 48000, 1200))
    for chunk, event in zip(chunks, log):
        assert chunk.payload == expected_pcm(event)


@needs_r
def test_resonate_hello_and_exact_type1_audio():
    async def main():
        async with start_test_server(R_PYTHON, port=0, script=RESONATE_SCRIPT) as srv:
            async with connect_speaking(srv.url, hello_for("r-player")) as spoken:
                conn = spoken.conn
                assert spoken.dialect == "resonate"
                assert spoken.hello.server_id == srv.ready["server_id"]
                await conn.send_text(player_update_json(80, False, playing=False))
                added = await srv.wait_event("client_added", TIMEOUT)
                assert added["roles"] == ["player"]
                assert added["player_support"]["support_bit_depth"] == [16]

                await conn.send_text(client_time_json(123))
                texts, _ = await receive_stream(conn, parse_resonate_message,
                                                parse_resonate_audio_frame,
                                                lambda m: isinstance(m, ServerTime))
                assert texts[-1].client_transmitted_us == 123

                mark = srv.mark()
                await srv.command({"cmd": "start", "format": SOURCE, "duration_s": 1.0})
                texts, chunks = await receive_stream(conn, parse_resonate_message,
                                                     parse_resonate_audio_frame,
                                                     lambda m: isinstance(m, SessionUpdate))
                assert texts[0] == StreamStart(PCM16, None)
                assert texts[-2:] == [StreamEnd(None), SessionUpdate(texts[-1].group_id, None)]
                check_chunks(srv, mark, chunks)

    trio.run(main)


@needs_r
def test_fallback_to_resonate_after_an_unanswered_sendspin_hello():
    async def main():
        async with start_test_server(R_PYTHON, port=0, script=RESONATE_SCRIPT) as srv:
            start = trio.current_time()
            async with connect_speaking(srv.url, hello_for("fb-player"),
                                        candidates=("sendspin", "resonate")) as spoken:
                elapsed = trio.current_time() - start
                assert spoken.dialect == "resonate"
                assert spoken.hello.server_id == srv.ready["server_id"]
                assert 2.9 < elapsed < 30
                await srv.wait_event("client_added", TIMEOUT,
                                     predicate=lambda e: e["client_id"] == "fb-player")

    trio.run(main)


@needs_s1
def test_sendspin_server_answers_the_first_dialect():
    async def main():
        async with start_test_server(S1_PYTHON, port=0, script=SENDSPIN_V1_SCRIPT) as srv:
            start = trio.current_time()
            async with connect_speaking(srv.url, hello_for("s-first"),
                                        candidates=("sendspin", "resonate")) as spoken:
                assert spoken.dialect == "sendspin"
                assert spoken.hello.connection_reason == "discovery"
                assert trio.current_time() - start < 2.9

    trio.run(main)


@pytest.mark.parametrize("python, major", [
    pytest.param(S1A_PYTHON, "1.", marks=needs_s1a),
    pytest.param(S1_PYTHON, "2.", marks=needs_s1),
])
def test_sendspin_v1_servers_stream_exact_type4_audio(python, major):
    async def main():
        async with start_test_server(python, port=0, script=SENDSPIN_V1_SCRIPT) as srv:
            assert srv.ready["library_version"].startswith(major)
            async with connect_speaking(srv.url, hello_for("v1-player", (PCM16,))) as spoken:
                conn = spoken.conn
                assert spoken.hello.active_roles == ("player@v1",)
                await conn.send_text(ClientState("synchronized", PlayerState(
                    volume=50, muted=False)).to_json())
                await srv.wait_event("client_added", TIMEOUT)
                await srv.command({"cmd": "volume", "value": 55})
                texts, _ = await receive_stream(conn, parse_server_message, parse_audio_frame,
                                                lambda m: isinstance(m, ServerCommand))
                assert texts[-1] == ServerCommand("volume", volume=55)

                mark = srv.mark()
                await srv.command({"cmd": "start", "format": SOURCE, "duration_s": 1.0})
                texts, chunks = await receive_stream(conn, parse_server_message, parse_audio_frame,
                                                     lambda m: isinstance(m, StreamEnd))
                assert StreamStart(PCM16, None) in texts
                assert texts[-1] == StreamEnd(None)
                check_chunks(srv, mark, chunks)

    trio.run(main)


@pytest.mark.parametrize("python", [
    pytest.param(S1A_PYTHON, marks=needs_s1a),
    pytest.param(S1_PYTHON, marks=needs_s1),
])
def test_trap_v1_servers_pick_flac_and_fail_when_it_is_only_24_bit(python):
    """Pinned server behaviour: FLAC > Opus > PCM regardless of our order, and 1.x/2.x cannot
    make 24-bit, so a hello whose FLAC entries are all 24-bit gets no audio at all."""

    async def main():
        async with start_test_server(python, port=0, script=SENDSPIN_V1_SCRIPT) as srv:
            async with connect_speaking(srv.url, hello_for("trap", (PCM16, FLAC24))) as spoken:
                await spoken.conn.send_text(ClientState("synchronized", PlayerState(
                    volume=50, muted=False)).to_json())
                await srv.wait_event("client_added", TIMEOUT)
                mark = srv.mark()
                await srv.command({"cmd": "start", "format": SOURCE, "duration_s": 1.0})
                error = await srv.wait_event("error", TIMEOUT, since=mark)
                assert "Only 16bit is supported" in error["message"]

    trio.run(main)


def test_harness_pcm_matches_numpy_packing():
    """The expected-payload helper packs like the servers' PCM (interleaved s16le)."""
    event = {"first_frame": 70000, "frames": 3}
    samples = np.frombuffer(expected_pcm(event), "<i2").reshape(-1, 2)
    assert samples.tolist() == [[70000 & 0x7FFF, 70000 >> 15], [70001 & 0x7FFF, 70001 >> 15],
                                [70002 & 0x7FFF, 70002 >> 15]]
