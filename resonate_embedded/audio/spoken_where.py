""""Where is my speaker?": its name and IPv4 address spoken through its own DAC.

The same offline renderer as the spoken pairing code (``spoken_code.py``): the digits are
its clips (``digits_en.npz``, via :func:`~resonate_embedded.audio.spoken_code.digit_clip`),
and ``words_en.npz`` adds, rendered offline once with the same eSpeak NG 1.51 settings and
the same trimming/normalisation, the word "dot" and the English letter names a–z
(``python -m resonate_embedded.audio.spoken_where --render`` redoes it where espeak-ng is
installed).  Nothing is synthesised or fetched at run time.

What is said (English only): a two-note chime; the speaker's name **spelled** letter by
letter (the renderer has no whole words: "Kitchen" is "K I T C H E N"; accents are dropped,
digits are said as digits, other characters are a pause; at most ``MAX_NAME_CHARS``); a
short beep; the IPv4 address digit by digit with "dot" between the parts ("192.168.1.23":
"one nine two dot one six eight dot one dot two three"); then the address once more.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import unicodedata
from pathlib import Path

import attrs
import numpy as np

from resonate_embedded.audio.formats import PcmShape
from resonate_embedded.audio.spoken_code import (
    DIGIT_GAP_S, GROUP_GAP_S, LEAD_S, REPEAT_GAP_S, digit_clip,
)

WORDS_FILE = Path(__file__).with_name("words_en.npz")
WORDS = ("dot",) + tuple("abcdefghijklmnopqrstuvwxyz")
MAX_NAME_CHARS = 24
SHAPE = PcmShape(16000, 1, 16)  # what the player renders in (the writer converts)
CHIME_PEAK = 12000


@functools.lru_cache(maxsize=1)
def _words() -> tuple[int, dict[str, np.ndarray]]:
    with np.load(WORDS_FILE) as data:
        return int(data["rate"]), {w: np.asarray(data[f"w_{w}"], dtype=np.float64) for w in WORDS}


@functools.lru_cache(maxsize=64)
def word_clip(word: str, sample_rate: int) -> np.ndarray:
    """The clip of ``word`` ("dot" or a letter) at ``sample_rate`` (mono, float, int16 scale)."""
    rate, clips = _words()
    x = clips[word]
    n = int(round(len(x) * sample_rate / rate))
    return np.interp(np.arange(n) * (rate / sample_rate), np.arange(len(x)), x)


def _tone(freqs_s: tuple[tuple[float, float], ...], rate: int) -> np.ndarray:
    """Notes (Hz, seconds) one after the other, each with a 10 ms fade in and out."""
    parts = []
    for freq, seconds in freqs_s:
        n = int(seconds * rate)
        t = np.arange(n) / rate
        env = np.minimum(1.0, np.minimum(t, seconds - t) / 0.01)
        parts.append(CHIME_PEAK * env * np.sin(2 * np.pi * freq * t))
    return np.concatenate(parts)


def clip(item: str, rate: int) -> np.ndarray:
    """The audio of one spoken item: a digit, "dot", a letter, "chime" or "beep"."""
    if item == "chime":
        return _tone(((659.25, 0.15), (987.77, 0.3)), rate)
    if item == "beep":
        return _tone(((880.0, 0.12),), rate)
    if len(item) == 1 and item.isdigit():
        return digit_clip(int(item), rate)
    return word_clip(item, rate)


def spell(name: str) -> list[str]:
    """The items that spell ``name``: letters a–z (accents dropped), digits, and "" for a
    word break; at most :data:`MAX_NAME_CHARS` characters."""
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    items: list[str] = []
    for ch in plain[:MAX_NAME_CHARS]:
        if ch.isascii() and (ch.isdigit() or "a" <= ch <= "z"):
            items.append(ch)
        elif items and items[-1] != "":
            items.append("")
    while items and items[-1] == "":
        items.pop()
    return items


def address_items(ip: str) -> list[str]:
    """``"192.168.1.23"`` → ``["1", "9", "2", "dot", "1", "6", "8", "dot", ...]``."""
    parts = str(ipaddress.IPv4Address(ip)).split(".")
    items: list[str] = []
    for i, part in enumerate(parts):
        if i:
            items.append("dot")
        items.extend(part)
    return items


def where_items(ip: str, name: str | None = None, repeats: int = 2) -> list[str]:
    """The whole message as items: "chime", the spelled name and a "beep" (if a name is
    given), then the address ``repeats`` times ("|" between repetitions, "" = word gap)."""
    items = ["chime"]
    if name:
        spelled = spell(name)
        if spelled:
            items += spelled + ["beep"]
    for r in range(repeats):
        if r:
            items.append("|")
        items += address_items(ip)
    return items


@attrs.frozen
class Segment:
    item: str
    start: int  # frame index in the rendered PCM
    end: int


def render_items(items: list[str], shape: PcmShape = SHAPE) -> tuple[np.ndarray, list[Segment]]:
    """PCM of ``shape`` (frames, channels) and where each audible item lies in it.

    Gaps as for the pairing code: a short one between items, a longer one around the
    chime/beep and at word breaks (""), the repeat gap at "|", lead-in and tail silence."""
    rate = shape.sample_rate
    parts: list[np.ndarray] = []
    segments: list[Segment] = []
    pos = 0

    def add(x: np.ndarray) -> None:
        nonlocal pos
        parts.append(x)
        pos += len(x)

    def gap(seconds: float) -> None:
        add(np.zeros(int(seconds * rate)))

    gap(LEAD_S)
    previous = None
    for item in items:
        if item in ("", "|"):
            gap(REPEAT_GAP_S if item == "|" else GROUP_GAP_S)
            previous = None
            continue
        if previous is not None:
            gap(GROUP_GAP_S if "chime" in (item, previous) or "beep" in (item, previous)
                else DIGIT_GAP_S)
        start = pos
        add(clip(item, rate))
        segments.append(Segment(item, start, pos))
        previous = item
    gap(LEAD_S)
    mono = np.rint(np.concatenate(parts))
    if shape.bits != 16:
        mono = mono * (1 << (shape.bits - 16))
    pcm = np.repeat(mono[:, None], shape.channels, axis=1)
    return np.ascontiguousarray(pcm.astype(shape.dtype)), segments


def render_where(ip: str, name: str | None = None, shape: PcmShape = SHAPE) -> np.ndarray:
    """The spoken message (:func:`where_items`) as PCM of ``shape``."""
    return render_items(where_items(ip, name), shape)[0]


def local_ipv4(prefer: str | None = None) -> str | None:
    """This host's IPv4 address as others reach it: ``prefer`` if given (the configured
    mDNS interface address), else the source address of the default route (a UDP socket
    "connected" to a documentation address: no packet is sent); None without a network."""
    if prefer:
        return prefer
    for probe in ("192.0.2.1", "10.255.255.255"):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                addr = s.getsockname()[0]
        except OSError:
            continue
        if addr and not addr.startswith(("0.", "127.")):
            return addr
    return None


def _render_words(out: Path = WORDS_FILE) -> None:  # pragma: no cover - offline tool
    """The clips of :data:`WORDS`, made as the digits were (``spoken_code._render_clips``)."""
    from resonate_embedded.audio.spoken_code import render_clip

    clips = {}
    for w in WORDS:
        ssml = len(w) == 1  # a letter: spelled, not read as a word
        text = f'<speak><say-as interpret-as="characters">{w}</say-as></speak>' if ssml else w
        clips[f"w_{w}"] = render_clip(text, ssml)
    np.savez_compressed(out, rate=np.array(16000), **clips)


if __name__ == "__main__":  # pragma: no cover
    import sys

    if sys.argv[1:] == ["--render"]:
        _render_words()
    else:
        print("usage: python -m resonate_embedded.audio.spoken_where --render", file=sys.stderr)
