"""Sendspin v1 JSON messages as attrs classes.

Parsing guarantees: :func:`parse_server_message` either returns a typed message
(unknown message types become :class:`UnknownMessage`, unknown keys are ignored)
or raises :class:`ProtocolError` with a one-line reason.  It never raises
anything else for any JSON text.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Union

import attrs

from resonate_embedded.audio.formats import CODECS, StreamFormat

MAX_TEXT_MESSAGE_BYTES = 1 << 20
MAX_TYPE_CHARS = 64  # an unknown message type is kept (and logged) only this long


class ProtocolError(ValueError):
    """A message that cannot be understood; the connection survives it."""


# --------------------------------------------------------------------------- helpers


def _field(payload: dict, key: str, kind: type | tuple[type, ...], required: bool = True) -> Any:
    value = payload.get(key)
    if value is None:
        if required:
            raise ProtocolError(f"missing field {key!r}")
        return None
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ProtocolError(f"field {key!r} has type {type(value).__name__}")
    return value


def _int_in(payload: dict, key: str, lo: int, hi: int, required: bool = True) -> int | None:
    value = _field(payload, key, int, required)
    if value is not None and not lo <= value <= hi:
        raise ProtocolError(f"field {key!r}={value} outside {lo}..{hi}")
    return value


def _roles(payload: dict) -> tuple[str, ...] | None:
    """Role list with version suffixes stripped; None when absent (= all roles)."""
    roles = payload.get("roles")
    if roles is None:
        return None
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise ProtocolError("field 'roles' is not a list of strings")
    return tuple(r.split("@", 1)[0] for r in roles)


# --------------------------------------------------------------------------- server → client


@attrs.frozen
class ServerHello:
    server_id: str
    name: str
    version: int
    active_roles: tuple[str, ...]
    connection_reason: str | None


@attrs.frozen
class ServerTime:
    client_transmitted_us: int
    server_received_us: int
    server_transmitted_us: int


@attrs.frozen
class GroupUpdate:
    """A delta: None means 'not in this message'."""

    playback_state: str | None
    group_id: str | None
    group_name: str | None


@attrs.frozen
class ServerState:
    """``server/state``: role objects (metadata, controller, color), parsed by their roles."""

    payload: dict[str, Any]


@attrs.frozen
class ServerCommand:
    command: str
    volume: int | None = None
    mute: bool | None = None
    output_delay_ms: int | None = None
    delay_key: str | None = None  # how the server named the delay: output_delay_ms / static_delay_ms


@attrs.frozen
class StreamStart:
    """The player part of stream/start (None when the message has no player part), and the
    announcement role's object as sent (parsed by that role)."""

    format: StreamFormat | None
    codec_header: bytes | None
    announcement: Any = None


@attrs.frozen
class StreamClear:
    roles: tuple[str, ...] | None

    def concerns_player(self) -> bool:
        return self.roles is None or "player" in self.roles


@attrs.frozen
class StreamEnd:
    roles: tuple[str, ...] | None

    def concerns_player(self) -> bool:
        return self.roles is None or "player" in self.roles

    def concerns_announcement(self) -> bool:
        """Only an explicit listing ends an announcement (spec: omitted roles do not)."""
        return self.roles is not None and "announcement" in self.roles


@attrs.frozen
class ServerError:
    reason: str


@attrs.frozen
class UnknownMessage:
    type: str


# -- encrypted sessions only (spec messaging.md / pairing.md) --


@attrs.frozen
class SecureServerHello:
    """server/hello under encryption: the server_id came with server/init."""

    name: str
    languages: tuple[str, ...] = ()


ACTIVITIES = ("playback", "pairing")


@attrs.frozen
class ServerActivate:
    activities: tuple[str, ...]
    active_roles: tuple[str, ...] | None  # None: omitted (keep the previous set)
    pairing_method: str | None = None
    pairing_format: str | None = None
    unknown_activities: tuple[str, ...] = ()


@attrs.frozen
class ServerPairFinalize:
    pass


@attrs.frozen
class PairAbort:
    reason: str


@attrs.frozen
class ServerUnpair:
    pass


@attrs.frozen
class ServerPairStep:
    """server/pair-init, server/pair-auth or server/pair-confirm (fields checked by the attempt)."""

    type: str
    payload: dict = attrs.field(eq=False)


ServerMessage = Union[
    ServerHello, ServerTime, GroupUpdate, ServerCommand, StreamStart, StreamClear, StreamEnd,
    ServerError, UnknownMessage, SecureServerHello, ServerActivate, ServerPairFinalize, PairAbort,
    ServerUnpair, ServerPairStep, ServerState,
]


def _parse_server_hello(p: dict) -> ServerHello:
    roles = p.get("active_roles") or []
    if not isinstance(roles, list):
        raise ProtocolError("field 'active_roles' is not a list")
    return ServerHello(
        server_id=_field(p, "server_id", str),
        name=_field(p, "name", str, required=False) or "",
        version=_field(p, "version", int, required=False) or 1,
        active_roles=tuple(str(r) for r in roles),
        connection_reason=_field(p, "connection_reason", str, required=False),
    )


def _parse_server_time(p: dict) -> ServerTime:
    return ServerTime(
        client_transmitted_us=_field(p, "client_transmitted", int),
        server_received_us=_field(p, "server_received", int),
        server_transmitted_us=_field(p, "server_transmitted", int),
    )


def _parse_group_update(p: dict) -> GroupUpdate:
    return GroupUpdate(
        playback_state=_field(p, "playback_state", str, required=False),
        group_id=_field(p, "group_id", str, required=False),
        group_name=_field(p, "group_name", str, required=False),
    )


def _parse_server_command(p: dict) -> ServerCommand | UnknownMessage:
    player = p.get("player")
    if player is None:
        return UnknownMessage("server/command")
    if not isinstance(player, dict):
        raise ProtocolError("field 'player' is not an object")
    delay_key = next((k for k in ("output_delay_ms", "static_delay_ms") if k in player), None)
    delay = player.get(delay_key) if delay_key else None
    if delay is not None and (not isinstance(delay, int) or isinstance(delay, bool)):
        raise ProtocolError("field 'output_delay_ms' is not an integer")
    mute = player.get("mute")
    if mute is not None and not isinstance(mute, bool):
        raise ProtocolError("field 'mute' is not a boolean")
    return ServerCommand(
        command=_field(player, "command", str),
        volume=_int_in(player, "volume", 0, 100, required=False),
        mute=mute,
        output_delay_ms=None if delay is None else min(max(delay, 0), 5000),
        delay_key=delay_key if delay is not None else None,
    )


def _parse_stream_format(p: dict) -> StreamFormat:
    codec = _field(p, "codec", str)
    if codec not in CODECS:
        raise ProtocolError(f"unknown codec {codec[:40]!r}")
    return StreamFormat(
        codec=codec,
        sample_rate=_int_in(p, "sample_rate", 1, 768_000),
        channels=_int_in(p, "channels", 1, 32),
        bit_depth=_int_in(p, "bit_depth", 1, 32),
    )


def _parse_stream_start(p: dict) -> StreamStart:
    player = p.get("player")
    if player is None:
        return StreamStart(None, None, p.get("announcement"))
    if not isinstance(player, dict):
        raise ProtocolError("field 'player' is not an object")
    header_b64 = _field(player, "codec_header", str, required=False)
    try:
        header = base64.b64decode(header_b64, validate=True) if header_b64 else None
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"codec_header is not base64: {exc}") from None
    return StreamStart(_parse_stream_format(player), header, p.get("announcement"))


def _str_list(p: dict, key: str, required: bool = True) -> tuple[str, ...] | None:
    value = p.get(key)
    if value is None:
        if required:
            raise ProtocolError(f"missing field {key!r}")
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"field {key!r} is not a list of strings")
    return tuple(value)


def _parse_secure_server_hello(p: dict) -> SecureServerHello:
    return SecureServerHello(name=_field(p, "name", str, required=False) or "",
                             languages=_str_list(p, "languages", required=False) or ())


def _parse_server_activate(p: dict) -> ServerActivate:
    activities = _str_list(p, "activities")
    pairing = p.get("pairing")
    method = fmt = None
    if "pairing" in activities:
        if not isinstance(pairing, dict):
            raise ProtocolError("'pairing' activity without a pairing object")
        method = _field(pairing, "method", str)
        fmt = _field(pairing, "format", str, required=False)
    return ServerActivate(
        activities=tuple(a for a in activities if a in ACTIVITIES),
        active_roles=_str_list(p, "active_roles", required=False),
        pairing_method=method, pairing_format=fmt,
        unknown_activities=tuple(a for a in activities if a not in ACTIVITIES))


_PARSERS = {
    "server/hello": _parse_server_hello,
    "server/activate": _parse_server_activate,
    "server/pair-finalize": lambda p: ServerPairFinalize(),
    "pair/abort": lambda p: PairAbort(str(p.get("reason", "unspecified"))),
    "server/unpair": lambda p: ServerUnpair(),
    "server/pair-init": lambda p: ServerPairStep("server/pair-init", p),
    "server/pair-auth": lambda p: ServerPairStep("server/pair-auth", p),
    "server/pair-confirm": lambda p: ServerPairStep("server/pair-confirm", p),
    "server/time": _parse_server_time,
    "group/update": _parse_group_update,
    "server/state": ServerState,
    "server/command": _parse_server_command,
    "stream/start": _parse_stream_start,
    "stream/clear": lambda p: StreamClear(_roles(p)),
    "stream/end": lambda p: StreamEnd(_roles(p)),
    "server/error": lambda p: ServerError(str(p.get("reason", "unspecified"))),
}


def parse_server_message(text: str, secure: bool = False) -> ServerMessage:
    """Parse one JSON text frame from the server (``secure``: an encrypted session's)."""
    if len(text) > MAX_TEXT_MESSAGE_BYTES:
        raise ProtocolError(f"text message of {len(text)} bytes is too large")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError; ints over 4300 digits
        raise ProtocolError(f"not JSON: {str(exc)[:120]}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError("not an object with a string 'type'")
    payload = obj.get("payload", {})
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise ProtocolError(f"{obj['type']}: payload is not an object")
    parser = _PARSERS.get(obj["type"])
    if secure and obj["type"] == "server/hello":
        parser = _parse_secure_server_hello
    if parser is None:
        return UnknownMessage(obj["type"][:MAX_TYPE_CHARS])
    try:
        return parser(payload)
    except ProtocolError as exc:
        raise ProtocolError(f"{obj['type']}: {exc}") from None


# --------------------------------------------------------------------------- client → server


def _dump(msg_type: str, payload: dict) -> str:
    return json.dumps({"type": msg_type, "payload": payload}, separators=(",", ":"))


@attrs.frozen
class DeviceInfo:
    product_name: str
    manufacturer: str
    software_version: str


@attrs.frozen
class ClientHello:
    client_id: str
    name: str
    device_info: DeviceInfo
    formats: tuple[StreamFormat, ...]
    buffer_capacity: int
    supported_commands: tuple[str, ...] = ("volume", "mute")
    # Roles beside the player: (role@version, its support object or None), in order.
    other_roles: tuple[tuple[str, Any], ...] = ()

    def _roles(self) -> dict[str, Any]:
        out: dict[str, Any] = {"supported_roles": ["player@v1", *(r for r, _ in self.other_roles)]}
        out.update({f"{r}_support": sup for r, sup in self.other_roles if sup is not None})
        return out

    def to_json(self) -> str:
        support = {
            "supported_formats": [attrs.asdict(f) for f in self.formats],
            "buffer_capacity": self.buffer_capacity,
            "supported_commands": list(self.supported_commands),
        }
        return _dump("client/hello", {
            "client_id": self.client_id,
            "name": self.name,
            "version": 1,
            "device_info": attrs.asdict(self.device_info),
            **self._roles(),
            "player@v1_support": support,
            "player_support": support,
        })

    def to_secure_json(self, unpaired_access: bool, spoken_code: bool = False,
                       older_noise: bool = False) -> str:
        """client/hello of an encrypted session (spec form: no client_id/version, commands
        and delay live in client/state, Pairing PSK offered, and with ``spoken_code`` the
        Dynamic Pairing Code spoken through the speaker).  ``older_noise``: the form
        aiosendspin 7.x-9.x require (volume/mute declared here, pairing methods a list,
        Pairing PSK only)."""
        support: dict[str, Any] = {"supported_formats": [attrs.asdict(f) for f in self.formats],
                                   "buffer_capacity": self.buffer_capacity}
        methods: Any = {"pairing_psk": {"locations": ["device"]}}
        if older_noise:
            support["supported_commands"] = list(self.supported_commands)
            methods = [{"method": "pairing_psk", "locations": ["device"]}]
        elif spoken_code:
            methods["dynamic_pairing_code"] = {"out_channels": ["speaker"], "formats": ["digits"]}
        return _dump("client/hello", {
            "name": self.name,
            "device_info": attrs.asdict(self.device_info),
            **self._roles(),
            "player@v1_support": support,
            "supported_pair_methods": methods,
            "unpaired_access": {"enabled": bool(unpaired_access)},
        })


@attrs.frozen
class PlayerState:
    """The player object of client/state (full or delta: None fields are left out)."""

    volume: int | None = None
    muted: bool | None = None
    output_delay_ms: int | None = None
    required_lead_time_ms: int | None = None
    min_buffer_ms: int | None = None
    supported_commands: tuple[str, ...] | None = None
    delay_key: str = "output_delay_ms"

    def to_payload(self) -> dict:
        out: dict[str, Any] = {}
        for key in ("volume", "muted", "required_lead_time_ms", "min_buffer_ms"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.output_delay_ms is not None:
            out[self.delay_key] = self.output_delay_ms
        if self.supported_commands is not None:
            out["supported_commands"] = list(self.supported_commands)
        return out


@attrs.frozen
class ClientState:
    state: str | None = None  # "synchronized" | "error" | "external_source" (plaintext servers)
    player: PlayerState | None = None
    available: bool | None = None  # encrypted sessions (current spec) say this instead of state
    announcement: dict[str, Any] | None = None

    def to_json(self) -> str:
        payload: dict[str, Any] = {}
        if self.available is not None:
            payload["available"] = self.available
        if self.state is not None:
            payload["state"] = self.state
        if self.player is not None:
            payload["player"] = self.player.to_payload()
        if self.announcement is not None:
            payload["announcement"] = self.announcement
        return _dump("client/state", payload)


def client_time_json(client_transmitted_us: int) -> str:
    return _dump("client/time", {"client_transmitted": client_transmitted_us})


def client_goodbye_json(reason: str) -> str:
    return _dump("client/goodbye", {"reason": reason})


def client_pair_init_json(pairing_index: int) -> str:
    return _dump("client/pair-init", {"pairing_index": pairing_index})


def client_pair_finalize_json(long_term_psk_b64url: str) -> str:
    return _dump("client/pair-finalize", {"long_term_psk": long_term_psk_b64url})


def pair_abort_json(reason: str) -> str:
    return _dump("pair/abort", {"reason": reason})


def client_message_json(msg_type: str, payload: dict) -> str:
    return _dump(msg_type, payload)
