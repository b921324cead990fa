#!/usr/bin/env bash
# Create (or check) .cache/rucio-venv: rucio-clients in a virtual environment of its own, for the
# tests that drive Rucio's RSE protocols (webdav and gfal) against geofed without a Rucio server
# (tests/infra/rucio.py). Its own environment because rucio-clients pins requests/urllib3/... and
# must not change what geofed's .venv resolves to.
#
# The interpreter is the one .venv was made from (CPython 3.11, whose ABI Debian's python3-gfal2
# module is built for), or $PYTHON / python3 when .venv does not exist yet. gfal2's module is linked
# in as scripts/venv.sh does for .venv, so Rucio's gfal protocol can import it.
#
# Idempotent and quick: when the pinned version is installed (a stamp file) and the link is in
# place, nothing runs but two tests of files; no network.
set -euo pipefail
cd "$(dirname "$0")/.."

RUCIO_CLIENTS_VERSION=41.5.1
VENV=.cache/rucio-venv
STAMP="${VENV}/.installed-rucio-clients-${RUCIO_CLIENTS_VERSION}"

if [ -x .venv/bin/python ]; then
    PYTHON="$(.venv/bin/python -c 'import sys; print(sys._base_executable)')"
else
    PYTHON="${PYTHON:-python3}"
fi
if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    echo "rucio-venv: needs Python 3.11 or newer as '$PYTHON'" >&2
    exit 1
fi

if [ ! -x "${VENV}/bin/python" ]; then
    mkdir -p "$(dirname "${VENV}")"
    if ! "$PYTHON" -m venv "${VENV}" 2>/dev/null; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            "$PYTHON" -m venv "${VENV}"
        else
            echo "rucio-venv: cannot create a virtual environment: install python3-venv" >&2
            exit 1
        fi
    fi
fi

changed=0
if [ ! -f "${STAMP}" ]; then
    echo "rucio-venv: installing rucio-clients==${RUCIO_CLIENTS_VERSION} into ${VENV}"
    "${VENV}/bin/pip" install -q "rucio-clients==${RUCIO_CLIENTS_VERSION}"
    "${VENV}/bin/python" -c 'import rucio.rse.rsemanager' # fails loudly if the install is broken
    rm -f "${VENV}"/.installed-rucio-clients-*
    touch "${STAMP}"
    changed=1
fi

# Debian's python3-gfal2 module (built for CPython 3.11): link it when the ABI tag matches.
site=$("${VENV}/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for so in /usr/lib/python3/dist-packages/gfal2.cpython-*.so; do
    [ -e "$so" ] || continue
    if "${VENV}/bin/python" -c "import sys,os; sys.exit(0 if 'cpython-%d%d' % sys.version_info[:2] in os.path.basename('$so') else 1)"; then
        if [ "$(readlink "$site/$(basename "$so")" 2>/dev/null)" != "$so" ]; then
            ln -sf "$so" "$site/"
            changed=1
        fi
    fi
done

if [ ${changed} -eq 0 ]; then
    echo "rucio-venv: rucio-clients ${RUCIO_CLIENTS_VERSION} already installed in ${VENV}"
else
    echo "rucio-venv: done"
fi
