"""Hypothesis fuzzing of mDNS TXT records → server URL/name (``server_from_record``, pure).
Contract: a usable ``ws://IPv4:port/path`` server or None; never an exception."""

from __future__ import annotations

from urllib.parse import urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resonate_embedded.discovery.mdns import (
    SENDSPIN_SERVER_SERVICE, DiscoveredServer, server_from_record,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

keys = st.sampled_from([b"path", b"PATH", b"name", b"server_id", b"\xff"]) | st.binary(max_size=8)
txt = st.dictionaries(keys, st.none() | st.binary(max_size=40)
                      | st.sampled_from([b"/sendspin", b"/", b"sendspin", b"/a b", b"/\xff"]), max_size=5)
addresses = st.lists(st.sampled_from(["192.168.1.5", "169.254.1.1", "0.0.0.0", "127.0.0.1",
                                      "fe80::1", "not an ip", "10.0.0.1", ""]) | st.ip_addresses(v=4).map(str),
                     max_size=3)
ports = st.none() | st.integers(min_value=-5, max_value=70000)


@FUZZ
@given(st.text(max_size=30), txt, addresses, ports)
def test_any_record_gives_a_usable_server_or_none(instance, props, addrs, port):
    name = f"{instance}.{SENDSPIN_SERVER_SERVICE}"
    server = server_from_record(name, SENDSPIN_SERVER_SERVICE, props, addrs, port, "sendspin")
    if server is None:
        return
    assert isinstance(server, DiscoveredServer)
    url = urlsplit(server.url)
    assert url.scheme == "ws" and url.hostname in addrs and url.port == port
    assert url.path.startswith("/") and " " not in server.url
    assert isinstance(server.name, str) and len(server.name) <= max(255, len(instance) + 1)


def test_a_plain_record():
    s = server_from_record(f"Living.{SENDSPIN_SERVER_SERVICE}", SENDSPIN_SERVER_SERVICE,
                           {b"path": b"/sendspin", b"name": "Küche".encode()},
                           ["169.254.0.9", "192.168.1.20"], 8927, "sendspin")
    assert s.url == "ws://192.168.1.20:8927/sendspin" and s.name == "Küche"
    assert server_from_record(f"Living.{SENDSPIN_SERVER_SERVICE}", SENDSPIN_SERVER_SERVICE,
                              {b"path": b"/sendspin"}, ["192.168.1.20"], 8927,
                              "sendspin").name == "Living"
