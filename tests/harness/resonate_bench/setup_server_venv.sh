#!/usr/bin/env bash
# Create (idempotently) the Python >= 3.12 venv that runs the real Sendspin test server
# (tests/harness/resonate_bench/sendspin_test_server.py, aiosendspin 10.x).
#
#   tests/harness/resonate_bench/setup_server_venv.sh [VENV_DIR]     (default: <repo>/.venv-server)
#
# Prints the venv's python path as the last line of stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
venv="${1:-$repo/.venv-server}"

# Requirements of the harness: aiosendspin 10.x with its "server" extra
# (PyAV for FLAC/Opus encoding and resampling, numpy, pillow).
reqs=("aiosendspin[server]>=10,<11" "av>=15" "numpy>=1.26")

# shellcheck source=python312.sh
source "$here/python312.sh"

venv_ok() {
    [[ -x "$venv/bin/python" ]] || return 1
    "$venv/bin/python" - <<'EOF' >/dev/null 2>&1
import importlib.metadata as m, sys
assert sys.version_info[:2] >= (3, 12)
assert m.version("aiosendspin").split(".")[0] == "10"
import av, numpy  # noqa: F401
av.codec.Codec("flac", "w")
from aiosendspin.server import SendspinServer  # noqa: F401
EOF
}

if venv_ok; then
    echo "server venv already complete: $venv" >&2
else
    if [[ ! -x "$venv/bin/python" ]]; then
        base="$(pick_python)"
        echo "creating $venv with $base" >&2
        "$base" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip >&2 || true
    "$venv/bin/python" -m pip install --disable-pip-version-check -q "${reqs[@]}" >&2
    if ! venv_ok; then
        echo "error: $venv is still incomplete after pip install" >&2
        exit 1
    fi
fi

echo "$venv/bin/python"
