"""The bench test signal: indexed chirps over a continuous pilot tone (numpy only).

The signal is defined in continuous time (seconds since stream frame K = 0), so the same
code renders the PCM the test server plays (``pcm``) and exact fractionally-delayed
"recordings" for the synthetic tests (``render`` at arbitrary instants).

Every ``PERIOD_S`` (0.5 s) event *n* starts at stream time ``n * PERIOD_S``:

====================  =========================================================
0 .. 20 ms            linear chirp 500 Hz -> 12 kHz, Hann window, peak 0.5
                      (the timing mark: its autocorrelation is ~0.1 ms wide)
30 .. 126 ms          24-bit FSK index code, 4 ms per bit, MSB first:
                      16 bits of n (mod 65536) + 8 check bits
                      ``(n & 0xFF) ^ (n >> 8) ^ 0xA5``; a 1 is a 2 kHz burst, a 0 a
                      3 kHz burst (8 / 12 whole cycles, Hann window, peak 0.3)
always                pilot sine 330 Hz, amplitude 0.03 (-30 dBFS): makes dropouts
                      and boot-to-first-sound visible between events; 165 whole
                      cycles per period, not a mains harmonic, below the chirp band
====================  =========================================================

The index makes pairing of events across channels unambiguous (two boards may be off by
more than a period, a recording may start mid-stream) for 65536 periods (9.1 h).
Peak of the sum stays below 0.55 of full scale.
"""

from __future__ import annotations

import io
import wave

import numpy as np

PERIOD_S = 0.5
CHIRP_S = 0.020
CHIRP_F0 = 500.0
CHIRP_F1 = 12000.0
CHIRP_AMP = 0.5
CODE_START_S = 0.030
BIT_S = 0.004
INDEX_BITS = 16
CHECK_BITS = 8
CODE_BITS = INDEX_BITS + CHECK_BITS
CODE_END_S = CODE_START_S + CODE_BITS * BIT_S
F_ONE = 2000.0
F_ZERO = 3000.0
CODE_AMP = 0.3
PILOT_HZ = 330.0
PILOT_AMP = 0.03
EVENT_END_S = CODE_END_S  # after this, until the next period, only the pilot plays


def check_byte(n: int | np.ndarray) -> int | np.ndarray:
    """The 8 check bits of event index `n` (16 bits)."""
    n = n & 0xFFFF
    return ((n & 0xFF) ^ (n >> 8) ^ 0xA5) & 0xFF


def code_bits(n: int | np.ndarray) -> np.ndarray:
    """The 24 code bits (MSB first) of event `n`: shape (24,) or (len(n), 24), uint8."""
    n = np.asarray(n, dtype=np.int64) & 0xFFFF
    word = (n << CHECK_BITS) | check_byte(n)
    shifts = np.arange(CODE_BITS - 1, -1, -1)
    return ((word[..., None] >> shifts) & 1).astype(np.uint8)


def chirp(tau: np.ndarray) -> np.ndarray:
    """The windowed chirp at local times `tau` (s since the event start); 0 outside."""
    tau = np.asarray(tau, dtype=np.float64)
    out = np.zeros_like(tau)
    m = (tau >= 0.0) & (tau < CHIRP_S)
    x = tau[m]
    k = (CHIRP_F1 - CHIRP_F0) / CHIRP_S
    phase = 2.0 * np.pi * (CHIRP_F0 * x + 0.5 * k * x * x)
    win = 0.5 - 0.5 * np.cos(2.0 * np.pi * x / CHIRP_S)
    out[m] = CHIRP_AMP * win * np.sin(phase)
    return out


def render(t: np.ndarray, pilot: bool = True) -> np.ndarray:
    """The signal (float, full scale 1.0) at stream times `t` (s, float64, t >= 0)."""
    t = np.asarray(t, dtype=np.float64)
    n = np.floor(t / PERIOD_S).astype(np.int64)
    tau = t - n * PERIOD_S
    out = chirp(tau)
    m = (tau >= CODE_START_S) & (tau < CODE_END_S)
    if np.any(m):
        x = tau[m] - CODE_START_S
        b = np.minimum((x / BIT_S).astype(np.int64), CODE_BITS - 1)
        xb = x - b * BIT_S
        bits = code_bits(n[m])[np.arange(b.size), b]
        f = np.where(bits == 1, F_ONE, F_ZERO)
        win = 0.5 - 0.5 * np.cos(2.0 * np.pi * xb / BIT_S)
        out[m] += CODE_AMP * win * np.sin(2.0 * np.pi * f * xb)
    if pilot:
        # 165 whole pilot cycles per period: phase from tau keeps float precision for hours
        out += PILOT_AMP * np.sin(2.0 * np.pi * PILOT_HZ * tau)
    return out


def period_frames(rate: int) -> int:
    frames = PERIOD_S * rate
    if frames != int(frames):
        raise ValueError(f"{rate} Hz: the {PERIOD_S} s period is not a whole number of frames")
    return int(frames)


def pcm(first_frame: int, frames: int, rate: int, bits: int = 16, channels: int = 2) -> np.ndarray:
    """Frames K = first_frame .. first_frame+frames-1 as (frames, channels) int64 at `bits`.

    All channels carry the same signal. Deterministic in K, so any chunking of the stream
    gives the same samples (this is what the bench server plays, see bench_server.py).
    """
    pf = period_frames(rate)
    k = np.arange(first_frame, first_frame + frames, dtype=np.int64)
    n = k // pf
    # exact local time from integers, then re-add the period: keeps tau precise for hours
    tau = (k - n * pf) / float(rate)
    t = n * PERIOD_S + tau
    x = render(t)
    full = float((1 << (bits - 1)) - 1)
    col = np.rint(x * full).astype(np.int64)
    return np.repeat(col[:, None], channels, axis=1)


def event_frame(n: int, rate: int) -> int:
    """Stream frame index K at which event `n`'s chirp starts."""
    return n * period_frames(rate)


def write_wav(path_or_file, seconds: float, rate: int = 48000, bits: int = 16,
              channels: int = 2, first_frame: int = 0) -> None:
    """Write `seconds` of the signal as a PCM WAV (16/24/32-bit), e.g. to play with aplay."""
    frames = int(round(seconds * rate))
    s = pcm(first_frame, frames, rate, bits, channels)
    if bits == 16:
        data = s.astype("<i2").tobytes()
    elif bits == 32:
        data = s.astype("<i4").tobytes()
    elif bits == 24:
        data = np.ascontiguousarray(
            s.astype("<i4").reshape(-1).view(np.uint8).reshape(-1, 4)[:, :3]).tobytes()
    else:
        raise ValueError(f"unsupported bit depth {bits}")
    with wave.open(path_or_file, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(bits // 8)
        w.setframerate(rate)
        w.writeframes(data)


def wav_bytes(seconds: float, rate: int = 48000, bits: int = 16, channels: int = 2) -> bytes:
    buf = io.BytesIO()
    write_wav(buf, seconds, rate, bits, channels)
    return buf.getvalue()


if __name__ == "__main__":  # python -m board.bench.testsignal out.wav [seconds] [rate] [bits]
    import sys

    a = sys.argv[1:]
    if not a:
        sys.exit("usage: python -m board.bench.testsignal OUT.wav [seconds=60] [rate=48000] [bits=16]")
    write_wav(a[0], float(a[1]) if len(a) > 1 else 60.0, int(a[2]) if len(a) > 2 else 48000,
              int(a[3]) if len(a) > 3 else 16)
