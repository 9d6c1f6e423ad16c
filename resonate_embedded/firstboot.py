"""First boot (and every boot): ``speaker.txt`` and Raspberry Pi Imager's settings on the card.

A person edits a plain ``key=value`` file on any computer::

    wifi_ssid=My Network
    wifi_psk=my wifi password
    wifi_country=GB
    name=Kitchen
    server=ws://192.168.1.10:8927/sendspin
    hat=hifiberry-dac
    output_delay_ms=0

or fills in Raspberry Pi Imager's OS customisation, which leaves ``user-data`` and
``network-config`` (or ``firstrun.sh``) on the FAT partition (:mod:`resonate_embedded.imager`
reads them as the same keys: hostname -> ``name``, Wi-Fi -> ``wifi_*``, plus SSH keys).

Precedence: a key set in ``speaker.txt`` wins over Imager's value for it; ``wifi_ssid`` and
``wifi_psk`` count as one setting (a network in ``speaker.txt`` replaces Imager's network and
its password, never mixes them); ``wifi_country`` falls back to Imager's. Both are re-read at
every boot, so the result is the same whichever was edited last.

At boot (``resonate-firstboot.service``, before the network and the player start) this module
parses and validates both and, only if *everything* is valid, writes the player's TOML config,
the Wi-Fi connection (a NetworkManager keyfile), SSH keys and the hostname to the data
partition, and the Wi-Fi country into ``cmdline.txt`` (atomically, only what changed). Any
error is written to ``speaker-errors.txt`` next to the file and to the journal, and the
speaker keeps its previous (or default) settings: a bad file never bricks it. Player settings
are validated by :mod:`resonate_embedded.config` itself.

Run: ``python -m resonate_embedded.firstboot --boot /boot/firmware --data /data
--hats /usr/share/resonate-embedded/hats [--system]``. Exit status is 0 unless this
module itself breaks (a bad file is the user's business, not a failed unit).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import sys
import time
import tomllib
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ContextManager

import attrs
import tomli_w

from resonate_embedded import imager
from resonate_embedded.amplifier import settings_from_profile
from resonate_embedded.atomic_file import replace_file
from resonate_embedded.config import Config, ConfigError, build_config
from resonate_embedded.setup.hotspot import NmcliNetwork
from resonate_embedded.system_commands import read_write, run_command

log = logging.getLogger("resonate-firstboot")

SPEAKER_FILE = "speaker.txt"
ERRORS_FILE = "speaker-errors.txt"
HAT_FILE = "resonate-hat.txt"  # included by config.txt: which merged DTB the firmware loads
DEFAULT_HAT = "hifiberry-dac"
DEFAULT_NAME = "Resonate Speaker"
KEYS = ("wifi_ssid", "wifi_psk", "wifi_country", "name", "server", "hat", "output_delay_ms")
MAX_FILE_BYTES = 64 * 1024
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
WIFI_CONNECTION = NmcliNetwork.WIFI_CONNECTION  # the same connection the setup hotspot joins
WIFI_UUID = str(uuid.uuid5(uuid.NAMESPACE_URL, "urn:resonate-embedded:" + WIFI_CONNECTION))
NM_KEYFILE = f"nm-connections/{WIFI_CONNECTION}.nmconnection"  # under data/config
AUTHORIZED_KEYS = "ssh/authorized_keys"  # under data (sshd: AuthorizedKeysFile)
WIFI_PAIR = ("wifi_ssid", "wifi_psk")  # one setting: never mixed from two sources

# key -> (where: a speaker.txt line number, or a description of Imager's file; value)
Values = dict[str, tuple[int | str, str]]


class FirstbootError(ValueError):
    """One or more problems in speaker.txt (``problems`` lists them, one line each)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@attrs.frozen
class HatProfile:
    name: str
    aliases: tuple[str, ...]
    description: str
    card: str
    device: str
    mixer: str
    rate: int
    period_frames: int
    periods: int
    output_latency_us: int
    calibrated: bool
    dtb_prefix: str  # the merged DTBs are <dtb_prefix>-<board>.dtb on the FAT partition
    # the board's amplifier enable line as player settings (amplifier.settings_from_profile);
    # empty: no switchable amplifier
    amplifier: tuple[tuple[str, Any], ...] = ()

    @property
    def period_us(self) -> int:
        return round(self.period_frames * 1_000_000 / self.rate)


def load_hat(path: Path) -> HatProfile:
    """Read one ``board/hats/<name>.toml`` profile."""
    data = tomllib.loads(path.read_text())
    hat, alsa, lat = data["hat"], data["alsa"], data["latency"]
    return HatProfile(
        name=hat["name"], aliases=tuple(hat.get("aliases", ())),
        description=hat.get("description", ""), card=alsa["card"], device=alsa["device"],
        mixer=alsa.get("mixer", ""), rate=int(alsa["rate"]),
        period_frames=int(alsa["period_frames"]), periods=int(alsa["periods"]),
        output_latency_us=int(lat["output_latency_us"]), calibrated=bool(lat["calibrated"]),
        dtb_prefix=f"resonate-{hat['name']}",
        amplifier=tuple(settings_from_profile(data).items()))


def load_hats(directory: Path) -> dict[str, HatProfile]:
    """All profiles in ``directory``, by name and by alias (lower case)."""
    hats: dict[str, HatProfile] = {}
    for path in sorted(directory.glob("*.toml")):
        profile = load_hat(path)
        for key in (profile.name, *profile.aliases):
            hats[key.lower()] = profile
    return hats


@attrs.frozen
class Wifi:
    ssid: str
    psk: str  # "" = open network
    country: str


@attrs.frozen
class Settings:
    """What a valid speaker.txt means."""

    player: Config
    player_values: dict[str, Any]  # the keys written to the TOML file
    hat: HatProfile
    wifi: Wifi | None
    hostname: str
    ssh_keys: tuple[str, ...] = ()  # public keys to add to data/ssh/authorized_keys


def parse(text: str) -> tuple[Values, list[str]]:
    """``key=value`` lines into {key: (line number, value)}, plus the problems found.

    ``#`` starts a comment line; blank lines are ignored; keys are case-insensitive;
    whitespace around keys and values is dropped; one pair of matching quotes around a
    value is removed (so ``wifi_psk="  spaces  "`` keeps its spaces).
    """
    values: Values = {}
    problems: list[str] = []
    if text.startswith("\ufeff"):
        text = text[1:]  # a BOM from Windows Notepad
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            problems.append(f"line {number}: expected key=value, got {line[:40]!r}")
            continue
        key, value = line.split("=", 1)
        key, value = key.strip().lower(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if key not in KEYS:
            problems.append(f"line {number}: unknown setting {key!r} (known: {', '.join(KEYS)})")
            continue
        if key in values:
            problems.append(f"line {number}: {key} is set twice (first on line {values[key][0]})")
            continue
        values[key] = (number, value)
    return values, problems


def hostname_for(name: str) -> str:
    """A DNS label from the speaker name (``Living Room`` -> ``living-room``)."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-")
    return label or "resonate-speaker"


def merge(speaker: Values, from_imager: Values) -> Values:
    """The settings in effect: ``speaker`` (speaker.txt) over ``from_imager``, key by key.

    ``wifi_ssid``/``wifi_psk`` are taken together from ``speaker`` if it has either of them,
    else together from ``from_imager``.
    """
    merged: Values = dict(from_imager)
    if any(key in speaker for key in WIFI_PAIR):
        for key in WIFI_PAIR:
            merged.pop(key, None)
    merged.update(speaker)
    return merged


def validate(values: Values, hats: dict[str, HatProfile], state_dir: Path | None = None,
             ssh_keys: tuple[str, ...] = ()) -> Settings:
    """Check every setting; raise :class:`FirstbootError` listing every problem."""
    problems: list[str] = []

    def get(key: str) -> str | None:
        return values[key][1] if key in values else None

    def where(key: str) -> str:
        if key not in values:
            return ""
        at = values[key][0]
        return f"line {at}: " if isinstance(at, int) else f"{at}: "

    problems += [f"SSH key {key[:30]!r}... is not a single OpenSSH public key line"
                 for key in ssh_keys if not imager.check_ssh_key(key)]

    # Wi-Fi: all or nothing (no ssid = keep the Wi-Fi config the speaker has, e.g. wired)
    wifi = None
    ssid, psk, country = get("wifi_ssid"), get("wifi_psk"), get("wifi_country")
    if ssid:
        if len(ssid.encode()) > 32:
            problems.append(f"{where('wifi_ssid')}wifi_ssid is longer than 32 bytes")
        psk = psk or ""
        if psk and not (8 <= len(psk) <= 63 and psk.isascii() and psk.isprintable()) \
                and not _HEX64.match(psk):
            problems.append(f"{where('wifi_psk')}wifi_psk must be 8 to 63 printable ASCII "
                            "characters (or 64 hex digits); leave it empty for an open network")
        country = (country or "").upper()
        if not _COUNTRY.match(country):
            problems.append(f"{where('wifi_country')}wifi_country must be a two-letter country "
                            "code such as GB, US or DE (it sets the legal Wi-Fi channels)")
        wifi = Wifi(ssid, psk, country)
    elif psk or country:
        problems.append(f"{where('wifi_psk' if psk else 'wifi_country')}wifi_ssid is missing "
                        "(the name of your Wi-Fi network)")

    hat_name = (get("hat") or DEFAULT_HAT).lower()
    hat = hats.get(hat_name)
    if hat is None:
        known = sorted({h.name for h in hats.values()})
        problems.append(f"{where('hat')}hat {hat_name!r} is not known; use one of: {', '.join(known)}")

    player_values: dict[str, Any] = {"name": get("name") or DEFAULT_NAME}
    if get("server"):
        player_values["server"] = get("server")
    if get("output_delay_ms") is not None:
        text = get("output_delay_ms") or ""
        try:
            player_values["output_delay_ms"] = int(text)
        except ValueError:
            problems.append(f"{where('output_delay_ms')}output_delay_ms must be a whole number "
                            f"of milliseconds, got {text!r}")
    if hat is not None:
        player_values.update(device=hat.device, dac_latency_us=hat.output_latency_us,
                             period_us=hat.period_us, periods=hat.periods, **dict(hat.amplifier))
    player_values["say_where_at_first_boot"] = True  # the SD-card speaker says where it is, once
    if state_dir is not None:
        player_values["state_dir"] = str(state_dir)
    player = None
    try:
        # The player's own validation (name, server URL, delay range, ALSA sizes).
        player = build_config({k: Path(v) if k == "state_dir" else v
                               for k, v in player_values.items()}, {})
    except ConfigError as exc:
        key = next((k for k in ("server", "output_delay_ms", "name") if k in str(exc)), "")
        problems.append(f"{where(key) if key else ''}{exc}")
    if problems or player is None or hat is None:
        raise FirstbootError(problems or ["invalid settings"])
    return Settings(player, player_values, hat, wifi, hostname_for(player.name), ssh_keys)


# ---- rendering --------------------------------------------------------------------------

def render_player_toml(settings: Settings) -> str:
    """The player's ``[player]`` table: ``tomllib`` reads back exactly ``player_values``."""
    return ("# Written by resonate-firstboot from speaker.txt; edit speaker.txt instead.\n"
            + tomli_w.dumps({"player": settings.player_values}))


def wpa_psk(ssid: str, passphrase: str) -> str:
    """The 256-bit WPA key, so the passphrase itself is not stored on the root side."""
    if _HEX64.match(passphrase):
        return passphrase.lower()
    return hashlib.pbkdf2_hmac("sha1", passphrase.encode(), ssid.encode(), 4096, 32).hex()


def keyfile_ssid(ssid: str) -> str:
    """The SSID as NetworkManager's keyfile plugin reads it back byte for byte.

    Printable ASCII without ``;``, ``\\`` or spaces at either end is written as it is (what
    ``nmcli`` writes); anything else (UTF-8, ``;``, backslashes, edge spaces) as the list of
    its UTF-8 bytes, ``72;195;169;...;`` -- the form NetworkManager itself writes for
    non-ASCII SSIDs, which is never unescaped, so no ``\\;`` or GLib escaping can go wrong.
    """
    if ssid.isascii() and ssid.isprintable() and not any(c in ssid for c in ";\\") \
            and ssid == ssid.strip(" "):
        return ssid
    return "".join(f"{byte};" for byte in ssid.encode())


def render_nm_keyfile(wifi: Wifi, hostname: str) -> str:
    """NetworkManager keyfile (nm-settings-keyfile(5)) for the network: DHCP, autoconnect.

    Only the derived 256-bit key is stored, never the passphrase; ``hidden=true`` so a
    network that does not broadcast its name is found too (as the hotspot's join does). DHCP
    sends ``hostname`` (the speaker's, not the read-only root's /etc/hostname), so the router
    lists each speaker under its own name.
    """
    lines = ["# Written by resonate-firstboot from speaker.txt or Raspberry Pi Imager's "
             "settings; edit speaker.txt instead.",
             "[connection]", f"id={WIFI_CONNECTION}", f"uuid={WIFI_UUID}", "type=wifi",
             "interface-name=wlan0", "autoconnect=true", "",
             "[wifi]", "mode=infrastructure", f"ssid={keyfile_ssid(wifi.ssid)}", "hidden=true", ""]
    if wifi.psk:
        lines += ["[wifi-security]", "key-mgmt=wpa-psk", f"psk={wpa_psk(wifi.ssid, wifi.psk)}", ""]
    lines += ["[ipv4]", f"dhcp-hostname={hostname}", "method=auto", "",
              "[ipv6]", "addr-gen-mode=default", f"dhcp-hostname={hostname}", "method=auto", ""]
    return "\n".join(lines)


def render_hat_txt(hat: HatProfile) -> str:
    """config.txt include: the DTB with this HAT's overlay merged in, per board."""
    return "\n".join([
        f"# Written by resonate-firstboot: hat={hat.name}. Edit speaker.txt instead.",
        "[pi0]", f"device_tree={hat.dtb_prefix}-bcm2835-rpi-zero.dtb",
        "[pi0w]", f"device_tree={hat.dtb_prefix}-bcm2835-rpi-zero-w.dtb",
        "[pi02]", f"device_tree={hat.dtb_prefix}-bcm2837-rpi-zero-2-w.dtb",
        "[all]", ""])


# ---- applying ---------------------------------------------------------------------------

def write_atomic(path: Path, text: str, mode: int | None = 0o644) -> bool:
    """Replace ``path`` with ``text`` (:func:`atomic_file.replace_file`). False if already equal.

    ``mode=None`` for the FAT partition, where file modes are the mount's, not the file's.
    """
    try:
        if path.read_text() == text and (mode is None or (path.stat().st_mode & 0o777) == mode):
            return False
    except (OSError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, text.encode(), mode)
    return True


def writable(mount_dir: Path, enabled: bool) -> ContextManager[None]:
    """The FAT partition opened for writing for a ``with`` block when ``enabled`` (on the
    speaker: :func:`~resonate_embedded.system_commands.read_write`); as it is otherwise."""
    return read_write(mount_dir) if enabled else nullcontext()


@attrs.define
class Result:
    ok: bool
    changed: list[str] = attrs.Factory(list)
    problems: list[str] = attrs.Factory(list)
    # the HAT (device tree) changed, or Imager's firstrun hook was taken off cmdline.txt
    # (this boot runs kernel-command-line.target, not the speaker): reboot once
    reboot: bool = False
    settings: Settings | None = None


def read_speaker_txt(boot: Path) -> tuple[str | None, list[str]]:
    """``speaker.txt``'s text (None if there is none) and the problems reading it."""
    try:
        raw = (boot / SPEAKER_FILE).read_bytes()
    except FileNotFoundError:
        return None, []
    except OSError as exc:
        return None, [f"cannot read {SPEAKER_FILE}: {exc.strerror}"]
    if len(raw) > MAX_FILE_BYTES:
        return None, [f"{SPEAKER_FILE} is larger than {MAX_FILE_BYTES} bytes"]
    try:
        return raw.decode("utf-8"), []
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp1252"), []  # an editor that saved "ANSI"
    except UnicodeDecodeError:
        return None, [f"{SPEAKER_FILE} is not a text file (save it as UTF-8 plain text)"]


def read_imager(boot: Path) -> tuple[imager.ImagerSettings, list[str]]:
    """Imager's settings on the card, or none and the problem with its files."""
    try:
        return imager.read(boot), []
    except imager.ImagerFormatError as exc:
        return imager.ImagerSettings(), [f"Raspberry Pi Imager's settings: {exc}"]


def _fix_cmdline(boot: Path, country: str | None, result: Result) -> None:
    """Take Imager's firstrun hook off the command lines and set the Wi-Fi country in them.

    The files are ``cmdline.txt`` (where Imager writes) and, on the A/B image, every
    ``slot-*/cmdline.txt`` (what the firmware boots via ``os_prefix=``; the RAUC hook carries
    the country over to the next slot). Done whether or not the settings are valid: the hook
    left in a booted command line would keep every boot in kernel-command-line.target, so
    taking it off one asks for a reboot (the hook is gone then, so never a second one).
    """
    slots = sorted(boot.glob("slot-*/" + imager.CMDLINE))
    booted = slots or [boot / imager.CMDLINE]
    for path in [boot / imager.CMDLINE, *slots]:
        try:
            old = path.read_text()
        except FileNotFoundError:
            continue
        new = imager.edit_cmdline(old, country)
        if new != old and write_atomic(path, new, mode=None):
            result.changed.append(str(path))
            result.reboot = result.reboot or (path in booted and imager.has_firstrun_hook(old))


def _report(boot: Path, problems: list[str]) -> None:
    imager_files = imager.files_present(boot)
    what = SPEAKER_FILE + (f" and Raspberry Pi Imager's settings ({', '.join(imager_files)})"
                           if imager_files else "")
    for problem in problems:
        log.error("%s", problem)
    verb = "were" if imager_files else "was"
    report = [f"{what} {verb} NOT applied ({time.strftime('%Y-%m-%d %H:%M:%S')}).",
              "The speaker keeps its previous settings. Please fix these and restart it:", ""]
    report += [f"  - {p}" for p in problems]
    write_atomic(boot / ERRORS_FILE, "\r\n".join(report) + "\r\n", mode=None)


def _write_data(data: Path, settings: Settings, result: Result) -> None:
    """The files under ``data`` (player config, hostname, HAT, Wi-Fi, SSH keys), if changed."""
    config_dir = data / "config"
    files = {config_dir / "player.toml": (render_player_toml(settings), 0o644),
             config_dir / "hostname": (settings.hostname + "\n", 0o644),
             config_dir / "hat": (settings.hat.name + "\n", 0o644)}
    if settings.wifi is not None:
        files[config_dir / NM_KEYFILE] = (render_nm_keyfile(settings.wifi, settings.hostname), 0o600)
    if settings.ssh_keys:
        keys = data / AUTHORIZED_KEYS
        keys.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            existing = keys.read_text()
        except FileNotFoundError:
            existing = ""
        files[keys] = (imager.merge_authorized_keys(existing, settings.ssh_keys), 0o600)
    for path, (content, mode) in files.items():
        if write_atomic(path, content, mode):
            result.changed.append(str(path))


def _write_hat(boot: Path, data: Path, hat: HatProfile, result: Result) -> None:
    """The HAT's config.txt include; reboot once per new HAT choice, never in a loop."""
    hat_txt = boot / HAT_FILE
    hat_content = render_hat_txt(hat)
    if not write_atomic(hat_txt, hat_content, mode=None):
        return
    result.changed.append(str(hat_txt))
    marker = data / "config" / "hat-reboot"  # on the data partition
    digest = hashlib.sha256(hat_content.encode()).hexdigest()
    try:
        done = marker.read_text().strip() == digest
    except OSError:
        done = False
    if not done:
        write_atomic(marker, digest + "\n")
        result.reboot = True


def apply(boot: Path, data: Path, hats_dir: Path, state_dir: Path | None = None,
          remount: bool = False) -> Result:
    """Read ``speaker.txt`` and Imager's files in ``boot``; if valid, write the configs.

    Without either, the default settings are written when there are none yet. Never raises
    for a bad file: the problems come back in ``Result.problems`` and in
    ``boot/speaker-errors.txt``, and nothing is written but that report (and ``cmdline.txt``
    without Imager's firstrun hook). Running it again on the same files changes nothing.
    """
    hats = load_hats(hats_dir)
    text, problems = read_speaker_txt(boot)
    from_imager, imager_problems = read_imager(boot)
    problems += imager_problems
    if text is None and not problems and not from_imager \
            and (data / "config" / "player.toml").exists():
        return Result(ok=True)  # nothing to do: keep what the speaker has

    settings = None
    if not problems:
        values, problems = parse(text or "")  # no file, first boot: the defaults
        try:
            settings = validate(merge(values, from_imager.values), hats, state_dir,
                                from_imager.ssh_keys)
        except FirstbootError as exc:
            problems += exc.problems
        if problems:
            settings = None

    result = Result(ok=settings is not None, problems=problems, settings=settings)
    with writable(boot, remount):
        _fix_cmdline(boot, settings.wifi.country if settings and settings.wifi else None, result)
        if settings is None:
            _report(boot, problems)
            return result
        _write_data(data, settings, result)
        _write_hat(boot, data, settings.hat, result)
        (boot / ERRORS_FILE).unlink(missing_ok=True)
    log.info("settings applied (%s): name=%r hat=%s wifi=%s%s",
             ", ".join([SPEAKER_FILE, *from_imager.sources]), settings.player.name,
             settings.hat.name, settings.wifi.ssid if settings.wifi else "(unchanged)",
             f", changed {', '.join(result.changed)}" if result.changed else ", nothing changed")
    return result


def set_hostname(name: str, proc: Path = Path("/proc/sys/kernel/hostname")) -> None:
    try:
        proc.write_text(name)
    except OSError as exc:
        log.warning("cannot set hostname %r: %s", name, exc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="resonate-firstboot", description=__doc__.split("\n\n")[0])
    p.add_argument("--boot", type=Path, default=Path("/boot/firmware"), help="the FAT partition")
    p.add_argument("--data", type=Path, default=Path("/data"), help="the writable data partition")
    p.add_argument("--hats", type=Path, default=Path("/usr/share/resonate-embedded/hats"))
    p.add_argument("--state-dir", type=Path, default=Path("/var/lib/resonate-embedded"),
                   help="the player's state_dir written into its config")
    p.add_argument("--system", action="store_true",
                   help="on the speaker: remount the FAT partition rw to write to it, set the "
                        "hostname, reboot once when the HAT changed")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(name)s: %(levelname)s: %(message)s")
    try:
        result = apply(args.boot, args.data, args.hats, args.state_dir, remount=args.system)
    except Exception:  # never bricks: log, keep the old files, let the boot go on
        log.exception("internal error; the speaker keeps its previous settings")
        return 0
    if args.system:
        hostname = (args.data / "config" / "hostname")
        if hostname.exists():
            set_hostname(hostname.read_text().strip())
        if result.reboot and os.environ.get("RESONATE_FIRSTBOOT_NO_REBOOT") != "1":
            log.warning("the DAC HAT or cmdline.txt changed: rebooting once so they take effect")
            argv = ["systemctl", "--no-block", "reboot"]
            done = run_command(argv)
            if done.returncode != 0:
                log.error("%s: the new settings take effect at the next start", done.failure(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
