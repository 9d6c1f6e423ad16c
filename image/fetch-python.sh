#!/usr/bin/env bash
# Collect the Python pieces for the image into DIR (host side, architecture-independent):
# the project's own wheel, pinned pure-Python wheels, a pure-Python zeroconf wheel and the
# pyalsaaudio 0.11 sdist (compiled later inside the target tree).
#   fetch-python.sh DIR
set -euo pipefail
DIR="$1"
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
PY="$REPO/.venv/bin/python"
[ -x "$PY" ] || { python3 -m venv "$DIR/.hostvenv" >/dev/null && PY="$DIR/.hostvenv/bin/python"; }
mkdir -p "$DIR"
rm -f "$DIR"/resonate_embedded-*.whl
PIP="$PY -m pip -q --disable-pip-version-check"
# build from a copy, so setuptools leaves no build/ or egg-info in the work tree
src=$(mktemp -d)
cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$src/"
tar -C "$REPO" --exclude=__pycache__ -cf - resonate_embedded | tar -C "$src" -xf -
$PIP wheel --no-deps --no-build-isolation -w "$DIR" "$src" >/dev/null 2>&1 || $PIP wheel --no-deps -w "$DIR" "$src" >/dev/null
rm -rf "$src"
grep -v '^#' "$HERE/python-wheels.txt" | grep . > "$DIR/pure.txt"
$PIP download --no-deps --only-binary=:all: --python-version 3.11 --platform any \
    --implementation py -d "$DIR" -r "$DIR/pure.txt"
if ! ls "$DIR"/zeroconf-*-py3-none-any.whl >/dev/null 2>&1; then
    # zeroconf publishes compiled wheels only; its build skips Cython with SKIP_CYTHON=1 and the
    # result is pure Python, so retag it as such for the armel/arm64 venv.
    tmp=$(mktemp -d)
    SKIP_CYTHON=1 $PIP wheel --no-deps --no-binary zeroconf -w "$tmp" zeroconf==0.154.0
    whl=$(ls "$tmp"/zeroconf-*.whl)
    if unzip -l "$whl" | grep -q '\.so$'; then echo "zeroconf wheel is not pure" >&2; exit 1; fi
    (cd "$tmp" && mkdir x && cd x && unzip -q "$whl" &&
     sed -i -e 's/^Root-Is-Purelib: false/Root-Is-Purelib: true/' -e 's/^Tag: .*/Tag: py3-none-any/' zeroconf-*.dist-info/WHEEL &&
     python3 - <<'PY'
import base64, hashlib, pathlib
rec = next(pathlib.Path('.').glob('zeroconf-*.dist-info/RECORD'))
wheel = next(pathlib.Path('.').glob('zeroconf-*.dist-info/WHEEL'))
digest = base64.urlsafe_b64encode(hashlib.sha256(wheel.read_bytes()).digest()).rstrip(b'=').decode()
lines = [f"{wheel.as_posix()},sha256={digest},{wheel.stat().st_size}" if l.startswith(wheel.as_posix() + ',') else l
         for l in rec.read_text().splitlines()]
rec.write_text("\n".join(lines) + "\n")
PY
     name=$(basename "$whl" | sed 's/-cp[0-9]*-cp[0-9]*-.*\.whl$/-py3-none-any.whl/')
     zip -q -r "$DIR/$name" .)
    rm -rf "$tmp"
fi
[ -e "$DIR/pyalsaaudio-0.11.0.tar.gz" ] || $PIP download --no-deps --no-binary :all: -d "$DIR" pyalsaaudio==0.11.0
ls "$DIR"
