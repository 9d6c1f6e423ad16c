"""The setup page in a real headless browser (Debian's Chromium + chromedriver, via Selenium).

A phone-sized window on 127.0.0.1: pick a network from the (fake) scan, fill the form, see
the config firstboot writes; bad values show their error next to the field and write nothing.
Screenshots go to the test's tmp dir (``setup-*.png``).
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest

from resonate_bench.fake_network import FakeNetwork
from resonate_bench.harness import MISSING_DEPENDENCY
from resonate_embedded import firstboot
from resonate_embedded.config import build_config, load_toml
from resonate_embedded.setup import web
from resonate_embedded.setup.hotspot import HotspotMachine, HotspotService, Network

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
HATS = ROOT / "board" / "hats"
TEMPLATE = ROOT / "image" / "boot" / "speaker.txt"
PHONE = (390, 844)


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip(f"{MISSING_DEPENDENCY} Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver; .ci/setup installs them)")
    return chromium, driver


@pytest.fixture
def browser(tmp_path):
    chromium, driver_path = _browser_paths()
    webdriver = pytest.importorskip("selenium.webdriver", reason=f"{MISSING_DEPENDENCY} selenium (the test extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    # a phone: its viewport (the page's viewport meta applies), touch, 2x pixels
    options.add_experimental_option("mobileEmulation", {
        "deviceMetrics": {"width": PHONE[0], "height": PHONE[1], "pixelRatio": 2.0, "touch": True}})
    drv = webdriver.Chrome(service=Service(driver_path), options=options)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


@pytest.fixture
def speaker(tmp_path):
    boot, data = tmp_path / "boot", tmp_path / "data"
    boot.mkdir()
    data.mkdir()
    (boot / firstboot.SPEAKER_FILE).write_text(TEMPLATE.read_text())
    store = web.CardStore(boot, data, HATS, Path("/var/lib/resonate-embedded"))
    net = FakeNetwork([Network("Home Wi-Fi", 82), Network("Neighbour <5G>", 41),
                       Network("Cafe Guest", 20, secure=False)],
                      passwords={"Home Wi-Fi": "correct horse"})
    clock = [0.0]
    service = HotspotService(HotspotMachine("Speaker-Resonate-Speaker-setup"), net,
                             clock=lambda: clock[0])
    service.tick()  # nothing configured: hotspot up, scan taken
    applied: list = []

    def on_applied(settings, result):
        applied.append((settings, result))
        service.submit(settings.wifi.ssid, settings.wifi.psk, settings.wifi.country)

    page = web.SetupPage(store, service.scan_results, on_applied, activity=service.activity,
                         ap_ssid="Speaker-Resonate-Speaker-setup")
    server = web.SetupServer(page, "127.0.0.1", 0).start()
    yield {"url": f"http://127.0.0.1:{server.port}/", "store": store, "net": net,
           "service": service, "clock": clock, "applied": applied}
    server.close()


def full_screenshot(drv, path: Path) -> None:
    """The whole page, not only the viewport (Chromium's DevTools capture)."""
    shot = drv.execute_cdp_cmd("Page.captureScreenshot",
                               {"format": "png", "captureBeyondViewport": True})
    path.write_bytes(base64.b64decode(shot["data"]))


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def fill(drv, by, field: str, value: str) -> None:
    element = drv.find_element(by.ID, field)
    element.clear()
    if value:
        element.send_keys(value)


def submit(drv, by) -> None:
    """Click the submit button and wait for the next page to be loaded.  (A mark left on the
    old page's window tells the pages apart; waiting for the old element to go stale races
    with Chrome's navigation and can fail with an inspector error.)"""
    from selenium.webdriver.support.ui import WebDriverWait

    drv.execute_script("window.__before_submit = true")
    drv.find_element(by.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(drv, 30, ignored_exceptions=(Exception,)).until(lambda d: d.execute_script(
        "return window.__before_submit === undefined && document.readyState === 'complete'"))


def test_setup_page_in_a_real_browser(browser, speaker, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    drv = browser
    drv.get(speaker["url"])
    assert drv.title == "Set up Resonate Speaker"
    assert drv.execute_script("return window.innerWidth") == PHONE[0]
    # no horizontal scrolling on a phone
    assert drv.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]
    labels = [e.text for e in drv.find_elements(By.CSS_SELECTOR, "label.net .ssid")]
    assert labels == ["Home Wi-Fi", "Neighbour <5G>", "Cafe Guest", "Other network (type its name)"]
    drv.save_screenshot(str(tmp_path / "setup-form-phone.png"))
    full_screenshot(drv, tmp_path / "setup-form-full.png")
    # touch targets: every network row at least 44 px high
    assert min(e.size["height"] for e in drv.find_elements(By.CSS_SELECTOR, "label.net")) >= 44
    assert drv.find_element(By.ID, "wifi_country").size["height"] >= 44

    before = files(tmp_path / "boot") | files(tmp_path / "data")

    # ---- bad values: errors next to their fields, nothing written ----
    drv.find_element(By.CSS_SELECTOR, "label[for=net0]").click()  # tap "Home Wi-Fi"
    fill(drv, By, "wifi_psk", "correct horse")
    fill(drv, By, "wifi_country", "G1")
    fill(drv, By, "name", "")
    fill(drv, By, "server", "http://192.168.1.10:8927/sendspin")
    submit(drv, By)

    assert drv.find_element(By.ID, "form-errors").text.startswith("Nothing was changed.")
    # long messages wrap: still no horizontal scrolling
    assert drv.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]
    for field, text in (("wifi_country", "two-letter country code"),
                        ("name", "Give the speaker a name"),
                        ("server", "The server address must be a ws:// or wss:// URL")):
        # the message sits in the field's own block, right under its input
        block = drv.find_element(By.ID, f"field-{field}")
        err = block.find_element(By.CSS_SELECTOR, ".err")
        assert text in err.text, (field, err.text)
        assert drv.find_element(By.ID, field).get_attribute("aria-invalid") == "true"
        box_input = drv.find_element(By.ID, field).rect
        assert 0 <= err.rect["y"] - (box_input["y"] + box_input["height"]) < 80, field
    assert drv.find_elements(By.CSS_SELECTOR, "#field-wifi_psk .err") == []
    # what was typed is kept (the chosen network too)
    assert drv.find_element(By.ID, "net0").is_selected()
    assert drv.find_element(By.ID, "server").get_attribute("value") == "http://192.168.1.10:8927/sendspin"
    drv.save_screenshot(str(tmp_path / "setup-errors-phone.png"))
    full_screenshot(drv, tmp_path / "setup-errors-full.png")
    assert files(tmp_path / "boot") | files(tmp_path / "data") == before
    assert speaker["applied"] == []

    # ---- the same form, corrected ----
    fill(drv, By, "wifi_country", "gb")
    fill(drv, By, "name", "Kitchen")
    fill(drv, By, "server", "ws://192.168.1.10:8927/sendspin")
    fill(drv, By, "wifi_psk", "correct horse")  # retyped, as a person would after an error
    Select(drv.find_element(By.ID, "hat")).select_by_value("hifiberry-dacplus")
    submit(drv, By)

    errors = [e.text for e in drv.find_elements(By.CSS_SELECTOR, ".err, #form-errors")]
    assert drv.find_element(By.TAG_NAME, "h1").text == "Joining Home Wi-Fi\u2026", errors
    assert "appears in your music app as \u201cKitchen\u201d" in drv.find_element(By.TAG_NAME, "ol").text
    drv.save_screenshot(str(tmp_path / "setup-joining-phone.png"))

    data = tmp_path / "data" / "config"
    config = build_config(load_toml(data / "player.toml"), {})
    assert (config.name, config.server) == ("Kitchen", "ws://192.168.1.10:8927/sendspin")
    assert config.device == "hw:CARD=ResonateDAC,DEV=0"
    assert (data / "hat").read_text() == "hifiberry-dacplus\n"
    assert (data / "hostname").read_text() == "kitchen\n"
    wifi = (tmp_path / "data" / "config" / firstboot.NM_KEYFILE).read_text()  # NetworkManager's profile
    assert "ssid=Home Wi-Fi" in wifi and "dhcp-hostname=kitchen" in wifi
    assert "psk=" + firstboot.wpa_psk("Home Wi-Fi", "correct horse") in wifi and "correct horse" not in wifi
    assert "resonate-hifiberry-dacplus" in (tmp_path / "boot" / firstboot.HAT_FILE).read_text()
    (settings, result), = speaker["applied"]
    assert settings.wifi == firstboot.Wifi("Home Wi-Fi", "correct horse", "GB") and result.reboot

    # ---- and the hotspot does what the page promised ----
    speaker["clock"][0] = 10.0
    speaker["service"].tick()
    net = speaker["net"]
    assert net.ap is None and net.joined == ("Home Wi-Fi", "correct horse", "GB") and net.connected
    print(f"\n[setup-page] screenshots in {tmp_path}")
