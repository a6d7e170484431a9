#!/usr/bin/env bash
# The FUSE test suite (fuse-tests/) with its stores (TMPDIR) on other backing filesystems:
# tmpfs, ext4, XFS (reflink=1) and btrfs, each a loop image or a tmpfs mounted under one scratch
# directory, plus a timing of the copy-up of a 1 GiB lower file (an append) on each.
#   scripts/backing-fs.sh [FS...]   FS: tmpfs ext4 xfs btrfs (default: all four)
# Env: FUSE_FILTER (a test name filter for `cargo test --test fuse`), IMAGE_SIZE (default 4G).
# Prints one line per filesystem: passed/failed counts, failing test names, copy-up time.
set -euo pipefail
# This run's mounts live in a mount namespace of its own: a namespace another process makes
# meanwhile (unshare, a container engine) would else keep copies of them, so a FUSE server
# served on and a filesystem stayed mounted (its log unwritten) after the unmount here.
if [[ -z ${STRATAFS_OWN_MOUNT_NS:-} ]]; then
    exec env STRATAFS_OWN_MOUNT_NS=1 unshare -m --propagation private "$(realpath "$0")" "$@"
fi
cd "$(dirname "$0")/.."
. scripts/lib/e2e.sh
need_root "loop mounts and FUSE"

FSES=("$@")
((${#FSES[@]})) || FSES=(tmpfs ext4 xfs btrfs)
SIZE=${IMAGE_SIZE:-4G}
for fs in "${FSES[@]}"; do
    case $fs in
        xfs) command -v mkfs.xfs >/dev/null || fail "mkfs.xfs missing (Debian package xfsprogs)" ;;
        btrfs) command -v mkfs.btrfs >/dev/null || fail "mkfs.btrfs missing (Debian package btrfs-progs)" ;;
        ext4 | tmpfs) ;;
        *) fail "unknown filesystem $fs" ;;
    esac
done

cargo build --quiet --bin stratafs
cargo test --quiet --test fuse --no-run 2>/dev/null
BIN=$PWD/target/debug/stratafs

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/stratafs-backing.XXXXXX")
# Traversable by everyone: the rootless tests run parts as an unprivileged user below it.
chmod 0755 "$WORK"
MNT=""
cleanup() {
    local mp
    # FUSE mounts a failed test left below the backing filesystem, then the filesystem itself.
    if [[ -n $MNT ]]; then
        awk -v p="$MNT/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
            while read -r mp; do umount -l "$(printf '%b' "$mp")" 2>/dev/null || true; done
        umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
    fi
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

# mount_backing FS DIR: a fresh filesystem of kind FS at DIR.
mount_backing() {
    local fs=$1 dir=$2 img=$WORK/$1.img
    mkdir -p "$dir"
    if [[ $fs == tmpfs ]]; then
        mount -t tmpfs -o size="$SIZE" tmpfs "$dir"
        return
    fi
    rm -f "$img"
    truncate -s "$SIZE" "$img"
    case $fs in
        ext4) mkfs.ext4 -q -F "$img" ;;
        xfs) mkfs.xfs -q -f -m reflink=1 "$img" ;;
        btrfs) mkfs.btrfs -q -f "$img" ;;
    esac
    mount -o loop "$img" "$dir"
}

# copyup_time DIR: seconds for `echo >> MERGED/big` over a 1 GiB lower file on DIR's filesystem.
copyup_time() {
    local d=$1/copyup t0 t1
    mkdir -p "$d"/{lower,upper,work,merged}
    dd if=/dev/urandom of="$d/lower/big" bs=1M count=1024 status=none
    sync -f "$d/lower/big"
    "$BIN" -o "lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work" "$d/merged"
    t0=$(date +%s.%N)
    echo x >>"$d/merged/big"
    t1=$(date +%s.%N)
    [[ $(stat -c %s "$d/merged/big") == 1073741826 ]] || echo "copy-up gave the wrong size" >&2
    umount "$d/merged"
    rm -rf "$d"
    echo "$t0 $t1" | awk '{ printf "%.3f", $2 - $1 }'
}

summary=()
for fs in "${FSES[@]}"; do
    MNT=$WORK/mnt-$fs
    step "$fs: FUSE suite with TMPDIR on $fs"
    mount_backing "$fs" "$MNT"
    chmod 0755 "$MNT"
    log=$WORK/$fs.log
    start=$(date +%s)
    TMPDIR=$MNT cargo test --quiet --test fuse -- ${FUSE_FILTER:-} >"$log" 2>&1 || true
    secs=$(($(date +%s) - start))
    passed=$(awk '/^test result:/ { p += $4 } END { print p + 0 }' "$log")
    failed=$(awk '/^test result:/ { f += $6 } END { print f + 0 }' "$log")
    names=$(sed -n 's/^    \([a-z_:0-9]*\)$/\1/p' "$log" | sort -u | tr '\n' ' ')
    grep -q '^test result:' "$log" || { failed="?"; names="(no result: see below)"; tail -30 "$log"; }
    cp "$log" "/var/tmp/stratafs-backing-$fs.log"
    ct=$(copyup_time "$MNT")
    line="$fs: $passed passed, $failed failed in ${secs}s; 1 GiB copy-up ${ct}s${names:+; failed: $names}"
    echo "$line"
    summary+=("$line")
    umount "$MNT" 2>/dev/null || umount -l "$MNT"
    rm -f "$WORK/$fs.img"
    MNT=""
done
step "summary (logs in /var/tmp/stratafs-backing-FS.log)"
printf '%s\n' "${summary[@]}"
for line in "${summary[@]}"; do
    [[ $line == *" 0 failed"* ]] || exit 1
done
