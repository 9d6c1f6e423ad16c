"""sd_notify over a real datagram socket; silent without systemd."""

import os
import socket

from resonate_embedded.systemd import Notifier


def test_notify_reaches_the_socket(tmp_path):
    path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    n = Notifier(path)
    n.notify(READY="1", STATUS="playing 48 kHz")
    assert server.recv(1024) == b"READY=1\nSTATUS=playing 48 kHz"
    server.close()


def test_without_systemd_nothing_happens(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    n.notify(WATCHDOG="1")


def test_gone_socket_is_survived(tmp_path):
    n = Notifier(str(tmp_path / "missing"))
    n.notify(WATCHDOG="1")
    n.notify(WATCHDOG="1")


def test_watchdog_interval(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier("").watchdog_interval_s() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert Notifier("").watchdog_interval_s() is None
