"""mDNS on the loopback interface, against real zeroconf peers and real servers.

Everything binds zeroconf to 127.0.0.1 only (``interfaces=["127.0.0.1"]``): multicast
to 224.0.0.251 then loops back on ``lo`` and never leaves the machine (Linux delivers
multicast on ``lo`` although the interface lacks the MULTICAST flag).  Instance names
carry a random suffix so that runs never see each other's records.

* a plain zeroconf browser sees our ``_sendspin._tcp``/``_resonate._tcp`` records and TXT;
* our browser finds records published by plain zeroconf, and their removal;
* our browser finds real aiosendspin 10.2 and aioresonate 0.13.2 servers;
* real servers discover our advertisement and dial our listener.
"""

from __future__ import annotations

import time
import uuid

import pytest
import trio
from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, Zeroconf

from resonate_embedded.audio.formats import StreamFormat
from resonate_bench.harness import (
    RESONATE_SCRIPT, find_resonate_python, find_server_python, requires_venv, start_test_server,
)
from resonate_embedded.discovery.mdns import (
    Advertisement, DiscoveredServer, ServerRemoved, advertise, browse_servers, discover_server,
)
from resonate_embedded.protocol.listener import open_listener
from resonate_embedded.protocol.messages import ClientHello, DeviceInfo
from resonate_embedded.protocol.resonate_dialect import await_server_hello, resonate_hello_json

pytestmark = pytest.mark.e2e

LO = ["127.0.0.1"]
TIMEOUT = 60.0
S10_PYTHON = find_server_python()
R_PYTHON = find_resonate_python()
needs_s10 = requires_venv(S10_PYTHON, ".venv-server")
needs_r = requires_venv(R_PYTHON, ".venv-resonate")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def loopback_zeroconf() -> Zeroconf:
    return Zeroconf(interfaces=LO, ip_version=IPVersion.V4Only)


def test_plain_zeroconf_browser_sees_our_records():
    ad = Advertisement(instance=unique("Spk_01"), name="Küche Speaker", port=18999, resonate=True)

    def browse_and_resolve() -> dict[str, ServiceInfo]:
        zc = loopback_zeroconf()
        seen: list[tuple[str, str]] = []
        browser = ServiceBrowser(zc, ["_sendspin._tcp.local.", "_resonate._tcp.local."],
                                 handlers=[lambda zeroconf, service_type, name, state_change:
                                           seen.append((service_type, name))])
        try:
            end = time.monotonic() + TIMEOUT
            wanted = {f"{ad.instance}._sendspin._tcp.local.", f"{ad.instance}._resonate._tcp.local."}
            while not wanted <= {n for _, n in seen} and time.monotonic() < end:
                time.sleep(0.05)
            return {name: zc.get_service_info(t, name, 5000) for t, name in seen if name in wanted}
        finally:
            browser.cancel()
            zc.close()

    async def main():
        async with trio.open_nursery() as nursery:
            names = await nursery.start(lambda task_status: advertise(
                ad, interfaces=LO, addresses=LO, task_status=task_status))
            assert names == [f"{ad.instance}._sendspin._tcp.local.",
                             f"{ad.instance}._resonate._tcp.local."]
            infos = await trio.to_thread.run_sync(browse_and_resolve)
            nursery.cancel_scope.cancel()
        sendspin = infos[f"{ad.instance}._sendspin._tcp.local."]
        resonate = infos[f"{ad.instance}._resonate._tcp.local."]
        assert sendspin.decoded_properties == {"path": "/sendspin", "name": "Küche Speaker"}
        assert resonate.decoded_properties == {"path": "/resonate", "name": "Küche Speaker"}
        for info in (sendspin, resonate):
            assert info.port == 18999 and info.parsed_addresses() == LO
            assert info.server == f"{ad.instance.lower().replace('_', '-')}.local."

    trio.run(main)


def test_our_browser_finds_and_loses_plain_zeroconf_records():
    name = unique("srv")
    infos = [
        ServiceInfo("_sendspin-server._tcp.local.", f"{name}._sendspin-server._tcp.local.",
                    port=8927, properties={"path": "/sendspin", "name": "Living Room"},
                    parsed_addresses=LO, server=f"{name}.local."),
        ServiceInfo("_resonate-server._tcp.local.", f"{name}._resonate-server._tcp.local.",
                    port=8926, properties={"path": "/resonate"}, parsed_addresses=LO,
                    server=f"{name}.local."),
        ServiceInfo("_sendspin-server._tcp.local.", f"{name}-nopath._sendspin-server._tcp.local.",
                    port=8925, properties={"name": "no path"}, parsed_addresses=LO,
                    server=f"{name}.local."),
    ]

    async def main():
        zc = await trio.to_thread.run_sync(loopback_zeroconf)
        try:
            for info in infos:
                await trio.to_thread.run_sync(zc.register_service, info)
            found: dict[str, DiscoveredServer] = {}
            async with browse_servers(interfaces=LO) as events:
                with trio.fail_after(TIMEOUT):
                    async for event in events:
                        if isinstance(event, DiscoveredServer) and name in event.key:
                            found[event.key] = event
                        if len(found) == 2:
                            break
                assert found[infos[0].name] == DiscoveredServer(
                    infos[0].name, "ws://127.0.0.1:8927/sendspin", "Living Room", None, "sendspin")
                assert found[infos[1].name] == DiscoveredServer(
                    infos[1].name, "ws://127.0.0.1:8926/resonate", name, None, "resonate")
                await trio.to_thread.run_sync(zc.unregister_service, infos[0])
                with trio.fail_after(TIMEOUT):
                    async for event in events:
                        if event == ServerRemoved(infos[0].name, "sendspin"):
                            break
        finally:
            await trio.to_thread.run_sync(zc.close)

    trio.run(main)


def test_discover_server_prefers_sendspin():
    name = unique("pref")
    infos = [
        ServiceInfo("_resonate-server._tcp.local.", f"{name}._resonate-server._tcp.local.",
                    port=8926, properties={"path": "/resonate"}, parsed_addresses=LO,
                    server=f"{name}.local."),
        ServiceInfo("_sendspin-server._tcp.local.", f"{name}._sendspin-server._tcp.local.",
                    port=8927, properties={"path": "/sendspin"}, parsed_addresses=LO,
                    server=f"{name}.local."),
    ]

    async def main():
        zc = await trio.to_thread.run_sync(loopback_zeroconf)
        try:
            for info in infos:
                await trio.to_thread.run_sync(zc.register_service, info)
            server = await discover_server(TIMEOUT, interfaces=LO, settle_s=3.0)
            assert server is not None
            assert (server.dialect, server.url) == ("sendspin", "ws://127.0.0.1:8927/sendspin")
        finally:
            await trio.to_thread.run_sync(zc.close)

    trio.run(main)


async def find(key_part: str, dialect: str) -> DiscoveredServer:
    async with browse_servers((dialect,), interfaces=LO) as events:
        with trio.fail_after(TIMEOUT):
            async for event in events:
                if isinstance(event, DiscoveredServer) and key_part in event.key:
                    return event
    raise AssertionError("browse ended")


@needs_s10
def test_browser_finds_real_sendspin10_server():
    async def main():
        name = unique("S10 Test")
        async with start_test_server(S10_PYTHON, port=0, name=name,
                                     extra_args=["--advertise"]) as srv:
            server = await find(srv.ready["server_id"], "sendspin")
            assert server.url == srv.url and server.name == name and server.dialect == "sendspin"

    trio.run(main)


@needs_r
def test_browser_finds_real_resonate_server():
    async def main():
        name = unique("R Test")
        async with start_test_server(R_PYTHON, port=0, name=name, script=RESONATE_SCRIPT,
                                     extra_args=["--mdns"]) as srv:
            server = await find(name, "resonate")
            assert server.url == srv.url and server.name == name and server.dialect == "resonate"

    trio.run(main)


def speaker_hello(client_id: str) -> ClientHello:
    return ClientHello(client_id, client_id, DeviceInfo("t", "t", "0"),
                       (StreamFormat("pcm", 48000, 2, 16),), 32_000_000)


@needs_s10
def test_real_sendspin10_server_discovers_and_dials_us():
    async def main():
        async with open_listener(0, "127.0.0.1") as listener, trio.open_nursery() as nursery:
            ad = Advertisement(instance=unique("spk"), name="Dial Me", port=listener.port)
            await nursery.start(lambda task_status: advertise(
                ad, interfaces=LO, addresses=LO, task_status=task_status))
            async with start_test_server(S10_PYTHON, port=0,
                                         extra_args=["--discover-clients"]) as srv:
                with trio.fail_after(TIMEOUT):
                    conn = await listener.incoming.receive()
                async with conn:
                    assert conn.dialect == "sendspin"
                    await conn.send_text(speaker_hello(ad.instance).to_json())
                    server_hello = await await_server_hello(conn, TIMEOUT)
                    assert server_hello is not None
                    assert server_hello.server_id == srv.ready["server_id"]
            nursery.cancel_scope.cancel()

    trio.run(main)


@needs_r
def test_real_resonate_server_discovers_and_dials_our_twin_record():
    async def main():
        async with open_listener(0, "127.0.0.1") as listener, trio.open_nursery() as nursery:
            ad = Advertisement(instance=unique("spk"), name="Dial Me", port=listener.port,
                               resonate=True)
            await nursery.start(lambda task_status: advertise(
                ad, interfaces=LO, addresses=LO, task_status=task_status))
            async with start_test_server(R_PYTHON, port=0, script=RESONATE_SCRIPT,
                                         extra_args=["--mdns"]) as srv:
                with trio.fail_after(TIMEOUT):
                    conn = await listener.incoming.receive()
                async with conn:
                    assert conn.dialect == "resonate"
                    await conn.send_text(resonate_hello_json(speaker_hello(ad.instance)))
                    server_hello = await await_server_hello(conn, TIMEOUT)
                    assert server_hello is not None
                    assert server_hello.server_id == srv.ready["server_id"]
            nursery.cancel_scope.cancel()

    trio.run(main)
