#!/usr/bin/env bash
# Write a single-layer OCI image archive (an OCI layout in a tar) from a root filesystem folder,
# with tar and sha256sum only, for `ctr images import` (no registry, no image builder).
#
# Usage: oci-archive.sh ROOTFS NAME OUT.tar ENTRYPOINT_JSON [USER]
#   NAME is the full reference (e.g. localhost/pause:local), written into the index as
#   io.containerd.image.name so that containerd imports it under that name.
set -euo pipefail
root=$1 name=$2 out=$3 entrypoint=$4 user=${5:-}
case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    *) arch=$(uname -m) ;;
esac
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
mkdir -p "$t/blobs/sha256"
blob() { # file -> moves it to blobs/, prints "digest size"
    local d s
    d=$(sha256sum "$1" | cut -d' ' -f1)
    s=$(stat -c %s "$1")
    mv "$1" "$t/blobs/sha256/$d"
    echo "$d $s"
}
# Reproducible layer: sorted names, fixed owner and times.
tar -C "$root" --sort=name --numeric-owner --owner=0 --group=0 --mtime=@0 -cf "$t/layer.tar" .
read -r ld ls < <(blob "$t/layer.tar")
printf '{"architecture":"%s","os":"linux","config":{"Entrypoint":%s,"Env":["PATH=/usr/local/bin:/usr/bin:/bin"],"WorkingDir":"/","User":"%s"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$arch" "$entrypoint" "$user" "$ld" >"$t/config.json"
read -r cd cs < <(blob "$t/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$cd" "$cs" "$ld" "$ls" >"$t/manifest.json"
read -r md ms < <(blob "$t/manifest.json")
printf '{"imageLayoutVersion":"1.0.0"}' >"$t/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$md" "$ms" "$arch" "$name" "${name##*:}" >"$t/index.json"
tar -C "$t" -cf "$out.tmp" oci-layout index.json blobs
mv "$out.tmp" "$out"
