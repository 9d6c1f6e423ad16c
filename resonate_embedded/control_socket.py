"""``resonate-embedded status`` and ``control``: a local Unix socket answering one JSON request.

Server side (:func:`serve_status`, a trio task in the player): listens on a Unix socket
(default ``<state_dir>/control.sock``, see :func:`socket_path`; a state directory of any
length: :mod:`resonate_embedded.unix_address`), mode 0600 (owner only: only
the player's user, and root, can ask or act), and for each connection reads at most one
request line, writes one JSON object followed by a newline, then closes.  There is no
network listener.  A stale socket file from a previous run is replaced; the socket file is
removed when the task ends.

Requests (one JSON object, one line, at most :data:`MAX_REQUEST_BYTES`):

* ``{"request": "status"}`` → the player's :class:`StatusSnapshot` as a dict.  A client that
  sends nothing (closes its sending side, or stays silent for :data:`REQUEST_TIMEOUT_S`)
  gets the same, so a bare ``socat - UNIX-CONNECT:control.sock`` still shows the status.
* ``{"request": "action", "action": "play_pause", "steps": 1}`` → the action (one of
  :data:`~resonate_embedded.roles.controller.ACTIONS`) is handed to the player's
  ``on_action`` callback (the same path as a button), and the reply says what was done:
  ``{"ok": true, "action": ..., "steps": ..., "result": "..."}``.

Anything else (not JSON, unknown request or action, bad ``steps``) is answered with
``{"error": "..."}`` and logged once (one warning line); the connection is closed and the
player goes on.

Client side (:func:`fetch_status`, :func:`send_action`; plain blocking sockets: the CLI runs
no trio) and the screen (:func:`status_screen`).  The snapshot's keys are defined once, by
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
from typing import Any, Awaitable, Callable

import attrs
import trio

from resonate_embedded.roles.controller import (
    ACTIONS, Action, ControllerError, commands_for, parse_controller,
)
from resonate_embedded.unix_address import unix_address

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
MAX_REPLY_BYTES = 1 << 20
CLIENT_TIMEOUT_S = 2.0
SEND_TIMEOUT_S = 2.0
SNAPSHOT_VERSION = 1
MAX_REQUEST_BYTES = 4096
REQUEST_TIMEOUT_S = 1.0  # a client silent this long is asking for the status
ACTION_TIMEOUT_S = 5.0  # the player takes the action within this, or the reply says busy
DRAIN_TIMEOUT_S = 0.5
MAX_STEPS = 100
VOLUME_ACTIONS = ("volume_up", "volume_down", "volume")

OnAction = Callable[[Action], Awaitable[Any]]


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
    server_era: str | None = None  # what the server has shown of its release, or why it is held off
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
            with unix_address(path) as address:
                probe.connect(address)
        except OSError:
            path.unlink()  # stale, from a previous run
        else:
            raise OSError(errno.EADDRINUSE, f"another player answers on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with unix_address(path) as address:
            sock.bind(address)  # a local path: nothing to resolve, nothing blocks
        os.chmod(path, 0o600)
        sock.listen(8)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return trio.socket.from_stdlib_socket(sock)


class RequestError(ValueError):
    """A request that cannot be carried out (the message is the reply's ``error``)."""


def parse_request(line: bytes) -> dict[str, Any]:
    """Validate one request line: ``{"request": "status"}`` or an action request
    (``{"request": "action", "action": name, "steps": n}``, normalised: ``steps`` filled in).
    Raises :class:`RequestError` with a one-line reason."""
    text = line.strip()
    if not text:
        return {"request": "status"}
    try:
        req = json.loads(text)
    except ValueError:
        raise RequestError("the request is not JSON") from None
    if not isinstance(req, dict):
        raise RequestError("the request is not a JSON object")
    kind = req.get("request", "status")
    if kind == "status":
        return {"request": "status"}
    if kind != "action":
        raise RequestError(f"unknown request {str(kind)[:40]!r} (status, action)")
    name = req.get("action")
    if not isinstance(name, str) or name not in ACTIONS:
        raise RequestError(f"unknown action {str(name)[:40]!r} (one of {', '.join(ACTIONS)})")
    steps = req.get("steps", 1)
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise RequestError(f"steps={str(steps)[:40]} is not an integer")
    if name in VOLUME_ACTIONS:
        lo = -MAX_STEPS if name == "volume" else 1
        if not lo <= steps <= MAX_STEPS or steps == 0:
            raise RequestError(f"{name}: steps={steps} outside "
                               f"{'±1..' if name == 'volume' else '1..'}{MAX_STEPS}")
    elif steps != 1:
        raise RequestError(f"{name}: steps only apply to volume actions")
    return {"request": "action", "action": name, "steps": steps}


async def _read_request(conn: trio.socket.SocketType) -> bytes:
    """The request line (without newline); empty when the client sends nothing within
    :data:`REQUEST_TIMEOUT_S` or closes its side first.  Raises :class:`RequestError` when
    the line is longer than :data:`MAX_REQUEST_BYTES`."""
    data = b""
    with trio.move_on_after(REQUEST_TIMEOUT_S):
        while b"\n" not in data:
            try:
                chunk = await conn.recv(MAX_REQUEST_BYTES + 1)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_REQUEST_BYTES and b"\n" not in data[:MAX_REQUEST_BYTES + 1]:
                raise RequestError(f"request longer than {MAX_REQUEST_BYTES} bytes")
    return data.split(b"\n", 1)[0]


def _outcome(action: Action, before: dict[str, Any] | None) -> str:
    """What the player does with ``action``, predicted from the status just before it by
    the rule the player applies (``Player._carry_out``: a server with the controller role
    gets the ``client/command`` messages of :func:`commands_for`, else this speaker changes)."""
    controller = before.get("controller") if before and before.get("connected") else None
    if isinstance(controller, dict):
        server = before.get("server_name") or before.get("server_id") or "the server"
        try:
            state = parse_controller(controller)
        except ControllerError:
            state = None
        if state is not None:
            # The step size only matters for the value, not for whether anything is sent.
            sent = commands_for(action, state, before.get("playback_state"), 1)
            if sent:
                return f"sent to {server} as client/command {', '.join(c.command for c in sent)}"
            return (f"not sent: nothing {server} supports now (supported_commands: "
                    f"{', '.join(sorted(state.supported_commands)) or 'none'})")
    if action.volume_steps() or action.name == "mute":
        return "applied to this speaker (no server with the controller role): volume/mute saved"
    return "nothing to do without a server with the controller role"


async def _act(request: dict[str, Any], snapshot: Callable[[], dict[str, Any]],
               on_action: OnAction | None) -> dict[str, Any]:
    if on_action is None:
        raise RequestError("this player takes no actions over the control socket")
    action = Action(request["action"], request["steps"])
    try:
        before = snapshot()
    except Exception:  # the outcome text is a courtesy; the action still goes through
        before = None
    with trio.move_on_after(ACTION_TIMEOUT_S) as scope:
        result = await on_action(action)
    if scope.cancelled_caught:
        raise RequestError(f"the player did not take the action within {ACTION_TIMEOUT_S:g} s")
    return {"ok": True, "action": action.name, "steps": action.steps,
            "result": result if isinstance(result, str) else _outcome(action, before)}


async def _answer(conn: trio.socket.SocketType, snapshot: Callable[[], dict[str, Any]],
                  on_action: OnAction | None = None) -> None:
    with conn:
        try:
            request = parse_request(await _read_request(conn))
            if request["request"] == "action":
                data = await _act(request, snapshot, on_action)
                log.info("control socket: %s%s", request["action"],
                         f" ×{request['steps']}" if request["steps"] != 1 else "")
            else:
                data = snapshot()
            body = json.dumps(data, separators=(",", ":"), default=str)
        except RequestError as exc:
            log.warning("control socket: refused a request: %s", exc)
            body = json.dumps({"error": str(exc)})
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
                # Closing with unread input would reset the connection and the client
                # could lose the reply (an oversized request): end our side, then read
                # what is left (bounded) until the client closes.
                conn.shutdown(socket.SHUT_WR)
                with trio.move_on_after(DRAIN_TIMEOUT_S):
                    left = MAX_REQUEST_BYTES * 16
                    while left > 0 and (chunk := await conn.recv(65536)):
                        left -= len(chunk)
            except OSError:
                pass  # the client went away


async def serve_status(path: Path, snapshot: Callable[[], dict[str, Any]],
                       on_action: OnAction | None = None, *,
                       task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Answer status and action requests on ``path`` until cancelled (use ``nursery.start``).

    ``snapshot`` is called once per status request, in the trio thread, and must return a
    JSON-serialisable dict (``StatusSnapshot(...).to_dict()``).  ``on_action`` (the player's
    ``act``) is awaited with each valid :class:`Action`; what it returns, if a string, is the
    reply's ``result``.  Without it action requests are refused.  If the socket cannot be
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
                nursery.start_soon(_answer, conn, snapshot, on_action)
    finally:
        sock.close()
        try:
            path.unlink()
        except OSError:
            pass


# --------------------------------------------------------------------------- client


class StatusUnavailable(Exception):
    """The player could not be asked (message says why and what to check)."""


def request(path: Path, req: dict[str, Any], timeout_s: float = CLIENT_TIMEOUT_S) -> dict[str, Any]:
    """Send one request to the player at ``path`` and return its JSON reply (blocking;
    raises :class:`StatusUnavailable`)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    chunks: list[bytes] = []
    try:
        with unix_address(path) as address:
            sock.connect(address)
        sock.sendall((json.dumps(req, separators=(",", ":")) + "\n").encode())
        size = 0
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                if chunks:  # a player that does not read requests answered and closed
                    break
                raise
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


def fetch_status(path: Path, timeout_s: float = CLIENT_TIMEOUT_S) -> dict[str, Any]:
    """Ask the player at ``path`` for its snapshot (blocking; raises :class:`StatusUnavailable`)."""
    return request(path, {"request": "status"}, timeout_s)


def send_action(path: Path, action: str, steps: int = 1,
                timeout_s: float = ACTION_TIMEOUT_S + CLIENT_TIMEOUT_S) -> dict[str, Any]:
    """Ask the player at ``path`` to carry out ``action`` (blocking); the reply
    (``{"ok": true, ...}`` or ``{"error": ...}``).  Raises :class:`StatusUnavailable`."""
    return request(path, {"request": "action", "action": action, "steps": steps}, timeout_s)


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
    if g("server_era"):
        lines.append(f"era         {g('server_era')}")
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


def status_command(path: Path, as_json: bool = False, system: dict[str, Any] | None = None) -> int:
    """The ``status`` CLI: print the screen (or JSON); exit status 0, or 1 when the player is
    unavailable.  ``system`` (versions, slots, last update: read from files, so known even
    without a player) is the JSON's ``system`` key; the screen's system lines are the caller's."""
    try:
        data = fetch_status(path)
    except StatusUnavailable as exc:
        print(f"resonate-embedded status: {exc}", file=sys.stderr)
        if as_json and system is not None:
            print(json.dumps({"error": str(exc), "system": system}, indent=2, sort_keys=True))
        return 1
    if as_json:
        print(json.dumps(data if system is None else {**data, "system": system}, indent=2, sort_keys=True))
    else:
        print(status_screen(data))
    return 0


def control_command(path: Path, action: str, steps: int = 1) -> int:
    """The ``control`` CLI: hand ``action`` to the running player and print what happened;
    exit status 0, 1 when the player cannot be asked, 2 when it refused the request."""
    try:
        reply = send_action(path, action, steps)
    except StatusUnavailable as exc:
        print(f"resonate-embedded control: {exc}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"resonate-embedded control: the player refused: {reply.get('error', reply)}",
              file=sys.stderr)
        return 2
    what = reply.get("action", action)
    count = reply.get("steps", steps)
    print(f"{what}{f' ×{count}' if count != 1 else ''}: {reply.get('result', 'done')}")
    return 0


def uptime_since(start_monotonic: float) -> float:
    """Seconds since ``start_monotonic`` (``time.monotonic()`` at start): for ``uptime_s``."""
    return time.monotonic() - start_monotonic
