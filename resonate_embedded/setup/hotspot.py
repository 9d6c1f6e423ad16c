"""When the setup hotspot is up, as a pure state machine, and the network behind an interface.

Rules (:class:`HotspotMachine`, no I/O, time passed in, so it is tested exhaustively):

* no Wi-Fi configured                                   -> hotspot up at once;
* Wi-Fi configured but not joined for ``fail_after_s``   -> hotspot up (default 3 minutes);
* joined (also while the hotspot is up)                 -> hotspot down;
* hotspot should be up but is not (it failed to start, or NetworkManager dropped it) for
  ``AP_RESTART_S``                                       -> started again;
* the page submitted valid settings                     -> after ``join_delay_s`` (so the
  "joining ..." page reaches the phone first) hotspot down and join the new network; if that
  fails for ``fail_after_s`` the hotspot comes back (and the page says which network failed);
* hotspot up because the configured network failed, and nobody used the page for
  ``retry_after_s`` -> hotspot down and the configured network tried again. Without this a
  power cut would strand the speaker: it boots faster than the router, gives up after three
  minutes and would wait on its own hotspot forever.

The machine only ever sees Wi-Fi settings that passed :func:`firstboot.validate` (the page
calls :meth:`HotspotMachine.submit` from its on-valid callback): a bad value is never applied.

:class:`NetworkControl` is what the machine's actions are carried out with:
:class:`NmcliNetwork` (NetworkManager, by subprocess; not run in tests); the test bench's
``resonate_bench.fake_network`` stands in for it in tests and ``setup-page --fake-network``.
:class:`HotspotService` ties
machine, network and the page's server together (one ``tick()`` every few seconds).
"""

from __future__ import annotations

import enum
import logging
import math
import os
import re
import socket
import struct
import subprocess
import threading
import time
from typing import Callable, Protocol, Sequence

import attrs

log = logging.getLogger("resonate-setup")

DEFAULT_FAIL_AFTER_S = 180.0
DEFAULT_RETRY_AFTER_S = 300.0
DEFAULT_JOIN_DELAY_S = 3.0
AP_RESTART_S = 30.0  # a hotspot that should be up but is not is started again after this
JOIN_ATTEMPTS = 3  # "nmcli connection up" tries for one submitted network
JOIN_RETRY_S = 5.0
AP_ADDRESS = "192.168.4.1"  # the speaker on its own hotspot (NetworkManager "shared" mode)
MAX_SSID_BYTES = 32
NM_DEVICE_DISCONNECTED = 30  # NMDeviceState: below it the device is unmanaged or unavailable


def ap_ssid_for(name: str) -> str:
    """The hotspot's name: ``Speaker-<name>-setup``, at most 32 bytes (an SSID's limit).

    ``Kitchen`` -> ``Speaker-Kitchen-setup``; ``Living Room`` -> ``Speaker-Living-Room-setup``.
    """
    label = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") or "Resonate"
    room = MAX_SSID_BYTES - len("Speaker--setup")
    return f"Speaker-{label[:room].strip('-')}-setup"


# ---- the network interface ---------------------------------------------------------------

class NetworkError(RuntimeError):
    """The network stack refused or failed an operation."""


@attrs.frozen
class Network:
    """One scan result."""

    ssid: str
    signal: int  # 0..100 (%)
    secure: bool = True


@attrs.frozen
class NetStatus:
    configured: bool  # a Wi-Fi network (not the hotspot) is configured to join
    connected: bool  # joined that network (station mode, with an address)
    ssid: str | None = None
    ap_active: bool = False


class NetworkControl(Protocol):
    def scan(self) -> list[Network]: ...
    def start_ap(self, ssid: str, password: str | None) -> None: ...
    def stop_ap(self) -> None: ...
    def join(self, ssid: str, psk: str, country: str) -> None: ...
    def status(self) -> NetStatus: ...


def best_networks(networks: Sequence[Network], limit: int = 30) -> list[Network]:
    """One entry per SSID (its strongest), strongest first, hidden (empty) SSIDs dropped."""
    best: dict[str, Network] = {}
    for net in networks:
        if net.ssid and (net.ssid not in best or net.signal > best[net.ssid].signal):
            best[net.ssid] = net
    return sorted(best.values(), key=lambda n: (-n.signal, n.ssid.lower()))[:limit]


def split_terse(line: str) -> list[str]:
    """One line of ``nmcli -t`` output into fields (``\\:`` and ``\\\\`` are escapes)."""
    fields, current, chars = [], [], iter(line)
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, ""))
        elif ch == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(ch)
    fields.append("".join(current))
    return fields


class NmcliNetwork:
    """NetworkManager 1.42 (Debian bookworm) through ``nmcli``; needs root.

    * scan: ``device wifi list`` on the interface (NM rescans when its list is over 30 s old);
    * hotspot: an in-memory profile (``save no``: never written to the data partition)
      ``resonate-setup``: AP mode on 2.4 GHz, ``ipv4.method shared`` at 192.168.4.1/24 (NM runs
      dnsmasq: DHCP and DNS for the phone), WPA2-PSK (RSN/CCMP, PMF off: brcmfmac's AP mode and
      older phones) when there is a password;
    * join: the page applied the settings like a boot does, so resonate-firstboot has written the
      ``resonate-wifi`` profile into NM's keyfile directory (``/data/config/nm-connections``): NM
      re-reads it (``connection reload``), it must name the submitted SSID, then it is brought
      up. The passphrase never appears on a command line. The regulatory country is set over
      nl80211 first (NM leaves it alone, and the image has no ``iw``).
    """

    AP_CONNECTION = "resonate-setup"
    WIFI_CONNECTION = "resonate-wifi"

    def __init__(self, ifname: str = "wlan0", address: str = AP_ADDRESS,
                 run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                 set_country: Callable[[str], None] | None = None,
                 timeout_s: float = 45.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.ifname, self.address, self._run, self.timeout_s = ifname, address, run, timeout_s
        self._set_country = set_country or set_regulatory_country
        self._sleep = sleep

    def _nmcli(self, *args: str, check: bool = True) -> str:
        cmd = ["nmcli", "--wait", str(int(self.timeout_s)), *args]
        try:
            done = self._run(cmd, capture_output=True, text=True, timeout=self.timeout_s + 5)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NetworkError(f"nmcli {args[0]}: {exc}") from None
        if check and done.returncode != 0:
            raise NetworkError(f"nmcli {' '.join(args[:4])}: {done.stderr.strip() or done.returncode}")
        return done.stdout

    def _wait_ready(self) -> None:
        """Until NM can use the radio: at boot it is "unavailable" until wpa_supplicant is up,
        and neither a scan nor the access point can start before that."""
        state = ""
        for _ in range(int(self.timeout_s)):
            state = self._nmcli("-g", "GENERAL.STATE", "device", "show", self.ifname, check=False)
            code = re.match(r"\s*(\d+)", state)  # "30 (disconnected)"
            if code and int(code.group(1)) >= NM_DEVICE_DISCONNECTED:
                return
            self._sleep(1.0)
        raise NetworkError(f"{self.ifname} not ready for NetworkManager ({state.strip() or 'no such device'})")

    def scan(self) -> list[Network]:
        self._wait_ready()
        out = self._nmcli("-t", "-f", "SSID,SIGNAL,SECURITY", "device", "wifi", "list",
                          "ifname", self.ifname)
        nets = []
        for line in out.splitlines():
            fields = split_terse(line)
            if len(fields) >= 3 and fields[0]:
                try:
                    signal = max(0, min(100, int(fields[1])))
                except ValueError:
                    signal = 0
                nets.append(Network(fields[0], signal, fields[2] not in ("", "--")))
        return nets

    def start_ap(self, ssid: str, password: str | None) -> None:
        self.stop_ap()
        self._wait_ready()
        args = ["connection", "add", "save", "no", "type", "wifi", "ifname", self.ifname,
                "con-name", self.AP_CONNECTION, "autoconnect", "no", "ssid", ssid,
                "802-11-wireless.mode", "ap", "802-11-wireless.band", "bg",
                "ipv4.method", "shared", "ipv4.addresses", f"{self.address}/24",
                "ipv6.method", "disabled"]
        if password:
            args += ["wifi-sec.key-mgmt", "wpa-psk", "wifi-sec.proto", "rsn",
                     "wifi-sec.pairwise", "ccmp", "wifi-sec.group", "ccmp",
                     "wifi-sec.pmf", "disable", "wifi-sec.psk", password]
        self._nmcli(*args)
        self._nmcli("connection", "up", "id", self.AP_CONNECTION)

    def stop_ap(self) -> None:
        # deleting deactivates; "no such connection" means it is down already
        self._nmcli("connection", "delete", "id", self.AP_CONNECTION, check=False)

    def join(self, ssid: str, psk: str, country: str) -> None:
        try:
            self._set_country(country)
        except NetworkError as exc:
            log.warning("cannot set the Wi-Fi country %s: %s", country, exc)
        self._nmcli("connection", "reload")
        written = split_terse(self._nmcli("-g", "802-11-wireless.ssid", "connection", "show",
                                          "id", self.WIFI_CONNECTION).strip())[0]
        if written != ssid:
            raise NetworkError(f"the {self.WIFI_CONNECTION} profile is for {written!r}, not {ssid!r}")
        # A new regulatory domain makes cfg80211 re-check the radio's channels: wait until the
        # device is usable again, and give "up" a few tries (a radio settling, a slow DHCP).
        # A wrong password or a network out of range still fails: the machine's timer decides.
        self._wait_ready()
        for attempt in range(1, JOIN_ATTEMPTS + 1):
            try:
                self._nmcli("connection", "up", "id", self.WIFI_CONNECTION)
                return
            except NetworkError as exc:
                log.warning("joining %r failed (attempt %d of %d): %s", ssid, attempt, JOIN_ATTEMPTS, exc)
            if attempt < JOIN_ATTEMPTS:
                self._sleep(JOIN_RETRY_S)

    def status(self) -> NetStatus:
        names = self._nmcli("-g", "NAME", "connection", "show").splitlines()
        configured = self.WIFI_CONNECTION in (split_terse(name)[0] for name in names)
        out = self._nmcli("-t", "-f", "DEVICE,STATE,CONNECTION", "device", "status")
        state, connection = "", ""
        for line in out.splitlines():
            fields = split_terse(line)
            if len(fields) >= 3 and fields[0] == self.ifname:
                state, connection = fields[1], fields[2]
        active = state == "connected"
        return NetStatus(configured=configured,
                         connected=active and connection == self.WIFI_CONNECTION,
                         ssid=None, ap_active=active and connection == self.AP_CONNECTION)


# ---- the regulatory country (what ``iw reg set XX`` does), over generic netlink ---------------

_NETLINK_GENERIC = 16
_NLM_F_REQUEST_ACK = 0x1 | 0x4
_NLMSG_ERROR = 2
_GENL_ID_CTRL, _CTRL_CMD_GETFAMILY, _CTRL_ATTR_FAMILY_ID, _CTRL_ATTR_FAMILY_NAME = 0x10, 3, 1, 2
_NL80211_CMD_REQ_SET_REG, _NL80211_ATTR_REG_ALPHA2 = 27, 33  # not 26: NL80211_CMD_SET_REG


def nl_attr(kind: int, value: bytes) -> bytes:
    """One netlink attribute (length, type, value, padding to 4 bytes)."""
    size = 4 + len(value)
    return struct.pack("=HH", size, kind) + value + b"\0" * (-size % 4)


def nl_attrs(data: bytes) -> dict[int, bytes]:
    """The attributes in ``data`` by type."""
    attrs: dict[int, bytes] = {}
    at = 0
    while at + 4 <= len(data):
        size, kind = struct.unpack_from("=HH", data, at)
        if size < 4:
            break
        attrs[kind & 0x3FFF] = data[at + 4:at + size]
        at += (size + 3) & ~3
    return attrs


def genl_request(family: int, cmd: int, attrs: bytes, seq: int) -> bytes:
    """A generic netlink request that asks for an acknowledgement."""
    body = struct.pack("=BBH", cmd, 1, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), family, _NLM_F_REQUEST_ACK, seq, 0) + body


def genl_replies(data: bytes, seq: int) -> tuple[list[bytes], bool]:
    """The payloads (generic header cut) of the replies to ``seq`` in ``data``, and whether the
    acknowledgement was among them. A refused request raises :class:`NetworkError`."""
    payloads: list[bytes] = []
    at = 0
    while at + 16 <= len(data):
        size, kind, _flags, reply_seq, _pid = struct.unpack_from("=IHHII", data, at)
        if size < 16:
            break
        body = data[at + 16:at + size]
        at += (size + 3) & ~3
        if reply_seq != seq:
            continue
        if kind == _NLMSG_ERROR:
            (error,) = struct.unpack_from("=i", body)
            if error:
                raise NetworkError(f"nl80211: {os.strerror(-error)}")
            return payloads, True
        payloads.append(body[4:])
    return payloads, False


def _genl_call(sock: socket.socket, family: int, cmd: int, attrs: bytes, seq: int) -> list[bytes]:
    sock.sendto(genl_request(family, cmd, attrs, seq), (0, 0))
    payloads: list[bytes] = []
    while True:
        more, acked = genl_replies(sock.recv(65536), seq)
        payloads += more
        if acked:
            return payloads


def set_regulatory_country(country: str) -> None:
    """Tell cfg80211 the country (a user regulatory hint, as ``iw reg set`` sends). Root only."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_GENERIC) as sock:
            sock.settimeout(5)
            sock.bind((0, 0))
            reply = _genl_call(sock, _GENL_ID_CTRL, _CTRL_CMD_GETFAMILY,
                               nl_attr(_CTRL_ATTR_FAMILY_NAME, b"nl80211\0"), 1)
            (family,) = struct.unpack_from("=H", nl_attrs(reply[0])[_CTRL_ATTR_FAMILY_ID])
            _genl_call(sock, family, _NL80211_CMD_REQ_SET_REG,
                       nl_attr(_NL80211_ATTR_REG_ALPHA2, country.encode("ascii") + b"\0"), 2)
    except (OSError, IndexError, KeyError, struct.error) as exc:
        raise NetworkError(f"regulatory country {country}: {exc}") from None
    log.info("Wi-Fi regulatory country set to %s", country)


# ---- the state machine -------------------------------------------------------------------

class Mode(enum.Enum):
    STARTING = "starting"
    JOINING = "joining"
    CONNECTED = "connected"
    HOTSPOT = "hotspot"


@attrs.frozen
class StartAp:
    ssid: str
    password: str | None


@attrs.frozen
class StopAp:
    pass


@attrs.frozen
class Join:
    ssid: str
    psk: str = attrs.field(repr=False)
    country: str


Action = StartAp | StopAp | Join


@attrs.define
class HotspotMachine:
    """Pure decision logic: ``tick(now, status)`` and ``submit(...)`` return actions."""

    ap_ssid: str
    ap_password: str | None = None
    fail_after_s: float = DEFAULT_FAIL_AFTER_S
    retry_after_s: float | None = DEFAULT_RETRY_AFTER_S
    join_delay_s: float = DEFAULT_JOIN_DELAY_S
    mode: Mode = Mode.STARTING
    since: float = 0.0
    last_activity: float = -math.inf
    pending: Join | None = None
    pending_at: float = 0.0
    joining: str | None = None  # the SSID the page asked for, while trying it
    failed_ssid: str | None = None  # the last network the page asked for that did not join
    submitted: bool = False

    def __attrs_post_init__(self) -> None:
        if self.fail_after_s <= 0:
            raise ValueError("fail_after_s must be positive")

    @property
    def hotspot_up(self) -> bool:
        return self.mode is Mode.HOTSPOT

    def _to(self, mode: Mode, now: float) -> None:
        if mode is not self.mode:
            log.info("setup hotspot: %s -> %s", self.mode.value, mode.value)
        self.mode, self.since = mode, now

    def activity(self, now: float) -> None:
        """Someone used the setup page: do not take the hotspot away for a retry."""
        self.last_activity = now

    def submit(self, now: float, ssid: str, psk: str, country: str) -> list[Action]:
        """Validated Wi-Fi settings from the page: join them after ``join_delay_s``."""
        self.pending, self.pending_at, self.submitted = Join(ssid, psk, country), now + self.join_delay_s, True
        self.activity(now)
        return []

    def tick(self, now: float, status: NetStatus) -> list[Action]:
        if self.pending is not None:
            if now < self.pending_at:
                return []
            join, self.pending = self.pending, None
            actions: list[Action] = [StopAp()] if self.mode is Mode.HOTSPOT else []
            self.joining, self.failed_ssid = join.ssid, None
            self._to(Mode.JOINING, now)
            return [*actions, join]
        configured = status.configured or self.submitted
        if status.connected:
            actions = [StopAp()] if self.mode is Mode.HOTSPOT else []
            self.joining = None
            self._to(Mode.CONNECTED, now)
            return actions
        if self.mode is Mode.STARTING:
            if not configured:
                return self._hotspot(now)
            self._to(Mode.JOINING, now)
            return []
        if self.mode is Mode.CONNECTED:
            self._to(Mode.JOINING, now)  # a drop-out: the stack reconnects by itself, give it time
            return []
        if self.mode is Mode.JOINING:
            if not configured or now - self.since >= self.fail_after_s:
                if self.joining:
                    self.failed_ssid, self.joining = self.joining, None
                return self._hotspot(now)
            return []
        # HOTSPOT
        if not status.ap_active and now - self.since >= AP_RESTART_S:
            return self._hotspot(now)  # it failed to start, or went away: start it again
        if (configured and self.retry_after_s is not None
                and now - max(self.since, self.last_activity) >= self.retry_after_s):
            self._to(Mode.JOINING, now)  # without the AP the stack rejoins its configured network
            return [StopAp()]
        return []

    def _hotspot(self, now: float) -> list[Action]:
        self._to(Mode.HOTSPOT, now)
        return [StartAp(self.ap_ssid, self.ap_password)]


# ---- machine + network + page ------------------------------------------------------------

class HotspotService:
    """Carries out the machine's actions; starts/stops the page with the hotspot.

    ``on_hotspot(up)`` is called when the hotspot goes up (True) or down (False): the
    setup daemon starts the page's server then and closes it again. The scan is taken just
    before the hotspot starts (a single-radio Pi cannot scan well while it is the AP).
    """

    def __init__(self, machine: HotspotMachine, network: NetworkControl,
                 on_hotspot: Callable[[bool], None] = lambda up: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.machine, self.network, self.on_hotspot, self.clock = machine, network, on_hotspot, clock
        self.networks: list[Network] = []
        self._lock = threading.RLock()

    def scan_results(self) -> list[Network]:
        with self._lock:
            return list(self.networks)

    def rescan(self) -> list[Network]:
        try:
            found = best_networks(self.network.scan())
        except NetworkError as exc:
            log.warning("Wi-Fi scan failed: %s", exc)
            return self.scan_results()
        with self._lock:
            self.networks = found
        return found

    def activity(self) -> None:
        with self._lock:
            self.machine.activity(self.clock())

    def submit(self, ssid: str, psk: str, country: str) -> None:
        """Called by the page with settings that passed firstboot's validation."""
        with self._lock:
            self.machine.submit(self.clock(), ssid, psk, country)

    def tick(self) -> list[Action]:
        try:
            status = self.network.status()
        except NetworkError as exc:
            log.warning("network status unavailable: %s", exc)
            status = NetStatus(configured=self.machine.submitted, connected=False)
        with self._lock:
            was_up = self.machine.hotspot_up
            actions = self.machine.tick(self.clock(), status)
        for action in actions:
            try:
                if isinstance(action, StartAp):
                    self.rescan()
                    self.network.start_ap(action.ssid, action.password)
                    log.info("setup hotspot %r is up", action.ssid)
                elif isinstance(action, StopAp):
                    self.network.stop_ap()
                    log.info("setup hotspot is down")
                else:
                    log.info("joining Wi-Fi %r (country %s)", action.ssid, action.country)
                    self.network.join(action.ssid, action.psk, action.country)
            except NetworkError as exc:
                log.error("%s failed: %s", type(action).__name__, exc)
        if self.machine.hotspot_up != was_up:
            self.on_hotspot(self.machine.hotspot_up)
        return actions

    def run(self, stop: threading.Event, interval_s: float = 5.0) -> None:
        while not stop.is_set():
            self.tick()
            stop.wait(interval_s)
