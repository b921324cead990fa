#!/usr/bin/env bash
# Install what geofed's integration tests run for real:
#   * Debian packages: Apache mod_dav_fs and nginx + dav-ext as WebDAV storage endpoints,
#     davix/gfal2 as grid clients, wrk for load, curl; a Ceph mon + OSD + radosgw as the S3
#     endpoint (the only local S3 server that really checks SigV4 signatures: s3rver and moto
#     accept tampered ones), uuid-runtime for Ceph's OSD uuids; memcached and redis-server as
#     the shared (L2) cache back ends; chromium as the real browser the web UI tests drive through
#     Playwright (with executable_path=/usr/bin/chromium: Playwright never downloads a browser);
#   * Azurite 3.35.0 (npm) as the Azure Blob endpoint, into the project-local, gitignored
#     .cache/azurite (pinned: 3.37+ needs Node >= 22; this machine kind has Node 20).
#
# Idempotent: apt is not touched at all when every package is already installed (checked with
# dpkg-query) and npm is not run when Azurite 3.35.0 is already in .cache/azurite, so running this
# on a prepared machine is instant, prints one line and needs no network.
#
# Node.js: the machine's own node/npm are used when present (this machine kind ships Node 20 from
# another packaging, whose "nodejs" package conflicts with Debian's "npm"); only when node or npm
# is missing are Debian's nodejs and npm added to the apt list.
#
# It never starts a service. The tests run their own Apache/nginx/Ceph/Azurite/memcached/Redis
# instances in the foreground; a system-wide instance would only get in the way. When no policy-rc.d exists we
# install a temporary one that forbids service starts during apt (the Debian mechanism honoured by
# invoke-rc.d and deb-systemd-invoke), and remove it again afterwards. If a system service is
# running anyway we leave it alone: we did not start it, so we do not stop it.
#
# Not root and a Debian package missing: report what is missing and exit 1 (no sudo guessing).
set -euo pipefail
cd "$(dirname "$0")/.."

AZURITE_VERSION=3.35.0
AZURITE_DIR=.cache/azurite

PACKAGES=(
    apache2
    nginx
    libnginx-mod-http-dav-ext
    davix
    gfal2
    python3-gfal2
    gfal2-plugin-http
    gfal2-plugin-file
    wrk
    curl
    radosgw
    ceph-mon
    ceph-osd
    ceph-common
    uuid-runtime
    memcached
    redis-server
    chromium
)
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    PACKAGES+=(nodejs npm)
fi

# A package counts as present only when dpkg says "install ok installed" (not merely known,
# half-configured or removed with config files left behind).
is_installed() {
    local status
    status="$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null || true)"
    [[ "${status}" == ii* ]]
}

missing_packages() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        if ! is_installed "${pkg}"; then
            echo "${pkg}"
        fi
    done
}

install_debian_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    if [[ ${#missing[@]} -eq 0 ]]; then
        return 0
    fi
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "install-test-deps: not root; missing packages: ${missing[*]}" >&2
        echo "install-test-deps: run as root, or: apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi

    local policy=/usr/sbin/policy-rc.d
    local created_policy=0
    if [[ ! -e "${policy}" ]]; then
        printf '#!/bin/sh\n# temporary, from geofed scripts/install-test-deps.sh\nexit 101\n' >"${policy}"
        chmod 0755 "${policy}"
        created_policy=1
        # Remove only the policy file this script created; a pre-existing one (e.g. Docker's) stays.
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi

    export DEBIAN_FRONTEND=noninteractive
    echo "install-test-deps: installing ${missing[*]}"
    apt-get update -qq
    # Install the whole list: apt skips what is present and this keeps versions consistent.
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null

    if [[ ${created_policy} -eq 1 ]]; then
        rm -f "${policy}"
        trap - EXIT
    fi
    mapfile -t missing < <(missing_packages)
    if [[ ${#missing[@]} -ne 0 ]]; then
        echo "install-test-deps: still missing after apt-get: ${missing[*]}" >&2
        exit 1
    fi
    changed=1
}

azurite_installed() {
    local manifest="${AZURITE_DIR}/node_modules/azurite/package.json"
    [[ -x "${AZURITE_DIR}/node_modules/.bin/azurite-blob" && -f "${manifest}" ]] &&
        node -e 'process.exit(require(process.argv[1]).version === process.argv[2] ? 0 : 1)' \
            "$(pwd)/${manifest}" "${AZURITE_VERSION}"
}

install_azurite() {
    if azurite_installed; then
        return 0
    fi
    echo "install-test-deps: installing azurite@${AZURITE_VERSION} into ${AZURITE_DIR}"
    mkdir -p "${AZURITE_DIR}"
    # --prefix keeps it out of the project's root (no package.json there) and out of the global
    # node_modules; no audit/fund requests (they would only slow CI down).
    npm install --prefix "${AZURITE_DIR}" --no-audit --no-fund --loglevel=error \
        "azurite@${AZURITE_VERSION}" >/dev/null
    if ! azurite_installed; then
        echo "install-test-deps: azurite ${AZURITE_VERSION} missing after npm install" >&2
        exit 1
    fi
    changed=1
}

# Set by the install functions when they installed something. They are called plainly (not in
# an `||` list) so that `set -e` stays in force inside them.
changed=0
install_debian_packages
install_azurite
if [[ ${changed} -eq 0 ]]; then
    echo "install-test-deps: all ${#PACKAGES[@]} packages and azurite ${AZURITE_VERSION} already installed"
else
    echo "install-test-deps: done"
fi
