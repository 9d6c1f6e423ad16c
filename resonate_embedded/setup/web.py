"""The setup page: a small server-rendered HTML form, served while the setup hotspot is up.

What the form collects (Wi-Fi network from a scan or typed, password, country, speaker name,
optional server URL, DAC board) becomes a ``speaker.txt`` -- the existing file on the card with
those lines replaced, comments kept -- and that *text* is checked by exactly the code that
checks the file at boot: :func:`firstboot.parse` then :func:`firstboot.validate` (which runs the
player's own :class:`~resonate_embedded.config.Config` validation). Only if everything is valid
is it written (atomically) to the boot partition and applied by :func:`firstboot.apply` into
``/data/config`` -- the same files, the same way, as at boot; so the next boot's firstboot run
re-reads the same settings instead of reverting them, and a crash between the two steps is
repaired at the next boot. Any problem is shown next to its field and nothing is written.

The page itself adds only what a form needs and a file does not: a network must be chosen,
the name may not be empty (in ``speaker.txt`` an empty name means "the default"), values must be
one line of at most 200 characters (a newline would smuggle in another setting).

Why the standard library's ``http.server`` in its own process, not ``h11`` inside the player:
the page writes the boot and data partitions and drives the Wi-Fi, which the hardened player
service (unprivileged user, ``ProtectSystem=strict``) must not be able to do; it is not on the
audio path and runs only while the hotspot is up; and it adds no dependency to the image. It
serves one small form to one phone: a thread per request (``ThreadingHTTPServer``) with a
socket timeout, request bodies bounded to :data:`MAX_BODY_BYTES`, header lines to http.server's
own 64 KiB limit. No JavaScript at all (the CSP forbids scripts); every value shown is passed
through :func:`html.escape`; a POST whose ``Origin`` (or ``Referer``) is not this page's own
``Host`` is refused (CSRF is moot on a closed access point, but this is cheap).
"""

from __future__ import annotations

import argparse
import html
import logging
import re
import shutil
import tempfile
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import attrs

from resonate_embedded import firstboot
from resonate_embedded.setup.hotspot import Network, best_networks

log = logging.getLogger("resonate-setup")

MAX_BODY_BYTES = 16 * 1024
MAX_FIELD_CHARS = 200
MAX_FIELDS = 32
FORM_KEYS = ("wifi_ssid", "wifi_psk", "wifi_country", "name", "server", "hat")
_LINE = re.compile(r"^line (\d+): (.*)$", re.S)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_STAND_IN = {"wifi_ssid": "-", "wifi_psk": "", "wifi_country": "GB", "name": "-", "server": "",
             "hat": firstboot.DEFAULT_HAT}
REPO_HATS = Path(__file__).resolve().parents[2] / "board" / "hats"
SYSTEM_HATS = Path("/usr/share/resonate-embedded/hats")
TEMPLATE = Path(__file__).resolve().parents[2] / "image" / "boot" / "speaker.txt"


# ---- speaker.txt in, speaker.txt out -----------------------------------------------------

def read_speaker_txt(boot: Path) -> str:
    """The current file ("" if none or unreadable), decoded as firstboot does."""
    try:
        raw = (boot / firstboot.SPEAKER_FILE).read_bytes()[:firstboot.MAX_FILE_BYTES]
    except OSError:
        return ""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def _quoted(value: str) -> str:
    """A value as a speaker.txt line keeps it (firstboot strips spaces and one quote pair)."""
    if value != value.strip() or (len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'"):
        return f'"{value}"'
    return value


def merge_speaker_txt(old: str, updates: dict[str, str]) -> str:
    """``old`` with the settings in ``updates`` replaced (or added after their ``#key=``
    example line, else at the end). Comments and other valid settings are kept; lines the
    parser would reject (unknown keys, no ``=``) are turned into comments, duplicates dropped."""
    if old.startswith("\ufeff"):
        old = old[1:]
    out: list[str] = []
    done: set[str] = set()
    for raw in old.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            out.append(raw)
            continue
        key = line.split("=", 1)[0].strip().lower() if "=" in line else ""
        if key in updates and key not in done:
            out.append(f"{key}={_quoted(updates[key])}")
        elif key in firstboot.KEYS and key not in done:
            out.append(raw)
        else:
            out.append(f"# (turned off by the setup page) {raw}")
        done.add(key)
    for key, value in updates.items():
        if key in done or (key == "server" and not value):  # optional: no empty new line
            continue
        example = re.compile(rf"^#\s*{key}\s*=", re.I)
        at = next((i for i, l in enumerate(out) if example.match(l.strip())), None)
        new = f"{key}={_quoted(value)}"
        if at is None:
            out.append(new)
        else:
            out.insert(at + 1, new)
    return "\n".join(out) + "\n"


@attrs.define
class FormCheck:
    """What a submitted form means: ``settings`` and ``text`` if valid, else the errors."""

    values: dict[str, str]
    errors: dict[str, list[str]] = attrs.Factory(dict)  # form key -> messages
    general: list[str] = attrs.Factory(list)
    text: str | None = None
    settings: firstboot.Settings | None = None

    @property
    def ok(self) -> bool:
        return self.settings is not None and not self.errors and not self.general


def form_values(form: dict[str, list[str]]) -> dict[str, str]:
    """The raw form (``parse_qs``) to speaker.txt keys (``network`` radio + ``ssid_other``)."""
    def one(key: str) -> str:
        return (form.get(key) or [""])[0]

    choice = one("network")
    ssid = choice[4:] if choice.startswith("net:") else one("ssid_other") if choice == "other" else ""
    values = {"wifi_ssid": ssid, "network": choice, "ssid_other": one("ssid_other"),
              "wifi_psk": one("wifi_psk")}  # SSID and password exactly as typed
    values.update({k: one(k).strip() for k in ("wifi_country", "name", "server", "hat")})
    values["wifi_country"] = values["wifi_country"].upper()
    return values


def check_form(values: dict[str, str], hats: dict[str, firstboot.HatProfile], old_text: str,
               state_dir: Path | None) -> FormCheck:
    """The page's few own checks, then speaker.txt's parser and validation on the merged file."""
    check = FormCheck(values)

    def err(key: str, message: str) -> None:
        check.errors.setdefault(key, []).append(message)

    for key in FORM_KEYS:
        value = values.get(key, "")
        if len(value) > MAX_FIELD_CHARS:
            err(key, f"at most {MAX_FIELD_CHARS} characters")
        elif _CONTROL.search(value):
            err(key, "must be a single line without control characters")
    if not values.get("wifi_ssid"):
        err("wifi_ssid", "choose your Wi-Fi network (or type its name under \u201cOther\u201d)")
    if not values.get("name", "").strip():
        err("name", "give the speaker a name (it is what your music app shows)")
    # The rest of the form is still validated (every error shown at once): a field the page
    # already refused takes a neutral stand-in, and its validation message is not repeated.
    flagged = set(check.errors)
    updates = {k: _STAND_IN[k] if k in flagged else values.get(k, "") for k in FORM_KEYS}
    text = merge_speaker_txt(old_text, updates)
    parsed, problems = firstboot.parse(text)
    line_key = {line: key for key, (line, _v) in parsed.items()}
    for key in FORM_KEYS:  # the text must mean exactly what was typed
        if parsed.get(key, (0, ""))[1] != updates[key]:
            err(key, "this value cannot be stored in speaker.txt")
    try:
        settings = firstboot.validate(parsed, hats, state_dir)
    except firstboot.FirstbootError as exc:
        problems = problems + exc.problems
        settings = None
    for problem in problems:
        match = _LINE.match(problem)
        key = line_key.get(int(match.group(1))) if match else next(
            (k for k in FORM_KEYS if problem.startswith((k + " ", k + "="))), None)
        if key in flagged:
            continue
        if key in FORM_KEYS:
            err(key, match.group(2) if match else problem)
        else:
            check.general.append(f"{firstboot.SPEAKER_FILE} {problem}")
    if not check.errors and not check.general and settings is not None:
        check.text, check.settings = text, settings
    return check


@attrs.define
class CardStore:
    """Where the settings live: the boot (FAT) and data partitions, as firstboot sees them."""

    boot: Path
    data: Path
    hats_dir: Path
    state_dir: Path | None = Path("/var/lib/resonate-embedded")
    remount: bool = False  # on the speaker: the FAT partition is mounted read-only
    hats: dict[str, firstboot.HatProfile] = attrs.field(init=False)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)

    def __attrs_post_init__(self) -> None:
        self.hats = firstboot.load_hats(self.hats_dir)

    def profiles(self) -> list[firstboot.HatProfile]:
        return sorted({h.name: h for h in self.hats.values()}.values(), key=lambda h: h.name)

    def current(self) -> dict[str, str]:
        """Today's settings from speaker.txt, to fill the form (never the password)."""
        parsed, _problems = firstboot.parse(read_speaker_txt(self.boot))
        values = {k: v for k, (_line, v) in parsed.items() if k in FORM_KEYS and k != "wifi_psk"}
        if values.get("hat", "").lower() in self.hats:
            values["hat"] = self.hats[values["hat"].lower()].name
        return values

    def check(self, values: dict[str, str]) -> FormCheck:
        return check_form(values, self.hats, read_speaker_txt(self.boot), self.state_dir)

    def commit(self, values: dict[str, str]) -> tuple[FormCheck, firstboot.Result | None]:
        """Check again under the lock, write speaker.txt, apply it as at boot."""
        with self._lock:
            check = self.check(values)
            if not check.ok:
                return check, None
            with firstboot.writable(self.boot, self.remount):
                firstboot.write_atomic(self.boot / firstboot.SPEAKER_FILE, check.text or "", mode=None)
            result = firstboot.apply(self.boot, self.data, self.hats_dir, self.state_dir,
                                     remount=self.remount)
            if not result.ok:  # only an I/O failure can get here: the text was just validated
                check.general += [f"{firstboot.SPEAKER_FILE}: {p}" for p in result.problems] or [
                    "the settings could not be saved"]
                check.settings = None
            return check, result


# ---- HTML --------------------------------------------------------------------------------

def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


CSS = """
*{box-sizing:border-box}
body{margin:0;font:18px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;background:#f4f4f6}
main{max-width:34rem;margin:0 auto;padding:1rem 1rem 3rem}
h1{font-size:1.5rem;margin:.6rem 0 .3rem}
p.lead{margin:.2rem 0 1rem;color:#444}
.field,fieldset{margin:0 0 1.1rem;padding:0;border:0}
label,legend{display:block;font-weight:600;margin:0 0 .35rem}
input[type=text],input[type=password],input[type=url],select{width:100%;font-size:1.1rem;padding:.75rem;
 border:1px solid #aaa;border-radius:.5rem;background:#fff;color:inherit}
.net{display:flex;align-items:center;gap:.7rem;font-weight:400;margin:0 0 .4rem;padding:.75rem;
 border:1px solid #ccc;border-radius:.5rem;background:#fff;min-height:3rem}
.net input{width:1.4rem;height:1.4rem;margin:0;flex:none}
.net .ssid{flex:1;overflow-wrap:anywhere}
.net .sig{color:#555;font-size:.9rem;white-space:nowrap}
#ssid_other{margin-top:.2rem}
.hint{font-size:.9rem;color:#555;margin:.3rem 0 0}
.err{color:#b00020;font-weight:600;margin:.35rem 0 0;overflow-wrap:anywhere}
.invalid input,.invalid select{border:2px solid #b00020}
.box{border-radius:.5rem;padding:.75rem 1rem;margin:0 0 1rem}
.box.bad{background:#fde7ea;border:1px solid #b00020}
.box.note{background:#fff6d6;border:1px solid #c9a400}
button{width:100%;font-size:1.2rem;font-weight:600;padding:.95rem;border:0;border-radius:.6rem;
 background:#0b57d0;color:#fff}
ol li{margin:.35rem 0}
"""


def _page(title: str, body: str) -> str:
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>"
            f"<body><main>{body}</main></body></html>\n")


def signal_text(signal: int) -> str:
    bars = max(1, min(4, (signal + 24) // 25))
    return "\u25cf" * bars + "\u25cb" * (4 - bars)


_LABELS = {"wifi_ssid": "The network name", "wifi_psk": "The password",
           "wifi_country": "The country", "name": "The name", "server": "The server address",
           "hat": "The sound board"}


def friendly(key: str, message: str) -> str:
    """firstboot's message for a speaker.txt line, worded for the form field it sits under
    (``server='x': must be ...`` -> ``The server address must be ...``)."""
    match = re.match(rf"^{key}(?:=.*?:)?\s+(.*)$", message, re.S)
    if match and key in _LABELS:
        return f"{_LABELS[key]} {match.group(1)}"
    return message[:1].upper() + message[1:]


def _errors(check: FormCheck | None, key: str) -> str:
    if check is None or key not in check.errors:
        return ""
    return "".join(f'<p class="err" id="{key}-error" role="alert">{esc(friendly(key, m))}</p>'
                   for m in check.errors[key])


def _text_field(key: str, label: str, value: str, check: FormCheck | None, *, kind: str = "text",
                hint: str = "", extra: str = "") -> str:
    bad = check is not None and key in check.errors
    described = f' aria-describedby="{key}-error" aria-invalid="true"' if bad else ""
    return (f'<div class="field{" invalid" if bad else ""}" id="field-{key}">'
            f'<label for="{key}">{esc(label)}</label>'
            f'<input type="{kind}" id="{key}" name="{key}" value="{esc(value)}" '
            f'maxlength="{MAX_FIELD_CHARS}"{described} {extra}>'
            + (f'<p class="hint">{hint}</p>' if hint else "") + _errors(check, key) + "</div>")


def render_form(store: CardStore, networks: list[Network], values: dict[str, str] | None = None,
                check: FormCheck | None = None, notice: str | None = None,
                speaker: str | None = None) -> str:
    values = dict(values if values is not None else store.current())
    speaker = speaker or values.get("name") or firstboot.DEFAULT_NAME
    choice = values.get("network")
    if choice is None and values.get("wifi_ssid"):
        known = {n.ssid for n in networks}
        choice = f"net:{values['wifi_ssid']}" if values["wifi_ssid"] in known else "other"
        values.setdefault("ssid_other", "" if choice != "other" else values["wifi_ssid"])
    parts = [f"<h1>Set up {esc(speaker)}</h1>",
             '<p class="lead">Choose the Wi-Fi network the speaker should join. The speaker '
             "then leaves this setup network; connect your phone back to your own Wi-Fi.</p>"]
    if notice:
        parts.append(f'<div class="box note" role="status">{esc(notice)}</div>')
    if check is not None and (check.errors or check.general):
        parts.append('<div class="box bad" role="alert" id="form-errors"><strong>Nothing was '
                     "changed.</strong> Please correct the marked fields."
                     + "".join(f"<p>{esc(g)}</p>" for g in check.general) + "</div>")
    parts.append('<form method="post" action="/" accept-charset="utf-8">')
    bad = check is not None and "wifi_ssid" in check.errors
    parts.append(f'<fieldset id="field-wifi_ssid"{" class=invalid" if bad else ""}>'
                 "<legend>Wi-Fi network</legend>")
    for i, net in enumerate(networks):
        value = f"net:{net.ssid}"
        checked = " checked" if choice == value else ""
        parts.append(f'<label class="net" for="net{i}"><input type="radio" name="network" '
                     f'id="net{i}" value="{esc(value)}"{checked}>'
                     f'<span class="ssid">{esc(net.ssid)}</span><span class="sig" '
                     f'title="signal {net.signal}%">{signal_text(net.signal)} '
                     f'{"secured" if net.secure else "open"}</span></label>')
    if not networks:
        parts.append('<p class="hint">No networks were found. Type the name of yours below.</p>')
    checked = " checked" if choice == "other" or not networks else ""
    parts.append(f'<label class="net" for="net-other"><input type="radio" name="network" '
                 f'id="net-other" value="other"{checked}><span class="ssid">Other network '
                 "(type its name)</span></label>"
                 f'<input type="text" id="ssid_other" name="ssid_other" aria-label="Network name" '
                 f'value="{esc(values.get("ssid_other", ""))}" maxlength="{MAX_FIELD_CHARS}" '
                 'autocapitalize="off" autocorrect="off" spellcheck="false">'
                 + _errors(check, "wifi_ssid") + "</fieldset>")
    parts.append(_text_field("wifi_psk", "Wi-Fi password", values.get("wifi_psk", ""), check,
                             kind="password", hint="Leave empty for an open network.",
                             extra='autocomplete="off" autocapitalize="off" spellcheck="false"'))
    parts.append(_text_field("wifi_country", "Country (two letters)",
                             values.get("wifi_country", ""), check,
                             hint="GB, US, DE, FR\u2026 It sets the Wi-Fi channels that are legal "
                                  "where you are.",
                             extra='autocapitalize="characters" autocomplete="off" '
                                   'spellcheck="false" placeholder="GB"'))
    parts.append(_text_field("name", "Speaker name", values.get("name", ""), check,
                             hint="What your music app shows, e.g. Kitchen.",
                             extra='autocomplete="off"'))
    parts.append(_text_field("server", "Server address (optional)", values.get("server", ""), check,
                             hint="Only if your Sendspin server does not find the speaker by "
                                  "itself, e.g. ws://192.168.1.10:8927/sendspin",
                             extra='autocapitalize="off" autocorrect="off" spellcheck="false" '
                                   'inputmode="url"'))
    hat = (values.get("hat") or firstboot.DEFAULT_HAT).lower()
    hat_bad = check is not None and "hat" in check.errors
    options = "".join(
        f'<option value="{esc(p.name)}"{" selected" if p.name == hat else ""}>'
        f"{esc(p.description or p.name)}</option>" for p in store.profiles())
    parts.append(f'<div class="field{" invalid" if hat_bad else ""}" id="field-hat">'
                 f'<label for="hat">Sound board (DAC)</label><select id="hat" name="hat">'
                 f"{options}</select>{_errors(check, 'hat')}</div>")
    parts.append('<button type="submit">Save and join</button></form>')
    return _page(f"Set up {speaker}", "".join(parts))


def render_joining(ssid: str, name: str, reboot: bool, ap_ssid: str | None) -> str:
    back = f" \u201c{esc(ap_ssid)}\u201d" if ap_ssid else ""
    body = (f"<h1>Joining {esc(ssid)}\u2026</h1>"
            f'<div class="box note" role="status" id="joining">The settings are saved. The '
            f"speaker now closes its setup network and joins \u201c{esc(ssid)}\u201d.</div>"
            "<ol>"
            f"<li>Connect your phone back to \u201c{esc(ssid)}\u201d.</li>"
            f"<li>In about a minute the speaker appears in your music app as "
            f"\u201c{esc(name)}\u201d."
            + (" It restarts once first, to switch to the new sound board." if reboot else "")
            + "</li>"
            f"<li>If it does not, the speaker opens its setup network{back} again within a few "
            "minutes: join it and check the password.</li></ol>")
    return _page(f"Joining {ssid}", body)


# ---- the page as an application (no sockets: tested directly) -----------------------------

OnApplied = Callable[[firstboot.Settings, firstboot.Result], None]


class SetupPage:
    """GET shows the form; POST checks, saves and applies, then ``on_applied(settings, result)``."""

    def __init__(self, store: CardStore, networks: Callable[[], list[Network]],
                 on_applied: OnApplied | None = None,
                 notice: Callable[[], str | None] = lambda: None,
                 activity: Callable[[], None] = lambda: None,
                 ap_ssid: str | None = None) -> None:
        self.store, self.networks, self.on_applied = store, networks, on_applied
        self.notice, self.activity, self.ap_ssid = notice, activity, ap_ssid

    def get(self) -> tuple[int, str]:
        self.activity()
        return 200, render_form(self.store, best_networks(self.networks()), notice=self.notice())

    def post(self, form: dict[str, list[str]]) -> tuple[int, str]:
        self.activity()
        values = form_values(form)
        check, result = self.store.commit(values)
        if not check.ok or check.settings is None or result is None:
            log.info("setup page: settings refused (%s)", "; ".join(
                [f"{k}: {' '.join(v)}" for k, v in check.errors.items()] + check.general))
            return 200, render_form(self.store, best_networks(self.networks()), values, check,
                                    notice=self.notice())
        settings = check.settings
        wifi = settings.wifi
        log.info("setup page: settings saved: name=%r hat=%s wifi=%r", settings.player.name,
                 settings.hat.name, wifi.ssid if wifi else None)
        if self.on_applied is not None:
            self.on_applied(settings, result)
        return 200, render_joining(wifi.ssid if wifi else "", settings.player.name,
                                   result.reboot, self.ap_ssid)


# ---- HTTP ----------------------------------------------------------------------------------

def same_origin(headers: Any) -> bool:
    """A browser's POST names its page in ``Origin`` (or ``Referer``): it must be this host."""
    host = (headers.get("Host") or "").strip().lower()
    if not host:
        return False
    for name in ("Origin", "Referer"):
        value = headers.get(name)
        if value is None:
            continue
        parts = urlsplit(value.strip())
        return parts.scheme == "http" and parts.netloc.lower() == host
    return True  # no browser context at all (curl): not a cross-site form post


class _Handler(BaseHTTPRequestHandler):
    server_version = "resonate-setup"
    sys_version = ""
    protocol_version = "HTTP/1.0"
    timeout = 15  # seconds per socket operation: a stalled client does not hold a thread forever
    page: SetupPage

    def _send(self, status: int, body: str = "", headers: dict[str, str] | None = None) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "same-origin")
        self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; "
                         "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _plain(self, status: HTTPStatus, text: str) -> None:
        self._send(status, _page(status.phrase, f"<h1>{esc(status.phrase)}</h1><p>{esc(text)}</p>"))

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        if path == "/":
            status, body = self.page.get()
            self._send(status, body)
        elif path == "/favicon.ico":
            self._send(404)
        else:  # phones probe URLs to detect a captive portal: send them to the form
            self._send(303, "", {"Location": "/"})

    def do_POST(self) -> None:  # noqa: N802
        if urlsplit(self.path).path != "/":
            return self._plain(HTTPStatus.NOT_FOUND, "No such page.")
        if not same_origin(self.headers):
            log.warning("setup page: cross-origin POST refused (Origin %r, Host %r)",
                        self.headers.get("Origin"), self.headers.get("Host"))
            return self._plain(HTTPStatus.FORBIDDEN, "This form can only be sent from the setup page.")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            return self._plain(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "Send the form from the page.")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._plain(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required.")
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            return self._plain(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "The form is too large.")
        body = self.rfile.read(length)
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                            max_num_fields=MAX_FIELDS, errors="strict")
        except (UnicodeDecodeError, ValueError):
            return self._plain(HTTPStatus.BAD_REQUEST, "The form could not be read.")
        status, page = self.page.post(form)
        self._send(status, page)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)


class SetupServer:
    """The page on ``host:port`` in a background thread; ``close()`` stops it."""

    def __init__(self, page: SetupPage, host: str = "127.0.0.1", port: int = 8080) -> None:
        handler = type("SetupHandler", (_Handler,), {"page": page})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="setup-page",
                                        daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> "SetupServer":
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


# ---- ``resonate-embedded setup-page`` --------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    from resonate_embedded.setup import hotspot

    if args.fake_network:
        try:
            from resonate_bench.fake_network import FakeNetwork
        except ImportError:
            log.error("--fake-network needs the test bench of a source checkout "
                      "(`bash .ci/setup` installs tests/harness)")
            return 2
        network: hotspot.NetworkControl = FakeNetwork()
        if args.boot is None or args.data is None:
            tmp = Path(tempfile.mkdtemp(prefix="resonate-setup-"))
            args.boot = args.boot or tmp / "boot"
            args.data = args.data or tmp / "data"
            args.boot.mkdir(parents=True, exist_ok=True)
            if TEMPLATE.exists() and not (args.boot / firstboot.SPEAKER_FILE).exists():
                shutil.copy(TEMPLATE, args.boot / firstboot.SPEAKER_FILE)
    else:
        network = hotspot.NmcliNetwork()
    boot, data = args.boot or Path("/boot/firmware"), args.data or Path("/data")
    hats = args.hats or (REPO_HATS if REPO_HATS.is_dir() else SYSTEM_HATS)
    store = CardStore(boot, data, hats, args.state_dir, remount=args.system)
    ap_ssid = hotspot.ap_ssid_for(store.current().get("name") or firstboot.DEFAULT_NAME)
    print(f"speaker.txt: {boot / firstboot.SPEAKER_FILE}   settings: {data / 'config'}", flush=True)

    if not args.hotspot:
        networks = hotspot.best_networks(network.scan())

        def joined(settings: firstboot.Settings, result: firstboot.Result) -> None:
            if settings.wifi is not None:
                network.join(settings.wifi.ssid, settings.wifi.psk, settings.wifi.country)

        page = SetupPage(store, lambda: networks, joined, ap_ssid=ap_ssid)
        server = SetupServer(page, args.host, args.port).start()
        print(f"setup page on http://{args.host}:{server.port}/  (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
        return 0

    machine = hotspot.HotspotMachine(ap_ssid, args.ap_password,
                                     fail_after_s=args.fail_after_min * 60)
    holder: dict[str, SetupServer] = {}
    service: hotspot.HotspotService

    def notice() -> str | None:
        failed = machine.failed_ssid
        return (f"The speaker could not join \u201c{failed}\u201d. Check the network and the "
                "password and try again.") if failed else None

    def applied(settings: firstboot.Settings, result: firstboot.Result) -> None:
        if settings.wifi is not None:
            service.submit(settings.wifi.ssid, settings.wifi.psk, settings.wifi.country)

    page = SetupPage(store, lambda: service.scan_results(), applied, notice,
                     activity=lambda: service.activity(), ap_ssid=ap_ssid)

    def on_hotspot(up: bool) -> None:
        if up and "server" not in holder:
            holder["server"] = SetupServer(page, args.host, args.port).start()
            print(f"hotspot {ap_ssid!r} up: setup page on port {args.port}", flush=True)
        elif not up and "server" in holder:
            holder.pop("server").close()
            print("hotspot down: setup page closed", flush=True)

    service = hotspot.HotspotService(machine, network, on_hotspot)
    stop = threading.Event()
    try:
        service.run(stop, interval_s=2.0)
    except KeyboardInterrupt:
        pass
    finally:
        on_hotspot(False)
    return 0
