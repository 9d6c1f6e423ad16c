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


def test_ready_waits_for_the_player_and_pings_only_while_alive(tmp_path, monkeypatch):
    """READY=1 never before ``wait_ready`` returns; WATCHDOG=1 only while ``alive()``."""
    import trio
    import trio.testing

    from resonate_embedded.systemd import notify_service

    path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.setblocking(False)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    ready, state = trio.Event(), {"alive": True}

    def received() -> list[bytes]:
        out = []
        while True:
            try:
                out.append(server.recv(1024))
            except BlockingIOError:
                return out

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(notify_service, Notifier(path), ready.wait,
                               lambda: state["alive"], lambda: "playing", 5.0)
            await trio.sleep(100)
            assert [m.split(b"\n")[0] for m in received()] == [
                b"STATUS=starting: waiting for the audio device and the connection"]
            ready.set()
            await trio.sleep(2.5)  # READY, then two pings a second apart
            assert received() == [b"READY=1\nSTATUS=playing", b"STATUS=playing\nWATCHDOG=1",
                                  b"STATUS=playing\nWATCHDOG=1"]
            state["alive"] = False
            await trio.sleep(3)
            assert received() == [b"STATUS=playing"] * 3
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
