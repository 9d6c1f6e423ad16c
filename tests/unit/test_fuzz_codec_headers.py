"""Hypothesis fuzzing of codec headers (stream/start ``codec_header``) and of chunk payloads:
a decoder or :class:`DecodeError`, never anything else."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resonate_embedded.audio.decoders import DecodeError, make_decoder
from resonate_embedded.audio.formats import StreamFormat

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FORMATS = [StreamFormat("flac", 48000, 2, 16), StreamFormat("flac", 44100, 2, 24),
           StreamFormat("opus", 48000, 2, 16), StreamFormat("pcm", 48000, 2, 16),
           StreamFormat("pcm", 48000, 2, 24)]


def flac_like(body: bytes) -> bytes:
    """'fLaC' + a STREAMINFO block header + arbitrary bytes: reaches the deeper checks."""
    return b"fLaC" + bytes([0x80]) + struct.pack(">I", len(body))[1:] + body


headers = (st.none() | st.binary(max_size=80) | st.binary(min_size=0, max_size=40).map(flac_like)
           | st.binary(max_size=30).map(lambda b: b"OpusHead" + b))


@FUZZ
@given(st.sampled_from(FORMATS), headers, st.binary(max_size=200))
def test_any_codec_header_and_payload_give_a_decoder_or_decode_error(fmt, header, payload):
    try:
        decoder = make_decoder(fmt, header)
    except DecodeError:
        return
    try:
        pcm = decoder.decode(payload)
    except DecodeError:
        return
    assert pcm.ndim == 2 and pcm.shape[1] == fmt.channels
