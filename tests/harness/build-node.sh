#!/usr/bin/env bash
# Build what a real Kubernetes node adds to the control plane of build-control-plane.sh, cached
# beside it by version:
#   ${OPTIONFEED_CACHE:-$HOME/.cache/optionfeed}/k8s-<K8S_VERSION>/bin/kubelet
#   ${OPTIONFEED_CACHE:-$HOME/.cache/optionfeed}/k8s-<K8S_VERSION>/node/pause.oci.tar
# The Debian parts (containerd, runc, CNI plugins) come from ensure-node.sh.
#
# Usage: build-node.sh [--print-dir]
#   Progress goes to stderr; the last line on stdout is the version dir.
#   --print-dir prints the version dir and exits 0 if everything is built, 1 if not (never builds).
#
# - The kubelet comes from the same k8s.io/kubernetes module as the control plane, through a copy
#   of its wrapper module. It needs two modules the control plane does not (go-restful's otel
#   instrumentation, armon/circbuf), hence -mod=mod. CGO_ENABLED=0 as for the other commands.
#   With the control plane's build cache warm: ~20 s, 84 MB.
# - The pause image: a static C program (node/pause.c) in a one-layer OCI archive
#   (oci-archive.sh), imported into containerd as localhost/pause:<K8S_VERSION>.
set -Eeuo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
K8S_VERSION="${K8S_VERSION:-v1.34.10}"
CACHE_ROOT="${OPTIONFEED_CACHE:-$HOME/.cache/optionfeed}"
VERSION_DIR="$CACHE_ROOT/k8s-$K8S_VERSION"
BIN_DIR="$VERSION_DIR/bin"
NODE_DIR="$VERSION_DIR/node"
STAMP="$VERSION_DIR/node-complete"
PAUSE_IMAGE="localhost/pause:$K8S_VERSION"
# The stamp names the versions and the sources, so changing any of them triggers a rebuild.
STAMP_CONTENT="kubelet=$K8S_VERSION pause=$(cat "$HERE/node/pause.c" "$HERE/oci-archive.sh" | sha256sum | cut -c1-16)"

is_complete() {
    [[ -f "$STAMP" && "$(<"$STAMP")" == "$STAMP_CONTENT" ]] || return 1
    [[ -x "$BIN_DIR/kubelet" && -f "$NODE_DIR/pause.oci.tar" ]]
}

if [[ "${1:-}" == "--print-dir" ]]; then
    echo "$VERSION_DIR"
    is_complete
    exit
fi
if is_complete; then
    echo "node $STAMP_CONTENT already built" >&2
    echo "$VERSION_DIR"
    exit 0
fi

. "$(dirname "$0")/build-steps.sh"
begin_build build-node

# The kubelet builds from the control plane's wrapper module.
K8S_VERSION="$K8S_VERSION" "$HERE/build-control-plane.sh" >/dev/null
rm -f "$STAMP"
mkdir -p "$NODE_DIR"

build_kubelet() {
    local dir="$VERSION_DIR/work/kubelet" minor flags pkg
    mkdir -p "$dir"
    cp "$VERSION_DIR/work/kube/go.mod" "$VERSION_DIR/work/kube/go.sum" "$dir/"
    cat >"$dir/tools.go" <<'GO'
//go:build tools

// Package tools pins the kubelet command.
package tools

import _ "k8s.io/kubernetes/cmd/kubelet"
GO
    minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
    flags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        flags+=" -X $pkg.gitTreeState=clean"
    done
    log "kubelet $K8S_VERSION: compiling (with $(go version | cut -d' ' -f3))"
    (cd "$dir" && go_settings && with_heartbeat kubelet \
        go build -mod=mod -trimpath -ldflags "$flags" -o "$BIN_DIR/kubelet.tmp" \
        k8s.io/kubernetes/cmd/kubelet)
    mv "$BIN_DIR/kubelet.tmp" "$BIN_DIR/kubelet"
    local out
    out="$("$BIN_DIR/kubelet" --version 2>&1)"
    [[ "$out" == *"Kubernetes $K8S_VERSION"* ]] || { log "kubelet --version: $out"; return 1; }
    log "kubelet $K8S_VERSION: done"
}

build_pause() {
    local root
    root="$(mktemp -d)"
    gcc -static -Os -s -o "$root/pause" "$HERE/node/pause.c"
    "$HERE/oci-archive.sh" "$root" "$PAUSE_IMAGE" "$NODE_DIR/pause.oci.tar" '["/pause"]'
    rm -rf "$root"
    log "pause image $PAUSE_IMAGE: done"
}

build_kubelet
build_pause
echo "$STAMP_CONTENT" >"$STAMP"
echo "$VERSION_DIR"
