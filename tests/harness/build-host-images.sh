#!/usr/bin/env bash
# Images for the node tier that no registry provides here, assembled from this machine's own
# binaries (each with the shared libraries it loads) into one-layer OCI archives:
#   postgres    Debian's PostgreSQL server, /bin/sh (dash) for its entry script; runs as 999.
#   optionfeed  only when `make image` has not written build/image/optionfeed-*.oci.tar: this
#               machine's Python with optionfeed and its runtime dependencies (no dev tools, no
#               pgserver); runs as 65532. The node tier prefers the archive from `make image`.
#
# Usage: build-host-images.sh postgres|optionfeed OUT.tar IMAGE_NAME
set -Eeuo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
what=$1 out=$2 name=$3
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
case $what in
postgres)
    pgbin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
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
    [[ -d /usr/share/zoneinfo ]] && cp -a /usr/share/zoneinfo "$root/usr/share/"
    libraries
    "$HERE/oci-archive.sh" "$root" "$name" "$out" '["/usr/local/bin/postgres-entry"]' 999
    ;;
optionfeed)
    py="$(readlink -f "$REPO/.venv/bin/python")"
    prefix="$(dirname "$(dirname "$py")")"
    pyver="$(basename "$py")"   # python3.11
    # The interpreter at its own path (its RUNPATH names it), the standard library without tests.
    put "$py" "$prefix/bin/$pyver"
    ln -s "$pyver" "$root$prefix/bin/python3"
    cp -L "$prefix"/lib/libpython*.so* "$root$prefix/lib/" 2>/dev/null || true
    mkdir -p "$root$prefix/lib/$pyver"
    tar -C "$prefix/lib/$pyver" --exclude=./test --exclude=./site-packages --exclude=./idlelib \
        --exclude=./tkinter --exclude=./turtledemo --exclude=./ensurepip --exclude=./lib2to3 \
        --exclude='./config-*' --exclude='*/tests' -cf - . | tar -C "$root$prefix/lib/$pyver" -xf -
    site="$root$prefix/lib/$pyver/site-packages"
    mkdir -p "$site"
    (cd "$REPO" && .tools/bin/uv export --frozen --no-dev --no-hashes --no-emit-project \
        --no-header --no-annotate | grep -v '^pgserver' >"$root/requirements.txt")
    (cd "$REPO" && .tools/bin/uv pip install --quiet --python "$py" --target "$site" \
        -r "$root/requirements.txt")
    rm "$root/requirements.txt"
    wheels="$(mktemp -d)"
    (cd "$REPO" && .tools/bin/uv build --quiet --wheel --out-dir "$wheels" >/dev/null 2>&1)
    "$REPO/.tools/bin/uv" pip install --quiet --python "$py" --target "$site" --no-deps "$wheels"/*.whl
    rm -rf "$wheels" "$site/bin"
    find "$site" -name __pycache__ -prune -exec rm -rf {} +
    mkdir -p "$root/usr/local/bin"
    printf '#!%s/bin/%s\nimport sys\nfrom optionfeed.cli import main\nsys.exit(main())\n' \
        "$prefix" "$pyver" >"$root/usr/local/bin/optionfeed"
    chmod +x "$root/usr/local/bin/optionfeed"
    users 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' 'nonroot:x:65532:'
    libraries
    "$HERE/oci-archive.sh" "$root" "$name" "$out" '["/usr/local/bin/optionfeed"]' 65532
    ;;
*)
    echo "usage: $0 postgres|optionfeed OUT.tar IMAGE_NAME" >&2
    exit 2
    ;;
esac
