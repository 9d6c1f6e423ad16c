"""ALSA playback devices, like ``aplay -L``, with whether each one opens now."""

from __future__ import annotations

import alsaaudio
import attrs


@attrs.frozen
class Device:
    name: str
    opens: bool
    error: str | None


def probe(name: str) -> Device:
    try:
        pcm = alsaaudio.PCM(alsaaudio.PCM_PLAYBACK, alsaaudio.PCM_NONBLOCK, device=name)
    except alsaaudio.ALSAAudioError as exc:
        return Device(name, False, str(exc))
    pcm.close()
    return Device(name, True, None)


def list_devices() -> list[Device]:
    return [probe(name) for name in alsaaudio.pcms(alsaaudio.PCM_PLAYBACK)]
