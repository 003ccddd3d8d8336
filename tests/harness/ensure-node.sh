#!/usr/bin/env bash
# Makes sure the pieces of a real Kubernetes node that come from Debian are on this machine:
# containerd (the CRI runtime) and runc (ensure-containerd.sh), the CNI plugins (bridge,
# host-local), iproute2 (the bridge), file(1) and a static C toolchain (the images the node tier
# assembles). Installs Debian's packages when one is missing.
# Nothing is started here: the node tier runs its own containerd with its own root, state and
# socket.
set -euo pipefail

"$(dirname "$0")/ensure-containerd.sh"
missing=()
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] || missing+=(containernetworking-plugins)
command -v ip >/dev/null || missing+=(iproute2)
command -v gcc >/dev/null || missing+=(gcc)
[[ -f /usr/lib/x86_64-linux-gnu/libc.a || -f /usr/lib/aarch64-linux-gnu/libc.a ]] || missing+=(libc6-dev)
command -v file >/dev/null || missing+=(file)
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "node tier: installing Debian's ${missing[*]}" >&2
. "$(dirname "$0")/apt-install.sh"
apt_install "${missing[@]}"
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]]
