"""An in-memory network for the setup page's tests and ``setup-page --fake-network``."""

from __future__ import annotations

import threading
from typing import Sequence

from resonate_embedded.setup.hotspot import NetStatus, Network


class FakeNetwork:
    """In-memory network for tests and ``setup-page --fake-network``.

    ``passwords`` maps the SSIDs that can be joined to their passphrase ("" = open);
    joining anything else "fails" (status stays not connected), like a wrong password.
    """

    def __init__(self, networks: Sequence[Network] | None = None,
                 passwords: dict[str, str] | None = None, configured: bool = False) -> None:
        self.networks = list(networks if networks is not None else (
            Network("Home Wi-Fi", 82), Network("Neighbour", 40), Network("Cafe Guest", 25, False)))
        self.passwords = dict(passwords if passwords is not None else {"Home Wi-Fi": "correct horse"})
        self.configured = configured
        self.joined: tuple[str, str, str] | None = None
        self.connected = False
        self.ap: tuple[str, str | None] | None = None
        self.calls: list[tuple] = []
        self._lock = threading.Lock()

    def scan(self) -> list[Network]:
        with self._lock:
            self.calls.append(("scan",))
            return list(self.networks)

    def start_ap(self, ssid: str, password: str | None) -> None:
        with self._lock:
            self.calls.append(("start_ap", ssid, password))
            self.ap = (ssid, password)
            self.connected = False

    def stop_ap(self) -> None:
        with self._lock:
            self.calls.append(("stop_ap",))
            self.ap = None
            self.connected = self._can_join()

    def join(self, ssid: str, psk: str, country: str) -> None:
        with self._lock:
            self.calls.append(("join", ssid, psk, country))
            self.configured = True
            self.joined = (ssid, psk, country)
            self.connected = self.ap is None and self._can_join()

    def _can_join(self) -> bool:
        return self.joined is not None and self.passwords.get(self.joined[0]) == self.joined[1]

    def status(self) -> NetStatus:
        with self._lock:
            return NetStatus(configured=self.configured, connected=self.connected,
                             ssid=self.joined[0] if self.connected and self.joined else None,
                             ap_active=self.ap is not None)
