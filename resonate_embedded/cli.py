"""Command line: ``resonate-embedded run|devices|demo|pair-token|pairings|status|control|setup-page|update``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import trio

from resonate_embedded.config import (
    ENCRYPTION_MODES, Config, ConfigError, build_config, load_toml, parse_formats, parse_on_off,
)


def _run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (flags override it)")
    p.add_argument("--server", help="server URL, e.g. ws://host:8927/sendspin (or /resonate); "
                                    "without it the player waits for servers to dial it")
    p.add_argument("--device", "-d", help="ALSA PCM name (see 'devices')")
    p.add_argument("--name", "-n", help="speaker name shown by the server")
    p.add_argument("--client-id", help="stable client id (default: generated once, kept in the state dir)")
    p.add_argument("--volume", type=int, help="start volume 0-100 (default: last volume)")
    p.add_argument("--state-dir", type=Path, help="where volume, mute and delay are kept")
    p.add_argument("--dac-latency-us", type=int,
                   help="latency after ALSA that ALSA cannot see (codec FIFO, filters), µs")
    p.add_argument("--output-delay-ms", type=int,
                   help="latency after the DAC (amplifier, AVR): positive plays earlier")
    p.add_argument("--period-us", type=int, help="ALSA period in µs (default 20000)")
    p.add_argument("--periods", type=int, help="ALSA periods per buffer (default 8)")
    p.add_argument("--formats", type=parse_formats,
                   help="formats to offer, in order: codec:rate:bits:channels,...")
    p.add_argument("--stats", action="store_true", default=None, help="print a live status line")
    p.add_argument("--encryption", choices=ENCRYPTION_MODES,
                   help="auto (default): encrypted first, plaintext only with servers that "
                        "cannot encrypt (once paired: only --plaintext-server ones); "
                        "required: never plaintext; off: plaintext only")
    p.add_argument("--plaintext-server", dest="plaintext_servers", action="append",
                   metavar="HOST[:PORT]|URL",
                   help="with --encryption auto and a pairing held: a server that may still "
                        "talk plaintext (repeat for more; replaces plaintext_servers in --config)")
    p.add_argument("--unpaired-access", type=parse_on_off, metavar="on|off",
                   help="let servers that have not paired this speaker play on it (default on)")
    p.add_argument("--spoken-pairing-code", type=parse_on_off, metavar="on|off",
                   help="offer pairing by a code this speaker says aloud (default on)")
    p.add_argument("--listen-port", type=int,
                   help="without --server/--discover: the port servers dial (default 8928)")
    p.add_argument("--discover", action="store_true", default=None,
                   help="find a server by mDNS and dial it (instead of being dialled)")
    p.add_argument("--advertise-resonate", action="store_true", default=None,
                   help="when being dialled: also advertise to Resonate (aioresonate) servers")
    p.add_argument("--mdns-interface", metavar="IPV4",
                   help="advertise and browse by mDNS only on the interface with this address")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _state_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (for its state_dir)")
    p.add_argument("--state-dir", type=Path, help="the player's state directory")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def make_config(args: argparse.Namespace, **overrides) -> Config:
    file_values = load_toml(args.config) if args.config else {}
    flags = {k: getattr(args, k, None) for k in (
        "server", "device", "name", "client_id", "volume", "state_dir", "dac_latency_us",
        "output_delay_ms", "period_us", "periods", "formats", "stats", "encryption",
        "plaintext_servers", "unpaired_access", "spoken_pairing_code", "listen_port", "discover",
        "advertise_resonate", "mdns_interface")}
    flags.update(overrides)
    return build_config(file_values, flags)


def _cmd_run(args: argparse.Namespace) -> int:
    from resonate_embedded.player import Player

    from resonate_embedded.supervisor import GaveUp

    config = make_config(args)
    gave_up: list[GaveUp] = []
    try:
        trio.run(Player(config, load_config=lambda: make_config(args)).run)
    except* GaveUp as group:
        gave_up.extend(group.exceptions)
    if gave_up:
        logging.getLogger("resonate_embedded").critical("%s", gave_up[0])
        return 70  # EX_SOFTWARE: systemd restarts us from scratch
    return 0


def _cmd_devices(_args: argparse.Namespace) -> int:
    from resonate_embedded.devices import list_devices

    for dev in list_devices():
        mark = "ok  " if dev.opens else "busy" if dev.error and "busy" in dev.error.lower() else "--  "
        print(f"{mark} {dev.name}" + (f"    ({dev.error})" if dev.error else ""))
    return 0


def _state_dir(args: argparse.Namespace) -> Path:
    file_values = load_toml(args.config) if args.config else {}
    return build_config(file_values, {"state_dir": args.state_dir}).state_dir


def _cmd_pair_token(args: argparse.Namespace) -> int:
    from resonate_embedded.identity import load_or_create
    from resonate_embedded.pairing import encode_pairing_token

    identity = load_or_create(_state_dir(args))
    token = encode_pairing_token(identity.public_key, identity.pairing_psk)
    if not args.no_qr and (args.qr or sys.stdout.isatty()):
        try:
            import segno
        except ImportError:
            print("(no QR code: the 'segno' package is not installed)", file=sys.stderr)
        else:
            # The QR code carries the token string verbatim (spec: no URI, no wrapper).
            segno.make(token, error="m").terminal(out=sys.stdout, compact=True)
    print(token)
    print(f"client_id {identity.client_id}", file=sys.stderr)
    print("Enter this token in the server's 'pair speaker' dialog. It lets a server pair "
          "this speaker: keep it as private as the speaker itself.", file=sys.stderr)
    return 0


def _cmd_pairings(args: argparse.Namespace) -> int:
    import time

    from resonate_embedded.pairing import PairingStore

    store = PairingStore(_state_dir(args))
    if args.action == "reset-code-limit":
        # The operator action that lifts the hold-back after too many wrong pairing codes.
        store.reset_code_rounds()
        print("pairing codes allowed again")
        return 0
    if args.action == "forget":
        if args.all:
            gone = [r.server_id for r in store.records()]
        elif args.server_id:
            gone = [sid for sid in (r.server_id for r in store.records())
                    if sid == args.server_id or (len(args.server_id) >= 6 and sid.startswith(args.server_id))]
            if not gone:
                print(f"no pairing with a server {args.server_id!r}", file=sys.stderr)
                return 1
            if len(gone) > 1:
                print(f"{args.server_id!r} is ambiguous: give more of the server_id", file=sys.stderr)
                return 1
        else:
            print("say which: pairings forget SERVER_ID (or --all)", file=sys.stderr)
            return 2
        for sid in gone:
            store.remove(sid)
            print(f"forgot {sid}")
        return 0
    records = store.records()
    if not records:
        print("no pairings")
        return 0
    for r in records:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.last_used)) if r.last_used else "-"
        made = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created)) if r.created else "-"
        print(f"{r.server_id}  {r.server_name or '(unnamed)'}  paired {made}  last used {used}"
              + (f"  at {', '.join(r.urls)}" if r.urls else ""))
    print(f"{len(records)} of {store.capacity} pairing slots used", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from resonate_embedded.control_socket import socket_path, status_command
    from resonate_embedded.status import system_info, system_screen

    import attrs

    system = system_info()  # from local files: known even without a running player
    code = status_command(args.socket or socket_path(_state_dir(args)), as_json=args.json,
                          system=attrs.asdict(system))
    if not args.json:
        print(system_screen(system))
    return code


def _updater(args: argparse.Namespace):
    from resonate_embedded.boot_slots import BootSlots
    from resonate_embedded.system_update import Updater

    return Updater(slots=BootSlots(boot_dir=args.boot_dir, cmdline=args.cmdline),
                   state_file=args.state_file, keyring=args.keyring, system_conf=args.system_conf)


def _cmd_update(args: argparse.Namespace) -> int:
    import json

    import attrs

    from resonate_embedded.status import system_info, system_screen

    if args.action == "install":
        return _updater(args).install(args.bundle, reboot=not args.no_reboot)
    if args.action == "boot-check":
        return _updater(args).boot_check(args.deadline)
    if args.action == "confirm":
        return _updater(args).confirm(args.healthy_seconds, args.ready_timeout)
    info = system_info(args.boot_dir, args.cmdline, args.release, args.state_file)
    print(json.dumps(attrs.asdict(info), indent=2, sort_keys=True) if args.json
          else system_screen(info))
    return 0


def _update_parser(sub) -> None:
    from resonate_embedded.boot_slots import DEFAULT_BOOT_DIR, DEFAULT_CMDLINE
    from resonate_embedded.status import IMAGE_RELEASE
    from resonate_embedded.system_update import (
        DEADLINE_S, DEADLINE_UNIT, KEYRING, STATE_FILE, SYSTEM_CONF,
    )
    from resonate_embedded.update_health import HEALTHY_S, READY_TIMEOUT_S

    update = sub.add_parser(
        "update", help="A/B system update with RAUC: install a bundle, boot-check, confirm, status",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status: 0 done; 1 bundle refused (nothing written); 2 usage; 3 no update "
               "possible here or now (not an A/B image, a trial running, boot files or RAUC "
               "config unusable); 4 install or confirmation failed (the running slot is "
               "untouched); 5 installed but the reboot did not start")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--boot-dir", type=Path, default=DEFAULT_BOOT_DIR, help=argparse.SUPPRESS)
    common.add_argument("--cmdline", type=Path, default=DEFAULT_CMDLINE, help=argparse.SUPPRESS)
    common.add_argument("--release", type=Path, default=IMAGE_RELEASE, help=argparse.SUPPRESS)
    common.add_argument("--state-file", type=Path, default=STATE_FILE,
                        help=f"the update record (default {STATE_FILE})")
    common.add_argument("--keyring", type=Path, default=KEYRING,
                        help=f"CA certificates bundles must be signed under (default {KEYRING})")
    common.add_argument("--system-conf", type=Path, default=SYSTEM_CONF,
                        help=f"RAUC's system.conf, for compatible= (default {SYSTEM_CONF})")
    update.set_defaults(func=_cmd_update, verbose=False)
    actions = update.add_subparsers(dest="action", required=True)
    install = actions.add_parser("install", parents=[common], help="verify BUNDLE, install it into the other slot "
                                                 "and reboot into a trial of it")
    install.add_argument("bundle", type=Path, help="the .raucb file")
    install.add_argument("--no-reboot", action="store_true",
                         help='do not reboot (later: systemctl reboot "0 tryboot")')
    check = actions.add_parser("boot-check", parents=[common], help="(at boot, as root) arm a trial's deadline or "
                                                  "record a rollback")
    check.add_argument("--deadline", type=int, default=DEADLINE_S, metavar="SECONDS",
                       help=f"a trial not confirmed this long after boot-check reboots into the "
                            f"previous slot ({DEADLINE_UNIT}.timer; default {DEADLINE_S})")
    confirm = actions.add_parser(
        "confirm", parents=[common],
        help="(as root) keep the trial slot once the player reported READY and stayed healthy")
    confirm.add_argument("--healthy-seconds", type=float, default=HEALTHY_S, metavar="SECONDS",
                         help="how long after READY the player must keep running, never "
                              f"restarted and with its watchdog fed (default {HEALTHY_S:g})")
    confirm.add_argument("--ready-timeout", type=float, default=READY_TIMEOUT_S,
                         metavar="SECONDS", help="how long to wait for the player's READY "
                                                 f"(default {READY_TIMEOUT_S:g})")
    status = actions.add_parser("status", parents=[common], help="versions, slots and the last update")
    status.add_argument("--json", action="store_true", help="as JSON")


def _cmd_control(args: argparse.Namespace) -> int:
    from resonate_embedded.control_socket import control_command, socket_path

    return control_command(args.socket or socket_path(_state_dir(args)), args.action, args.steps)


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from resonate_bench.demo import run_demo
    except ImportError:
        print("error: the demo runs from a source checkout: `bash .ci/setup` installs its "
              "test bench (tests/harness)", file=sys.stderr)
        return 2
    return run_demo(args)


def _cmd_setup_page(args: argparse.Namespace) -> int:
    from resonate_embedded.setup.web import run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="resonate-embedded")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="play from a Sendspin server until stopped")
    _run_flags(run)
    run.set_defaults(func=_cmd_run)
    devices = sub.add_parser("devices", help="list ALSA playback devices and whether they open")
    devices.set_defaults(func=_cmd_devices, verbose=False)
    demo = sub.add_parser("demo", help="local server + player on the paced device, live status")
    _run_flags(demo)
    demo.add_argument("--seconds", type=float, help="stop after this long (default: until Ctrl-C)")
    demo.set_defaults(func=_cmd_demo)
    pair = sub.add_parser("pair-token", help="print this speaker's pairing token (and a QR code)")
    _state_flags(pair)
    pair.add_argument("--no-qr", action="store_true", help="print the token only")
    pair.add_argument("--qr", action="store_true", help="print the QR code even when not on a terminal")
    pair.set_defaults(func=_cmd_pair_token)
    pairings = sub.add_parser("pairings", help="list the servers this speaker is paired with, "
                                               "or forget one")
    _state_flags(pairings)
    pairings.add_argument("action", nargs="?", choices=("list", "forget", "reset-code-limit"),
                          default="list")
    pairings.add_argument("server_id", nargs="?", help="server to forget (a unique prefix will do)")
    pairings.add_argument("--all", action="store_true", help="forget every pairing")
    pairings.set_defaults(func=_cmd_pairings)
    status = sub.add_parser("status", help="ask the running player how it is doing")
    _state_flags(status)
    status.add_argument("--socket", type=Path, help="the player's status socket "
                                                    "(default: control.sock in the state dir)")
    status.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    status.set_defaults(func=_cmd_status)
    from resonate_embedded.roles.controller import ACTIONS

    control = sub.add_parser("control", help="press a button on the running player "
                                              "(play_pause, next, volume_up, ...)")
    _state_flags(control)
    control.add_argument("action", choices=ACTIONS, help="what to do (as a key would)")
    control.add_argument("--steps", type=int, default=1,
                         help="volume steps (volume_up/volume_down: 1..100; volume: signed)")
    control.add_argument("--socket", type=Path, help="the player's control socket "
                                                     "(default: control.sock in the state dir)")
    control.set_defaults(func=_cmd_control)
    from resonate_embedded.setup import add_arguments as _setup_page_flags

    setup_page = sub.add_parser("setup-page", help="the setup hotspot's web page (try it with "
                                                   "--fake-network)")
    _setup_page_flags(setup_page)
    setup_page.set_defaults(func=_cmd_setup_page)
    _update_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"resonate-embedded: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
