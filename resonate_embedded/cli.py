"""Command line: ``resonate-embedded run|devices|demo``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import trio

from resonate_embedded.config import Config, ConfigError, build_config, load_toml, parse_formats


def _run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (flags override it)")
    p.add_argument("--server", help="server URL, e.g. ws://host:8927/sendspin")
    p.add_argument("--device", "-d", help="ALSA PCM name (see 'devices')")
    p.add_argument("--name", "-n", help="speaker name shown by the server")
    p.add_argument("--client-id", help="stable client id (default: generated once, kept in the state dir)")
    p.add_argument("--volume", type=int, help="start volume 0-100 (default: last volume)")
    p.add_argument("--state-dir", type=Path, help="where volume, mute and delay are kept")
    p.add_argument("--dac-latency-us", type=int,
                   help="latency after ALSA that ALSA cannot see (codec FIFO, filters), µs")
    p.add_argument("--output-delay-ms", type=int,
                   help="latency after the DAC (amplifier, AVR): positive plays earlier")
    p.add_argument("--period-us", type=int, help="ALSA period in µs (default 10000)")
    p.add_argument("--periods", type=int, help="ALSA periods per buffer (default 8)")
    p.add_argument("--formats", type=parse_formats,
                   help="formats to offer, in order: codec:rate:bits:channels,...")
    p.add_argument("--stats", action="store_true", default=None, help="print a live status line")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def make_config(args: argparse.Namespace, **overrides) -> Config:
    file_values = load_toml(args.config) if args.config else {}
    flags = {k: getattr(args, k, None) for k in (
        "server", "device", "name", "client_id", "volume", "state_dir", "dac_latency_us",
        "output_delay_ms", "period_us", "periods", "formats", "stats")}
    flags.update(overrides)
    return build_config(file_values, flags)


def _cmd_run(args: argparse.Namespace) -> int:
    from resonate_embedded.player import Player

    config = make_config(args)
    if not config.server:
        raise ConfigError("no server: give --server ws://HOST:PORT/sendspin (or 'server' in the config)")
    trio.run(Player(config).run)
    return 0


def _cmd_devices(_args: argparse.Namespace) -> int:
    from resonate_embedded.devices import list_devices

    for dev in list_devices():
        mark = "ok  " if dev.opens else "busy" if dev.error and "busy" in dev.error.lower() else "--  "
        print(f"{mark} {dev.name}" + (f"    ({dev.error})" if dev.error else ""))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from resonate_embedded.demo import run_demo

    return run_demo(args)


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
