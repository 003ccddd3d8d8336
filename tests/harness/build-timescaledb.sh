#!/usr/bin/env bash
# Build TimescaleDB from the source tarball in tests/vendor/timescaledb/ into a *copy* of this
# machine's PostgreSQL server binaries (of the major in tests/harness/postgres-major), cached by
# version outside the work tree:
#   $CACHE/timescaledb-<TS>-pg<PG>/usr/lib/postgresql/<major>/bin/
# where CACHE is ${OPTIONFEED_CACHE:-$HOME/.cache/optionfeed}, except under root, where the test
# servers run as the postgres user, who cannot enter root's home: there it is
# ${OPTIONFEED_SERVER_CACHE:-/var/cache/optionfeed}.
#
# The copy keeps Debian's layout (bin/ and lib/ under usr/lib/postgresql/<major>, share/ under
# usr/share/postgresql/<major>); PostgreSQL finds lib/ and share/ relative to its bin/, so a
# server started from the copy has the extension while the system's binaries stay plain and every
# other test keeps a server without it.
#
# Usage: build-timescaledb.sh [--print-bin-dir]
#   Progress goes to stderr; the last line on stdout is the copy's bin dir.
#   --print-bin-dir prints the bin dir and exits 0 if it is built, 1 if not (never builds).
#
# Needs (installed here from Debian's packages when missing): postgresql-server-dev-<major> of the
# server's own version, cmake, a C compiler, libssl-dev. Installing the headers can upgrade the
# server package to the same minor release, so the cache key is read after that.
#
# What turned out true on the 2-core machine, 2026-12:
# - 2.28.x is the last series for PostgreSQL 15 and needs 15.10 or newer.
# - Build with the TSL part (compression), no regression checks: about 2 to 3.5 minutes; a cached
#   run: under 50 ms.
# - On PostgreSQL 15.20 the background jobs (compression and retention policies) fail with
#   "cannot drop portal "" while it is being set up"; on 15.18 they run. compress_chunk() works on
#   both, so the tests compress by hand and check that the policies are registered.
set -Eeuo pipefail

TS_VERSION="${TS_VERSION:-2.28.3}"
HERE="$(cd "$(dirname "$0")" && pwd)"
TARBALL="$HERE/../vendor/timescaledb/timescaledb-$TS_VERSION-notests.tar.gz"
if [[ $(id -u) -eq 0 ]]; then
    CACHE_ROOT="${OPTIONFEED_SERVER_CACHE:-/var/cache/optionfeed}"
else
    CACHE_ROOT="${OPTIONFEED_CACHE:-$HOME/.cache/optionfeed}"
fi

pg_bindir() {
    local dir
    dir="/usr/lib/postgresql/$(<"$HERE/postgres-major")/bin"
    [[ -x $dir/postgres ]] || { echo "no $dir/postgres: run tests/harness/ensure-postgres.sh" >&2; return 1; }
    echo "$dir"
}

BIN_SRC=$(pg_bindir)
MAJOR=$(basename "$(dirname "$BIN_SRC")")

version_dir() {
    local pg
    pg=$("$BIN_SRC/postgres" --version | awk '{print $3}')
    echo "$CACHE_ROOT/timescaledb-$TS_VERSION-pg$pg"
}

if [[ "${1:-}" == "--print-bin-dir" ]]; then
    dir=$(version_dir)
    echo "$dir/usr/lib/postgresql/$MAJOR/bin"
    [[ -f "$dir/build-complete" ]]
    exit
fi

. "$(dirname "$0")/build-steps.sh"
begin_build build-timescaledb

needed=()
[[ -f /usr/include/postgresql/$MAJOR/server/postgres.h ]] || needed+=("postgresql-server-dev-$MAJOR")
command -v cmake >/dev/null || needed+=(cmake)
command -v cc >/dev/null || needed+=(build-essential)
[[ -f /usr/include/openssl/ssl.h ]] || needed+=(libssl-dev)
if ((${#needed[@]})); then
    log "installing ${needed[*]} from Debian's packages"
    SUDO=
    [[ $(id -u) -eq 0 ]] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${needed[@]}" >/dev/null
    # An upgraded server package starts the system cluster; the tests run their own.
    $SUDO service postgresql stop >/dev/null 2>&1 || true
fi

DIR=$(version_dir)
BIN_DIR="$DIR/usr/lib/postgresql/$MAJOR/bin"
if [[ -f "$DIR/build-complete" ]]; then
    log "timescaledb $TS_VERSION for $(basename "$DIR") already built"
    echo "$BIN_DIR"
    exit 0
fi
[[ -f $TARBALL ]] || { log "no source tarball at $TARBALL"; exit 1; }

PG_CONFIG="$BIN_SRC/pg_config"
[[ -x $PG_CONFIG ]] || { log "no $PG_CONFIG: install postgresql-server-dev-$MAJOR"; exit 1; }
SHARE_SRC=$("$PG_CONFIG" --sharedir)
LIB_SRC=$("$PG_CONFIG" --pkglibdir)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$DIR"
mkdir -p -m 755 "$CACHE_ROOT"
mkdir -p "$DIR$(dirname "$BIN_SRC")" "$DIR$(dirname "$SHARE_SRC")" "$work/src"
log "copying the PostgreSQL $MAJOR server ($BIN_SRC, $SHARE_SRC) into $DIR"
cp -a "$(dirname "$BIN_SRC")/." "$DIR$(dirname "$BIN_SRC")/"
cp -a "$SHARE_SRC" "$DIR$(dirname "$SHARE_SRC")/"
[[ $LIB_SRC == "$(dirname "$BIN_SRC")/lib" ]] || { log "unexpected pkglibdir $LIB_SRC"; exit 1; }

log "building timescaledb $TS_VERSION (about 2 to 3.5 minutes on 2 cores)"
tar xzf "$TARBALL" -C "$work/src" --strip-components=1
cmake -S "$work/src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DPG_CONFIG="$PG_CONFIG" \
    -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
    -DSEND_TELEMETRY_DEFAULT=OFF -DENABLE_DEBUG_UTILS=OFF >"$work/cmake.log" 2>&1 \
    || { tail -20 "$work/cmake.log" >&2; exit 1; }
make -C "$work/build" -j"${JOBS:-$(nproc)}" >"$work/make.log" 2>&1 \
    || { tail -30 "$work/make.log" >&2; exit 1; }
# The install paths are the system's; DESTDIR puts them under the copy instead.
make -C "$work/build" install DESTDIR="$DIR" >"$work/install.log" 2>&1 \
    || { tail -20 "$work/install.log" >&2; exit 1; }
[[ -f "$DIR$LIB_SRC/timescaledb.so" ]] || { log "the build installed no timescaledb.so"; exit 1; }
echo "timescaledb=$TS_VERSION" >"$DIR/build-complete"
log "done: timescaledb $TS_VERSION into $DIR"
echo "$BIN_DIR"
