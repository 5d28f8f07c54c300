#!/bin/sh
# Make sure Debian's Chromium is installed at /usr/bin/chromium.
#
# Idempotent: does nothing when the browser is already there. Otherwise
# installs the `chromium` package with apt-get (needs root, or sudo without
# a password). Exits non-zero with a message when it cannot.
set -eu

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    exit 0
fi

fail() {
    echo "ensure_chromium: $*" >&2
    exit 1
}

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    fail "$CHROMIUM is missing and installing it needs root; run: apt-get install chromium"
fi

command -v apt-get >/dev/null 2>&1 \
    || fail "$CHROMIUM is missing and apt-get is not available; install Chromium so that $CHROMIUM exists"

export DEBIAN_FRONTEND=noninteractive
echo "ensure_chromium: installing Debian's chromium package" >&2
$SUDO apt-get update -q >&2 \
    || fail "apt-get update failed; check network access to the Debian mirrors"
$SUDO apt-get install -y -q --no-install-recommends chromium >&2 \
    || fail "apt-get install chromium failed (see the output above)"

[ -x "$CHROMIUM" ] || fail "chromium was installed but $CHROMIUM does not exist"
"$CHROMIUM" --version >&2 || fail "$CHROMIUM is installed but does not run"
