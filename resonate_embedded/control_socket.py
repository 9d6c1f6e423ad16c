"""``resonate-embedded status``: a local Unix socket answering one JSON status snapshot.

Server side (:func:`serve_status`, a trio task in the player): listens on a Unix socket
(default ``<state_dir>/control.sock``, see :func:`socket_path`), mode 0600 (owner only),
and for each connection writes one JSON object (the player's :class:`StatusSnapshot`
as a dict) followed by a newline, then closes.  There is no network listener and the
socket reads nothing from its clients.  A stale socket file from a previous run is
replaced; the socket file is removed when the task ends.

Client side (:func:`fetch_status`, plain blocking sockets: the CLI runs no trio) and the
screen (:func:`status_screen`).  The snapshot's keys are defined once, by
:class:`StatusSnapshot` (the player fills it, ``to_dict`` serialises it).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Any, Callable

import attrs
import trio

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
MAX_REPLY_BYTES = 1 << 20
CLIENT_TIMEOUT_S = 2.0
SEND_TIMEOUT_S = 2.0
SNAPSHOT_VERSION = 1


def socket_path(state_dir: Path) -> Path:
    """Where the player listens (and ``status`` asks) for a state directory."""
    return Path(state_dir) / SOCKET_NAME


# --------------------------------------------------------------------------- the snapshot


@attrs.define
class SyncInfo:
    synchronized: bool = False
    offset_us: float | None = None  # server − local
    drift_ppm: float | None = None
    uncertainty_us: int | None = None  # the filter's offset standard deviation
    rtt_us: int | None = None
    measured_error_us: int | None = None  # the writer's error against the schedule
    correction_ppm: int | None = None


@attrs.define
class StatusSnapshot:
    """Everything ``status`` shows; the player fills what it knows (None: unknown)."""

    name: str = ""
    client_id: str = ""
    version: str = ""
    player_state: str = "booting"  # the light's state name: booting, waiting, playing, ...
    uptime_s: float = 0.0
    # connection
    connected: bool = False
    server_name: str | None = None
    server_id: str | None = None
    server_url: str | None = None
    encrypted: bool | None = None
    connected_for_s: float | None = None
    roles: list[str] = attrs.field(factory=list)  # active roles (e.g. "player@v1")
    group_name: str | None = None
    playback_state: str | None = None
    # audio
    stream_format: str | None = None  # e.g. "flac 48000 Hz 16 bit 2 ch"
    output_state: str | None = None  # writer state (synchronized / error / idle ...)
    buffer_ms: int | None = None
    underruns: int | None = None
    sync: SyncInfo = attrs.field(factory=SyncInfo)
    volume: int | None = None
    muted: bool | None = None
    output_delay_ms: int | None = None
    # roles beside the player
    now_playing: dict[str, Any] | None = None  # NowPlaying.snapshot()
    colors: dict[str, Any] | None = None  # ColorTimeline.snapshot()
    controller: dict[str, Any] | None = None  # ControllerState.to_dict()
    # pairing
    pairing: str | None = None  # e.g. "idle", "speaking code", "paired"
    paired_servers: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["snapshot_version"] = SNAPSHOT_VERSION
        return out


# --------------------------------------------------------------------------- server


def _bind_owner_only(path: Path) -> trio.socket.SocketType:
    """A listening Unix socket at ``path`` with mode 0600.

    The mode is set between ``bind`` and ``listen``: nobody can connect before ``listen``,
    so there is no window in which the socket is open to others.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(os.fspath(path))
        except OSError:
            path.unlink()  # stale, from a previous run
        else:
            raise OSError(errno.EADDRINUSE, f"another player answers on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))  # a local path: nothing to resolve, nothing blocks
        os.chmod(path, 0o600)
        sock.listen(8)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return trio.socket.from_stdlib_socket(sock)


async def _answer(conn: trio.socket.SocketType, snapshot: Callable[[], dict[str, Any]]) -> None:
    with conn:
        try:
            data = snapshot()
            body = json.dumps(data, separators=(",", ":"), default=str)
        except Exception as exc:  # a bug in the snapshot must not take the player down
            log.warning("status snapshot failed: %s", exc)
            body = json.dumps({"error": f"snapshot failed: {exc}"})
        payload = (body + "\n").encode()
        with trio.move_on_after(SEND_TIMEOUT_S):
            try:
                view = memoryview(payload)
                while view:
                    sent = await conn.send(view)
                    view = view[sent:]
            except OSError:
                pass  # the client went away


async def serve_status(path: Path, snapshot: Callable[[], dict[str, Any]], *,
                       task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Answer status requests on ``path`` until cancelled (use ``nursery.start``).

    ``snapshot`` is called once per connection, in the trio thread, and must return a
    JSON-serialisable dict (``StatusSnapshot(...).to_dict()``).  If the socket cannot be
    created, one warning is logged and the task idles (status is a convenience: the
    player plays on).
    """
    try:
        sock = _bind_owner_only(path)
    except OSError as exc:
        log.warning("status socket %s not available: %s", path, exc.strerror or exc)
        task_status.started()
        await trio.sleep_forever()
    task_status.started(path)
    try:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    conn, _ = await sock.accept()
                except OSError as exc:  # EMFILE and friends: back off, keep serving
                    log.warning("status socket accept: %s", exc.strerror or exc)
                    await trio.sleep(0.5)
                    continue
                nursery.start_soon(_answer, conn, snapshot)
    finally:
        sock.close()
        try:
            path.unlink()
        except OSError:
            pass


# --------------------------------------------------------------------------- client


class StatusUnavailable(Exception):
    """The player could not be asked (message says why and what to check)."""


def fetch_status(path: Path, timeout_s: float = CLIENT_TIMEOUT_S) -> dict[str, Any]:
    """Ask the player at ``path`` for its snapshot (blocking; raises :class:`StatusUnavailable`)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    chunks: list[bytes] = []
    try:
        sock.connect(os.fspath(path))
        size = 0
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_REPLY_BYTES:
                raise StatusUnavailable(f"{path}: reply larger than {MAX_REPLY_BYTES} bytes")
            chunks.append(chunk)
    except FileNotFoundError:
        raise StatusUnavailable(f"{path} does not exist: is the player running "
                                "(with this state directory)?") from None
    except ConnectionRefusedError:
        raise StatusUnavailable(f"{path}: nobody listening (the player is not running)") from None
    except PermissionError:
        raise StatusUnavailable(f"{path}: permission denied (run as the player's user)") from None
    except socket.timeout:
        raise StatusUnavailable(f"{path}: no answer within {timeout_s:g} s") from None
    except OSError as exc:
        raise StatusUnavailable(f"{path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        data = json.loads(b"".join(chunks))
    except ValueError:
        raise StatusUnavailable(f"{path}: the answer is not JSON") from None
    if not isinstance(data, dict):
        raise StatusUnavailable(f"{path}: the answer is not a JSON object")
    return data


# --------------------------------------------------------------------------- the screen


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    if d or h:
        return (f"{d}d " if d else "") + f"{h}h {m:02d}m {s:02d}s"
    return f"{m}m {s:02d}s"


def _ms(ms: Any) -> str:
    if not isinstance(ms, (int, float)):
        return "-"
    seconds = int(ms) // 1000
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _v(value: Any, unit: str = "") -> str:
    return "-" if value is None else f"{value}{unit}"


def status_screen(data: dict[str, Any]) -> str:
    """One human screen from a snapshot dict (missing keys show as ``-``)."""
    if "error" in data and len(data) == 1:
        return f"player error: {data['error']}"
    g = data.get
    lines = [f"{g('name') or 'speaker'}  [{g('player_state') or '-'}]  up {_dur(g('uptime_s'))}"
             + (f"  (resonate-embedded {g('version')})" if g("version") else "")]
    if g("connected"):
        server = g("server_name") or g("server_id") or "?"
        extra = ", ".join(filter(None, [
            g("server_url"), "encrypted" if g("encrypted") else "plaintext" if g("encrypted") is False else None,
            f"for {_dur(g('connected_for_s'))}" if g("connected_for_s") is not None else None]))
        lines.append(f"server      {server}" + (f" ({extra})" if extra else ""))
    else:
        lines.append("server      not connected")
    lines.append(f"roles       {', '.join(g('roles') or []) or '-'}")
    if g("group_name") or g("playback_state"):
        lines.append(f"group       {g('group_name') or '-'} ({g('playback_state') or '-'})")
    lines.append(f"stream      {g('stream_format') or '-'}"
                 + (f"  output {g('output_state')}" if g("output_state") else ""))
    sync = g("sync") or {}
    if sync.get("synchronized"):
        offset = sync.get("offset_us")
        lines.append(
            "sync        offset " + (f"{offset / 1000:+.3f} ms" if isinstance(offset, (int, float)) else "-")
            + f" ±{_v(sync.get('uncertainty_us'), ' us')}"
            + "  drift " + (f"{sync['drift_ppm']:+.2f} ppm" if isinstance(sync.get("drift_ppm"), (int, float)) else "-")
            + f"  error {_v(sync.get('measured_error_us'), ' us')}"
            + f"  rtt {_v(sync.get('rtt_us'), ' us')}")
    else:
        lines.append("sync        clock not synchronised")
    lines.append(f"buffer      {_v(g('buffer_ms'), ' ms')}"
                 + (f"  underruns {g('underruns')}" if g("underruns") is not None else ""))
    lines.append(f"volume      {_v(g('volume'))}{'  MUTED' if g('muted') else ''}"
                 f"  output delay {_v(g('output_delay_ms'), ' ms')}")
    now = g("now_playing")
    if isinstance(now, dict) and any(now.get(k) for k in ("title", "artist", "album")):
        what = now.get("title") or "(untitled)"
        if now.get("artist"):
            what += f" - {now['artist']}"
        if now.get("album"):
            what += f" ({now['album']})"
        pos = now.get("position_ms")
        if pos is not None:
            what += f"  {_ms(pos)}" + (f" / {_ms(now['duration_ms'])}" if now.get("duration_ms") else "")
            if now.get("playback_speed") == 0:
                what += " paused"
        lines.append(f"now playing {what}")
    else:
        lines.append("now playing -")
    if isinstance(g("colors"), dict) and g("colors").get("primary"):
        lines.append(f"colour      {g('colors')['primary']}")
    pairing = g("pairing") or "-"
    if g("paired_servers") is not None:
        pairing += f" ({g('paired_servers')} paired server{'s' if g('paired_servers') != 1 else ''})"
    lines.append(f"pairing     {pairing}")
    return "\n".join(lines)


def status_command(path: Path, as_json: bool = False) -> int:
    """The ``status`` CLI: print the screen (or JSON); exit status 0, or 1 when unavailable."""
    try:
        data = fetch_status(path)
    except StatusUnavailable as exc:
        print(f"resonate-embedded status: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(status_screen(data))
    return 0


def uptime_since(start_monotonic: float) -> float:
    """Seconds since ``start_monotonic`` (``time.monotonic()`` at start): for ``uptime_s``."""
    return time.monotonic() - start_monotonic
