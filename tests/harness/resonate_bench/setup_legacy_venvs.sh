#!/usr/bin/env bash
# Create (idempotently) the Python 3.12 venvs that run the older real servers:
#
#   .venv-resonate   aioresonate 0.13.2     (Resonate dialect "R";   resonate_test_server.py)
#   .venv-sendspin1  aiosendspin 1.x        (Sendspin "S1a";         sendspin_v1_test_server.py)
#   .venv-sendspin2  aiosendspin 2.x        (Sendspin v1 "S1";       sendspin_v1_test_server.py)
#   .venv-sendspin5  aiosendspin 5.x        (static delay;           sendspin_test_server.py)
#   .venv-sendspin6  aiosendspin 6.x        (+ lead-time hints;       sendspin_test_server.py)
#   .venv-sendspin7  aiosendspin 7.x        (+ Noise, plaintext too; sendspin_test_server.py)
#   .venv-sendspin9  aiosendspin 9.x        (last before the rename; sendspin_test_server.py)
#
#   tests/harness/resonate_bench/setup_legacy_venvs.sh [DIR]     (default DIR: the repo root)
#
# A venv that already imports its server at the right version is left alone.
# Prints one line "NAME PYTHON" per venv on stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
dir="${1:-$repo}"

# shellcheck source=python312.sh
source "$here/python312.sh"

# venv_ok VENV DIST MAJOR_PREFIX IMPORT: the venv's DIST version starts with MAJOR_PREFIX
# and IMPORT works.
venv_ok() {
    local venv="$1" dist="$2" prefix="$3" module="$4"
    [[ -x "$venv/bin/python" ]] || return 1
    "$venv/bin/python" - "$dist" "$prefix" "$module" <<'EOF' >/dev/null 2>&1
import importlib, importlib.metadata as m, sys
dist, prefix, module = sys.argv[1:4]
assert sys.version_info[:2] >= (3, 12)
assert (m.version(dist) + ".").startswith(prefix + ".")
importlib.import_module(module)
import numpy  # noqa: F401
EOF
}

# ensure NAME DIST PREFIX IMPORT REQUIREMENT...
ensure() {
    local name="$1" dist="$2" prefix="$3" module="$4"
    shift 4
    local venv="$dir/$name"
    if ! venv_ok "$venv" "$dist" "$prefix" "$module"; then
        if [[ ! -x "$venv/bin/python" ]]; then
            local base
            base="$(pick_python)"
            echo "creating $venv with $base" >&2
            "$base" -m venv "$venv"
        fi
        "$venv/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip >&2 || true
        "$venv/bin/python" -m pip install --disable-pip-version-check -q "$@" >&2
        if ! venv_ok "$venv" "$dist" "$prefix" "$module"; then
            echo "error: $venv is still incomplete after pip install" >&2
            exit 1
        fi
    else
        echo "$name already complete" >&2
    fi
    echo "$name $venv/bin/python"
}

ensure .venv-resonate aioresonate 0.13.2 aioresonate.server "aioresonate==0.13.2" "numpy>=1.26"
ensure .venv-sendspin1 aiosendspin 1 aiosendspin.server "aiosendspin>=1,<2" "numpy>=1.26"
ensure .venv-sendspin2 aiosendspin 2 aiosendspin.server "aiosendspin>=2,<3" "numpy>=1.26"
ensure .venv-sendspin5 aiosendspin 5 aiosendspin.server "aiosendspin[server]>=5,<6"
ensure .venv-sendspin6 aiosendspin 6 aiosendspin.server "aiosendspin[server]>=6,<7"
ensure .venv-sendspin7 aiosendspin 7 aiosendspin.server "aiosendspin[server]>=7,<8"
ensure .venv-sendspin9 aiosendspin 9 aiosendspin.server "aiosendspin[server]>=9,<10"
