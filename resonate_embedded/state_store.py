"""What the speaker remembers across restarts and power cuts.

The state is one small JSON file written atomically (temp file, fsync, rename,
fsync of the directory), so a power cut leaves either the old or the new state,
never a torn one.  A missing file gives defaults.  A corrupt or unreadable one is
reported (one log line), moved aside as ``state.json.corrupt-<UTC time>`` (kept: it may
be recoverable, and the next save must not destroy it) and replaced by defaults; a
field with an unusable value is reported and gets its default, the other fields are
kept.  Loading never raises.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from pathlib import Path

import attrs

from resonate_embedded.atomic_file import replace_file
from resonate_embedded.protocol.server_profile import load_profiles

log = logging.getLogger(__name__)

STATE_FILE = "state.json"


@attrs.define
class PersistentState:
    client_id: str = attrs.field(factory=lambda: "resonate-" + secrets.token_hex(6))
    volume: int = 100
    muted: bool = False
    output_delay_ms: int = 0
    last_played_server_id: str | None = None
    server_profiles: dict = attrs.field(factory=dict)  # server_id -> ServerProfile.to_dict()


def adopt_client_id(state: PersistentState, client_id: str, announce: bool = True) -> bool:
    """Make ``client_id`` (the identity's public key) the state's; True if it changed.

    A state written before encryption holds a random ``resonate-…`` id; the volume,
    mute, delay and last-played server it holds are kept.  Servers key groups and
    settings on the id, so they see the speaker as new once: say why.
    """
    if state.client_id == client_id:
        return False
    (log.warning if announce else log.debug)("client_id changes from %s to %s: encrypted Sendspin identifies a speaker by "
                "its public key (kept in identity.json); volume, mute and delay are kept, "
                "servers will list this speaker as a new one", state.client_id, client_id)
    state.client_id = client_id
    return True


def move_aside(path: Path, tag: str = "corrupt") -> Path | None:
    """Rename ``path`` to ``<name>.<tag>-<UTC time>`` (a free name); None if that fails."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(100):
        aside = path.with_name(f"{path.name}.{tag}-{stamp}" + (f".{n}" if n else ""))
        if aside.exists():
            continue
        try:
            os.replace(path, aside)
        except OSError:
            return None
        return aside
    return None


def _valid(data: dict) -> dict:
    out = {}
    if isinstance(data.get("client_id"), str) and data["client_id"]:
        out["client_id"] = data["client_id"]
    if isinstance(data.get("volume"), int) and 0 <= data["volume"] <= 100:
        out["volume"] = data["volume"]
    if isinstance(data.get("muted"), bool):
        out["muted"] = data["muted"]
    if isinstance(data.get("output_delay_ms"), int) and 0 <= data["output_delay_ms"] <= 5000:
        out["output_delay_ms"] = data["output_delay_ms"]
    if isinstance(data.get("last_played_server_id"), str):
        out["last_played_server_id"] = data["last_played_server_id"]
    if isinstance(data.get("server_profiles"), dict):
        out["server_profiles"] = {k: p.to_dict() for k, p in load_profiles(data["server_profiles"]).items()}
    bad = sorted(k for k in attrs.fields_dict(PersistentState)
                 if k in data and k not in out and data[k] is not None)
    if bad:
        log.warning("state file: ignoring unusable %s (defaults used for %s)",
                    ", ".join(f"{k}={data[k]!r:.40}" for k in bad), "it" if len(bad) == 1 else "them")
    return out


class StateStore:
    def __init__(self, state_dir: Path) -> None:
        self._dir = state_dir
        self._path = state_dir / STATE_FILE
        self.existed = False  # whether load() found a readable state file

    def load(self) -> PersistentState:
        """The saved state, or defaults (saved at once) when there is none or it is unusable."""
        try:
            data = json.loads(self._path.read_bytes())
            if not isinstance(data, dict):
                raise ValueError(f"not a JSON object but {type(data).__name__}")
        except FileNotFoundError:
            state = PersistentState()
            self.save(state)
            return state
        except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            aside = move_aside(self._path)
            log.error("state file %s unreadable (%s: %.200s): %s; using defaults", self._path,
                      type(exc).__name__, exc,
                      f"moved aside to {aside.name}" if aside else "could not move it aside")
            state = PersistentState()
            self.save(state)
            return state
        self.existed = True
        return PersistentState(**_valid(data))

    def save(self, state: PersistentState) -> None:
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            replace_file(self._path, json.dumps(attrs.asdict(state)).encode(), 0o600)
        except OSError as exc:
            log.error("cannot save state to %s: %s", self._path, exc)
