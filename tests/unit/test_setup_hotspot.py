"""The setup hotspot: its state machine, the page's checks (firstboot's validation), HTTP guards."""

from __future__ import annotations

import http.client
import subprocess
from pathlib import Path

import pytest

from resonate_bench.fake_network import FakeNetwork
from resonate_embedded import firstboot
from resonate_embedded.config import build_config, load_toml
from resonate_embedded.setup import hotspot, web
from resonate_embedded.setup.hotspot import (
    HotspotMachine, HotspotService, Join, Mode, NetStatus, Network, StartAp, StopAp,
)

HATS = Path(__file__).resolve().parents[2] / "board" / "hats"
TEMPLATE = Path(__file__).resolve().parents[2] / "image" / "boot" / "speaker.txt"
AP = "Speaker-Kitchen-setup"

NOT_CONFIGURED = NetStatus(configured=False, connected=False)
FAILING = NetStatus(configured=True, connected=False)
JOINED = NetStatus(configured=True, connected=True, ssid="Home")
AP_UP = NetStatus(configured=False, connected=False, ap_active=True)  # our hotspot is running
FAILING_AP_UP = NetStatus(configured=True, connected=False, ap_active=True)


def machine(**kw) -> HotspotMachine:
    return HotspotMachine(AP, **kw)


# ---- the state machine -----------------------------------------------------------------------

def test_ap_name_is_the_speakers_and_fits_an_ssid():
    assert hotspot.ap_ssid_for("Kitchen") == "Speaker-Kitchen-setup"
    assert hotspot.ap_ssid_for("Living Room") == "Speaker-Living-Room-setup"
    assert hotspot.ap_ssid_for("  ") == "Speaker-Resonate-setup"
    long = hotspot.ap_ssid_for("Küche " + "x" * 80)
    assert len(long.encode()) <= 32 and long.startswith("Speaker-K") and long.endswith("-setup")


def test_no_wifi_configured_opens_the_hotspot_at_once():
    m = machine()
    assert m.tick(0, NOT_CONFIGURED) == [StartAp(AP, None)]
    assert m.hotspot_up
    assert m.tick(1000, AP_UP) == []  # stays up, no retry: nothing to retry
    assert m.hotspot_up


def test_a_hotspot_that_failed_to_start_or_went_away_is_started_again():
    m = machine()
    assert m.tick(0, NOT_CONFIGURED) == [StartAp(AP, None)]  # and NetworkManager failed it
    assert m.tick(hotspot.AP_RESTART_S - 1, NOT_CONFIGURED) == []  # give it time to come up
    assert m.tick(hotspot.AP_RESTART_S, NOT_CONFIGURED) == [StartAp(AP, None)]
    assert m.tick(100, AP_UP) == []
    assert m.tick(200, NOT_CONFIGURED) == [StartAp(AP, None)]  # gone: 100 s since it was started


def test_configured_wifi_failing_for_three_minutes_opens_the_hotspot():
    m = machine()
    assert m.tick(0, FAILING) == [] and m.mode is Mode.JOINING
    for t in (10, 60, 120, 179.9):
        assert m.tick(t, FAILING) == [], t
    assert m.tick(180, FAILING) == [StartAp(AP, None)]
    assert m.hotspot_up


def test_fail_time_is_configurable():
    m = machine(fail_after_s=60, ap_password="secret123")
    m.tick(0, FAILING)
    assert m.tick(59, FAILING) == []
    assert m.tick(60, FAILING) == [StartAp(AP, "secret123")]


def test_joined_means_no_hotspot_and_a_dropout_gets_the_full_grace_time():
    m = machine()
    assert m.tick(0, JOINED) == [] and m.mode is Mode.CONNECTED
    assert m.tick(500, FAILING) == [] and m.mode is Mode.JOINING  # drop-out starts the timer
    assert m.tick(500 + 179, FAILING) == []
    assert m.tick(500 + 180, FAILING) == [StartAp(AP, None)]


def test_joined_while_the_hotspot_is_up_takes_it_down():
    m = machine()
    m.tick(0, NOT_CONFIGURED)
    assert m.tick(5, JOINED) == [StopAp()]
    assert not m.hotspot_up and m.mode is Mode.CONNECTED
    assert m.tick(10, JOINED) == []


def test_submit_joins_after_the_page_is_delivered_then_ap_down():
    m = machine()
    m.tick(0, NOT_CONFIGURED)
    assert m.submit(100, "Home", "correct horse", "GB") == []
    assert m.tick(101, NOT_CONFIGURED) == []  # the "joining ..." page is still on its way
    assert m.hotspot_up
    assert m.tick(103, NOT_CONFIGURED) == [StopAp(), Join("Home", "correct horse", "GB")]
    assert m.mode is Mode.JOINING
    assert m.tick(110, JOINED) == [] and m.mode is Mode.CONNECTED


def test_a_submitted_network_that_never_joins_brings_the_hotspot_back_and_says_so():
    m = machine()
    m.tick(0, NOT_CONFIGURED)
    m.submit(10, "Home", "wrong password", "GB")
    m.tick(13, NOT_CONFIGURED)
    # the stack now has a configuration, but it does not connect
    assert m.tick(13 + 179, FAILING) == []
    assert m.tick(13 + 180, FAILING) == [StartAp(AP, None)]
    assert m.failed_ssid == "Home"


def test_hotspot_after_failure_retries_the_configured_network_when_nobody_uses_it():
    m = machine(retry_after_s=300)
    m.tick(0, FAILING)
    m.tick(180, FAILING)  # hotspot up
    m.activity(400)  # someone opened the page
    assert m.tick(479, FAILING_AP_UP) == []  # 300 s since the hotspot came up, but only 79 since use
    assert m.tick(700, FAILING_AP_UP) == [StopAp()]  # router back after a power cut: try again
    assert m.mode is Mode.JOINING
    assert m.tick(880, FAILING) == [StartAp(AP, None)]  # still failing: hotspot again
    assert m.tick(900, JOINED) == [StopAp()]


def test_retry_can_be_disabled():
    m = machine(retry_after_s=None)
    m.tick(0, FAILING)
    m.tick(180, FAILING)
    assert m.tick(100_000, FAILING_AP_UP) == [] and m.hotspot_up


def test_fail_after_must_be_positive():
    with pytest.raises(ValueError):
        machine(fail_after_s=0)


def test_service_carries_out_the_actions_on_a_fake_network():
    net = FakeNetwork(passwords={"Home Wi-Fi": "correct horse"})
    now = [0.0]
    changes: list[bool] = []
    service = HotspotService(machine(), net, changes.append, clock=lambda: now[0])
    service.tick()
    assert net.ap == (AP, None) and changes == [True]
    assert [n.ssid for n in service.scan_results()] == ["Home Wi-Fi", "Neighbour", "Cafe Guest"]
    assert net.calls.index(("scan",)) < net.calls.index(("start_ap", AP, None))  # scan first
    service.submit("Home Wi-Fi", "correct horse", "GB")
    now[0] = 5
    service.tick()
    assert net.ap is None and net.joined == ("Home Wi-Fi", "correct horse", "GB")
    assert changes == [True, False]
    now[0] = 7
    service.tick()
    assert service.machine.mode is Mode.CONNECTED and net.ap is None


# ---- the page's checks: firstboot's own validation ------------------------------------------

def form(**over: str) -> dict[str, list[str]]:
    values = {"network": "net:Home Wi-Fi", "ssid_other": "", "wifi_psk": "correct horse",
              "wifi_country": "gb", "name": "Kitchen", "server": "", "hat": "hifiberry-dac"}
    values.update(over)
    return {k: [v] for k, v in values.items()}


@pytest.fixture
def card(tmp_path: Path) -> web.CardStore:
    boot, data = tmp_path / "boot", tmp_path / "data"
    boot.mkdir()
    data.mkdir()
    (boot / firstboot.SPEAKER_FILE).write_text(TEMPLATE.read_text())
    return web.CardStore(boot, data, HATS, Path("/var/lib/resonate-embedded"))


def snapshot(store: web.CardStore) -> dict[str, bytes]:
    return {str(p.relative_to(store.boot.parent)): p.read_bytes()
            for p in sorted(store.boot.parent.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("over, key, text", [
    ({"wifi_country": "G1"}, "wifi_country", "two-letter country code"),
    ({"wifi_country": "GBR"}, "wifi_country", "two-letter country code"),
    ({"wifi_country": ""}, "wifi_country", "two-letter country code"),
    ({"server": "http://192.168.1.10:8927/sendspin"}, "server", "ws:// or wss://"),
    ({"wifi_psk": "short"}, "wifi_psk", "8 to 63 printable ASCII"),
    ({"network": "other", "ssid_other": "x" * 33}, "wifi_ssid", "longer than 32 bytes"),
    ({"network": ""}, "wifi_ssid", "Choose your Wi-Fi network"),
    ({"network": "other", "ssid_other": ""}, "wifi_ssid", "Choose your Wi-Fi network"),
    ({"name": "   "}, "name", "Give the speaker a name"),
    ({"name": "x" * 201}, "name", "At most 200 characters"),
    ({"name": "Kitchen\nserver=ws://evil:1/sendspin"}, "name", "Must be a single line"),
    ({"wifi_psk": "correct horse\nhat=max98357a"}, "wifi_psk", "Must be a single line"),
    ({"hat": "no-such-board"}, "hat", "is not known"),
])
def test_bad_values_are_refused_next_to_their_field_and_never_applied(card, over, key, text):
    before = snapshot(card)
    applied = []
    net = FakeNetwork()
    service = HotspotService(machine(), net, clock=lambda: 0.0)
    page = web.SetupPage(card, net.scan,
                         lambda s, r: (applied.append(s), service.submit(s.wifi.ssid, s.wifi.psk,
                                                                         s.wifi.country)))
    status, body = page.post(form(**over))
    assert status == 200
    assert f'id="{key}-error"' in body and web.esc(text) in body, body
    assert "Nothing was" in body
    assert snapshot(card) == before  # nothing written: not speaker.txt, not /data
    assert applied == [] and service.machine.pending is None
    service.tick()
    assert not any(call[0] == "join" for call in net.calls)


def test_good_form_is_saved_as_speaker_txt_and_applied_like_at_boot(card):
    applied = []
    page = web.SetupPage(card, FakeNetwork().scan, lambda s, r: applied.append((s, r)),
                         ap_ssid=AP)
    status, body = page.post(form(server="ws://192.168.1.10:8927/sendspin", hat="max98357a",
                                  wifi_psk="  spaces and \"quotes\"  "))
    assert status == 200 and "<h1>Joining Home Wi-Fi\u2026</h1>" in body
    settings, result = applied[0]
    assert result.ok and settings.wifi == firstboot.Wifi("Home Wi-Fi", "  spaces and \"quotes\"  ", "GB")
    config = build_config(load_toml(card.data / "config" / "player.toml"), {})
    assert (config.name, config.server) == ("Kitchen", "ws://192.168.1.10:8927/sendspin")
    assert config.device == "hw:CARD=ResonateDAC,DEV=0"
    keyfile = (card.data / "config" / firstboot.NM_KEYFILE).read_text()  # what the hotspot's join loads
    assert "id=resonate-wifi" in keyfile and "ssid=Home Wi-Fi" in keyfile
    assert "psk=" + firstboot.wpa_psk("Home Wi-Fi", "  spaces and \"quotes\"  ") in keyfile
    # the card's speaker.txt now says the same thing, so the next boot keeps it
    again = firstboot.apply(card.boot, card.data, HATS, Path("/var/lib/resonate-embedded"))
    assert again.ok and again.changed == [] and again.settings == settings
    text = (card.boot / firstboot.SPEAKER_FILE).read_text()
    assert "# Your Wi-Fi network" in text and "#wifi_ssid=My Wi-Fi\nwifi_ssid=Home Wi-Fi\n" in text
    assert "wifi_country=GB" in text and not (card.boot / firstboot.ERRORS_FILE).exists()


def test_other_network_and_open_network(card):
    check = card.check(web.form_values(form(network="other", ssid_other=" Hidden Net",
                                            wifi_psk="")))
    assert check.ok, check.errors
    assert check.settings.wifi == firstboot.Wifi(" Hidden Net", "", "GB")


def test_merge_keeps_other_settings_and_turns_off_lines_firstboot_would_reject():
    old = "name=Old\noutput_delay_ms=25\nbogus=1\nname=Twice\n"
    text = web.merge_speaker_txt(old, {"name": "New", "server": ""})
    assert text.splitlines() == ["name=New", "output_delay_ms=25",
                                 "# (turned off by the setup page) bogus=1",
                                 "# (turned off by the setup page) name=Twice"]
    values, problems = firstboot.parse(text)
    assert not problems and values["output_delay_ms"][1] == "25"


def test_a_bad_setting_already_on_the_card_is_reported_not_silently_applied(card):
    (card.boot / firstboot.SPEAKER_FILE).write_text("output_delay_ms=soon\n")
    check = card.check(web.form_values(form()))
    assert not check.ok and any("output_delay_ms" in g for g in check.general)


def test_form_is_prefilled_from_the_card_but_never_with_the_password(card):
    (card.boot / firstboot.SPEAKER_FILE).write_text(
        "wifi_ssid=Home Wi-Fi\nwifi_psk=supersecret\nwifi_country=DE\nname=<b>Bad</b>\nhat=pcm5102a\n")
    html = web.render_form(card, [Network("Home Wi-Fi", 70), Network("<script>x</script>", 20)])
    assert "supersecret" not in html
    assert 'value="net:Home Wi-Fi" checked' in html and 'value="DE"' in html
    assert "<b>Bad</b>" not in html and "&lt;b&gt;Bad&lt;/b&gt;" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert '<option value="hifiberry-dac" selected>' in html


# ---- HTTP guards -----------------------------------------------------------------------------

@pytest.fixture
def server(card):
    srv = web.SetupServer(web.SetupPage(card, FakeNetwork().scan), "127.0.0.1", 0).start()
    yield srv
    srv.close()


def request(srv, method, path="/", body=b"", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


def test_http_get_form_and_captive_portal_redirect(server):
    resp, data = request(server, "GET")
    assert resp.status == 200 and b'name="viewport"' in data
    assert "script-src" not in resp.getheader("Content-Security-Policy")  # default-src 'none'
    resp, _ = request(server, "GET", "/generate_204")
    assert resp.status == 303 and resp.getheader("Location") == "/"


def test_http_refuses_cross_origin_oversized_and_odd_posts(server, card):
    before = snapshot(card)
    host = f"127.0.0.1:{server.port}"
    good = "network=net%3AHome+Wi-Fi&wifi_psk=correct+horse&wifi_country=GB&name=K&hat=hifiberry-dac"
    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    resp, _ = request(server, "POST", body=good, headers={**form_type, "Origin": "http://evil.example"})
    assert resp.status == 403
    resp, _ = request(server, "POST", body=good, headers={**form_type, "Origin": "null"})
    assert resp.status == 403
    resp, _ = request(server, "POST", body=good,
                      headers={**form_type, "Referer": "http://192.168.4.1.evil.example/"})
    assert resp.status == 403
    resp, _ = request(server, "POST", body="x" * (web.MAX_BODY_BYTES + 1),
                      headers={**form_type, "Origin": f"http://{host}"})
    assert resp.status == 413
    resp, _ = request(server, "POST", body=good, headers={"Content-Type": "text/plain",
                                                          "Origin": f"http://{host}"})
    assert resp.status == 415
    resp, _ = request(server, "POST", body=b"name=%ff%fe", headers={**form_type, "Origin": f"http://{host}"})
    assert resp.status == 400
    assert snapshot(card) == before
    resp, data = request(server, "POST", body=good, headers={**form_type, "Origin": f"http://{host}"})
    assert resp.status == 200 and b"Joining Home Wi-Fi" in data


# ---- nmcli (commands only: nmcli is never run here; the real run is the QEMU hotspot test) ------

class FakeNmcli:
    """Answers ``nmcli`` argv lists from canned output, records them."""

    READY = {("-g", "GENERAL.STATE"): "30 (disconnected)\n"}

    def __init__(self, outputs: dict[tuple[str, ...], str], failing: tuple[str, ...] = ()) -> None:
        self.outputs, self.failing, self.calls = {**self.READY, **outputs}, failing, []

    def __call__(self, cmd, **kw):
        self.calls.append(cmd)
        args = tuple(cmd[3:])  # after "nmcli --wait N"
        rc = 1 if any(word in args for word in self.failing) else 0
        out = next((text for key, text in self.outputs.items() if args[:len(key)] == key), "")
        return subprocess.CompletedProcess(cmd, rc, out, "Error: failed" if rc else "")


def test_nmcli_terse_parsing_scan_and_status():
    assert hotspot.split_terse(r"My\:Net:80:WPA2") == ["My:Net", "80", "WPA2"]
    assert hotspot.split_terse(r"back\\slash:5:") == ["back\\slash", "5", ""]
    nmcli = FakeNmcli({("-t", "-f", "SSID,SIGNAL,SECURITY"): "Home:82:WPA2\nHome:40:WPA2\n:70:WPA2\nCafe:30:\n",
                       ("-g", "NAME"): "resonate-wifi\nlo\n",
                       ("-t", "-f", "DEVICE,STATE,CONNECTION"): "wlan0:connected:resonate-wifi\nlo:unmanaged:--\n"})
    net = hotspot.NmcliNetwork(run=nmcli)
    scan = hotspot.best_networks(net.scan())
    assert [(n.ssid, n.signal, n.secure) for n in scan] == [("Home", 82, True), ("Cafe", 30, False)]
    assert nmcli.calls[1] == ["nmcli", "--wait", "45", "-t", "-f", "SSID,SIGNAL,SECURITY",
                              "device", "wifi", "list", "ifname", "wlan0"]
    assert net.status() == NetStatus(configured=True, connected=True, ssid=None, ap_active=False)
    nmcli.outputs[("-t", "-f", "DEVICE,STATE,CONNECTION")] = "wlan0:connected:resonate-setup\n"
    nmcli.outputs[("-g", "NAME")] = "resonate-setup\n"
    assert net.status() == NetStatus(configured=False, connected=False, ap_active=True)


def test_nmcli_hotspot_is_an_unsaved_shared_ap_with_wpa2_only_with_a_password():
    nmcli = FakeNmcli({})
    net = hotspot.NmcliNetwork(run=nmcli)
    net.start_ap(AP, "setup-pass")
    delete, ready, add, up = (c[3:] for c in nmcli.calls)
    assert delete == ["connection", "delete", "id", "resonate-setup"]
    assert ready == ["-g", "GENERAL.STATE", "device", "show", "wlan0"]
    assert add[:4] == ["connection", "add", "save", "no"]
    pairs = dict(zip(add[4::2], add[5::2]))
    assert pairs == {"type": "wifi", "ifname": "wlan0", "con-name": "resonate-setup", "autoconnect": "no",
                     "ssid": AP, "802-11-wireless.mode": "ap", "802-11-wireless.band": "bg",
                     "ipv4.method": "shared", "ipv4.addresses": "192.168.4.1/24", "ipv6.method": "disabled",
                     "wifi-sec.key-mgmt": "wpa-psk", "wifi-sec.proto": "rsn", "wifi-sec.pairwise": "ccmp",
                     "wifi-sec.group": "ccmp", "wifi-sec.pmf": "disable", "wifi-sec.psk": "setup-pass"}
    assert up == ["connection", "up", "id", "resonate-setup"]
    nmcli.calls.clear()
    net.start_ap(AP, None)
    assert not [a for a in nmcli.calls[2] if a.startswith("wifi-sec.")]  # open
    nmcli.calls.clear()
    net.stop_ap()
    assert [c[3:] for c in nmcli.calls] == [["connection", "delete", "id", "resonate-setup"]]


def test_nmcli_waits_until_networkmanager_can_use_the_radio():
    """At boot wlan0 is "unavailable" until wpa_supplicant is up: no scan or AP before that."""
    states = iter(["20 (unavailable)\n", "20 (unavailable)\n", "30 (disconnected)\n"])
    nmcli = FakeNmcli({})
    sleeps = []

    def run(cmd, **kw):
        if cmd[3:5] == ["-g", "GENERAL.STATE"]:
            nmcli.outputs[("-g", "GENERAL.STATE")] = next(states)
        return nmcli(cmd, **kw)

    net = hotspot.NmcliNetwork(run=run, sleep=sleeps.append)
    assert net.scan() == [] and sleeps == [1.0, 1.0]
    nmcli.outputs[("-g", "GENERAL.STATE")] = ""  # no such device
    with pytest.raises(hotspot.NetworkError, match="wlan0 not ready .*no such device"):
        hotspot.NmcliNetwork(run=nmcli, sleep=sleeps.append, timeout_s=3).start_ap(AP, None)
    assert len(sleeps) == 5


def test_nmcli_join_sets_the_country_reloads_the_profile_firstboot_wrote_and_brings_it_up():
    countries = []
    nmcli = FakeNmcli({("-g", "802-11-wireless.ssid"): "My\\:Home\n"})
    net = hotspot.NmcliNetwork(run=nmcli, set_country=countries.append)
    net.join("My:Home", "correct horse", "GB")
    assert countries == ["GB"]
    assert [c[3:] for c in nmcli.calls] == [
        ["connection", "reload"],
        ["-g", "802-11-wireless.ssid", "connection", "show", "id", "resonate-wifi"],
        ["-g", "GENERAL.STATE", "device", "show", "wlan0"],  # the radio usable after the country
        ["connection", "up", "id", "resonate-wifi"]]
    assert "correct horse" not in " ".join(" ".join(c) for c in nmcli.calls)
    with pytest.raises(hotspot.NetworkError, match="not 'Other'"):
        net.join("Other", "pw", "GB")  # the profile on disk is not what was submitted: no "up"
    assert nmcli.calls[-1][3:5] == ["-g", "802-11-wireless.ssid"]


def test_nmcli_join_tries_up_again_and_gives_the_rest_to_the_machine(caplog):
    sleeps = []
    nmcli = FakeNmcli({("-g", "802-11-wireless.ssid"): "Home\n"}, failing=("up",))
    hotspot.NmcliNetwork(run=nmcli, set_country=lambda c: None, sleep=sleeps.append).join("Home", "pw", "GB")
    assert [c[3:5] for c in nmcli.calls].count(["connection", "up"]) == hotspot.JOIN_ATTEMPTS
    assert sleeps == [hotspot.JOIN_RETRY_S] * (hotspot.JOIN_ATTEMPTS - 1)
    assert "attempt 3 of 3" in caplog.text  # no exception: the machine's timer brings the hotspot back


def test_nmcli_join_goes_on_without_a_country_and_fails_without_a_profile():
    def no_nl80211(country: str) -> None:
        raise hotspot.NetworkError("nl80211: No such file or directory")

    nmcli = FakeNmcli({}, failing=("show",))
    net = hotspot.NmcliNetwork(run=nmcli, set_country=no_nl80211)
    with pytest.raises(hotspot.NetworkError, match="nmcli -g 802-11-wireless.ssid connection show"):
        net.join("Home", "pw", "GB")


def test_regulatory_hint_messages():
    """The nl80211 request is what ``iw reg set GB`` sends; replies and errors are read back."""
    request = hotspot.genl_request(0x1c, hotspot._NL80211_CMD_REQ_SET_REG,
                                   hotspot.nl_attr(hotspot._NL80211_ATTR_REG_ALPHA2, b"GB\0"), seq=7)
    # NL80211_CMD_REQ_SET_REG = 27, NL80211_ATTR_REG_ALPHA2 = 33 (26 is SET_REG: EINVAL without rules)
    assert request == (bytes.fromhex("1c000000" "1c00" "0500" "07000000" "00000000")
                       + bytes([27, 1, 0, 0]) + bytes.fromhex("0700" "2100") + b"GB\0" + b"\0")
    family = hotspot.genl_request(0x10, 3, hotspot.nl_attr(1, b"\x1c\x00"), seq=1)[16:]  # as a reply body
    ack = bytes.fromhex("24000000" "0200" "0000" "01000000" "00000000") + bytes(20)
    payloads, acked = hotspot.genl_replies(
        bytes.fromhex("1c000000" "1000" "0000" "01000000" "00000000") + family + ack, seq=1)
    assert acked and hotspot.nl_attrs(payloads[0]) == {1: b"\x1c\x00"}
    refused = bytes.fromhex("24000000" "0200" "0000" "02000000" "00000000") + (-1 & 0xFFFFFFFF).to_bytes(4, "little") + bytes(16)
    with pytest.raises(hotspot.NetworkError, match="Operation not permitted"):
        hotspot.genl_replies(refused, seq=2)
    assert hotspot.genl_replies(ack, seq=9) == ([], False)  # another request's answer
