#!/usr/bin/env bash
# A real archive: apply a Debian root filesystem tar (debootstrap, cached by scripts/lib/rootfs.sh)
# with apply_layer and compare the layer with GNU tar's own listing of that tar (type, mode,
# owner, size, link target, hard links). Needs root (device nodes, chown).
#   PROFILE=release scripts/e2e-rootfs-apply.sh   also times it against `tar -x`
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
# shellcheck source=lib/rootfs.sh
. "$here/lib/rootfs.sh"
TAR=$(ensure_rootfs_tar)
PROFILE=${PROFILE:-debug}
FLAG=$([ "$PROFILE" = release ] && echo --release || true)
if [ "$PROFILE" = release ]; then
    X=$(mktemp -d /var/tmp/stratafs-tarx.XXXXXX)
    start=$(date +%s.%N)
    tar --numeric-owner --xattrs -C "$X" -xf "$TAR"
    end=$(date +%s.%N)
    echo "tar -x: $(awk "BEGIN{print $end - $start}") s"
    rm -rf "$X"
fi
STRATAFS_ROOTFS_TAR="$TAR" cargo test $FLAG --lib rootfs_tar_applies -- --nocapture
