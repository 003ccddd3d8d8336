#!/usr/bin/env bash
# A PostgreSQL image for the node tier, which no registry provides here: Debian's server binaries
# of the pinned major (tests/harness/postgres-major) on this machine (each with the shared libraries it loads) and /bin/sh (dash) for the entry
# script, in a one-layer OCI archive. It runs as uid 999, initdb's into its data volume on first
# start, and trusts connections from the pod network (a throwaway database inside the test's own
# bridge).
#
# Usage: build-postgres-image.sh OUT.tar IMAGE_NAME
set -Eeuo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
out=$1 name=$2
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT

# Copy a file (following links) to the same path inside the root.
put() { mkdir -p "$root$(dirname "$2")" && cp -L "$1" "$root$2"; }
# Every shared library the ELF files under the root load, at the same path as on this machine.
libraries() {
    local f lib
    find "$root" -type f \( -perm -u+x -o -name '*.so*' \) -print0 |
        while IFS= read -r -d '' f; do
            file -b "$f" 2>/dev/null | grep -q '^ELF' || continue
            ldd "$f" 2>/dev/null | awk '/=> \// {print $3} /^\t\/lib/ {print $1}'
        done | sort -u | while read -r lib; do
            [[ -e "$root$lib" ]] || put "$lib" "$lib"
            # The dynamic loader also looks under the canonical path.
            local real
            real="$(readlink -f "$lib")"
            [[ -e "$root$real" ]] || put "$lib" "$real"
        done
}
users() {
    mkdir -p "$root/etc" "$root/tmp"
    chmod 1777 "$root/tmp"
    printf 'root:x:0:0:root:/root:/bin/sh\n%s\n' "$1" >"$root/etc/passwd"
    printf 'root:x:0:\n%s\n' "$2" >"$root/etc/group"
}

command -v file >/dev/null || { echo "needs file(1): apt-get install file" >&2; exit 1; }
pgbin="/usr/lib/postgresql/$(<"$HERE/postgres-major")/bin"
[[ -x $pgbin/postgres ]] || { echo "no $pgbin/postgres: run tests/harness/ensure-postgres.sh" >&2; exit 1; }
pgdir="$(dirname "$pgbin")"
version="$(basename "$pgdir")"
for b in postgres initdb pg_ctl pg_isready; do put "$pgbin/$b" "$pgbin/$b"; done
mkdir -p "$root$pgdir/lib" "$root/usr/share/postgresql"
# Without the JIT (llvmjit and its bitcode pull in LLVM: hundreds of MB).
tar -C "$pgdir/lib" --exclude='llvmjit*' --exclude=bitcode -cf - . | tar -C "$root$pgdir/lib" -xf -
cp -a "/usr/share/postgresql/$version" "$root/usr/share/postgresql/"
put /bin/dash /bin/sh
for b in /usr/bin/rm /usr/bin/mkdir /usr/bin/cat; do put "$b" "$b"; done
users 'postgres:x:999:999:postgres:/var/lib/postgresql:/bin/sh' 'postgres:x:999:'
mkdir -p "$root/var/run/postgresql" && chmod 1777 "$root/var/run/postgresql"
# initdb into the data volume on first start, then the server in the foreground. Trust on
# the pod network only: the database is a throwaway one inside the test's own bridge.
mkdir -p "$root/usr/local/bin"
cat >"$root/usr/local/bin/postgres-entry" <<SH
#!/bin/sh
set -e
PGDATA=\${PGDATA:-/var/lib/postgresql/data}
if [ ! -s "\$PGDATA/PG_VERSION" ]; then
    $pgbin/initdb -D "\$PGDATA" -U "\${POSTGRES_USER:-postgres}" --auth=trust -E UTF8 --no-sync >/dev/null
    echo "host all all 0.0.0.0/0 trust" >>"\$PGDATA/pg_hba.conf"
fi
exec $pgbin/postgres -D "\$PGDATA" -c listen_addresses='*' -c fsync=off -c jit=off \
    -c unix_socket_directories=/var/run/postgresql "\$@"
SH
chmod +x "$root/usr/local/bin/postgres-entry"
for b in postgres initdb pg_ctl pg_isready; do ln -s "$pgbin/$b" "$root/usr/local/bin/$b"; done
if [[ -d /usr/share/zoneinfo ]]; then cp -a /usr/share/zoneinfo "$root/usr/share/"; fi
libraries
"$HERE/oci-archive.sh" "$root" "$name" "$out" '["/usr/local/bin/postgres-entry"]' 999
