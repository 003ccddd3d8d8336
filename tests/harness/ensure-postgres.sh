#!/usr/bin/env bash
# Makes sure the PostgreSQL server binaries the tests use (initdb, pg_ctl, postgres, psql) are on
# this machine, installing Debian's package when they are not. The major version is pinned in
# tests/harness/postgres-major and the binaries are those in /usr/lib/postgresql/<major>/bin, never
# whatever else is installed or on PATH. The tests start their own throwaway clusters from them; no
# system service is started here.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
PG_MAJOR="$(<"$HERE/postgres-major")"
BIN_DIR="/usr/lib/postgresql/$PG_MAJOR/bin"

if [[ -x $BIN_DIR/initdb && -x $BIN_DIR/pg_ctl ]]; then
    exit 0
fi
echo "PostgreSQL $PG_MAJOR server binaries not found in $BIN_DIR: installing Debian's postgresql-$PG_MAJOR package" >&2
. "$(dirname "$0")/apt-install.sh"
apt_install "postgresql-$PG_MAJOR"
# The package starts a system cluster on port 5432; the tests use their own, so stop it.
$SUDO service postgresql stop >/dev/null 2>&1 || true
[[ -x $BIN_DIR/initdb ]] || { echo "installing postgresql-$PG_MAJOR left no $BIN_DIR/initdb" >&2; exit 1; }
