"""What Raspberry Pi Imager's OS customisation left on the FAT partition, as speaker settings.

Imager writes one of two formats, chosen by the ``init_format`` of the OS list entry
(``image/imager/make-manifest.py`` declares ``cloudinit``):

* ``cloudinit`` (Imager 1.8 and 2.x; ``src/customization_generator.cpp`` and
  ``DownloadThread::_customizeImage`` in ``src/downloadthread.cpp`` of raspberrypi/rpi-imager):
  ``user-data`` (``#cloud-config``: ``hostname:``, ``timezone:``, ``users: - name: ...
  ssh_authorized_keys: - <key>``), ``network-config`` (netplan v2: ``network: version: 2
  wifis: wlan0: regulatory-domain: "GB" access-points: "<ssid>": password: "<64 hex>"``;
  Imager 1.8 wrote the same without the ``network:`` level and with ``renderer: networkd``)
  and ``meta-data`` (``instance-id``, not used here).
* ``systemd`` (Imager 1.x's guess for a local image file): ``firstrun.sh`` plus
  `` systemd.run=/boot/firstrun.sh systemd.run_success_action=reboot
  systemd.unit=kernel-command-line.target`` appended to ``cmdline.txt``. The script is never
  executed: only the ``/usr/lib/raspberrypi-sys-mods/imager_custom`` lines Imager generates
  are read (``set_hostname``, ``enable_ssh -k '<key>'...``, ``set_wlan [-h] '<ssid>' '<psk>'
  '<country>'``); everything else in it is ignored.

Both formats also append `` cfg80211.ieee80211_regdom=XX`` to ``cmdline.txt`` when a Wi-Fi
country is chosen; it is read as the country when the other files give none.

Imager's fields become the ``speaker.txt`` keys they mean (hostname -> ``name``, SSID ->
``wifi_ssid``, the PSK Imager derived -> ``wifi_psk``, country -> ``wifi_country``) and
are validated by :func:`resonate_embedded.firstboot.validate` like a ``speaker.txt``; SSH
public keys are checked here. User name, password, time zone and keyboard are not used
(the speaker has no login user; SSH is key-only, as root).

YAML is read with a strict subset parser of exactly what Imager writes (block mappings and
sequences, plain/single/double-quoted scalars, ``|`` block scalars; flow collections such as
``runcmd`` entries are kept as opaque text). Imager double-quotes SSIDs escaping only ``"``,
so inside double quotes ``\\"`` and ``\\\\`` are unescaped and any other backslash is kept
as typed. Anything outside the subset is an error naming the file and line.
"""

from __future__ import annotations

import base64
import re
import shlex
from pathlib import Path
from typing import Any

import attrs

USER_DATA = "user-data"
NETWORK_CONFIG = "network-config"
FIRSTRUN = "firstrun.sh"
CMDLINE = "cmdline.txt"
MAX_FILE_BYTES = 64 * 1024
IMAGER_CUSTOM = "/usr/lib/raspberrypi-sys-mods/imager_custom"
REGDOM = "cfg80211.ieee80211_regdom"
# what Imager appends to cmdline.txt for firstrun.sh (DownloadThread::_customizeImage)
_FIRSTRUN_TOKENS = re.compile(
    r"^(systemd\.run=.*|systemd\.run_success_action=.*|systemd\.unit=kernel-command-line\.target)$")
_KEY = re.compile(r"""^(?P<key>[A-Za-z0-9_][A-Za-z0-9_.\-]*|"(?:[^"\\]|\\.)*"|'(?:[^']|'')*')"""
                  r"""\s*:(?:\s+(?P<rest>.*))?$""")
_SSH_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                  "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
                  "sk-ecdsa-sha2-nistp256@openssh.com")


class ImagerFormatError(ValueError):
    """A file is not in the shape Imager writes (message names the file and line)."""


@attrs.frozen
class ImagerSettings:
    """Imager's settings: ``values`` as ``speaker.txt`` keys -> (where, value), SSH keys."""

    values: dict[str, tuple[str, str]] = attrs.Factory(dict)
    ssh_keys: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()  # the files they came from

    def __bool__(self) -> bool:
        return bool(self.sources)


# ---- a strict YAML subset ----------------------------------------------------------------

@attrs.define
class _Lines:
    """The file as (line number, indent, text) with a cursor; blank and comment lines kept."""

    source: str
    rows: list[tuple[int, int, str]]
    pos: int = 0

    @classmethod
    def of(cls, text: str, source: str) -> _Lines:
        rows = []
        for number, raw in enumerate(text.splitlines(), start=1):
            stripped = raw.lstrip(" ")
            if stripped.startswith("\t"):
                raise ImagerFormatError(f"{source} line {number}: a tab in the indentation")
            rows.append((number, len(raw) - len(stripped), stripped.rstrip()))
        return cls(source, rows)

    def skip_blank(self) -> None:
        while self.pos < len(self.rows) and (not self.rows[self.pos][2]
                                             or self.rows[self.pos][2].startswith("#")):
            self.pos += 1

    def peek(self) -> tuple[int, int, str] | None:
        self.skip_blank()
        return self.rows[self.pos] if self.pos < len(self.rows) else None

    def error(self, number: int, what: str) -> ImagerFormatError:
        return ImagerFormatError(f"{self.source} line {number}: {what} (not the format "
                                 "Raspberry Pi Imager writes)")


def parse_yaml(text: str, source: str) -> Any:
    """The document in ``text`` (an empty document is ``{}``); raises :class:`ImagerFormatError`."""
    lines = _Lines.of(text, source)
    first = lines.peek()
    if first is None:
        return {}
    value = _block(lines, first[1])
    rest = lines.peek()
    if rest is not None:
        raise lines.error(rest[0], "unexpected indentation")
    return value


def _block(lines: _Lines, indent: int) -> Any:
    number, at, text = lines.peek() or (0, -1, "")
    if at != indent:
        raise lines.error(number, "unexpected indentation")
    if text == "-" or text.startswith("- "):
        return _sequence(lines, indent)
    if _KEY.match(text):
        return _mapping(lines, indent)
    raise lines.error(number, f"expected 'key: value' or '- item', got {text[:40]!r}")


def _mapping(lines: _Lines, indent: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    while (row := lines.peek()) is not None and row[1] == indent:
        number, _at, text = row
        match = _KEY.match(text)
        if match is None or text.startswith("- "):
            break
        key = _scalar(match["key"], lines, number)
        if key in result:
            raise lines.error(number, f"{key!r} is set twice")
        lines.pos += 1
        result[key] = _value(lines, indent, number, match["rest"])
    return result


def _sequence(lines: _Lines, indent: int) -> list[Any]:
    result: list[Any] = []
    while (row := lines.peek()) is not None and row[1] == indent and (
            row[2] == "-" or row[2].startswith("- ")):
        number, _at, text = row
        item = text[1:].lstrip(" ")
        if not item:
            lines.pos += 1
            nxt = lines.peek()
            result.append(_block(lines, nxt[1]) if nxt and nxt[1] > indent else None)
        elif _KEY.match(item):
            # "- key: value": a mapping whose keys line up with the first one
            lines.rows[lines.pos] = (number, indent + len(text) - len(item), item)
            result.append(_mapping(lines, indent + len(text) - len(item)))
        else:
            lines.pos += 1
            result.append(_scalar(item, lines, number))
    return result


def _value(lines: _Lines, indent: int, number: int, rest: str | None) -> Any:
    if rest in ("|", "|-", "|+", ">", ">-", ">+"):
        return _block_scalar(lines, indent, fold=rest.startswith(">"))
    if rest:
        return _scalar(rest, lines, number)
    nxt = lines.peek()
    if nxt is not None and (nxt[1] > indent or (nxt[1] == indent and (
            nxt[2] == "-" or nxt[2].startswith("- ")))):
        return _block(lines, nxt[1])  # nested block, or "key:\n- item" at the same indent
    return None


def _block_scalar(lines: _Lines, indent: int, fold: bool) -> str:
    body: list[tuple[int, str]] = []
    while lines.pos < len(lines.rows):
        _number, at, text = lines.rows[lines.pos]
        if text and at <= indent:
            break
        body.append((at, text))
        lines.pos += 1
    margin = min((at for at, text in body if text), default=0)
    parts = [" " * (at - margin) + text if text else "" for at, text in body]
    return (" " if fold else "\n").join(parts).strip("\n") + "\n"


def _scalar(text: str, lines: _Lines, number: int) -> Any:
    if text.startswith('"'):
        if len(text) < 2 or not text.endswith('"') or re.search(r'(?<!\\)(?:\\\\)*"', text[1:-1]):
            raise lines.error(number, "a double-quoted value that does not end in one quote")
        return re.sub(r'\\([\\"])', r"\1", text[1:-1])
    if text.startswith("'"):
        if len(text) < 2 or not text.endswith("'") or "'" in text[1:-1].replace("''", ""):
            raise lines.error(number, "a single-quoted value that does not end in one quote")
        return text[1:-1].replace("''", "'")
    if text.startswith(("[", "{")):
        return text  # a flow collection (runcmd): kept as text, never interpreted
    if text.startswith(("&", "*", "!", "%", "@", "`")):
        raise lines.error(number, f"YAML feature {text[0]!r} is not supported")
    plain = re.split(r"\s#", text, maxsplit=1)[0].rstrip()
    return {"true": True, "false": False, "null": None, "~": None}.get(plain.lower(), plain)


# ---- Imager's files -> settings ------------------------------------------------------------

def _read(path: Path) -> str | None:
    """The file's text, None if absent; :class:`ImagerFormatError` if too big or not UTF-8."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ImagerFormatError(f"cannot read {path.name}: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ImagerFormatError(f"{path.name} is larger than {MAX_FILE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ImagerFormatError(f"{path.name} is not UTF-8 text") from None


def _text(value: Any, where: str) -> str:
    if isinstance(value, bool) or value is None or not isinstance(value, str):
        raise ImagerFormatError(f"{where}: expected a text value, got {value!r}")
    return value


def _mapping_at(doc: Any, where: str) -> dict[str, Any]:
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ImagerFormatError(f"{where}: expected 'key: value' entries")
    return doc


def from_user_data(doc: Any) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """``hostname`` -> name, and every ``users[].ssh_authorized_keys`` entry."""
    root = _mapping_at(doc, USER_DATA)
    values: dict[str, tuple[str, str]] = {}
    if root.get("hostname") is not None:
        values["name"] = (f"{USER_DATA} (hostname)",
                          _text(root["hostname"], f"{USER_DATA} hostname"))
    keys: list[str] = []
    users = root.get("users") or []
    if not isinstance(users, list):
        raise ImagerFormatError(f"{USER_DATA}: 'users' is not a list")
    for user in [root, *users]:
        if user == "default":  # cloud-init's default user: nothing of ours
            continue
        found = _mapping_at(user, f"{USER_DATA} users").get("ssh_authorized_keys") or []
        if not isinstance(found, list):
            raise ImagerFormatError(f"{USER_DATA}: 'ssh_authorized_keys' is not a list")
        keys += [_text(k, f"{USER_DATA} ssh_authorized_keys") for k in found]
    return values, keys


def from_network_config(doc: Any) -> dict[str, tuple[str, str]]:
    """The one Wi-Fi network (and regulatory domain) of Imager's netplan ``network-config``."""
    where = NETWORK_CONFIG
    root = _mapping_at(doc, where)
    root = _mapping_at(root.get("network", root), where)
    wifis = _mapping_at(root.get("wifis"), f"{where} wifis")
    interfaces = [v for k, v in wifis.items() if k != "renderer"]
    if len(interfaces) > 1:
        raise ImagerFormatError(f"{where}: more than one Wi-Fi interface")
    if not interfaces:
        return {}
    wlan = _mapping_at(interfaces[0], f"{where} wifis")
    values: dict[str, tuple[str, str]] = {}
    if wlan.get("regulatory-domain") is not None:
        values["wifi_country"] = (f"{where} (regulatory-domain)",
                                  _text(wlan["regulatory-domain"], f"{where} regulatory-domain"))
    points = _mapping_at(wlan.get("access-points"), f"{where} access-points")
    if len(points) > 1:
        raise ImagerFormatError(f"{where}: more than one Wi-Fi network (the speaker joins one)")
    for ssid, point in points.items():
        fields = _mapping_at(point, f"{where} access-points")
        if not set(fields) <= {"password", "hidden"}:
            raise ImagerFormatError(f"{where}: only 'password' and 'hidden' are understood for "
                                    f"a network, got {', '.join(sorted(fields))}")
        password = fields.get("password") or ""
        values["wifi_ssid"] = (f"{where} (access-points)", ssid)
        values["wifi_psk"] = (f"{where} (password)", _text(password, f"{where} password"))
    return values


def from_firstrun(text: str) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """The ``imager_custom`` lines of an Imager ``firstrun.sh`` (never executed)."""
    values: dict[str, tuple[str, str]] = {}
    keys: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split(None, 2)
        if len(words) < 2 or words[0] != IMAGER_CUSTOM:
            continue
        where = f"{FIRSTRUN} line {number}"
        try:
            args = shlex.split(words[2]) if len(words) > 2 else []
        except ValueError as exc:
            raise ImagerFormatError(f"{where}: {exc}") from None
        command = words[1]
        if command == "set_hostname" and len(args) == 1:
            _set_once(values, "name", (where, args[0]))
        elif command == "enable_ssh" and args[:1] == ["-k"]:
            keys += args[1:]
        elif command == "set_wlan":
            args = args[1:] if args[:1] == ["-h"] else args
            if len(args) != 3:
                raise ImagerFormatError(f"{where}: set_wlan needs SSID, key and country")
            for key, value in zip(("wifi_ssid", "wifi_psk", "wifi_country"), args):
                if value or key != "wifi_country":
                    _set_once(values, key, (where, value))
        elif command not in ("enable_ssh", "set_keymap", "set_timezone"):
            raise ImagerFormatError(f"{where}: unknown imager_custom command {command!r}")
    return values, keys


def _set_once(values: dict[str, tuple[str, str]], key: str, entry: tuple[str, str]) -> None:
    if key in values:
        raise ImagerFormatError(f"{entry[0]}: {key} is set twice (first at {values[key][0]})")
    values[key] = entry


def regdom_from_cmdline(text: str) -> str | None:
    """The last ``cfg80211.ieee80211_regdom=`` value on the kernel command line."""
    found = [t.split("=", 1)[1] for t in text.split() if t.startswith(REGDOM + "=")]
    return found[-1] if found else None


def check_ssh_key(key: str) -> bool:
    """A single OpenSSH public key line: known type, base64 blob naming the same type."""
    parts = key.split()
    if len(parts) < 2 or parts[0] not in _SSH_KEY_TYPES or "\n" in key or "\r" in key:
        return False
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        return False
    size = int.from_bytes(blob[:4], "big")
    return blob[4:4 + size] == parts[0].encode()


def files_present(boot: Path) -> tuple[str, ...]:
    """Which of Imager's files are on the card (whether or not they can be read)."""
    return tuple(name for name in (USER_DATA, NETWORK_CONFIG, FIRSTRUN) if (boot / name).exists())


def read(boot: Path) -> ImagerSettings:
    """Everything Imager left in ``boot``; :class:`ImagerFormatError` on the first bad file.

    The cloud-init files take precedence over ``firstrun.sh`` (Imager writes only one
    format; a card carrying both was customised twice, and cloud-init is the declared one).
    The country falls back to ``cmdline.txt``'s ``cfg80211.ieee80211_regdom``.
    """
    values: dict[str, tuple[str, str]] = {}
    keys: list[str] = []
    sources: list[str] = []
    user_data, network = _read(boot / USER_DATA), _read(boot / NETWORK_CONFIG)
    if user_data is not None or network is not None:
        if user_data is not None:
            found, keys = from_user_data(parse_yaml(user_data, USER_DATA))
            values.update(found)
            sources.append(USER_DATA)
        if network is not None:
            values.update(from_network_config(parse_yaml(network, NETWORK_CONFIG)))
            sources.append(NETWORK_CONFIG)
    elif (firstrun := _read(boot / FIRSTRUN)) is not None:
        values, keys = from_firstrun(firstrun)
        sources.append(FIRSTRUN)
    if sources and "wifi_country" not in values:
        regdom = regdom_from_cmdline(_read(boot / CMDLINE) or "")
        if regdom is not None:
            values["wifi_country"] = (f"{CMDLINE} ({REGDOM})", regdom)
    return ImagerSettings(values, tuple(dict.fromkeys(k.strip() for k in keys)), tuple(sources))


# ---- what first boot writes back -----------------------------------------------------------

def edit_cmdline(text: str, country: str | None) -> str:
    """``cmdline.txt`` without Imager's ``systemd.run`` additions, with the Wi-Fi country.

    Removes exactly ``systemd.run=*``, ``systemd.run_success_action=*`` and
    ``systemd.unit=kernel-command-line.target`` (left in, systemd would boot into
    kernel-command-line.target and try ``/boot/firstrun.sh`` at every start). With a
    ``country`` (already validated, ``^[A-Z]{2}$``) every ``cfg80211.ieee80211_regdom=`` is
    replaced by one for it, appended at the end; without, they are kept. Other parameters keep
    their order. Returns ``text`` unchanged when nothing differs, else one line ending in ``\\n``.
    """
    tokens = [t for t in text.split() if not _FIRSTRUN_TOKENS.match(t)]
    if country is not None:
        tokens = [t for t in tokens if not t.startswith(REGDOM + "=")] + [f"{REGDOM}={country}"]
    return text if tokens == text.split() else " ".join(tokens) + "\n"


def has_firstrun_hook(text: str) -> bool:
    """True if ``cmdline.txt`` still carries Imager's ``systemd.run`` additions."""
    return any(_FIRSTRUN_TOKENS.match(t) for t in text.split())


def merge_authorized_keys(existing: str, keys: tuple[str, ...]) -> str:
    """``existing`` with every key of ``keys`` not yet in it appended (one per line)."""
    lines = existing.splitlines()
    present = {" ".join(line.split()[:2]) for line in lines}
    added = [k for k in keys if " ".join(k.split()[:2]) not in present]
    return "\n".join(lines + added) + "\n" if lines or added else ""
