"""What this speaker knows about one server's release, learned from the server's own words.

A plaintext ``server/hello`` reads the same from aiosendspin 1.x to 10.x, so a server's
era is learned from what it says and does afterwards, and kept per ``server_id`` in the
persistent state:

* ``server/command`` names the delay: ``static_delay_ms`` (5.x-9.x) or ``output_delay_ms``
  (10.x);
* an encrypted session (our Noise handshake completed) is the current protocol;
* a refusal: the server closed the connection right after our ``client/state`` without
  answering anything after it (5.x-9.x parse ``supported_commands`` into a closed enum and
  drop the connection on ``set_output_delay``).

The shapes of the player object in ``client/state``, newest first:

* ``current`` (10.x): ``output_delay_ms``; ``volume``, ``mute``, ``set_output_delay``
  declared in ``client/state`` (10.x sends volume/mute only to players that do);
* ``static`` (5.x-9.x): ``static_delay_ms``; only ``set_static_delay`` declared in
  ``client/state`` (those releases reject anything else there; volume and mute are
  declared in ``client/hello``).  1.x/2.x ignore every field they do not know.

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

log = logging.getLogger(__name__)

CURRENT = "current"
STATIC = "static"
SHAPES = (CURRENT, STATIC)  # newest first
CURRENT_COMMANDS = ("volume", "mute", "set_output_delay")
STATIC_COMMANDS = ("set_static_delay",)
DELAY_KEYS = {"output_delay_ms": CURRENT, "static_delay_ms": STATIC}
REFUSAL_WINDOW_US = 3_000_000  # a close this soon after our state, unanswered, is a refusal
HOLD_OFF_S = 300.0  # a server that refused every shape is not redialled sooner


@attrs.frozen
class ServerProfile:
    """One server's era as far as the server has shown it (empty: nothing learned yet)."""

    said_shape: str | None = None  # the delay naming the server itself used (or encryption)
    refused: tuple[str, ...] = ()  # shapes it closed the connection on, in order
    evidence: str = ""  # what it said or did, for the owner
    refused_all_at_s: float | None = None  # wall clock (time.time) when the last shape was refused

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
        if self.refused_all_at_s is None:
            return 0.0
        return max(0.0, self.refused_all_at_s + HOLD_OFF_S - now_s)

    def summary(self, now_s: float) -> str:
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
        at = data.get("refused_all_at_s")
        return cls(
            said_shape=said if said in SHAPES else None,
            refused=tuple(s for s in refused if s in SHAPES) if isinstance(refused, list) else (),
            evidence=data["evidence"][:300] if isinstance(data.get("evidence"), str) else "",
            refused_all_at_s=float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else None)


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
