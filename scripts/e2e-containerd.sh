#!/usr/bin/env bash
# End-to-end test: containerd runs containers on the stratafs proxy snapshotter.
#
#   scripts/e2e-containerd.sh [--compare]
#
# Runs as root. Starts a private containerd (own root, state and sockets in a temporary directory)
# with `[proxy_plugins.stratafs]`, and `stratafs snapshotter`; builds a two-layer OCI image archive
# of a Debian root filesystem (cached under /var/tmp/stratafs-cache), imports it, runs containers
# that write and delete files, checks snapshots, usage, commit and view, removes the image and
# checks nothing is left. --compare also times `ctr images import` and `ctr run` with stratafs,
# overlayfs and native.
#
# Environment: STRATAFS_BIN (default: build target/release/stratafs), KEEP_TMP=1 keeps the
# temporary directory, E2E_FUSE_OVERLAYFS=1 serves the fuse3.stratafs mounts with fuse-overlayfs
# (to check the snapshotter and containerd wiring alone).
set -euo pipefail

COMPARE=0
for arg in "$@"; do
    case "$arg" in
        --compare) COMPARE=1 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib/rootfs.sh
. "$REPO/scripts/lib/rootfs.sh"
IMAGE=docker.io/library/stratafs-e2e:latest
# shellcheck source=lib/e2e.sh
. "$REPO/scripts/lib/e2e.sh"

need_root

# ---------------------------------------------------------------- prerequisites
step "prerequisites"
ensure_pkg containerd containerd
ensure_pkg mount.fuse3 fuse3
[ "${E2E_FUSE_OVERLAYFS:-0}" = 1 ] && ensure_pkg fuse-overlayfs fuse-overlayfs
ensure_pkg bc bc
containerd --version
[ -e /dev/fuse ] || fail "/dev/fuse is missing"

if [ -z "${STRATAFS_BIN:-}" ]; then
    (cd "$REPO" && cargo build --release --bin stratafs)
    STRATAFS_BIN="$REPO/target/release/stratafs"
fi
[ -x "$STRATAFS_BIN" ] || fail "no stratafs binary at $STRATAFS_BIN"

T=$(mktemp -d /tmp/stratafs-e2e-containerd.XXXXXX)
CTRD_PID=""
SNAP_PID=""
# mount.fuse3 runs `stratafs overlay TARGET -o ...` through the shell, found on containerd's PATH.
mkdir -p "$T/bin"
if [ "${E2E_FUSE_OVERLAYFS:-0}" = 1 ]; then
    # Checks the snapshotter side alone: `stratafs overlay` is served by fuse-overlayfs, which
    # takes the same options; every other command goes to the real binary.
    cp "$STRATAFS_BIN" "$T/bin/stratafs.real"
    cat >"$T/bin/stratafs" <<EOF
#!/bin/sh
echo "stratafs \$*" >>"$T/overlay-calls.log"
if [ "\$1" = overlay ]; then shift; target=\$1; shift; exec fuse-overlayfs "\$@" "\$target"; fi
exec "$T/bin/stratafs.real" "\$@"
EOF
    chmod +x "$T/bin/stratafs"
else
    cp "$STRATAFS_BIN" "$T/bin/stratafs"
fi
export PATH="$T/bin:$PATH"

# Namespaces unique to this run: runc keeps state in /run/containerd/runc/<namespace>, outside
# our temporary directory, and a run that died must not collide with the next one.
RUN_ID=${T##*.}
NS="e2e-$RUN_ID"
ctr_() { ctr --address "$T/containerd.sock" "$@"; }
# Containers and imports run under a timeout: a hung filesystem call must fail the test. (ctr
# run forwards SIGTERM to the container, so it needs the KILL that follows.)
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
ctr_t() { timeout -k 10 "$RUN_TIMEOUT" ctr --address "$T/containerd.sock" "$@"; }

mounts_under() { awk -v p="$1" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo; }

# Mount points and FUSE connection numbers (the device minor) of fuse mounts under $1.
fuse_conns_under() {
    awk -v p="$1" 'index($5, p) == 1 { for (i = 7; i <= NF; i++) if ($i == "-") {
        if ($(i + 1) ~ /^fuse/) { split($3, d, ":"); print d[2] } ; break } }' /proc/self/mountinfo
}

cleanup() {
    local rc=$?
    set +e
    step "cleanup (exit code $rc)"
    # A FUSE server stuck in the kernel never answers; its callers (the container, then ctr
    # tasks delete, the shim and umount) would wait forever. Abort our own connections first.
    mountpoint -q /sys/fs/fuse/connections || mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null
    for dev in $(fuse_conns_under "$T"); do
        [ -e "/sys/fs/fuse/connections/$dev/abort" ] && echo 1 >"/sys/fs/fuse/connections/$dev/abort"
    done
    if [ -n "$CTRD_PID" ] && kill -0 "$CTRD_PID" 2>/dev/null; then
        for ns in $(timeout 10 ctr --address "$T/containerd.sock" namespaces ls -q 2>/dev/null); do
            for t in $(timeout 10 ctr --address "$T/containerd.sock" -n "$ns" tasks ls -q 2>/dev/null); do
                timeout 10 ctr --address "$T/containerd.sock" -n "$ns" tasks kill -s SIGKILL "$t" >/dev/null 2>&1
                sleep 0.2
                timeout 10 ctr --address "$T/containerd.sock" -n "$ns" tasks delete -f "$t" >/dev/null 2>&1
            done
        done
        kill "$CTRD_PID" 2>/dev/null; wait "$CTRD_PID" 2>/dev/null
    fi
    if [ -n "$SNAP_PID" ] && kill -0 "$SNAP_PID" 2>/dev/null; then
        kill "$SNAP_PID" 2>/dev/null; wait "$SNAP_PID" 2>/dev/null
    fi
    # Deepest mounts first.
    for m in $(mounts_under "$T" | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
    # FUSE servers of our snapshots and shims of our containerd, by their unique paths.
    for pid in $(pgrep -f -- "$T/snapshotter/layers"; pgrep -f -- "-address $T/containerd.sock"); do
        kill -9 "$pid" 2>/dev/null
    done
    for d in /run/containerd/runc/*-"$RUN_ID"; do
        [ -d "$d" ] || continue
        for id in $(runc --root "$d" list -q 2>/dev/null); do runc --root "$d" delete -f "$id" 2>/dev/null; done
        rmdir "$d" 2>/dev/null
    done
    if [ "$rc" != 0 ]; then
        for f in "$T/containerd.log" "$T/snapshotter.log"; do
            [ -f "$f" ] && { echo "--- tail of $f"; tail -n 40 "$f"; }
        done
    fi
    if [ "${KEEP_TMP:-0}" = 1 ]; then echo "kept $T"; else rm -rf "$T"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- root filesystem (cached)
step "root filesystem"
ROOTFS_TAR=$(ensure_rootfs_tar) || fail "no root filesystem"
ls -l "$ROOTFS_TAR"

# ---------------------------------------------------------------- OCI image archive
# Three layers: the root filesystem; files under /opt; and a layer that deletes one of them
# (whiteout) and hides a directory's lower contents (opaque), so that the import already needs
# stratafs overlay mounts and the container sees all three formats merged.
step "build OCI image archive"
L="$T/oci"
mkdir -p "$L/blobs/sha256" "$T/layer2/etc" "$T/layer2/opt/e2e" "$T/layer2/opt/opq" "$T/layer3/opt/e2e" "$T/layer3/opt/opq"
echo "stratafs e2e layer" >"$T/layer2/etc/stratafs-e2e"
echo keep >"$T/layer2/opt/e2e/keep"
echo gone >"$T/layer2/opt/e2e/gone"
echo old >"$T/layer2/opt/opq/old"
touch "$T/layer3/opt/e2e/.wh.gone" "$T/layer3/opt/opq/.wh..wh..opq"
echo new >"$T/layer3/opt/opq/new"
tar --numeric-owner --owner=0 --group=0 -C "$T/layer2" -cf "$T/layer2.tar" ./etc ./opt
tar --numeric-owner --owner=0 --group=0 -C "$T/layer3" -cf "$T/layer3.tar" ./opt

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
add_blob() { # file -> prints digest hex; moves the file into blobs/
    local h; h=$(sha "$1"); mv "$1" "$L/blobs/sha256/$h"; echo "$h"
}
diff1=$(sha "$ROOTFS_TAR")
diff2=$(sha "$T/layer2.tar")
diff3=$(sha "$T/layer3.tar")
gzip -1 -c "$ROOTFS_TAR" >"$T/l1.tgz"
gzip -1 -c "$T/layer2.tar" >"$T/l2.tgz"
gzip -1 -c "$T/layer3.tar" >"$T/l3.tgz"
l1=$(add_blob "$T/l1.tgz"); l1s=$(size "$L/blobs/sha256/$l1")
l2=$(add_blob "$T/l2.tgz"); l2s=$(size "$L/blobs/sha256/$l2")
l3=$(add_blob "$T/l3.tgz"); l3s=$(size "$L/blobs/sha256/$l3")
printf '%s' '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:'"$diff1"'","sha256:'"$diff2"'","sha256:'"$diff3"'"]}}' >"$T/config.json"
cfg=$(add_blob "$T/config.json"); cfgs=$(size "$L/blobs/sha256/$cfg")
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'"$cfg"'","size":'"$cfgs"'},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:'"$l1"'","size":'"$l1s"'},{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:'"$l2"'","size":'"$l2s"'},{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:'"$l3"'","size":'"$l3s"'}]}' >"$T/manifest.json"
man=$(add_blob "$T/manifest.json"); mans=$(size "$L/blobs/sha256/$man")
printf '%s' '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'"$man"'","size":'"$mans"',"annotations":{"io.containerd.image.name":"'"$IMAGE"'","org.opencontainers.image.ref.name":"latest"}}]}' >"$L/index.json"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$L/oci-layout"
tar -C "$L" -cf "$T/image.tar" oci-layout index.json blobs
rm -rf "$L" "$T"/layer[23] "$T"/layer[23].tar
ls -l "$T/image.tar"

# ---------------------------------------------------------------- containerd + snapshotter
step "start stratafs snapshotter and containerd"
SNAP_SOCK="$T/stratafs.sock"
SNAP_ROOT="$T/snapshotter"
export NO_COLOR=1
RUST_LOG=${RUST_LOG:-info} "$T/bin/stratafs" --root "$SNAP_ROOT" snapshotter --socket "$SNAP_SOCK" \
    >"$T/snapshotter.log" 2>&1 &
SNAP_PID=$!
cat >"$T/config.toml" <<EOF
version = 2
root = "$T/ctrd-root"
state = "$T/ctrd-state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$T/containerd.sock"
[ttrpc]
  address = "$T/containerd.sock.ttrpc"
[debug]
  level = "info"
[proxy_plugins]
  [proxy_plugins.stratafs]
    type = "snapshot"
    address = "$SNAP_SOCK"
EOF
containerd --config "$T/config.toml" >"$T/containerd.log" 2>&1 &
CTRD_PID=$!
for _ in $(seq 100); do
    [ -S "$SNAP_SOCK" ] && ctr_ version >/dev/null 2>&1 && break
    sleep 0.1
done
[ -S "$SNAP_SOCK" ] || fail "snapshotter did not start"
ctr_ version >/dev/null || fail "containerd did not start"
ctr_ plugins ls | grep -E 'snapshotter|TYPE' | head -20

snaps() { ctr_ -n "$NS" snapshots --snapshotter stratafs "$@"; }

# ---------------------------------------------------------------- import and run
step "ctr images import --snapshotter stratafs"
ctr_t -n "$NS" images import --snapshotter stratafs "$T/image.tar"
ctr_ -n "$NS" images ls | grep -q "$IMAGE" || fail "image not imported"
snaps ls
nsnap=$(snaps ls | tail -n +2 | grep -c Committed || true)
[ "$nsnap" = 3 ] || fail "expected 3 committed snapshots after import, got $nsnap"

step "ctr run --rm: write and delete files"
out=$(ctr_t -n "$NS" run --rm --snapshotter stratafs "$IMAGE" c1 sh -c '
    set -e
    test ! -e /opt/e2e/gone                       # whiteout in layer 3
    test "$(cat /opt/e2e/keep)" = keep
    test ! -e /opt/opq/old && test -f /opt/opq/new  # opaque directory in layer 3
    grep -q "stratafs e2e" /etc/stratafs-e2e
    echo hello >/tmp/new-file && test "$(cat /tmp/new-file)" = hello
    rm /opt/e2e/keep && test ! -e /opt/e2e/keep && test -z "$(ls -A /opt/e2e | grep "^\.wh\.")"
    rm -r /opt/opq && test ! -e /opt/opq && mkdir /opt/opq && test -z "$(ls -A /opt/opq)"
    mkdir -p /data/a/b && echo x >/data/a/b/f && mv /data/a/b/f /data/a/g && rm -r /data/a/b
    echo appended >>/etc/stratafs-e2e && test "$(wc -l </etc/stratafs-e2e)" = 2
    ls /data/a
    echo E2E-OK') || fail "container c1 failed or hung (exit $?; timeout ${RUN_TIMEOUT}s)"
echo "$out"
echo "$out" | grep -q E2E-OK || fail "container command failed"
[ -z "$(snaps ls | grep Active || true)" ] || fail "run --rm left an active snapshot"

step "ctr run (kept): changes land in the container's own snapshot"
ctr_t -n "$NS" run --snapshotter stratafs "$IMAGE" c2 sh -c 'rm /opt/e2e/keep; head -c 100000 /dev/zero >/big'
snaps ls
snaps usage c2
used=$(snaps usage -b c2 | awk '$1 == "c2" { print $2 }')
[ -n "$used" ] && [ "$used" -ge 100000 ] && [ "$used" -lt 1000000 ] \
    || fail "usage of c2 is not ~100 KB: '$used'"
upper=$(snaps mounts /unused c2 | grep -o 'upperdir=[^,]*' | cut -d= -f2)
[ -f "$upper/big" ] || fail "container write not in its upper dir $upper"
ctr_ -n "$NS" containers rm c2
snaps ls | grep -q '^c2 ' && fail "container removal left its snapshot"

# ---------------------------------------------------------------- commit and view
step "prepare, commit, view"
top=$(snaps ls | awk 'NR > 1 && $2 != "" && $3 == "Committed" { print $1 }' | head -n 1)
[ -n "$top" ] || fail "no committed snapshot with a parent"
mkdir -p "$T/mnt"
# Mount what the snapshotter returns (as `ctr snapshots mounts` prints it) the way containerd
# does: a `fuse3.X` type goes to `mount.fuse3 SOURCE TARGET -o OPTS -t X` (util-linux's mount
# would hand mount.fuse3 the full type, which then looks for a program named `fuse3.X`).
do_mount() { # key dir
    local cmd; cmd=$(snaps mounts "$2" "$1")
    echo "$cmd"
    read -r _ _ type src target _ opts <<<"$cmd"
    case "$type" in
        fuse3.*) mount.fuse3 "$src" "$target" -o "$opts" -t "${type#fuse3.}" ;;
        *) mount -t "$type" "$src" "$target" -o "$opts" ;;
    esac
}
# Snapshots nobody references are garbage collected by containerd: pin them with gc.root.
snaps prepare e2e-active "$top" >/dev/null
snaps label e2e-active containerd.io/gc.root=e2e >/dev/null
do_mount e2e-active "$T/mnt"
echo committed >"$T/mnt/committed-file"
rm "$T/mnt/etc/stratafs-e2e"
umount "$T/mnt"
snaps commit e2e-committed e2e-active
snaps info e2e-committed
snaps view e2e-view e2e-committed >/dev/null
snaps label e2e-view containerd.io/gc.root=e2e >/dev/null
do_mount e2e-view "$T/mnt"
grep -q committed "$T/mnt/committed-file" || fail "committed file missing in the view"
[ ! -e "$T/mnt/etc/stratafs-e2e" ] || fail "deleted file visible in the view"
[ -f "$T/mnt/etc/passwd" ] || fail "base layer not visible in the view"
if touch "$T/mnt/should-fail" 2>/dev/null; then fail "view is writable"; fi
umount "$T/mnt"
snaps rm e2e-committed 2>/dev/null && fail "removing a snapshot with a child succeeded"
snaps rm e2e-view
snaps rm e2e-committed

# ---------------------------------------------------------------- restart of the snapshotter
step "restart the snapshotter while a container runs"
ctr_t -n "$NS" run -d --snapshotter stratafs "$IMAGE" c3 sleep 300 >/dev/null
ctr_t -n "$NS" tasks exec --exec-id w1 c3 sh -c 'echo before >/before'
before=$(snaps ls | sort)
kill "$SNAP_PID"; wait "$SNAP_PID" || true
[ ! -e "$SNAP_SOCK" ] || fail "snapshotter left its socket"
# The container's mount belongs to its own FUSE server, not to the snapshotter.
ctr_t -n "$NS" tasks exec --exec-id w2 c3 sh -c 'cat /before && echo during >/during' \
    || fail "container broke while the snapshotter was down"
RUST_LOG=${RUST_LOG:-info} "$T/bin/stratafs" --root "$SNAP_ROOT" snapshotter --socket "$SNAP_SOCK" \
    >>"$T/snapshotter.log" 2>&1 &
SNAP_PID=$!
# containerd redials the proxy with a backoff of up to a few seconds.
after=""
for _ in $(seq 50); do after=$(snaps ls 2>/dev/null | sort) && [ -n "$after" ] && break; sleep 0.2; done
[ "$before" = "$after" ] || fail "snapshots changed across a restart: $before // $after"
ctr_t -n "$NS" tasks exec --exec-id w3 c3 sh -c 'cat /before /during' | grep -q during \
    || fail "container lost its files across the restart"
ctr_ -n "$NS" tasks kill -s SIGKILL c3
for _ in $(seq 50); do ctr_ -n "$NS" tasks ls | grep -q 'c3 .*RUNNING' || break; sleep 0.1; done
ctr_ -n "$NS" tasks delete c3 >/dev/null
ctr_ -n "$NS" containers rm c3

# ---------------------------------------------------------------- removal
step "remove the image: snapshots and mounts are gone"
ctr_ -n "$NS" images rm --sync "$IMAGE"
left=$(snaps ls | tail -n +2)
[ -z "$left" ] || fail "snapshots left after image removal: $left"
ls "$SNAP_ROOT/layers" | grep -q . && fail "layer directories left: $(ls "$SNAP_ROOT/layers")"
# containerd mounts under its own root and state, and in /tmp/containerd-mount* for unpacking.
left=$( (mounts_under "$T"; mounts_under /tmp/containerd-mount) || true)
[ -z "$left" ] || fail "mounts left: $left"
# Every FUSE server of a snapshot mount names a layer directory under the snapshotter's root.
servers=$(pgrep -af -- "$SNAP_ROOT/layers" || true)
[ -z "$servers" ] || fail "FUSE servers left: $servers"
echo "no snapshots, layer directories, mounts or FUSE servers left"

# ---------------------------------------------------------------- timings
if [ "$COMPARE" = 1 ]; then
    step "compare: import and run times per snapshotter"
    now() { date +%s.%N; }
    results=()
    for sn in stratafs overlayfs native; do
        ns="cmp-$sn-$RUN_ID"
        t0=$(now); ctr_t -n "$ns" images import --snapshotter "$sn" "$T/image.tar" >/dev/null; t1=$(now)
        ctr_t -n "$ns" run --rm --snapshotter "$sn" "$IMAGE" r0 true; t2=$(now)
        ctr_t -n "$ns" run --rm --snapshotter "$sn" "$IMAGE" r1 sh -c 'tar -cf - /usr 2>/dev/null | wc -c >/dev/null'; t3=$(now)
        results+=("$(printf '%-10s import %6.2fs   run true %5.2fs   run tar-/usr %6.2fs' "$sn" \
            "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" "$(echo "$t3 - $t2" | bc)")")
        ctr_ -n "$ns" images rm --sync "$IMAGE" >/dev/null
    done
    printf '%s\n' "${results[@]}"
fi

step "PASS"
