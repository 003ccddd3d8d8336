#!/usr/bin/env bash
# Makes sure the pieces of a real Kubernetes node that come from Debian are on this machine:
# containerd (the CRI runtime), runc, the CNI plugins (bridge, host-local), iproute2 (the bridge)
# and a static C toolchain (the pause image). Installs Debian's packages when one is missing.
# Nothing is started or enabled here: the node tier runs its own containerd with its own root,
# state and socket, and the packages' system service (if any) is stopped.
set -euo pipefail

missing=()
{ command -v containerd && command -v ctr; } >/dev/null || missing+=(containerd)
command -v runc >/dev/null || missing+=(runc)
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] || missing+=(containernetworking-plugins)
command -v ip >/dev/null || missing+=(iproute2)
command -v gcc >/dev/null || missing+=(gcc)
[[ -f /usr/lib/x86_64-linux-gnu/libc.a || -f /usr/lib/aarch64-linux-gnu/libc.a ]] || missing+=(libc6-dev)
command -v openssl >/dev/null || missing+=(openssl)
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "node tier: installing Debian's ${missing[*]}" >&2
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d 101: the packages' maintainer scripts must not start a system containerd.
policy=/usr/sbin/policy-rc.d
created_policy=
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    created_policy=1
fi
rc=0
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
[[ -n $created_policy ]] && $SUDO rm -f "$policy"
[[ $rc -eq 0 ]] || exit "$rc"
$SUDO service containerd stop >/dev/null 2>&1 || true
command -v containerd >/dev/null && command -v runc >/dev/null && [[ -x /usr/lib/cni/bridge ]]
