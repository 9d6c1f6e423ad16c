"""systemd notification (``sd_notify``) without libsystemd.

Guarantees: every call is a single non-blocking datagram to ``$NOTIFY_SOCKET``
(or nothing at all when the variable is unset, so the player runs the same
without systemd); a failing send is reported once in the log, never raised.
:func:`notify_service` sends ``READY=1`` only once the player said it is ready, and
``WATCHDOG=1`` from then on only while it is alive.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address = None
        self._sock: socket.socket | None = None
        self._complained = False
        if address:
            # a leading '@' is Linux's abstract namespace
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, **fields: str) -> None:
        """Send ``KEY=value`` lines, e.g. ``notify(READY="1", STATUS="playing")``."""
        if self._sock is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            self._sock.sendto(message, self._address)
        except OSError as exc:
            if not self._complained:
                self._complained = True
                log.warning("sd_notify to %s failed: %s", self._address, exc)

    def watchdog_interval_s(self) -> float | None:
        """Half of systemd's ``WatchdogSec`` (the recommended ping period), if set for us."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2_000_000
        except ValueError:
            return None


async def notify_service(notifier: Notifier, wait_ready: Callable[[], Awaitable[None]],
                         alive: Callable[[], bool], status: Callable[[], str],
                         status_interval_s: float) -> None:
    """``STATUS=`` while starting; ``READY=1`` once ``wait_ready`` returns (never before);
    then every half ``WatchdogSec`` (at most ``status_interval_s``) ``STATUS=`` and,
    only while ``alive()``, ``WATCHDOG=1``.  Returns at once without systemd."""
    if not notifier.enabled:
        return
    notifier.notify(STATUS="starting: waiting for the audio device and the connection")
    await wait_ready()
    notifier.notify(READY="1", STATUS=status())
    interval = min(notifier.watchdog_interval_s() or status_interval_s, status_interval_s)
    while True:
        await trio.sleep(interval)
        fields = {"STATUS": status()}
        if alive():
            fields["WATCHDOG"] = "1"
        notifier.notify(**fields)
