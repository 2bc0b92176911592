#!/usr/bin/env bash
# Create .venv and install cart-cds for development: the newcomer's path.
#
#   ./scripts/install.sh                   # with python3
#   PYTHON=/path/to/python3.13 ./scripts/install.sh
#
# Idempotent: a second run checks what is there and only does what is missing.
# durable-rules 2.0.28 ships as an sdist only and is built here with
# CPPFLAGS=-DPyEval_CallObject=PyObject_CallObject: required on Python 3.13
# (the C API macro was removed), harmless on 3.11 and 3.12. CFLAGS would not
# work: its setup.py overwrites CFLAGS.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PYTHON:-python3}"
VENV=.venv
VPY="$VENV/bin/python"
DURABLE_VERSION=2.0.28
STAMP="$VENV/.cart-cds-installed"

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

command -v "$PY" >/dev/null 2>&1 || die "no Python interpreter '$PY' (set PYTHON=/path/to/python3.11..3.13)"

version=$("$PY" -c 'import platform; print(platform.python_version())') || die "'$PY' does not run"
"$PY" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 13) else 1)' \
    || die "cart-cds needs Python 3.11, 3.12 or 3.13; '$PY' is Python $version"

# "3.11.7 /root/.pyenv/versions/3.11.7": the version and the base installation.
identity='import sys, platform; print(platform.python_version(), sys.base_prefix)'
want=$("$PY" -c "$identity")

if [ -x "$VPY" ]; then
    have=$("$VPY" -c "$identity" 2>/dev/null || echo broken)
    if [ "$have" != "$want" ]; then
        say "recreating $VENV (it has Python ${have%% *}, asked for ${want%% *} from '$PY')"
        rm -rf "$VENV"
    fi
elif [ -e "$VENV" ]; then
    say "recreating $VENV (no working interpreter in it)"
    rm -rf "$VENV"
fi

if [ ! -x "$VPY" ]; then
    say "creating $VENV with Python ${want%% *} ($PY)"
    "$PY" -m venv "$VENV"
    "$VPY" -m pip install --quiet --disable-pip-version-check --upgrade pip
fi

pip_install() { "$VPY" -m pip install --quiet --disable-pip-version-check "$@"; }

durable_ok() {
    "$VPY" - "$DURABLE_VERSION" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version

import durable.engine  # noqa: F401  (loads the C extension durable_rules_engine)

sys.exit(0 if version("durable-rules") == sys.argv[1] else 1)
PY
}

if durable_ok; then
    say "durable-rules $DURABLE_VERSION already built and importable"
else
    say "building durable-rules $DURABLE_VERSION from source (a few seconds)"
    start=$SECONDS
    # --no-cache-dir: never reuse a wheel cached from a build without the define.
    CPPFLAGS="${CPPFLAGS:+$CPPFLAGS }-DPyEval_CallObject=PyObject_CallObject" \
        pip_install --no-cache-dir --force-reinstall --no-deps \
        --no-binary durable-rules "durable-rules==$DURABLE_VERSION"
    durable_ok || die "durable-rules $DURABLE_VERSION built but 'import durable.engine' fails: \
try: $VPY -c 'import durable.engine'"
    say "durable-rules built in $((SECONDS - start)) s"
fi

# Reinstall the project only when pyproject.toml changed (or it is not installed
# from this checkout): its dependencies and entry points live there.
want_stamp="$(sha256sum pyproject.toml | cut -d' ' -f1) $(pwd)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ] \
    && "$VPY" -c 'import engine, sys; sys.exit(0 if engine.__file__.startswith(sys.argv[1]) else 1)' \
        "$(pwd)/" >/dev/null 2>&1; then
    say "cart-cds already installed (editable, with [dev])"
else
    say "installing cart-cds (editable) with the [dev] extra"
    pip_install -e '.[dev]'
    printf '%s\n' "$want_stamp" >"$STAMP"
fi

# The PostgreSQL fact store tests need the server programs (initdb, pg_ctl); without
# them they skip (in CI they fail: .ci/run installs them).
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    say "note: no PostgreSQL server programs (initdb): the PostgreSQL store tests will skip;" \
        "install them with 'apt-get install -y postgresql'"
fi

say "ready: $("$VPY" -c 'import platform; print("Python", platform.python_version())'), \
run 'make test' or '$VPY -m pytest'"
