"""Speaking a dynamic pairing code through the speaker itself (the "speaker" out-channel).

Spec pairing.md, "Digits emission": a speaking client reads single digits in the
presentation groups (3-3 for the 6-digit code), with a short gap between digits
and a longer one between groups, from audio it bundles itself.  The ten digit
clips in ``digits_en.npz`` were rendered offline, once, with eSpeak NG 1.51
(``espeak-ng -v en-us -s 145 -a 160 -w dN.wav N``), trimmed, resampled to 16 kHz
and normalised to a 23000 peak (``python -m resonate_embedded.audio.spoken_code
--render`` redoes it where espeak-ng is installed).  Nothing is synthesised or
fetched at run time.  English is the only language bundled.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from resonate_embedded.audio.formats import PcmShape

DIGITS_FILE = Path(__file__).with_name("digits_en.npz")
LANGUAGE = "en"
LEAD_S = 0.4
DIGIT_GAP_S = 0.25
GROUP_GAP_S = 0.7
REPEAT_GAP_S = 1.5


@functools.lru_cache(maxsize=1)
def _clips() -> tuple[int, tuple[np.ndarray, ...]]:
    with np.load(DIGITS_FILE) as data:
        return int(data["rate"]), tuple(np.asarray(data[f"d{d}"], dtype=np.float64) for d in range(10))


@functools.lru_cache(maxsize=32)
def digit_clip(digit: int, sample_rate: int) -> np.ndarray:
    """The clip of one digit at ``sample_rate`` (mono, float, int16 scale)."""
    rate, clips = _clips()
    x = clips[digit]
    n = int(round(len(x) * sample_rate / rate))
    return np.interp(np.arange(n) * (rate / sample_rate), np.arange(len(x)), x)


def render_code(code: str, shape: PcmShape, repeats: int = 2) -> np.ndarray:
    """The spoken code as PCM of ``shape`` (frames, channels), grouped 3-3, said ``repeats`` times."""
    if not code.isascii() or not code.isdigit():
        raise ValueError("a pairing code is ASCII digits")
    rate = shape.sample_rate
    parts: list[np.ndarray] = []

    def gap(seconds: float) -> None:
        parts.append(np.zeros(int(seconds * rate)))

    half = len(code) // 2 if len(code) in (6, 8) else len(code)
    gap(LEAD_S)
    for r in range(repeats):
        for i, ch in enumerate(code):
            if i:
                gap(GROUP_GAP_S if i == half else DIGIT_GAP_S)
            parts.append(digit_clip(int(ch), rate))
        gap(REPEAT_GAP_S if r + 1 < repeats else LEAD_S)
    mono = np.rint(np.concatenate(parts))
    if shape.bits != 16:
        mono = mono * (1 << (shape.bits - 16))
    pcm = np.repeat(mono[:, None], shape.channels, axis=1)
    return np.ascontiguousarray(pcm.astype(shape.dtype))


def render_clip(text: str, ssml: bool = False) -> np.ndarray:
    """One clip as the bundled ones are made (build time only, needs espeak-ng): 16 kHz int16,
    silence trimmed, peak 23000."""
    import subprocess
    import tempfile
    import wave

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "clip.wav"
        subprocess.run(["espeak-ng", *(["-m"] if ssml else []), "-v", "en-us", "-s", "145",
                        "-a", "160", "-w", str(wav), text], check=True)
        with wave.open(str(wav)) as w:
            rate = w.getframerate()
            x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)
    nz = np.flatnonzero(np.abs(x) > 40)
    x = x[max(nz[0] - 100, 0):nz[-1] + 100]
    n = int(round(len(x) * 16000 / rate))
    y = np.interp(np.arange(n) * rate / 16000, np.arange(len(x)), x)
    return np.rint(y * (23000 / np.abs(y).max())).astype("<i2")


def _render_clips(out: Path = DIGITS_FILE) -> None:  # pragma: no cover - offline tool
    clips = {f"d{d}": render_clip(str(d)) for d in range(10)}
    np.savez_compressed(out, rate=np.array(16000), **clips)


if __name__ == "__main__":  # pragma: no cover
    import sys

    if sys.argv[1:] == ["--render"]:
        _render_clips()
    else:
        print("usage: python -m resonate_embedded.audio.spoken_code --render", file=sys.stderr)
