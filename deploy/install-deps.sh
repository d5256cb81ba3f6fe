#!/usr/bin/env bash
# Installs the Debian 12 packages that building, running and testing LEO Optima need.
#
#   deploy/install-deps.sh [--bench] [--quiet]
#
#   --bench   also install what the benchmark needs (wrk, taskset from util-linux)
#   --quiet   print nothing when every package is already installed
#
# Only missing packages are installed: each one is looked up with dpkg-query first, and the package lists are
# refreshed (apt-get update) only when something is missing, so a second run is a fast no-op. Runs as root, or
# through sudo when started by another user.
set -euo pipefail

PACKAGES=(
    build-essential cmake pkg-config git ca-certificates curl xz-utils
    libuv1-dev node-llhttp libcurl4-openssl-dev libhiredis-dev libpq-dev libsodium-dev libjansson-dev
    postgresql redis-server
    nodejs npm
)
BENCH_PACKAGES=(wrk util-linux)

quiet=0
bench=0
for arg in "$@"; do
    case "$arg" in
    --bench) bench=1 ;;
    -q | --quiet) quiet=1 ;;
    -h | --help)
        sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "install-deps.sh: unknown option \"$arg\"" >&2
        exit 2
        ;;
    esac
done
[ "$bench" = 1 ] && PACKAGES+=("${BENCH_PACKAGES[@]}")

say() { [ "$quiet" = 1 ] || echo "install-deps.sh: $*"; }

# present NAME: true when the package is installed. npm is also satisfied by an npm that came with another nodejs
# build (some nodejs packages bundle npm and conflict with Debian's npm package).
present() {
    local status
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) || status=
    case "$status" in
    ii*) return 0 ;;
    esac
    [ "$1" = npm ] && command -v npm >/dev/null 2>&1 && dpkg-query -W -f='${db:Status-Abbrev}' nodejs 2>/dev/null | grep -q '^ii'
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    present "$pkg" || missing+=("$pkg")
done

if [ "${#missing[@]}" -eq 0 ]; then
    say "all ${#PACKAGES[@]} packages already installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        echo "install-deps.sh: not root, re-running through sudo to install: ${missing[*]}"
        exec sudo -- bash "$0" "$@"
    fi
    echo "install-deps.sh: missing packages (${missing[*]}) and not running as root" >&2
    exit 1
fi

echo "install-deps.sh: installing ${#missing[@]} missing package(s): ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt_opts=(-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${apt_opts[@]}" "${missing[@]}"

still=()
for pkg in "${missing[@]}"; do
    present "$pkg" || still+=("$pkg")
done
if [ "${#still[@]}" -ne 0 ]; then
    echo "install-deps.sh: still missing after apt-get install: ${still[*]}" >&2
    exit 1
fi
echo "install-deps.sh: installed ${missing[*]}"
