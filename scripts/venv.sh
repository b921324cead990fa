#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with geofed and, with "test",
# everything the test suite needs. Re-running is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    echo "geofed needs Python 3.11 or newer as '$PYTHON'" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv .venv 2>/dev/null; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            "$PYTHON" -m venv .venv
        else
            echo "cannot create a virtual environment: install python3-venv" >&2
            exit 1
        fi
    fi
    .venv/bin/pip install -q --upgrade pip
fi
stamp=".venv/.installed-${extras:-base}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    if [ -n "$extras" ]; then
        .venv/bin/pip install -q -e ".[$extras]"
    else
        .venv/bin/pip install -q -e .
    fi
    touch "$stamp"
fi
# gfal2's Python bindings come from Debian (python3-gfal2), built for CPython 3.11: link the module
# into the venv when the interpreter ABI matches, so tests can drive gfal2 from the venv.
if [ "$extras" = test ]; then
    site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    for so in /usr/lib/python3/dist-packages/gfal2.cpython-*.so; do
        [ -e "$so" ] || continue
        if .venv/bin/python -c "import sys,os; sys.exit(0 if 'cpython-%d%d' % sys.version_info[:2] in os.path.basename('$so') else 1)"; then
            ln -sf "$so" "$site/"
        fi
    done
fi
