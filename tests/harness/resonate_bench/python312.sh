# Sourced by the bench set-up scripts: pick_python prints the base interpreter (Python >= 3.12)
# for the test-server venvs, or exits 1 saying what to do. Order: $SENDSPIN_SERVER_BASE_PYTHON,
# pyenv 3.12.1, any pyenv 3.12.x, python3.12 / python3.13 / python3.14 on PATH, then
# <repo>/.python-server/bin/python3 (built by build_python.sh from Debian trixie's source).

pick_python() {
    if [[ -n "${SENDSPIN_SERVER_BASE_PYTHON:-}" ]]; then
        echo "$SENDSPIN_SERVER_BASE_PYTHON"
        return
    fi
    if command -v pyenv >/dev/null 2>&1; then
        local prefix v
        for v in 3.12.1 $(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.|$)' | sort -rV); do
            if prefix="$(pyenv prefix "$v" 2>/dev/null)" && [[ -x "$prefix/bin/python" ]]; then
                echo "$prefix/bin/python"
                return
            fi
        done
    fi
    local repo candidate
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
    for candidate in python3.12 python3.13 python3.14 "$repo/.python-server/bin/python3"; do
        if candidate="$(command -v "$candidate")" \
           && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    echo "error: no Python >= 3.12 found: run tests/harness/resonate_bench/build_python.sh (builds" \
         "3.13 from Debian trixie's source into .python-server), install pyenv 3.12.1 or" \
         "python3.12, or set SENDSPIN_SERVER_BASE_PYTHON" >&2
    exit 1
}
