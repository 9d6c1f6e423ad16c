"""What differs between the aiosendspin 5.x-10.x servers, for ``sendspin_test_server.py``.

Runs in the server's venv (imports nothing from resonate_embedded).  Each name below is
read from the installed release, never from a version list:

* 5.x/6.x build the server from ``(loop, server_id, name)``; 7.x+ from a Noise identity
  and a pairing store (``allow_unencrypted=True`` keeps plaintext clients welcome);
* up to 9.x the player's delay is the *static* delay (``set_static_delay``,
  ``StaticDelayChangedEvent.static_delay_ms``); 10.x renamed it *output* delay;
* the connect/disconnect events exist from 9.x on.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiosendspin.server as _server_pkg
from aiosendspin.models.types import PlayerCommand
from aiosendspin.server import SendspinServer
from aiosendspin.server.roles.player.v1 import PlayerV1Role


class _Never:
    """Stands for an event class this release does not have (isinstance is always False)."""


OUTPUT_NAMING = hasattr(PlayerV1Role, "set_output_delay")
DELAY_COMMAND = PlayerCommand.SET_OUTPUT_DELAY if OUTPUT_NAMING else PlayerCommand.SET_STATIC_DELAY
DELAY_COMMANDS = tuple(c for c in PlayerCommand if c.value in ("set_output_delay", "set_static_delay"))
DELAY_EVENT = getattr(_server_pkg, "OutputDelayChangedEvent", None) or _server_pkg.StaticDelayChangedEvent
CLIENT_CONNECTED = getattr(_server_pkg, "ClientConnectedEvent", _Never)
CLIENT_DISCONNECTED = getattr(_server_pkg, "ClientDisconnectedEvent", _Never)
HAS_NOISE = "identity" in SendspinServer.__init__.__code__.co_varnames


def make_server(server_cls: type, loop: asyncio.AbstractEventLoop, name: str, server_id: str) -> Any:
    """A ``server_cls`` (SendspinServer or a subclass) of the installed release that also
    accepts plaintext clients."""
    if not HAS_NOISE:
        return server_cls(loop, server_id, name)
    from aiosendspin.noise import Identity, InMemoryServerPairingStore

    return server_cls(loop, identity=Identity.generate(), server_name=name,
                      pairing_store=InMemoryServerPairingStore(), allow_unencrypted=True)


def delay_ms(role: Any) -> int:
    return role.output_delay_ms if OUTPUT_NAMING else role.static_delay_ms


def delay_us(role: Any) -> int:
    return role.get_output_delay_us() if OUTPUT_NAMING else role.get_static_delay_us()


def set_delay(role: Any, ms: int) -> None:
    """The server's own API for the player's delay (positive = the speaker plays earlier)."""
    if OUTPUT_NAMING:
        role.set_output_delay(ms)
    else:
        role.set_static_delay(ms)


def event_delay_ms(event: Any) -> int:
    return getattr(event, "output_delay_ms", None) if OUTPUT_NAMING else event.static_delay_ms


class _NoZeroconf:
    """Stands for AsyncZeroconf with mDNS off: every method is an awaitable no-op."""

    def __init__(self, *_a: Any, **_kw: Any) -> None:
        pass

    def __getattr__(self, _name: str) -> Any:
        async def nothing(*_a: Any, **_kw: Any) -> None:
            return None

        return nothing


def disable_mdns(server_module: Any) -> None:
    """start_server() without zeroconf (up to 9.x an OSError there aborts the start)."""
    server_module.AsyncZeroconf = _NoZeroconf
    for name in ("_start_mdns_advertising", "_start_mdns_discovery"):
        if hasattr(SendspinServer, name):
            setattr(SendspinServer, name, _NoZeroconf().__getattr__(name))


class WireTruth:
    """``chunk`` events taken from what each player is sent (PCM only), for the releases
    whose ``commit_audio()`` timestamp is not the wire's (9.x rebases its commit timeline
    while the players' timeline runs on).  The frame index K of a chunk is the count of
    frames sent to that player since its last ``stream/start``."""

    def __init__(self) -> None:
        self.enabled = False
        self._next: dict[str, int] = {}
        self._seq = 0

    def stream_started(self, client_id: str | None) -> None:
        self._next[str(client_id)] = 0

    def chunk(self, role: Any, chunk: Any, client_id: str | None, emit: Any) -> None:
        fmt = getattr(role, "_last_sent_format", None)
        if fmt is None or getattr(fmt[0], "value", fmt[0]) != "pcm":
            return
        _codec, rate, channels, bits, _header = fmt
        frames = chunk.byte_count // (channels * bits // 8)
        first = self._next.get(str(client_id), 0)
        self._next[str(client_id)] = first + frames
        emit("chunk", seq=self._seq, server_ts_us=chunk.timestamp_us, first_frame=first,
             frames=frames, client_id=client_id,
             format={"sample_rate": rate, "bit_depth": bits, "channels": channels})
        self._seq += 1


def declares(client: Any, role: Any, command: Any) -> bool:
    """Whether the player declared ``command`` where this release looks for it: any delay
    command in ``client/state``; volume/mute in ``client/state`` (10.x) or in the hello's
    player support (up to 9.x)."""
    if command in DELAY_COMMANDS:
        return any(c in role.state_supported_commands for c in DELAY_COMMANDS)
    if OUTPUT_NAMING:
        return command in role.state_supported_commands
    support = client.info.player_support
    return support is not None and command in (support.supported_commands or [])
