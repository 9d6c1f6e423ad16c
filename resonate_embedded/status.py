"""What the player believes, in one snapshot: ``status`` (Unix socket), the systemd STATUS=
line, ``--stats`` and the status light all read it from here."""

from __future__ import annotations

import time

from resonate_embedded import __version__
from resonate_embedded.clock.local import local_now_us
from resonate_embedded.control_socket import StatusSnapshot, SyncInfo
from resonate_embedded.light import LightState

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
