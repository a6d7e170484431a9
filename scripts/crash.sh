#!/usr/bin/env bash
# Simulated power cuts: scripts/crash.sh [CUTS] (default 200), half on ext4, half on XFS.
# The upper and work directories of a stratafs mount live on a 512 MiB loop image; while a
# workload runs through the mount (untar, copy-up storm, appends to big lower files, renames of
# lower directories, atomic overwrites), a cut takes a reflink copy of the image file (one
# instant of what the loop device wrote: the disk without the page cache), replays its journal
# by mounting it, opens it as a store with a fresh stratafs mount, checks the invariants listed
# in scripts/lib/crash.py, and runs fsck -n. Needs root, xfsprogs; exits 1 on any violation.
# Env: CRASH_FS (ext4 xfs), CRASH_SEED, CRASH_MOUNT_OPTS (extra stratafs options, e.g. volatile).
set -euo pipefail
# This run's mounts live in a mount namespace of its own: a namespace another process makes
# meanwhile (unshare, a container engine) would else keep copies of them, so a FUSE server
# served on and a filesystem stayed mounted (its log unwritten) after the unmount here.
if [[ -z ${STRATAFS_OWN_MOUNT_NS:-} ]]; then
    exec env STRATAFS_OWN_MOUNT_NS=1 unshare -m --propagation private "$(realpath "$0")" "$@"
fi
cd "$(dirname "$0")/.."
. scripts/lib/e2e.sh
need_root "loop devices and FUSE mounts"
CUTS=${1:-200}
read -r -a FSES <<<"${CRASH_FS:-ext4 xfs}"
command -v mkfs.xfs >/dev/null || fail "mkfs.xfs missing (Debian package xfsprogs)"

cargo build --quiet --bin stratafs
BIN=$PWD/target/debug/stratafs

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/stratafs-crash.XXXXXX")
HOLDER=$WORK/holder
cleanup() {
    local mp
    awk -v p="$WORK/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while read -r mp; do umount -l "$(printf '%b' "$mp")" 2>/dev/null || true; done
    losetup -j "$WORK/holder.img" -O NAME -n 2>/dev/null | xargs -r -n1 losetup -d 2>/dev/null || true
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

# The images live on an XFS with reflinks so a cut is one FICLONE of the image file, atomic
# with respect to the loop device's writes (a plain cp of a file being written can tear).
truncate -s 6G "$WORK/holder.img"
mkfs.xfs -q -f -m reflink=1 "$WORK/holder.img"
mkdir -p "$HOLDER"
mount -o loop "$WORK/holder.img" "$HOLDER"

per=$(((CUTS + ${#FSES[@]} - 1) / ${#FSES[@]}))
rc=0
for fs in "${FSES[@]}"; do
    step "$fs: $per cuts"
    mkdir -p "$HOLDER/$fs"
    python3 scripts/lib/crash.py --bin "$BIN" --fs "$fs" --cuts "$per" --work "$HOLDER/$fs" \
        --lower "$WORK/lower" ${CRASH_SEED:+--seed "$CRASH_SEED"} \
        ${CRASH_MOUNT_OPTS:+--mount-opts "$CRASH_MOUNT_OPTS"} || rc=1
done
exit $rc
