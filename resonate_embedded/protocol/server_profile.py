"""What this speaker knows about one server's release, learned from the server's own words.

A plaintext ``server/hello`` reads the same from aiosendspin 1.x to 10.x, so a server's
era is learned from what it says and does afterwards, and kept per ``server_id`` in the
persistent state:

* ``server/command`` names the delay: ``static_delay_ms`` (5.x-9.x) or ``output_delay_ms``
  (10.x);
* an encrypted session: the variant of its Noise handshake (``noise_variant.py``) is
  kept (``noise``); the older variant is aiosendspin 7.x-9.x, so the static shape;
* a refusal: the server closed the connection right after our ``client/state`` without
  answering anything after it (5.x-9.x parse ``supported_commands`` into a closed enum and
  drop the connection on ``set_output_delay``).

The shapes of the player object in ``client/state``, newest first:

* ``current`` (10.x): ``output_delay_ms``; ``volume``, ``mute``, ``set_output_delay``
  declared in ``client/state`` (10.x sends volume/mute only to players that do);
* ``static`` (5.x-9.x): ``static_delay_ms``; only ``set_static_delay`` declared in
  ``client/state`` (those releases reject anything else there; volume and mute are
  declared in ``client/hello``).  1.x/2.x ignore every field they do not know.

An encrypted handshake that fails is kept too (what failed, what the server sent): a
second failure in a row holds the server off ``HANDSHAKE_BACKOFF_S``, doubling up to
``HOLD_OFF_S`` (the owner sees why), unless the speaker fell back to plaintext with it.

An unknown server gets ``current`` (it also suits 1.x, 2.x and 10.x); a refusal moves one
shape older, once; when every shape was refused the server is held off for
``HOLD_OFF_S`` (the owner sees why), then tried again from the newest shape.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import attrs

from resonate_embedded.protocol.messages import PlayerState
from resonate_embedded.protocol.noise_variant import CURRENT as NOISE_CURRENT, OLDER as NOISE_OLDER

log = logging.getLogger(__name__)

CURRENT = "current"
STATIC = "static"
SHAPES = (CURRENT, STATIC)  # newest first
CURRENT_COMMANDS = ("volume", "mute", "set_output_delay")
STATIC_COMMANDS = ("set_static_delay",)
DELAY_KEYS = {"output_delay_ms": CURRENT, "static_delay_ms": STATIC}
REFUSAL_WINDOW_US = 3_000_000  # a close this soon after our state, unanswered, is a refusal
HOLD_OFF_S = 300.0  # a server that refused every shape is not redialled sooner
HANDSHAKE_BACKOFF_S = 15.0  # after the second failed handshake in a row; doubles per failure


@attrs.frozen
class ServerProfile:
    """One server's era as far as the server has shown it (empty: nothing learned yet)."""

    said_shape: str | None = None  # the delay naming the server itself used (or encryption)
    refused: tuple[str, ...] = ()  # shapes it closed the connection on, in order
    evidence: str = ""  # what it said or did, for the owner
    refused_all_at_s: float | None = None  # wall clock (time.time) when the last shape was refused
    noise: str | None = None  # the Noise variant of its last encrypted session (noise_variant.py)
    handshake_failures: int = 0  # encrypted handshakes failed in a row
    handshake_error: str = ""  # why the last one failed and what the server sent
    handshake_failed_at_s: float | None = None  # wall clock of the last failure, if held off

    def shape(self, now_s: float) -> str | None:
        """The shape to send; None while the server is held off after refusing every shape."""
        if self.said_shape is not None and self.said_shape not in self.refused:
            return self.said_shape
        left = [s for s in SHAPES if s not in self.refused]
        if left:
            return left[0]
        return None if self.hold_off_s(now_s) > 0 else SHAPES[0]

    def hold_off_s(self, now_s: float) -> float:
        """Seconds left before this server may be tried again (0: now)."""
        shapes = 0.0 if self.refused_all_at_s is None else self.refused_all_at_s + HOLD_OFF_S - now_s
        return max(0.0, shapes, self._handshake_hold_off_s(now_s))

    def _handshake_hold_off_s(self, now_s: float) -> float:
        if self.handshake_failed_at_s is None or self.handshake_failures < 2:
            return 0.0
        wait = min(HOLD_OFF_S, HANDSHAKE_BACKOFF_S * 2 ** min(self.handshake_failures - 2, 8))
        return max(0.0, self.handshake_failed_at_s + wait - now_s)

    def summary(self, now_s: float) -> str:
        if self._handshake_hold_off_s(now_s) > 0:
            return (f"encrypted handshake failed {self.handshake_failures} times in a row: "
                    f"{self.handshake_error}; next attempt in {self.hold_off_s(now_s):.0f} s")
        shape = self.shape(now_s)
        if shape is None:
            return (f"refuses every message shape this player has ({', '.join(self.refused)}): "
                    f"{self.evidence}; next attempt in {self.hold_off_s(now_s):.0f} s")
        era = {CURRENT: "current (output delay)", STATIC: "5.x-9.x (static delay)"}[shape]
        how = self.evidence or "not told yet: the plaintext hello does not say; older shape if refused"
        return f"{era}: {how}"

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False) | {"refused": list(self.refused)}

    @classmethod
    def from_dict(cls, data: Any) -> ServerProfile:
        """Lenient: an unusable field gets its default (state files outlive releases)."""
        if not isinstance(data, dict):
            return cls()
        said = data.get("said_shape")
        refused = data.get("refused")
        at, failed_at = data.get("refused_all_at_s"), data.get("handshake_failed_at_s")
        noise, failures = data.get("noise"), data.get("handshake_failures")
        return cls(
            said_shape=said if said in SHAPES else None,
            refused=tuple(s for s in refused if s in SHAPES) if isinstance(refused, list) else (),
            evidence=data["evidence"][:300] if isinstance(data.get("evidence"), str) else "",
            refused_all_at_s=_seconds(at),
            noise=noise if noise in (NOISE_CURRENT, NOISE_OLDER) else None,
            handshake_failures=failures if type(failures) is int and failures > 0 else 0,
            handshake_error=data["handshake_error"][:400] if isinstance(
                data.get("handshake_error"), str) else "",
            handshake_failed_at_s=_seconds(failed_at))


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def said(profile: ServerProfile, shape: str, evidence: str) -> ServerProfile:
    """The server used ``shape``'s naming itself (a refusal of it is forgotten)."""
    if profile.said_shape == shape and shape not in profile.refused:
        return profile
    return attrs.evolve(profile, said_shape=shape, evidence=evidence,
                        refused=tuple(s for s in profile.refused if s != shape), refused_all_at_s=None)


def refused(profile: ServerProfile, shape: str, evidence: str, now_s: float) -> ServerProfile:
    """The server closed the connection on ``shape``."""
    gone = profile.refused + ((shape,) if shape not in profile.refused else ())
    said_shape = None if profile.said_shape == shape else profile.said_shape
    all_refused = all(s in gone for s in SHAPES)
    return ServerProfile(said_shape, gone, evidence, now_s if all_refused else None)


def shape_player(shape: str, player: PlayerState, delay_ms: int) -> PlayerState:
    """``player`` (full or delta) as the era of ``shape`` accepts it: delay key, declared
    commands; the static shape always carries the delay (``delay_ms`` when ``player`` has
    none), as 5.x reads a missing ``static_delay_ms`` as 0."""
    if shape == CURRENT:
        return attrs.evolve(player, delay_key="output_delay_ms", supported_commands=(
            None if player.supported_commands is None else CURRENT_COMMANDS))
    return attrs.evolve(
        player, delay_key="static_delay_ms",
        output_delay_ms=delay_ms if player.output_delay_ms is None else player.output_delay_ms,
        supported_commands=None if player.supported_commands is None else STATIC_COMMANDS)


class ProfileKeeper:
    """One session's view of its server's profile: chooses the shape, learns, persists.

    ``profiles`` is the persistent state's ``server_profiles`` dict (changed in place;
    ``save`` is called after each change)."""

    def __init__(self, profiles: dict, save: Callable[[], None], server_id: str) -> None:
        self._profiles, self._save, self.server_id = profiles, save, server_id
        self.shape = CURRENT
        self._sent_local_us: int | None = None
        self._sent_text = ""

    @property
    def profile(self) -> ServerProfile:
        return ServerProfile.from_dict(self._profiles.get(self.server_id))

    def summary(self) -> str:
        return self.profile.summary(time.time())

    def choose(self) -> str | None:
        """The shape to send this session (None: the server is held off; see summary())."""
        shape = self.profile.shape(time.time())
        if shape is not None:
            self.shape = shape
            log.info("server %s: client/state shaped for %s", self.server_id, self.summary())
        return shape

    def _keep(self, profile: ServerProfile) -> None:
        if self._profiles.get(self.server_id) != profile.to_dict():
            self._profiles[self.server_id] = profile.to_dict()
            self._save()

    def delay_named(self, key: str) -> None:
        """The server named the delay ``key`` in a server/command."""
        self._keep(said(self.profile, DELAY_KEYS[key], f"its server/command named the delay {key}"))

    def noise(self, variant: str) -> None:
        """Our Noise handshake with this server completed in ``variant``."""
        profile = attrs.evolve(self.profile, noise=variant, handshake_failures=0,
                               handshake_error="", handshake_failed_at_s=None)
        if variant == NOISE_OLDER:
            profile = said(profile, STATIC, "its Noise handshake is the 7.x-9.x variant "
                                            "(message 1 names no psk_category)")
        else:
            profile = said(profile, CURRENT, "its Noise handshake is the current variant")
        self._keep(profile)

    def sent(self, text: str, local_us: int) -> None:
        """Our client/state ``text`` went out at ``local_us``."""
        self._sent_local_us, self._sent_text = local_us, text

    def answered(self) -> None:
        """The server replied after our state: it took it."""
        self._sent_local_us = None

    def closed(self, reason: str, local_us: int) -> None:
        """The connection closed: a refusal if right after our state, unanswered."""
        sent = self._sent_local_us
        if sent is None or local_us - sent > REFUSAL_WINDOW_US:
            return
        self._sent_local_us = None
        what = f"our {self.shape}-shaped client/state {self._sent_text[:160]}"
        profile = refused(self.profile, self.shape, f"closed the connection ({reason}) right after "
                          + what, time.time())
        self._keep(profile)
        nxt = profile.shape(time.time())
        if nxt is None:
            log.error("server %s refused our client/state in every shape: %s", self.server_id,
                      profile.summary(time.time()))
        else:
            log.warning("server %s closed the connection (%s) right after %s: it likely "
                        "rejected a field its release does not know; the next connection sends "
                        "the %s shape", self.server_id, reason, what, nxt)


def handshake_failed(profiles: dict, key: str, error: str, fell_back: bool,
                     now_s: float) -> ServerProfile:
    """Keep an encrypted handshake that failed with the server ``key`` (its server_id, or
    its URL before it said one) in ``profiles`` (the persistent dict, changed in place);
    ``fell_back``: the speaker talks plaintext with it instead (no hold-off)."""
    old = ServerProfile.from_dict(profiles.get(key))
    profile = attrs.evolve(old, handshake_failures=old.handshake_failures + 1,
                           handshake_error=error[:400],
                           handshake_failed_at_s=None if fell_back else now_s)
    profiles[key] = profile.to_dict()
    if profile.handshake_failures >= 2:
        log.error("server %s: the encrypted handshake failed %d times in a row: %s", key,
                  profile.handshake_failures, error)
    else:
        log.warning("server %s: the encrypted handshake failed: %s", key, error)
    return profile


def held_off(raw: Any, now_s: float) -> tuple[float, str | None]:
    """The longest hold-off among the stored profiles (seconds left, and why; 0 and None
    when no server is held off)."""
    held = [(p.hold_off_s(now_s), f"server {sid} {p.summary(now_s)}")
            for sid, p in load_profiles(raw).items() if p.hold_off_s(now_s) > 0]
    return max(held, default=(0.0, None))


def load_profiles(raw: Any) -> dict[str, ServerProfile]:
    if not isinstance(raw, dict):
        return {}
    return {k[:200]: ServerProfile.from_dict(v) for k, v in list(raw.items())[:64] if isinstance(k, str)}
