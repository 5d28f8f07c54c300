#!/bin/sh
# Make sure a Debian package's programs are installed:
#
#     sh scripts/ensure_debian_package.sh PACKAGE PROGRAM...
#
# e.g. `chromium /usr/bin/chromium` or `prometheus /usr/bin/prometheus /usr/bin/promtool`.
# Idempotent: does nothing when every PROGRAM is already there. Otherwise
# installs PACKAGE with apt-get (needs root, or sudo without a password) and
# checks that each PROGRAM runs (`--version`). Exits non-zero with a message
# when it cannot. A service the package brings is not relied on: tests start
# what they need themselves.
set -eu

[ "$#" -ge 2 ] || { echo "usage: $0 PACKAGE PROGRAM..." >&2; exit 2; }
PACKAGE=$1
shift

fail() {
    echo "ensure_debian_package: $*" >&2
    exit 1
}

missing=""
for program in "$@"; do
    [ -x "$program" ] || missing="$missing $program"
done
[ -n "$missing" ] || exit 0

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    fail "$missing missing and installing it needs root; run: apt-get install $PACKAGE"
fi

command -v apt-get >/dev/null 2>&1 \
    || fail "$missing missing and apt-get is not available; install $PACKAGE so that it exists"

export DEBIAN_FRONTEND=noninteractive
echo "ensure_debian_package: installing Debian's $PACKAGE package" >&2
$SUDO apt-get update -q >&2 \
    || fail "apt-get update failed; check network access to the Debian mirrors"
$SUDO apt-get install -y -q --no-install-recommends "$PACKAGE" >&2 \
    || fail "apt-get install $PACKAGE failed (see the output above)"

for program in "$@"; do
    [ -x "$program" ] || fail "$PACKAGE was installed but $program does not exist"
    "$program" --version >/dev/null 2>&1 || fail "$program is installed but does not run"
done
