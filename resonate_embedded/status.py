"""What the player believes, in one snapshot: ``status`` (Unix socket), the systemd STATUS=
line, ``--stats`` and the status light all read it from here."""

from __future__ import annotations

import importlib.metadata
import re
import time
from pathlib import Path
from typing import Any

import attrs

from resonate_embedded import __version__
from resonate_embedded.boot_slots import (
    DEFAULT_BOOT_DIR, DEFAULT_CMDLINE, PREFIXES, BootSlotError, BootSlots,
)
from resonate_embedded.clock.local import local_now_us
from resonate_embedded.control_socket import StatusSnapshot, SyncInfo
from resonate_embedded.light import LightState
from resonate_embedded.protocol.server_profile import held_off
from resonate_embedded.system_update import STATE_FILE, UpdateRecord, load_record

_STARTED = time.monotonic()


def light_state(player) -> LightState:
    """The status light's state (documented in board/controls/README.md)."""
    stats, session = player.writer.stats, player.session
    if stats.state in ("no_device", "starved"):
        return LightState.ERROR
    if session is None:
        return LightState.WAITING
    if session.speaking_pairing_code:
        return LightState.PAIRING
    if stats.state == "playing":
        return LightState.MUTED if player.state.muted else LightState.PLAYING
    return LightState.IDLE


def snapshot(player) -> StatusSnapshot:
    stats, session, f = player.writer.stats, player.session, player.clock.filter
    mapping = f.mapping() if f.synchronized else None
    sync = SyncInfo(
        synchronized=bool(f.synchronized),
        offset_us=mapping.offset_us if mapping else None,
        drift_ppm=f.drift_ppm if mapping else None,
        uncertainty_us=f.error_us if mapping else None,
        rtt_us=player.clock.last_rtt_us,
        measured_error_us=stats.error_us if stats.state == "playing" else None,
        correction_ppm=stats.correction_ppm)
    hub = player.roles
    snap = StatusSnapshot(
        name=player.config.name, client_id=player.state.client_id, version=__version__,
        player_state=light_state(player).value, uptime_s=time.monotonic() - _STARTED,
        output_state=stats.state, buffer_ms=stats.buffered_ms, underruns=stats.underruns,
        sync=sync, volume=player.state.volume, muted=player.state.muted,
        output_delay_ms=player.state.output_delay_ms,
        now_playing=hub.now_playing.snapshot(), colors=hub.colors.snapshot(),
        controller=hub.controller.to_dict() if hub.controller else None,
        pairing="speaking code" if session and session.speaking_pairing_code else
        "attempt in progress" if session and session.pairing_attempt_active else "idle",
        paired_servers=len(player.pairings.records()))
    if session is not None:
        info = session.info
        snap.connected = True
        snap.server_name, snap.server_id = info.server_name, info.server_id
        snap.encrypted = session.encrypted
        snap.connected_for_s = (local_now_us() - session.started_local_us) / 1e6
        snap.roles = list(session.active_roles)
        snap.group_name, snap.playback_state = info.group_name, info.playback_state
        snap.stream_format = info.stream_format
        snap.server_era = session.server_era
    else:
        snap.server_era = held_off(player.state.server_profiles, time.time())[1]
    return snap


def status_line(snap: StatusSnapshot) -> str:
    """One line (systemd STATUS=, ``--stats``)."""
    s = snap.sync
    server = snap.server_name or "no server"
    clock = (f"offset {s.offset_us / 1000:+.3f} ms ±{s.uncertainty_us} us "
             f"drift {s.drift_ppm:+.1f} ppm" if s.synchronized and s.offset_us is not None
             else "clock not synchronised")
    error = f"error {s.measured_error_us:+d} us" if s.measured_error_us is not None else "error -"
    playing = ""
    if snap.now_playing and snap.now_playing.get("title"):
        playing = f" | {snap.now_playing.get('title')}"
    return (f"[{snap.player_state}] {server} {snap.stream_format or '-'} | {clock} | {error} "
            f"corr {s.correction_ppm or 0:+d} ppm | rtt {s.rtt_us if s.rtt_us is not None else '-'} us "
            f"| buffer {snap.buffer_ms} ms | underruns {snap.underruns}{playing}")


def format_status(player) -> str:
    return status_line(snapshot(player))


# --------------------------------------------------------------------------- system and updates
# What `status` and `update status` show about the system itself, read from local files (so
# it is there even when the player is not running).  Reading never raises: what cannot be read
# is shown as such.

IMAGE_RELEASE = Path("/etc/resonate-image-release")
IMAGE_KEYS = ("VERSION", "ARCH", "KERNEL", "BUILT")
_RELEASE_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")


@attrs.define
class SystemInfo:
    player_version: str
    image: dict[str, str] | None  # /etc/resonate-image-release; None: not an SD image
    booted_slot: str | None  # None: not an A/B image (or the boot files are unreadable)
    primary_slot: str | None = None
    trial_slot: str | None = None  # armed in tryboot.txt
    slot_states: dict[str, str] = attrs.field(factory=dict)  # bootname -> good | bad
    slots_problem: str | None = None  # why the slots cannot be shown
    last_update: dict[str, Any] | None = None  # UpdateRecord as a dict


def player_version() -> str:
    """The installed distribution's version (the package's own when not installed)."""
    try:
        return importlib.metadata.version("resonate-embedded")
    except importlib.metadata.PackageNotFoundError:
        return __version__


def read_image_release(path: Path = IMAGE_RELEASE) -> dict[str, str] | None:
    """``KEY=value`` lines (``VERSION``, ``ARCH``, ``KERNEL``, ``BUILT``; quotes stripped,
    other lines ignored); None when there is no such file."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    found = (_RELEASE_LINE.match(line.strip()) for line in text.splitlines())
    return {m.group(1): m.group(2).strip().strip("'\"") for m in found if m}


def system_info(boot_dir: Path = DEFAULT_BOOT_DIR, cmdline: Path = DEFAULT_CMDLINE,
                release: Path = IMAGE_RELEASE, update_state: Path = STATE_FILE) -> SystemInfo:
    """Versions, slots and the last update, from local files (never raises)."""
    record = load_record(update_state)
    info = SystemInfo(player_version=player_version(), image=read_image_release(release),
                      booted_slot=None, last_update=attrs.asdict(record) if record else None)
    slots = BootSlots(boot_dir=boot_dir, cmdline=cmdline)
    try:
        if slots.booted() is None:
            info.slots_problem = "not an A/B image (no rauc.slot= on the kernel command line)"
            return info
        view = slots.view()
    except BootSlotError as exc:
        info.slots_problem = str(exc)
        return info
    info.booted_slot, info.primary_slot, info.trial_slot = view.booted, view.primary, view.trial
    info.slot_states = {slot: view.state(slot) for slot in PREFIXES}
    return info


def system_screen(info: SystemInfo) -> str:
    """The system lines of ``status`` (and ``update status``)."""
    image = info.image
    if image is None:
        image_text = "none (not an SD image: no release file)"
    else:
        extra = ", ".join(f"{key.lower()} {image[key]}" for key in IMAGE_KEYS[1:] if image.get(key))
        image_text = (image.get("VERSION") or "unknown version") + (f" ({extra})" if extra else "")
    lines = [f"versions    player {info.player_version}, image {image_text}"]
    if info.booted_slot is None:
        lines.append(f"slots       {info.slots_problem}")
    else:
        states = ", ".join(f"{slot} {state}" for slot, state in info.slot_states.items())
        trial = f", trial of {info.trial_slot} armed" if info.trial_slot else ""
        lines.append(f"slots       booted {info.booted_slot}, primary {info.primary_slot}{trial} "
                     f"({states})")
    record = info.last_update
    lines.append("update      " + (UpdateRecord(**record).summary() if record else "none yet"))
    return "\n".join(lines)
