#!/usr/bin/env bash
# End-to-end: Podman and Buildah run containers with stratafs as containers/storage's overlay
# mount_program (the role fuse-overlayfs has for rootless Podman today).
#
#   scripts/e2e-podman.sh              run the checks with stratafs
#   scripts/e2e-podman.sh --compare    also time run/commit with fuse-overlayfs as mount program
#
# Runs as root; everything lives in a temporary directory and is removed on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=lib/rootfs.sh
. "$here/lib/rootfs.sh"

compare=0
[ "${1:-}" = "--compare" ] && compare=1

# shellcheck source=lib/e2e.sh
. "$here/lib/e2e.sh"

need_root

step "installing podman and buildah if missing"
ensure_pkg podman podman
ensure_pkg buildah buildah
ensure_pkg fusermount3 fuse3
ensure_pkg runc runc

STRATAFS=${STRATAFS:-}
if [ -z "$STRATAFS" ]; then
    step "building stratafs"
    (cd "$repo" && cargo build --release --quiet)
    STRATAFS="$repo/target/release/stratafs"
fi
"$STRATAFS" --version

work=$(mktemp -d /var/tmp/stratafs-e2e-podman.XXXXXX)
cleanup() {
    set +e
    podman rm -a -f >/dev/null 2>&1
    podman rmi -a -f >/dev/null 2>&1
    podman system reset -f >/dev/null 2>&1
    grep -E " fuse(\.[a-z0-9-]+)? " /proc/mounts | awk '{print $2}' | grep "^$work" | sort -r | while read -r m; do umount -l "$m"; done
    grep " $work" /proc/mounts | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m"; done
    rm -rf "$work"
}
trap cleanup EXIT

# write_config MOUNT_PROGRAM [FORCE_MASK] [MOUNTOPT]
write_config() {
    local program=$1 force_mask=${2:-} mountopt=${3:-nodev}
    rm -rf "$work/storage" "$work/run"
    mkdir -p "$work/storage" "$work/run"
    cat > "$work/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$work/storage"
runroot = "$work/run"

[storage.options.overlay]
mount_program = "$program"
mountopt = "$mountopt"
${force_mask:+force_mask = \"$force_mask\"}
CONF
    cat > "$work/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "none"

[engine]
cgroup_manager = "cgroupfs"
# runc, not Debian's default crun: crun refuses to start on machines with cgroup v1 controllers
# mounted beside cgroup2 ("cgroups in hybrid mode not supported"), as some of ours have.
runtime = "runc"
events_logger = "file"
events_logfile_path = "$work/events.log"
CONF
    export CONTAINERS_STORAGE_CONF="$work/storage.conf"
    export CONTAINERS_CONF="$work/containers.conf"
}

rootfs=$(ensure_rootfs_tar)
echo "root filesystem: $rootfs"

changes='set -e
echo hello > /root/added.txt
mkdir -p /opt/newdir && echo deep > /opt/newdir/file
echo changed >> /etc/hostname.e2e; echo modified > /etc/motd
rm -rf /usr/share/doc
rm -f /etc/issue
mv /etc/debian_version /etc/debian_version.moved 2>/dev/null || true
ln -s /root/added.txt /root/link'

verify='set -e
test "$(cat /root/added.txt)" = hello
test "$(cat /opt/newdir/file)" = deep
test "$(cat /etc/motd)" = modified
test ! -e /usr/share/doc
test ! -e /etc/issue
test "$(readlink /root/link)" = /root/added.txt
echo verified'

# run_suite LABEL: the full flow, timing run and commit.
run_suite() {
    local label=$1 t0 t1 t2
    step "[$label] podman import"
    podman import -q "$rootfs" localhost/e2e-base >/dev/null
    podman images

    step "[$label] podman run: add, change and delete files"
    t0=$(date +%s.%N)
    podman run --network=none --name c1 localhost/e2e-base sh -c "$changes"
    t1=$(date +%s.%N)
    local diffout
    diffout=$(podman diff c1 | sort)
    echo "$diffout"
    grep -qx 'A /root/added.txt' <<<"$diffout" || fail "podman diff misses A /root/added.txt"
    grep -qx 'D /usr/share/doc' <<<"$diffout" || fail "podman diff misses D /usr/share/doc"
    grep -qx 'D /etc/issue' <<<"$diffout" || fail "podman diff misses D /etc/issue"

    step "[$label] podman commit"
    podman commit -q c1 localhost/e2e-changed >/dev/null
    t2=$(date +%s.%N)
    echo "$label run_s=$(awk "BEGIN{print $t1 - $t0}") commit_s=$(awk "BEGIN{print $t2 - $t1}")" >> "$work/times"

    step "[$label] run the committed image and check every change"
    [ "$(podman run --rm --network=none localhost/e2e-changed sh -c "$verify")" = verified ] || fail "committed image lacks the changes"

    step "[$label] buildah from/run/commit"
    local ctr
    ctr=$(buildah from localhost/e2e-base)
    buildah run "$ctr" -- sh -c "$changes"
    buildah commit -q "$ctr" localhost/e2e-buildah >/dev/null
    buildah rm "$ctr" >/dev/null
    [ "$(podman run --rm --network=none localhost/e2e-buildah sh -c "$verify")" = verified ] || fail "buildah image lacks the changes"

    step "[$label] podman save"
    podman save -q -o "$work/saved.tar" localhost/e2e-buildah
    mkdir -p "$work/saved" && tar -C "$work/saved" -xf "$work/saved.tar"
    local found=0
    for layer in "$work"/saved/*.tar "$work"/saved/*/layer.tar; do
        [ -f "$layer" ] || continue
        if tar -tf "$layer" | grep 'usr/share/\.wh\.doc$' >/dev/null; then found=1; fi
    done
    [ "$found" = 1 ] || fail "saved image has no whiteout for usr/share/doc"
    rm -rf "$work/saved" "$work/saved.tar"

    step "[$label] remove everything"
    podman rm -a -f >/dev/null
    podman rmi -a -f >/dev/null
    if grep -E " fuse(\.[a-z0-9-]+)? " /proc/mounts | grep -q "$work"; then
        grep "$work" /proc/mounts
        fail "a FUSE mount was left behind"
    fi
}

step "stratafs as mount program"
write_config "$STRATAFS"
run_suite stratafs

step "stratafs as mount program, mountopt = \"nodev,volatile\" (reaches stratafs's command line)"
write_config "$STRATAFS" "" "nodev,volatile"
podman import -q "$rootfs" localhost/e2e-base >/dev/null
podman run -d --network=none --name cv localhost/e2e-base sh -c 'echo v > /root/v; sleep 60' >/dev/null
found=""
for _ in $(seq 1 100); do
    # The mount program of this storage, its options holding "volatile".
    if ps -eo args= | grep -F -- "$work/storage/overlay" | grep -F -- "-o " | grep -qw volatile; then
        found=1
        break
    fi
    sleep 0.1
done
ps -eo args= | grep -F -- "$work/storage/overlay" | grep -v grep | cut -c1-300 || true
[ -n "$found" ] || fail "containers/storage did not pass volatile to the mount program"
for _ in $(seq 1 50); do
    podman diff cv | grep -qx 'A /root/v' && break
    sleep 0.1
done
podman diff cv | grep -qx 'A /root/v' || fail "podman diff on a volatile mount misses A /root/v"
podman rm -f -t 0 cv >/dev/null
podman rmi -a -f >/dev/null

step "stratafs as mount program, with force_mask (ownership kept in override_stat xattrs)"
# containers/storage cannot put user.* xattrs on device nodes (Linux refuses them there), so the
# force_mask run imports the same root without the nodes under /dev.
cp "$rootfs" "$work/rootfs-nodev.tar"
tar --wildcards --delete -f "$work/rootfs-nodev.tar" './dev/?*'
full_rootfs=$rootfs
rootfs="$work/rootfs-nodev.tar"
write_config "$STRATAFS" shared
run_suite stratafs-force-mask
rootfs=$full_rootfs

if [ "$compare" = 1 ]; then
    ensure_pkg fuse-overlayfs fuse-overlayfs
    step "fuse-overlayfs as mount program (for comparison)"
    write_config "$(command -v fuse-overlayfs)"
    run_suite fuse-overlayfs
fi

step "times (seconds)"
cat "$work/times"
echo "e2e-podman: all checks passed"
