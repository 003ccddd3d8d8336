#!/usr/bin/env bash
# Build the real Kubernetes control plane used by tests/kube from Go modules, and cache it by
# version outside the work tree:
#   ${OPTIONFEED_CACHE:-$HOME/.cache/optionfeed}/k8s-<K8S_VERSION>/bin/
#     kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm
#
# Usage: build-control-plane.sh [--print-bin-dir]
#   Progress goes to stderr; the last line on stdout is the bin dir.
#   --print-bin-dir prints the bin dir and exits 0 if it is complete, 1 if not (never builds).
#   Versions can be overridden with K8S_VERSION, ETCD_VERSION, KWOK_VERSION, HELM_VERSION.
#
# What turned out true on the 2-core / 24 GiB machine (go1.26.8, Go module proxy only), 2026-11:
# - The proxy's version *list* is incomplete (`go list -m -versions` shows v1.34.0-v1.34.4) but it
#   serves later tags when asked for them. v1.34.11 and v1.34.12 download but fail checksum
#   verification (".../sumdb/sum.golang.org/lookup/k8s.io/kubernetes@v1.34.12: 404 Not Found"),
#   so v1.34.10 is the newest usable v1.34; checksum verification stays on.
# - etcd v3.6.16 is the newest v3.6. Its go.mod says go 1.26.0 / toolchain go1.26.10; with
#   GOTOOLCHAIN=local a dependency's toolchain line is ignored and go1.26.8 builds it.
# - kwok v0.8.0 and helm v3.21.4 (newest v3.21) have no replace directives: `go install
#   pkg@version` works for both. kwok's version is a source constant; helm needs -X for its
#   version and for the Kubernetes version `helm template`/`lint` assume (1.20 otherwise).
# - k8s.io/kubernetes v1.34.10 requires 29 staging modules at v0.0.0; the replace list below is
#   derived from its go.mod at build time.
# - Cold build with empty module and build caches: 451 s on a mostly idle machine (kube
#   commands ~270 s of it); 987 s while other builds kept the load at 6-8. Module downloads
#   351 MB (1.3 GB unpacked in GOMODCACHE), Go build cache 4.3 GB, binaries 459 MB.
#   Rebuild after a version bump of kwok/helm only, or after the bin dir is lost: ~15-20 s.
#   Warm no-op run (everything built): under 10 ms.
set -Eeuo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.10}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v3.21.4}"

CACHE_ROOT="${OPTIONFEED_CACHE:-$HOME/.cache/optionfeed}"
VERSION_DIR="$CACHE_ROOT/k8s-$K8S_VERSION"
BIN_DIR="$VERSION_DIR/bin"
STAMP="$VERSION_DIR/build-complete"
# The stamp holds every component's version, so changing any of them triggers a rebuild.
STAMP_CONTENT="kubernetes=$K8S_VERSION etcd=$ETCD_VERSION kwok=$KWOK_VERSION helm=$HELM_VERSION"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm)

is_complete() {
    [[ -f "$STAMP" && "$(<"$STAMP")" == "$STAMP_CONTENT" ]] || return 1
    local b
    for b in "${BINARIES[@]}"; do
        [[ -x "$BIN_DIR/$b" ]] || return 1
    done
}

if [[ "${1:-}" == "--print-bin-dir" ]]; then
    echo "$BIN_DIR"
    is_complete
    exit
fi

if is_complete; then
    echo "control plane $STAMP_CONTENT already built" >&2
    echo "$BIN_DIR"
    exit 0
fi

. "$(dirname "$0")/build-steps.sh"
begin_build build-control-plane
go_settings

WORK="$VERSION_DIR/work"
mkdir -p "$BIN_DIR" "$WORK"
rm -f "$STAMP"
log "building $STAMP_CONTENT into $BIN_DIR with $(go version)"

staging_version() {
    # k8s.io/kubernetes v1.X.Y ships its staging modules as v0.X.Y.
    echo "v0.${K8S_VERSION#v1.}"
}

kube_ldflags() {
    local minor
    minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
    local date
    date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    local flags="-s -w" pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
    done
    echo "$flags"
}

write_kube_wrapper() {
    local dir="$WORK/kube" json gomod
    mkdir -p "$dir"
    # On failure the reason is in the JSON's "Error" field, on stdout: show it.
    if ! json="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION")"; then
        log "go mod download k8s.io/kubernetes@$K8S_VERSION failed: $json"
        return 1
    fi
    gomod="$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p' <<<"$json")"
    [[ -f "$gomod" ]] || { log "no go.mod downloaded for k8s.io/kubernetes@$K8S_VERSION"; return 1; }
    local staging
    staging="$(staging_version)"
    {
        echo "module optionfeed.invalid/kubebuild"
        echo
        echo "go 1.24.0"
        echo
        echo "require k8s.io/kubernetes $K8S_VERSION"
        echo
        echo "replace ("
        # Every k8s.io requirement at v0.0.0 is a staging module that k8s.io/kubernetes replaces
        # into its own tree; point each at its published release instead.
        awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" { print $1 }' "$gomod" | sort -u |
            while read -r mod; do echo "	$mod => $mod $staging"; done
        echo ")"
    } >"$dir/go.mod"
    cat >"$dir/tools.go" <<'EOF'
//go:build tools

// Package tools pins the commands built from this module so `go mod tidy` resolves them.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOF
    log "kube wrapper module: $(grep -c '=>' "$dir/go.mod") staging replaces ($staging)"
}

build_kube() {
    write_kube_wrapper
    local dir="$WORK/kube"
    log "kubernetes $K8S_VERSION: resolving modules (go mod tidy)"
    (cd "$dir" && go mod tidy)
    log "kubernetes $K8S_VERSION: downloading modules"
    (cd "$dir" && go mod download)
    log "kubernetes $K8S_VERSION: compiling kube-apiserver kube-controller-manager kube-scheduler kubectl"
    # One `go build` for all four so the packages they share compile once.
    (cd "$dir" && with_heartbeat "kubernetes" go build -trimpath -ldflags "$(kube_ldflags)" \
        -o "$BIN_DIR/" \
        k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler \
        k8s.io/kubernetes/cmd/kubectl)
    log "kubernetes $K8S_VERSION: done"
}

build_etcd() {
    # server/go.mod has replace directives (to ../api etc.), so `go install` refuses it; as a
    # dependency of a wrapper module its replaces are ignored and its real requirements used.
    local dir="$WORK/etcd"
    mkdir -p "$dir"
    cat >"$dir/go.mod" <<EOF
module optionfeed.invalid/etcdbuild

go 1.26.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
    cat >"$dir/tools.go" <<'EOF'
//go:build tools

// Package tools pins the etcd server command so `go mod tidy` resolves it.
package tools

import _ "go.etcd.io/etcd/server/v3"
EOF
    log "etcd $ETCD_VERSION: resolving modules"
    (cd "$dir" && go mod tidy)
    log "etcd $ETCD_VERSION: compiling"
    (cd "$dir" && with_heartbeat "etcd" go build -trimpath \
        -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" \
        -o "$BIN_DIR/etcd" go.etcd.io/etcd/server/v3)
    log "etcd $ETCD_VERSION: done"
}

build_kwok() {
    # kwok's version string is a constant in its source (pkg/consts), so no -X is needed.
    log "kwok $KWOK_VERSION: compiling"
    GOBIN="$BIN_DIR" with_heartbeat "kwok" go install -trimpath -ldflags "-s -w" \
        "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
    log "kwok $KWOK_VERSION: done"
}

build_helm() {
    local minor
    minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
    # Without the k8sVersion* flags `helm template` and `helm lint` assume Kubernetes 1.20;
    # setting them to the control plane's version makes offline rendering match the cluster.
    local flags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    flags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    local pkg
    for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        flags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
    done
    log "helm $HELM_VERSION: compiling"
    GOBIN="$BIN_DIR" with_heartbeat "helm" go install -trimpath -ldflags "$flags" \
        "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    log "helm $HELM_VERSION: done"
}

# The output is captured before matching: with pipefail, `cmd | grep -q` fails when grep exits
# at the first match and cmd dies of SIGPIPE.
expect_output() {
    local want="$1" out
    shift
    out="$("$@" 2>&1)"
    [[ "$out" == *"$want"* ]] || { log "$* reports: $out (expected $want)"; return 1; }
}

check_versions() {
    expect_output "Kubernetes $K8S_VERSION" "$BIN_DIR/kube-apiserver" --version
    expect_output "Kubernetes $K8S_VERSION" "$BIN_DIR/kube-controller-manager" --version
    expect_output "Kubernetes $K8S_VERSION" "$BIN_DIR/kube-scheduler" --version
    expect_output "Client Version: $K8S_VERSION" "$BIN_DIR/kubectl" version --client
    expect_output "etcd Version: ${ETCD_VERSION#v}" "$BIN_DIR/etcd" --version
    expect_output "kwok version $KWOK_VERSION" "$BIN_DIR/kwok" --version
    expect_output "$HELM_VERSION" "$BIN_DIR/helm" version --short
    log "versions check out"
}

build_etcd
build_kube
build_kwok
build_helm
check_versions

echo "$STAMP_CONTENT" >"$STAMP"
log "complete: $(du -sh "$BIN_DIR" | cut -f1) of binaries"
echo "$BIN_DIR"
