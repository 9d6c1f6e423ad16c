# Sourced by the bench set-up scripts: pick_python prints a Python 3.12 interpreter for the
# test-server venvs ($SENDSPIN_SERVER_BASE_PYTHON, else pyenv 3.12.1, else any pyenv 3.12.x,
# else python3.12 on PATH) or exits 1 with a message saying what to install.

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
    if command -v python3.12 >/dev/null 2>&1; then
        command -v python3.12
        return
    fi
    echo "error: no Python 3.12 found (install pyenv 3.12.1 or python3.12," \
         "or set SENDSPIN_SERVER_BASE_PYTHON)" >&2
    exit 1
}
