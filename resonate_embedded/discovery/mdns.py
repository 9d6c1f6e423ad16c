"""mDNS for both connection modes, on top of the ``zeroconf`` library.

* **Server-initiated mode** (the speaker is dialled): :func:`advertise` publishes
  ``_sendspin._tcp.local.`` (TXT ``path=/sendspin``, ``name=<speaker name>``) and, when
  asked, the Resonate twin ``_resonate._tcp.local.`` (TXT ``path=/resonate``).
* **Client-initiated mode** (the speaker dials): :func:`browse_servers` watches
  ``_sendspin-server._tcp.local.`` and ``_resonate-server._tcp.local.`` and yields
  :class:`DiscoveredServer` / :class:`ServerRemoved` records; :func:`discover_server`
  picks one.

The spec forbids doing both at once (a client that advertises ``_sendspin._tcp`` must not
dial servers), so each function owns its own ``Zeroconf`` instance.

Threading guarantee: zeroconf runs its own asyncio loop and browser threads.  Nothing
here blocks the trio thread: every blocking zeroconf call (construction, register,
update, unregister, resolve, close) runs in ``trio.to_thread``, and browser callbacks
are handed to trio with ``TrioToken.run_sync_soon`` (never blocking zeroconf's thread).
IPv4 only, like every Sendspin/Resonate server.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import attrs
import ifaddr
import trio
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from resonate_embedded.protocol.listener import DEFAULT_CLIENT_PORT
from resonate_embedded.protocol.resonate_dialect import RESONATE_PATH, SENDSPIN_PATH, Dialect

log = logging.getLogger(__name__)

SENDSPIN_CLIENT_SERVICE = "_sendspin._tcp.local."
RESONATE_CLIENT_SERVICE = "_resonate._tcp.local."
SENDSPIN_SERVER_SERVICE = "_sendspin-server._tcp.local."
RESONATE_SERVER_SERVICE = "_resonate-server._tcp.local."
SERVER_SERVICES: dict[Dialect, str] = {
    "sendspin": SENDSPIN_SERVER_SERVICE,
    "resonate": RESONATE_SERVER_SERVICE,
}

RESOLVE_TIMEOUT_MS = 3000
ADDRESS_REFRESH_S = 30.0
CLOSE_TIMEOUT_S = 5.0
EVENT_BUFFER = 256

Interfaces = Sequence[str] | None  # None: every interface (InterfaceChoice.All)


# --------------------------------------------------------------------------- records


@attrs.frozen
class Advertisement:
    """What the speaker publishes so that servers can dial it.

    ``instance`` is the DNS-SD instance label (the reference client uses its client_id);
    ``name`` goes into TXT ``name`` (the spec says it should equal client/hello's name).
    """

    instance: str
    name: str
    port: int = DEFAULT_CLIENT_PORT
    resonate: bool = False


@attrs.frozen
class DiscoveredServer:
    """A server found by mDNS.  ``key`` (the full service name) identifies it until it
    goes away; ``server_id`` is only set when the TXT record carries one (the
    authoritative id is server/hello's)."""

    key: str
    url: str
    name: str
    server_id: str | None
    dialect: Dialect


@attrs.frozen
class ServerRemoved:
    key: str
    dialect: Dialect


BrowseEvent = DiscoveredServer | ServerRemoved


# --------------------------------------------------------------------------- helpers


def _interface_choice(interfaces: Interfaces) -> InterfaceChoice | list[str]:
    return InterfaceChoice.All if interfaces is None else list(interfaces)


def _usable_ipv4(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    return ip.version == 4 and not (ip.is_loopback or ip.is_link_local or ip.is_unspecified)


def local_ipv4_addresses() -> tuple[str, ...]:
    """This host's IPv4 addresses a server on the LAN could dial (sorted; no loopback,
    link-local or unspecified addresses)."""
    found = {str(ip.ip) for adapter in ifaddr.get_adapters() for ip in adapter.ips
             if isinstance(ip.ip, str) and _usable_ipv4(ip.ip)}
    return tuple(sorted(found))


def host_label(instance: str) -> str:
    """A valid DNS host label derived from ``instance`` (lower-case letters, digits, '-')."""
    label = re.sub(r"[^a-z0-9-]+", "-", instance.lower()).strip("-")[:63].strip("-")
    return label or "speaker"


def service_infos(ad: Advertisement, addresses: Sequence[str]) -> list[ServiceInfo]:
    """The DNS-SD records for ``ad``: always Sendspin, plus Resonate when asked."""
    kinds = [(SENDSPIN_CLIENT_SERVICE, SENDSPIN_PATH)]
    if ad.resonate:
        kinds.append((RESONATE_CLIENT_SERVICE, RESONATE_PATH))
    return [ServiceInfo(service, f"{ad.instance}.{service}", port=ad.port,
                        properties={"path": path, "name": ad.name},
                        server=f"{host_label(ad.instance)}.local.",
                        parsed_addresses=list(addresses))
            for service, path in kinds]


def server_from_info(info: ServiceInfo, dialect: Dialect) -> DiscoveredServer | None:
    """The server a resolved record describes (see :func:`server_from_record`)."""
    return server_from_record(info.name, info.type, info.properties,
                              info.parsed_addresses(IPVersion.V4Only), info.port, dialect)


MAX_TXT_VALUE_CHARS = 255  # a TXT string is at most 255 bytes on the wire


def _txt(properties: dict, key: str) -> str | None:
    """A TXT value as text (invalid UTF-8 replaced), None when absent or valueless."""
    for k, v in properties.items():
        name = k.decode("utf-8", "replace") if isinstance(k, (bytes, bytearray)) else str(k)
        if name.lower() == key:
            if v is None:
                return None
            text = v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else str(v)
            return text[:MAX_TXT_VALUE_CHARS]
    return None


def server_from_record(name: str, type_: str, properties: dict, addresses: Sequence[str],
                       port: int | None, dialect: Dialect) -> DiscoveredServer | None:
    """The server a resolved DNS-SD record describes: pure, never raises.

    ``properties`` is the raw TXT dict (bytes → bytes or None).  None without a usable
    IPv4 address (not link-local or unspecified), a port in 1..65535, or a TXT ``path``
    starting with '/' (the rule aiosendspin applies to clients) that is a plain URL path.
    """
    path = _txt(properties, "path")
    usable = []
    for a in addresses:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            continue
        if ip.version == 4 and not ip.is_link_local and not ip.is_unspecified:
            usable.append(str(ip))
    if (not usable or not isinstance(port, int) or not 0 < port < 65536 or not path
            or not path.startswith("/") or not _URL_PATH.fullmatch(path)):
        return None
    instance = name.removesuffix("." + type_).rstrip(".")
    return DiscoveredServer(key=name, url=f"ws://{usable[0]}:{port}{path}",
                            name=_txt(properties, "name") or instance,
                            server_id=_txt(properties, "server_id"), dialect=dialect)


_URL_PATH = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")


async def _open_zeroconf(interfaces: Interfaces) -> Zeroconf:
    return await trio.to_thread.run_sync(
        lambda: Zeroconf(interfaces=_interface_choice(interfaces), ip_version=IPVersion.V4Only))


async def _close_zeroconf(zc: Zeroconf, infos: Sequence[ServiceInfo] = ()) -> None:
    """Withdraw ``infos`` (goodbye packets) and close; shielded and bounded in time."""

    def close() -> None:
        for info in infos:
            try:
                zc.unregister_service(info)
            except Exception as exc:  # noqa: BLE001 - best effort on the way out
                log.debug("unregistering %s failed: %s", info.name, exc)
        zc.close()

    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
        await trio.to_thread.run_sync(close, abandon_on_cancel=True)


# --------------------------------------------------------------------------- advertising


async def advertise(ad: Advertisement, *, interfaces: Interfaces = None,
                    addresses: Sequence[str] | None = None,
                    refresh_s: float = ADDRESS_REFRESH_S,
                    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Publish ``ad`` until cancelled (``nursery.start_soon(advertise, ad)``).

    ``task_status.started`` gets the registered service names once they are published
    (zeroconf renames an instance whose name is taken), so ``await nursery.start(...)``
    waits for that.  With ``addresses=None`` the host's addresses
    (:func:`local_ipv4_addresses`) are published and re-read every ``refresh_s``; when
    they change (Wi-Fi came up, DHCP renewed) zeroconf is reopened, so it joins the
    multicast group on the new interfaces, and the records are published again.  A
    failure is logged and retried after ``refresh_s``; it never ends the task.  On
    cancellation the records are withdrawn with goodbye packets.
    """
    fixed = tuple(addresses) if addresses is not None else None
    current = fixed if fixed is not None else await trio.to_thread.run_sync(local_ipv4_addresses)
    started = False
    while True:
        try:
            async with _registered(ad, current, interfaces) as names:
                if not started:
                    task_status.started(names)
                    started = True
                current = await _wait_for_address_change(current, fixed, refresh_s)
        except Exception:  # noqa: BLE001 - crash-only: mDNS trouble must not end the speaker
            log.exception("mDNS advertising failed; retrying in %.0f s", refresh_s)
            await trio.sleep(refresh_s)
            if fixed is None:
                current = await trio.to_thread.run_sync(local_ipv4_addresses)


@asynccontextmanager
async def _registered(ad: Advertisement, addresses: Sequence[str],
                      interfaces: Interfaces) -> AsyncIterator[list[str]]:
    zc = await _open_zeroconf(interfaces)
    infos = service_infos(ad, addresses)
    registered: list[ServiceInfo] = []
    try:
        for info in infos:
            # probing takes seconds: a stop meanwhile abandons it (zeroconf's close withdraws it)
            await trio.to_thread.run_sync(
                functools.partial(zc.register_service, info, allow_name_change=True),
                abandon_on_cancel=True)
            registered.append(info)
        log.info("advertising %s on %s port %d", [i.name for i in infos],
                 ", ".join(addresses) or "no address yet", ad.port)
        yield [i.name for i in infos]
    finally:
        await _close_zeroconf(zc, registered)


async def _wait_for_address_change(current: tuple[str, ...], fixed: tuple[str, ...] | None,
                                   refresh_s: float) -> tuple[str, ...]:
    if fixed is not None:
        await trio.sleep_forever()
    while True:
        await trio.sleep(refresh_s)
        now = await trio.to_thread.run_sync(local_ipv4_addresses)
        if now != current:
            log.info("local addresses changed: %s -> %s", current, now)
            return now


# --------------------------------------------------------------------------- browsing


@asynccontextmanager
async def browse_servers(dialects: Sequence[Dialect] = ("sendspin", "resonate"), *,
                         interfaces: Interfaces = None
                         ) -> AsyncIterator[trio.MemoryReceiveChannel[BrowseEvent]]:
    """Watch for servers of the given dialects; yields a channel of browse events.

    A server appears as :class:`DiscoveredServer` once its record resolves to a usable
    URL (again, with the same ``key``, when its record changes) and as
    :class:`ServerRemoved` when it says goodbye or expires.  Browsing stops (threads
    joined, sockets closed) when the block exits.
    """
    token = trio.lowlevel.current_trio_token()
    raw_send, raw_receive = trio.open_memory_channel[tuple[str, str, ServiceStateChange]](
        EVENT_BUFFER)
    out_send, out_receive = trio.open_memory_channel[BrowseEvent](EVENT_BUFFER)
    types = {SERVER_SERVICES[d]: d for d in dialects}

    def deliver(item: tuple[str, str, ServiceStateChange]) -> None:  # runs in trio
        try:
            raw_send.send_nowait(item)
        except trio.WouldBlock:
            log.warning("mDNS event flood: dropping %s", item[1])
        except trio.ClosedResourceError:
            pass

    def on_change(zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:  # runs in zeroconf's thread
        try:
            token.run_sync_soon(deliver, (service_type, name, state_change))
        except trio.RunFinishedError:
            pass

    zc = await _open_zeroconf(interfaces)
    try:
        browser = ServiceBrowser(zc, list(types), handlers=[on_change])
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_resolve_events, zc, types, raw_receive, out_send)
                async with out_receive:
                    yield out_receive
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                await trio.to_thread.run_sync(browser.cancel, abandon_on_cancel=True)
    finally:
        raw_send.close()
        await _close_zeroconf(zc)


async def _resolve_events(zc: Zeroconf, types: dict[str, Dialect],
                          raw: trio.MemoryReceiveChannel[tuple[str, str, ServiceStateChange]],
                          out: trio.MemorySendChannel[BrowseEvent]) -> None:
    async with out:
        async for service_type, name, change in raw:
            dialect = types[service_type]
            if change is ServiceStateChange.Removed:
                event: BrowseEvent | None = ServerRemoved(name, dialect)
            else:
                info = await trio.to_thread.run_sync(
                    lambda: zc.get_service_info(service_type, name, RESOLVE_TIMEOUT_MS),
                    abandon_on_cancel=True)
                event = server_from_info(info, dialect) if info is not None else None
                if event is None:
                    log.info("ignoring %s: no usable address, port or path", name)
            if event is not None:
                try:
                    out.send_nowait(event)
                except trio.WouldBlock:
                    log.warning("mDNS consumer too slow: dropping %s", name)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return


async def discover_server(timeout_s: float, *,
                          dialects: Sequence[Dialect] = ("sendspin", "resonate"),
                          settle_s: float = 1.0,
                          interfaces: Interfaces = None) -> DiscoveredServer | None:
    """The server to dial in client-initiated mode, or None if none showed up in time.

    After the first server appears, waits ``settle_s`` more for others and then prefers
    the earliest of the first dialect in ``dialects`` (Sendspin before Resonate).
    """
    found: list[DiscoveredServer] = []
    async with browse_servers(dialects, interfaces=interfaces) as events:
        with trio.move_on_after(timeout_s):
            async for event in events:
                if isinstance(event, DiscoveredServer):
                    found.append(event)
                    break
        if found:
            with trio.move_on_after(settle_s):
                async for event in events:
                    if isinstance(event, DiscoveredServer):
                        found.append(event)
    return min(found, key=lambda s: dialects.index(s.dialect)) if found else None
