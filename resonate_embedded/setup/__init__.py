"""Setup without SSH: the setup hotspot (``hotspot``) and its setup page (``web``).

Everything the page accepts goes through the same parser and validation as ``speaker.txt``
(:mod:`resonate_embedded.firstboot`) and is applied by the same code.

:func:`add_arguments` (the ``resonate-embedded setup-page`` flags) lives here, not in ``web``,
so that building the CLI's parser does not import the HTTP server for every command.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (the speaker: 0.0.0.0 while the hotspot is up)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--boot", type=Path, help="the FAT partition with speaker.txt (default "
                   "/boot/firmware; with --fake-network a new temporary directory)")
    p.add_argument("--data", type=Path, help="the data partition (default /data; with "
                   "--fake-network a new temporary directory)")
    p.add_argument("--hats", type=Path, help="DAC profiles (default: board/hats of this checkout, "
                   "else /usr/share/resonate-embedded/hats)")
    p.add_argument("--state-dir", type=Path, default=Path("/var/lib/resonate-embedded"),
                   help="the player's state_dir written into its config")
    p.add_argument("--fake-network", action="store_true",
                   help="a pretend Wi-Fi scan and join (to try the page on a laptop)")
    p.add_argument("--hotspot", action="store_true",
                   help="run the hotspot logic too: serve the page only while the hotspot is up")
    p.add_argument("--fail-after-min", type=float, default=3.0,
                   help="open the hotspot when the configured Wi-Fi has not joined for this long")
    p.add_argument("--ap-password", help="WPA2 password of the setup hotspot (default: open)")
    p.add_argument("--system", action="store_true",
                   help="on the speaker: remount the FAT partition read-write to save speaker.txt")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
