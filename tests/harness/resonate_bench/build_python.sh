#!/usr/bin/env bash
# Build CPython 3.13 into PREFIX (default: <repo>/.python-server) from Debian trixie's source
# package, for machines that have no Python >= 3.12 (Debian 12 ships 3.11 only). The source comes
# from deb.debian.org through apt's own tools, so its hashes are checked against trixie's signed
# Sources index; GitHub and python.org are not needed. Build dependencies are bookworm packages.
# Run as root (or with sudo). Idempotent: an existing working PREFIX/bin/python3 is kept.
#
#   tests/harness/resonate_bench/build_python.sh [PREFIX]
#
# Prints PREFIX/bin/python3 as the last line of stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
prefix="${1:-$repo/.python-server}"
suite="trixie"
source_package="python3.13"
build_deps=(build-essential pkg-config xz-utils libssl-dev zlib1g-dev libffi-dev libsqlite3-dev
            libbz2-dev liblzma-dev libreadline-dev libncurses-dev libgdbm-dev uuid-dev)

sudo=""
[[ "$(id -u)" -eq 0 ]] || sudo="sudo"

python_ok() {
    "$prefix/bin/python3" - <<'EOF' >/dev/null 2>&1
import sys
assert sys.version_info[:2] >= (3, 12)
import ssl, zlib, ctypes, sqlite3, bz2, lzma, uuid, ensurepip, venv  # noqa: F401
EOF
}

if python_ok; then
    echo "Python already built: $prefix/bin/python3" >&2
    echo "$prefix/bin/python3"
    exit 0
fi

missing=()
for pkg in "${build_deps[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "installing build dependencies: ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/src"
echo "deb-src http://deb.debian.org/debian $suite main" >"$work/sources.list"
# A private apt configuration: the machine's own sources and state are neither read nor changed.
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
          -o APT::Sandbox::User=root -qq)
echo "fetching $source_package from Debian $suite" >&2
apt-get "${apt_opts[@]}" update >&2
(cd "$work/src" && apt-get "${apt_opts[@]}" source --download-only "$source_package" >&2)

orig=("$work"/src/"$source_package"_*.orig.tar.xz)
tar -xJf "${orig[0]}" -C "$work/src"
srcdir=("$work"/src/Python-*/)
echo "building $(basename "${srcdir[0]}") into $prefix" >&2
cd "${srcdir[0]}"
if ! { ./configure --prefix="$prefix" --disable-test-modules && make -j"$(nproc)" && make install; } \
        >"$work/build.log" 2>&1; then
    tail -n 40 "$work/build.log" >&2
    echo "error: building CPython failed (the last lines of its log are above)" >&2
    exit 1
fi
if ! python_ok; then
    echo "error: $prefix/bin/python3 was built but lacks a standard module (see above)" >&2
    exit 1
fi
echo "$prefix/bin/python3"
