# Sourced by the cached build scripts (build-control-plane.sh, build-node.sh,
# build-otel-receiver.sh, build-timescaledb.sh): timed progress lines on stderr, the failing line
# named on any error, a heartbeat through long silent steps, and the Go settings every Go build
# here uses.

# begin_build NAME: start the clock, prefix progress lines with NAME, report a failing command.
begin_build() {
    BUILD_NAME="$1"
    BUILD_START=$SECONDS
    trap 'rc=$?; log "FAILED (exit $rc) at line $LINENO: $BASH_COMMAND"; exit $rc' ERR
}

log() { printf '[%s +%4ds] %s\n' "$BUILD_NAME" "$((SECONDS - BUILD_START))" "$*" >&2; }

# with_heartbeat LABEL COMMAND...: run COMMAND, logging "still building LABEL" every minute; a
# long `go build` prints nothing for many minutes.
with_heartbeat() {
    local label="$1"
    shift
    # The sleep runs in the background so that the TERM trap ends it at once: a leftover sleep
    # would hold the caller's stderr pipe open for up to a minute after the build.
    (
        trap 'kill "$nap" 2>/dev/null; exit 0' TERM
        while :; do
            sleep 60 &
            nap=$!
            wait "$nap"
            log "  still building $label"
        done
    ) &
    local beat=$!
    local rc=0
    "$@" || rc=$?
    kill "$beat" 2>/dev/null || true
    wait "$beat" 2>/dev/null || true
    return "$rc"
}

# Static binaries; never fetch another Go toolchain (etcd's go.mod names a newer patch release
# as its toolchain, and a dependency's toolchain line is ignored with GOTOOLCHAIN=local).
go_settings() {
    export CGO_ENABLED=0
    export GOTOOLCHAIN=local
    export GOFLAGS="${GOFLAGS:--buildvcs=false}"
}
