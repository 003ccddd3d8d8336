#!/usr/bin/env bash
# Makes sure Prometheus and promtool are on this machine, installing Debian's package when they are
# not. The tests start their own throwaway Prometheus on 127.0.0.1 and call promtool by its
# installed path; the system service the package starts is stopped and disabled here.
set -euo pipefail

PROMETHEUS=/usr/bin/prometheus
PROMTOOL=/usr/bin/promtool

if [ -x "$PROMETHEUS" ] && [ -x "$PROMTOOL" ]; then
    exit 0
fi
echo "prometheus/promtool not found: installing Debian's prometheus package" >&2
. "$(dirname "$0")/apt-install.sh"
apt_install prometheus
# The package starts a system Prometheus on port 9090 (and node exporter is only a recommendation);
# the tests run their own, so stop the service and keep it from starting at boot.
$SUDO service prometheus stop >/dev/null 2>&1 || true
if command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable prometheus >/dev/null 2>&1 || true
fi
$SUDO update-rc.d prometheus disable >/dev/null 2>&1 || true
[ -x "$PROMETHEUS" ] && [ -x "$PROMTOOL" ]
