#!/usr/bin/env bash
# Makes sure containerd, ctr and runc are on this machine, installing Debian's packages when they
# are not. The image tests start their own containerd (own root, state and socket); no system
# service is started here.
set -euo pipefail

if command -v containerd >/dev/null && command -v ctr >/dev/null && command -v runc >/dev/null; then
    exit 0
fi
echo "containerd/runc not found: installing Debian's containerd and runc packages" >&2
. "$(dirname "$0")/apt-install.sh"
apt_install containerd runc
# The package may start a system containerd; the tests use their own, so stop it.
$SUDO service containerd stop >/dev/null 2>&1 || true
command -v containerd >/dev/null && command -v ctr >/dev/null && command -v runc >/dev/null
