#!/usr/bin/env bash
# Apply a real Debian root filesystem tar with apply_layer and compare it with GNU tar's own
# listing of that tar; also time `tar -x` of the same tar for comparison.
# The rootfs tar is built once with debootstrap (mirror from this machine's apt sources) and
# cached under /var/tmp/stratafs-cache. Needs root (debootstrap, device nodes, chown).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=/var/tmp/stratafs-cache
TAR="$CACHE/bookworm-minbase.tar"
mkdir -p "$CACHE"
if [ ! -s "$TAR" ]; then
    MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    [ -n "$MIRROR" ] || { echo "no URIs: line in /etc/apt/sources.list.d/debian.sources" >&2; exit 1; }
    ROOT=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$ROOT"' EXIT
    debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR"
    tar --numeric-owner --xattrs -C "$ROOT" -cf "$TAR.tmp" .
    mv "$TAR.tmp" "$TAR"
fi
PROFILE=${PROFILE:-release}
FLAG=$([ "$PROFILE" = release ] && echo --release || true)
X=$(mktemp -d /var/tmp/stratafs-tarx.XXXXXX)
start=$(date +%s.%N)
tar --numeric-owner --xattrs -C "$X" -xf "$TAR"
end=$(date +%s.%N)
echo "tar -x: $(echo "$end - $start" | bc) s"
rm -rf "$X"
STRATAFS_ROOTFS_TAR="$TAR" cargo test $FLAG --lib rootfs_tar_applies -- --nocapture
