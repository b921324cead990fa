#!/usr/bin/env bash
# Install the Debian packages geofed's integration tests run for real: Apache mod_dav_fs and
# nginx + dav-ext as WebDAV storage endpoints, davix/gfal2 as grid clients, wrk for load, curl.
#
# Idempotent: apt is not touched at all when every package is already installed (checked with
# dpkg-query), so running this on a prepared machine is instant and needs no network.
#
# It never starts a service. The tests run their own Apache/nginx instances in the foreground on
# free high ports; a system-wide instance would only get in the way. When no policy-rc.d exists we
# install a temporary one that forbids service starts during apt (the Debian mechanism honoured by
# invoke-rc.d and deb-systemd-invoke), and remove it again afterwards. If a system apache2/nginx is
# running anyway we leave it alone: we did not start it, so we do not stop it.
#
# Not root and something missing: report what is missing and exit 1 (no sudo guessing).
set -euo pipefail

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
)

# A package counts as present only when dpkg says "install ok installed" (not merely known,
# half-configured or removed with config files left behind).
is_installed() {
    local status
    status="$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null || true)"
    [[ "${status}" == ii* ]]
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! is_installed "${pkg}"; then
        missing+=("${pkg}")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-test-deps: all ${#PACKAGES[@]} packages already installed"
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "install-test-deps: not root; missing packages: ${missing[*]}" >&2
    echo "install-test-deps: run as root, or: apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

POLICY=/usr/sbin/policy-rc.d
created_policy=0
cleanup() {
    # Remove only the policy file this script created; a pre-existing one (e.g. Docker's) stays.
    if [[ ${created_policy} -eq 1 ]]; then
        rm -f "${POLICY}"
    fi
}
trap cleanup EXIT

if [[ ! -e "${POLICY}" ]]; then
    printf '#!/bin/sh\n# temporary, from geofed scripts/install-test-deps.sh\nexit 101\n' >"${POLICY}"
    chmod 0755 "${POLICY}"
    created_policy=1
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-test-deps: installing ${missing[*]}"
apt-get update
# Install the whole list: apt skips what is present and this keeps versions consistent.
apt-get install -y --no-install-recommends "${PACKAGES[@]}"

still_missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! is_installed "${pkg}"; then
        still_missing+=("${pkg}")
    fi
done
if [[ ${#still_missing[@]} -ne 0 ]]; then
    echo "install-test-deps: still missing after apt-get: ${still_missing[*]}" >&2
    exit 1
fi

echo "install-test-deps: done"
