#!/usr/bin/env bash
# Concurrency torture: scripts/stress.sh MINUTES [PROCS] (PROCS default: 8x the cores).
# PROCS processes race creates, writes, renames (lower directories too), unlinks, hard links,
# chmods, copy-ups, mkdir/rmdir, listings and reads on overlapping names through one mount;
# the server's RSS and open descriptors are sampled every second (first/max/last and the
# means of the first and last third are printed). At the end every listed entry must lstat,
# no internal name may show, link counts must match the names in the tree, and a fresh mount
# must show the same tree. Exits 1 on an unexpected error or any of these. Needs root.
# Env: STRESS_SEED, STRESS_RELEASE=1 (release build).
set -euo pipefail
# This run's mounts live in a mount namespace of its own: a namespace another process makes
# meanwhile (unshare, a container engine) would else keep copies of them, so a FUSE server
# served on and a filesystem stayed mounted (its log unwritten) after the unmount here.
if [[ -z ${STRATAFS_OWN_MOUNT_NS:-} ]]; then
    exec env STRATAFS_OWN_MOUNT_NS=1 unshare -m --propagation private "$(realpath "$0")" "$@"
fi
cd "$(dirname "$0")/.."
. scripts/lib/e2e.sh
need_root "FUSE mounts"
MINUTES=${1:?usage: scripts/stress.sh MINUTES [PROCS]}
PROCS=${2:-$((8 * $(nproc)))}

if [[ ${STRESS_RELEASE:-0} == 1 ]]; then
    cargo build --quiet --release --bin stratafs
    BIN=$PWD/target/release/stratafs
else
    cargo build --quiet --bin stratafs
    BIN=$PWD/target/debug/stratafs
fi
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/stratafs-stress.XXXXXX")
cleanup() {
    awk -v p="$WORK/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while read -r mp; do umount -l "$(printf '%b' "$mp")" 2>/dev/null || true; done
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
step "stress: $PROCS processes for $MINUTES min"
python3 scripts/lib/stress.py --bin "$BIN" --work "$WORK" --procs "$PROCS" \
    --seconds "$(awk -v m="$MINUTES" 'BEGIN { print m * 60 }')" ${STRESS_SEED:+--seed "$STRESS_SEED"}
