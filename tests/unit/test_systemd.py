"""sd_notify over a real datagram socket; silent without systemd."""

import logging
import os
import socket

from resonate_embedded.systemd import Notifier


def datagram_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    return sock


def test_notify_reaches_the_socket(tmp_path):
    path = str(tmp_path / "notify")
    server = datagram_socket(path)
    n = Notifier(path)
    n.notify(READY="1", STATUS="playing 48 kHz")
    assert server.recv(1024) == b"READY=1\nSTATUS=playing 48 kHz"
    server.close()


def test_without_systemd_nothing_happens(monkeypatch, caplog):
    """NOTIFY_SOCKET unset: the notifier is disabled, and notify() raises and logs nothing."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    with caplog.at_level(logging.DEBUG):
        n.notify(READY="1")
        n.notify(WATCHDOG="1")
    assert caplog.records == []


def test_gone_socket_is_survived(tmp_path, caplog):
    """Sends to a socket that is not there raise nothing and are logged once; when the socket
    appears, the next notification reaches it."""
    path = str(tmp_path / "notify")
    n = Notifier(path)
    with caplog.at_level(logging.WARNING):
        n.notify(WATCHDOG="1")
        n.notify(WATCHDOG="1")
    assert [r.getMessage() for r in caplog.records if "sd_notify" in r.getMessage()] \
        == [f"sd_notify to {path} failed: [Errno 2] No such file or directory"]
    server = datagram_socket(path)
    n.notify(STATUS="back")
    assert server.recv(1024) == b"STATUS=back"
    server.close()


def test_watchdog_interval(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier("").watchdog_interval_s() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert Notifier("").watchdog_interval_s() is None
