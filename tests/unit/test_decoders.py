"""Wire payload decoders: PCM round trips, bit-exact FLAC, Opus via PyAV."""

from __future__ import annotations

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from resonate_embedded.audio.av_decoders import opus_decoder
from resonate_embedded.audio.decoders import DecodeError, decodable_formats, make_decoder
from resonate_embedded.audio.formats import PcmShape, StreamFormat
from resonate_bench.harness import MISSING_DEPENDENCY

FLAC_BLOCK_HEADER = b"\x80\x00\x00\x22"  # last block, STREAMINFO, 34 bytes
SERVER_FLAC_FRAMES = 4608


def has_codec(name: str, mode: str) -> bool:
    try:
        av.Codec(name, mode)
    except av.codec.codec.UnknownCodecError:
        return False
    return True


needs_flac = pytest.mark.skipif(
    not (has_codec("flac", "r") and has_codec("flac", "w")), reason=f"{MISSING_DEPENDENCY} PyAV with FLAC"
)
needs_opus = pytest.mark.skipif(
    not (("opus", 16) in decodable_formats() and has_codec("libopus", "w")),
    reason=f"{MISSING_DEPENDENCY} PyAV with an Opus decoder and the libopus encoder",
)


def assert_pcm_array(decoded: np.ndarray, shape: PcmShape) -> None:
    assert decoded.dtype == np.dtype(shape.dtype)
    assert decoded.ndim == 2 and decoded.shape[1] == shape.channels
    assert decoded.flags.c_contiguous and decoded.flags.writeable


# --- PCM ------------------------------------------------------------------------------------


def pack_s24le(samples: np.ndarray) -> bytes:
    """Sign-extended 24-bit int32 samples as packed 3-byte little-endian."""
    as_bytes = samples.astype("<i4").reshape(-1, 1).view(np.uint8)
    return as_bytes[:, :3].tobytes()


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    hnp.arrays(
        np.int16,
        st.tuples(st.integers(0, 1300), st.integers(1, 8)),
        elements=st.integers(-(2**15), 2**15 - 1),
    )
)
def test_pcm16_round_trip(samples: np.ndarray) -> None:
    decoder = make_decoder(StreamFormat("pcm", 48000, samples.shape[1], 16), None)
    decoded = decoder.decode(samples.astype("<i2").tobytes())
    assert_pcm_array(decoded, decoder.shape)
    np.testing.assert_array_equal(decoded, samples)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    hnp.arrays(
        np.int32,
        st.tuples(st.integers(0, 1300), st.integers(1, 8)),
        elements=st.integers(-(2**23), 2**23 - 1),
    )
)
def test_pcm24_round_trip(samples: np.ndarray) -> None:
    decoder = make_decoder(StreamFormat("pcm", 44100, samples.shape[1], 24), None)
    assert decoder.shape == PcmShape(44100, samples.shape[1], 24)
    decoded = decoder.decode(pack_s24le(samples))
    assert_pcm_array(decoded, decoder.shape)
    np.testing.assert_array_equal(decoded, samples)


def test_pcm24_sign_extension_by_example() -> None:
    decoder = make_decoder(StreamFormat("pcm", 48000, 2, 24), None)
    payload = bytes.fromhex("ffff7f 000080 ffffff 010000")
    assert decoder.decode(payload).tolist() == [[2**23 - 1, -(2**23)], [-1, 1]]


@pytest.mark.parametrize(
    ("bit_depth", "channels", "length"),
    [(16, 2, 3), (16, 2, 4798), (16, 1, 1), (24, 2, 5), (24, 2, 7197), (24, 1, 2)],
)
def test_pcm_partial_frames_raise(bit_depth: int, channels: int, length: int) -> None:
    decoder = make_decoder(StreamFormat("pcm", 48000, channels, bit_depth), None)
    with pytest.raises(DecodeError, match="not whole"):
        decoder.decode(bytes(length))


@pytest.mark.parametrize("bit_depth", [16, 24])
def test_pcm_empty_payload_is_zero_frames(bit_depth: int) -> None:
    decoder = make_decoder(StreamFormat("pcm", 48000, 2, bit_depth), None)
    assert decoder.decode(b"").shape == (0, 2)


@pytest.mark.parametrize(
    "fmt",
    [
        StreamFormat("pcm", 48000, 2, 8),
        StreamFormat("pcm", 48000, 2, 32),
        StreamFormat("pcm", 48000, 0, 16),
        StreamFormat("mp3", 48000, 2, 16),
        StreamFormat("aac", 44100, 2, 16),
    ],
)
def test_unsupported_formats_raise(fmt: StreamFormat) -> None:
    with pytest.raises(DecodeError, match="cannot decode"):
        make_decoder(fmt, None)


def test_decodable_formats_lists_pcm_and_only_known_codecs() -> None:
    formats = decodable_formats()
    assert ("pcm", 16) in formats and ("pcm", 24) in formats
    assert {codec for codec, _ in formats} <= {"pcm", "flac", "opus"}


# --- FLAC -----------------------------------------------------------------------------------


def make_signal(bits: int, channels: int, frames: int, seed: int = 1) -> np.ndarray:
    """A sine plus noise, touching both extremes of the sample range."""
    rng = np.random.default_rng(seed)
    peak = 2 ** (bits - 1)
    t = np.arange(frames)[:, None]
    tone = np.sin(t * 0.013 * np.arange(1, channels + 1)) * (peak * 0.6)
    noise = rng.integers(-peak // 100, peak // 100, (frames, channels))
    samples = (tone + noise).astype(np.int32)
    samples[100] = peak - 1
    samples[101] = -peak
    return samples.astype(np.int16) if bits == 16 else samples


def encode_flac(samples: np.ndarray, bits: int, sample_rate: int) -> tuple[bytes, list[bytes]]:
    """The server's FLAC: a 42-byte codec header and one raw frame per packet."""
    channels = samples.shape[1]
    encoder = av.CodecContext.create("flac", "w")
    encoder.sample_rate = sample_rate
    encoder.layout = "stereo" if channels == 2 else "mono"
    encoder.format = "s16" if bits == 16 else "s32"
    encoder.options = {"compression_level": "5"}
    encoder.open()
    assert encoder.frame_size == SERVER_FLAC_FRAMES
    header = b"fLaC" + FLAC_BLOCK_HEADER + bytes(encoder.extradata)
    wire = samples if bits == 16 else samples << 8  # ffmpeg's s32: sample in the top 24 bits
    packets: list[bytes] = []
    for start in range(0, len(samples), SERVER_FLAC_FRAMES):
        block = np.ascontiguousarray(wire[start : start + SERVER_FLAC_FRAMES])
        frame = av.AudioFrame.from_ndarray(
            block.reshape(1, -1), format=encoder.format.name, layout=encoder.layout.name
        )
        frame.sample_rate = sample_rate
        frame.pts = start
        packets += [bytes(packet) for packet in encoder.encode(frame)]
    packets += [bytes(packet) for packet in encoder.encode(None)]
    return header, [packet for packet in packets if packet]


@needs_flac
@pytest.mark.parametrize(
    ("bits", "channels", "sample_rate"), [(16, 2, 48000), (24, 2, 48000), (16, 1, 44100)]
)
def test_flac_is_bit_exact(bits: int, channels: int, sample_rate: int) -> None:
    source = make_signal(bits, channels, SERVER_FLAC_FRAMES * 4 + 777)
    header, packets = encode_flac(source, bits, sample_rate)
    assert len(header) == 42
    decoder = make_decoder(StreamFormat("flac", sample_rate, channels, bits), header)
    assert decoder.shape == PcmShape(sample_rate, channels, bits)

    decoded = [decoder.decode(packet) for packet in packets]
    for block in decoded:
        assert_pcm_array(block, decoder.shape)
    assert decoded[0].shape[0] == SERVER_FLAC_FRAMES
    np.testing.assert_array_equal(np.concatenate(decoded), source)


@needs_flac
@pytest.mark.parametrize(
    "bad_payload",
    [
        b"garbage" * 100,
        b"",
        b"\xff\xf8" + bytes(50),  # a frame sync code followed by nonsense
    ],
    ids=["garbage", "empty", "sync-then-zeros"],
)
def test_flac_bad_payload_raises_and_decoder_recovers(bad_payload: bytes) -> None:
    source = make_signal(16, 2, SERVER_FLAC_FRAMES * 3)
    header, packets = encode_flac(source, 16, 48000)
    decoder = make_decoder(StreamFormat("flac", 48000, 2, 16), header)
    first = decoder.decode(packets[0])
    with pytest.raises(DecodeError):
        decoder.decode(bad_payload)
    with pytest.raises(DecodeError):
        decoder.decode(packets[1][: len(packets[1]) // 2])  # truncated
    for position in (100, 1000, len(packets[1]) // 2):
        corrupted = bytearray(packets[1])
        corrupted[position] ^= 0x01  # decodes "fine" to wrong audio without the CRC check
        with pytest.raises(DecodeError):
            decoder.decode(bytes(corrupted))
    second = decoder.decode(packets[1])
    np.testing.assert_array_equal(np.concatenate([first, second]), source[: 2 * SERVER_FLAC_FRAMES])


@needs_flac
def test_flac_header_must_be_present_and_consistent() -> None:
    header, _ = encode_flac(make_signal(16, 2, SERVER_FLAC_FRAMES), 16, 48000)
    fmt = StreamFormat("flac", 48000, 2, 16)
    with pytest.raises(DecodeError, match="without a codec_header"):
        make_decoder(fmt, None)
    with pytest.raises(DecodeError, match="fLaC"):
        make_decoder(fmt, b"OggS" + header[4:])
    with pytest.raises(DecodeError, match="fLaC"):
        make_decoder(fmt, header[:30])
    with pytest.raises(DecodeError, match="metadata block"):
        make_decoder(fmt, header[:4] + b"\x84" + header[5:])  # block type 4 (comment)
    with pytest.raises(DecodeError, match="44100 Hz"):
        make_decoder(StreamFormat("flac", 44100, 2, 16), header)


@needs_flac
def test_flac_bit_depth_comes_from_streaminfo() -> None:
    header, packets = encode_flac(make_signal(16, 2, SERVER_FLAC_FRAMES), 16, 48000)
    decoder = make_decoder(StreamFormat("flac", 48000, 2, 24), header)
    assert decoder.shape.bits == 16
    assert decoder.decode(packets[0]).dtype == np.int16


# --- Opus -----------------------------------------------------------------------------------


def encode_opus(sample_rate: int, seconds: float) -> tuple[bytes, list[bytes], int]:
    """A 1 kHz stereo sine at amplitude 16000: OpusHead, 20 ms packets, frames per packet."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = sample_rate
    encoder.layout = "stereo"
    encoder.format = "s16"
    encoder.bit_rate = 128_000
    encoder.open()
    frames_per_packet = encoder.frame_size
    t = np.arange(int(sample_rate * seconds))
    sine = (np.sin(2 * np.pi * 1000 * t / sample_rate) * 16000).astype(np.int16)
    stereo = np.repeat(sine[:, None], 2, axis=1)
    packets: list[bytes] = []
    for start in range(0, len(stereo) - frames_per_packet + 1, frames_per_packet):
        block = np.ascontiguousarray(stereo[start : start + frames_per_packet])
        frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = sample_rate
        frame.pts = start
        packets += [bytes(packet) for packet in encoder.encode(frame)]
    return bytes(encoder.extradata), [packet for packet in packets if packet], frames_per_packet


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


@needs_opus
@pytest.mark.parametrize("with_header", [True, False])
def test_opus_decodes_960_frames_per_packet(with_header: bool) -> None:
    opus_head, packets, _ = encode_opus(48000, 0.5)
    assert len(opus_head) == 19
    decoder = make_decoder(StreamFormat("opus", 48000, 2, 16), opus_head if with_header else None)
    assert decoder.shape == PcmShape(48000, 2, 16)
    decoded = [decoder.decode(packet) for packet in packets]
    for block in decoded:
        assert_pcm_array(block, decoder.shape)
        assert block.shape == (960, 2)  # pre-skip included: every packet is 20 ms
    settled = np.concatenate(decoded[5:])
    assert rms(settled) == pytest.approx(16000 / np.sqrt(2), rel=0.15)


@needs_opus
@pytest.mark.skipif(not has_codec("opus", "r"), reason=f"{MISSING_DEPENDENCY} a native Opus decoder")
def test_native_opus_decoder_converts_float_to_int16() -> None:
    _, packets, _ = encode_opus(48000, 0.3)
    decoder = opus_decoder(StreamFormat("opus", 48000, 2, 16), None, codec_name="opus")
    decoded = [decoder.decode(packet) for packet in packets]
    for block in decoded:
        assert_pcm_array(block, decoder.shape)
        assert block.shape == (960, 2)
    assert rms(np.concatenate(decoded[5:])) == pytest.approx(16000 / np.sqrt(2), rel=0.15)


@needs_opus
def test_opus_at_24khz_decodes_to_48khz() -> None:
    _, packets, frames_per_packet = encode_opus(24000, 0.2)
    assert frames_per_packet == 480
    decoder = make_decoder(StreamFormat("opus", 24000, 2, 16), None)
    assert decoder.shape == PcmShape(48000, 2, 16)
    assert decoder.decode(packets[0]).shape == (960, 2)


@needs_opus
def test_opus_garbage_raises_and_decoder_recovers() -> None:
    _, packets, _ = encode_opus(48000, 0.1)
    decoder = make_decoder(StreamFormat("opus", 48000, 2, 16), None)
    decoder.decode(packets[0])
    for bad_payload in (b"", b"\xff" * 3, b"garbage" * 300):
        with pytest.raises(DecodeError):
            decoder.decode(bad_payload)
    assert decoder.decode(packets[1]).shape == (960, 2)


@needs_opus
@pytest.mark.parametrize(
    ("fmt", "header", "match"),
    [
        (StreamFormat("opus", 48000, 1, 16), None, None),
        (StreamFormat("opus", 44100, 2, 16), None, "unsupported Opus stream"),
        (StreamFormat("opus", 48000, 6, 16), None, "unsupported Opus stream"),
        (StreamFormat("opus", 48000, 1, 16), "stereo head", "unsupported OpusHead"),
        (StreamFormat("opus", 48000, 2, 16), "not a head", "not an OpusHead"),
    ],
)
def test_opus_stream_checks(fmt: StreamFormat, header: str | None, match: str | None) -> None:
    opus_head, _, _ = encode_opus(48000, 0.02)
    codec_header = {None: None, "stereo head": opus_head, "not a head": b"OpusTags" + opus_head[8:]}
    if match is None:
        assert make_decoder(fmt, codec_header[header]).shape == PcmShape(48000, 1, 16)
    else:
        with pytest.raises(DecodeError, match=match):
            make_decoder(fmt, codec_header[header])
