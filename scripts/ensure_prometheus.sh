#!/bin/sh
# Make sure Debian's Prometheus (with promtool) is installed at /usr/bin.
#
# Idempotent: does nothing when both binaries are already there. Otherwise
# installs the `prometheus` package with apt-get (needs root, or sudo without
# a password). Exits non-zero with a message when it cannot. The package's
# service is not started: the tests run Prometheus themselves.
set -eu

PROMETHEUS=/usr/bin/prometheus
PROMTOOL=/usr/bin/promtool

if [ -x "$PROMETHEUS" ] && [ -x "$PROMTOOL" ]; then
    exit 0
fi

fail() {
    echo "ensure_prometheus: $*" >&2
    exit 1
}

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    fail "$PROMTOOL is missing and installing it needs root; run: apt-get install prometheus"
fi

command -v apt-get >/dev/null 2>&1 \
    || fail "$PROMTOOL is missing and apt-get is not available; install Prometheus so that $PROMTOOL exists"

export DEBIAN_FRONTEND=noninteractive
echo "ensure_prometheus: installing Debian's prometheus package" >&2
$SUDO apt-get update -q >&2 \
    || fail "apt-get update failed; check network access to the Debian mirrors"
# policy-rc.d-less containers: the package's postinst may try to start the service; that is harmless.
$SUDO apt-get install -y -q --no-install-recommends prometheus >&2 \
    || fail "apt-get install prometheus failed (see the output above)"

[ -x "$PROMTOOL" ] || fail "prometheus was installed but $PROMTOOL does not exist"
"$PROMTOOL" --version >&2 || fail "$PROMTOOL is installed but does not run"
