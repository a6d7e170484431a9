#!/usr/bin/env bash
# End-to-end test: Kubernetes' path into containerd, the CRI, on stratafs snapshots, with images
# pulled from a registry.
#
#   scripts/e2e-kubernetes.sh [--compare]
#
# Runs as root. Starts a local registry (Debian's docker-registry) on 127.0.0.1 and pushes two
# images to it with skopeo: a three-layer image built from the Debian root filesystem (whiteout
# and opaque directory in its top layer) and a pause image for pod sandboxes. Starts `stratafs
# snapshotter` and a private containerd whose CRI plugin uses it (`snapshotter = "stratafs"`,
# registry mirror over plain http, runc, host-network pods so no CNI). Then, through the CRI
# (examples/cri.rs, a minimal client): PullImage, RunPodSandbox, a container that writes files
# and exits (ContainerStatus, log, ContainerStats), ExecSync into a long-running one, the
# snapshotter restarted under it and the pod's container restarted after, ImageFsInfo, stop and
# remove, RemoveImage; checks that no snapshot, mount or FUSE server is left. --compare also
# times the pull and the pod sandbox + container start with stratafs, overlayfs and native (a
# fresh containerd root each).
#
# Environment: STRATAFS_BIN and CRI_BIN (default: build target/release/{stratafs,examples/cri}),
# KEEP_TMP=1 keeps the temporary directory.
set -euo pipefail

COMPARE=0
for arg in "$@"; do
    case "$arg" in
        --compare) COMPARE=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib/rootfs.sh
. "$REPO/scripts/lib/rootfs.sh"
# shellcheck source=lib/e2e.sh
. "$REPO/scripts/lib/e2e.sh"

need_root

# ---------------------------------------------------------------- prerequisites
step "prerequisites"
ensure_pkg containerd containerd
ensure_pkg runc runc
ensure_pkg mount.fuse3 fuse3
ensure_pkg docker-registry docker-registry
ensure_pkg skopeo skopeo
ensure_pkg bc bc
ensure_pkg python3 python3
containerd --version
docker-registry --version
skopeo --version
[ -e /dev/fuse ] || fail "/dev/fuse is missing"

if [ -z "${STRATAFS_BIN:-}" ] || [ -z "${CRI_BIN:-}" ]; then
    (cd "$REPO" && cargo build --release --bin stratafs --example cri)
fi
STRATAFS_BIN=${STRATAFS_BIN:-$REPO/target/release/stratafs}
CRI_BIN=${CRI_BIN:-$REPO/target/release/examples/cri}
[ -x "$STRATAFS_BIN" ] || fail "no stratafs binary at $STRATAFS_BIN"
[ -x "$CRI_BIN" ] || fail "no CRI client at $CRI_BIN"

T=$(mktemp -d /tmp/stratafs-e2e-kube.XXXXXX)
RUN_ID=${T##*.}
CTRD_PID=""
SNAP_PID=""
REG_PID=""
# mount.fuse3 runs `stratafs overlay TARGET -o ...` through the shell, found on containerd's PATH.
mkdir -p "$T/bin"
cp "$STRATAFS_BIN" "$T/bin/stratafs"
export PATH="$T/bin:$PATH"
# Pods get cgroups under this parent (cgroupfs, one directory per controller).
CG_PARENT="/stratafs-e2e-$RUN_ID"
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
CTRD_SOCK="$T/containerd.sock"
ctr_() { ctr --address "$CTRD_SOCK" "$@"; }
# The CRI keeps everything in the k8s.io namespace.
snaps() { ctr_ -n k8s.io snapshots --snapshotter stratafs "$@"; }
cri() { timeout -k 5 "$RUN_TIMEOUT" "$CRI_BIN" --socket "$CTRD_SOCK" "$@"; }
# json FIELD: one field of the JSON line on stdin (dotted path, list indices as numbers).
json() {
    python3 -c 'import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[int(k)] if k.isdigit() else v[k]
print(v if not isinstance(v, (dict, list)) else json.dumps(v))' "$1"
}

mounts_under() { awk -v p="$1" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo; }
fuse_conns_under() {
    awk -v p="$1" 'index($5, p) == 1 { for (i = 7; i <= NF; i++) if ($i == "-") {
        if ($(i + 1) ~ /^fuse/) { split($3, d, ":"); print d[2] } ; break } }' /proc/self/mountinfo
}

# Removes every pod (and so its containers) the CRI knows, as a node drain would.
remove_all_pods() {
    local id
    for id in $(cri ps 2>/dev/null | python3 -c 'import json,sys; [print(c["id"]) for c in json.load(sys.stdin)["containers"]]' 2>/dev/null); do
        cri stop "$id" >/dev/null 2>&1; cri rm "$id" >/dev/null 2>&1
    done
    # What is left are the sandboxes' own containers (their ids are the pod ids).
    for id in $(ctr_ -n k8s.io containers ls -q 2>/dev/null); do
        cri stopp "$id" >/dev/null 2>&1; cri rmp "$id" >/dev/null 2>&1
    done
}

stop_containerd() {
    if [ -n "$CTRD_PID" ] && kill -0 "$CTRD_PID" 2>/dev/null; then
        kill "$CTRD_PID" 2>/dev/null; wait "$CTRD_PID" 2>/dev/null
    fi
    CTRD_PID=""
}

cleanup() {
    local rc=$?
    set +e
    step "cleanup (exit code $rc)"
    # A FUSE server stuck in the kernel never answers; abort our own connections first.
    mountpoint -q /sys/fs/fuse/connections || mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null
    for dev in $(fuse_conns_under "$T"); do
        [ -e "/sys/fs/fuse/connections/$dev/abort" ] && echo 1 >"/sys/fs/fuse/connections/$dev/abort"
    done
    if [ -n "$CTRD_PID" ] && kill -0 "$CTRD_PID" 2>/dev/null; then
        RUN_TIMEOUT=20 remove_all_pods
    fi
    stop_containerd
    for pid in "$SNAP_PID" "$REG_PID"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    # Shims and containers of our containerd (runc state is under $T), then mounts, deepest first.
    for id in $(runc --root "$T/runc" list -q 2>/dev/null); do runc --root "$T/runc" delete -f "$id" 2>/dev/null; done
    for pid in $(pgrep -f -- "-address $CTRD_SOCK"); do kill -9 "$pid" 2>/dev/null; done
    for m in $(mounts_under "$T" | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
    for pid in $(pgrep -f -- "$T/snapshotter/layers"); do kill -9 "$pid" 2>/dev/null; done
    find /sys/fs/cgroup -depth -type d -path "*$CG_PARENT*" -exec rmdir {} \; 2>/dev/null
    if [ "$rc" != 0 ]; then
        for f in "$T/containerd.log" "$T/snapshotter.log"; do
            [ -f "$f" ] && { echo "--- tail of $f"; tail -n 40 "$f"; }
        done
        # The registry logs every probe for a blob it lacks (each push starts with them).
        [ -f "$T/registry.log" ] && { echo "--- tail of $T/registry.log"; grep -v 'blob unknown' "$T/registry.log" | tail -n 10; }
    fi
    if [ "${KEEP_TMP:-0}" = 1 ]; then echo "kept $T"; else rm -rf --one-file-system "$T"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- images in an OCI layout
step "root filesystem and OCI images"
ROOTFS_TAR=$(ensure_rootfs_tar) || fail "no root filesystem"
ls -l "$ROOTFS_TAR"
# App image, three layers: the root filesystem; files under /opt; a layer that deletes one of
# them (whiteout) and hides a directory's lower contents (opaque). Pause image: the root
# filesystem layer alone (shared with the app image), sleeping forever.
L="$T/oci"
mkdir -p "$L/blobs/sha256" "$T/layer2/etc" "$T/layer2/opt/e2e" "$T/layer2/opt/opq" "$T/layer2/opt/vol" \
    "$T/layer3/opt/e2e" "$T/layer3/opt/opq"
echo "stratafs e2e layer" >"$T/layer2/etc/stratafs-e2e"
echo keep >"$T/layer2/opt/e2e/keep"
echo gone >"$T/layer2/opt/e2e/gone"
echo old >"$T/layer2/opt/opq/old"
echo "from the image" >"$T/layer2/opt/vol/seed"
touch "$T/layer3/opt/e2e/.wh.gone" "$T/layer3/opt/opq/.wh..wh..opq"
echo new >"$T/layer3/opt/opq/new"
tar --numeric-owner --owner=0 --group=0 -C "$T/layer2" -cf "$T/layer2.tar" ./etc ./opt
tar --numeric-owner --owner=0 --group=0 -C "$T/layer3" -cf "$T/layer3.tar" ./opt
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
add_blob() { local h; h=$(sha "$1"); mv "$1" "$L/blobs/sha256/$h"; echo "$h"; }
diff1=$(sha "$ROOTFS_TAR"); diff2=$(sha "$T/layer2.tar"); diff3=$(sha "$T/layer3.tar")
gzip -1 -c "$ROOTFS_TAR" >"$T/l1.tgz" &
gzip -1 -c "$T/layer2.tar" >"$T/l2.tgz"
gzip -1 -c "$T/layer3.tar" >"$T/l3.tgz"
wait
l1=$(add_blob "$T/l1.tgz"); l1s=$(size "$L/blobs/sha256/$l1")
l2=$(add_blob "$T/l2.tgz"); l2s=$(size "$L/blobs/sha256/$l2")
l3=$(add_blob "$T/l3.tgz"); l3s=$(size "$L/blobs/sha256/$l3")
ENV='"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]'
layer() { printf '{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}' "$1" "$2"; }
manifest() { # config-file layers-json -> prints "digest size" of the manifest blob
    local cfg cfgs man
    cfg=$(add_blob "$1"); cfgs=$(size "$L/blobs/sha256/$cfg")
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
        "$cfg" "$cfgs" "$2" >"$T/manifest.json"
    man=$(add_blob "$T/manifest.json"); echo "$man $(size "$L/blobs/sha256/$man")"
}
# /opt/vol is an image volume: the CRI copies the image's files there into a host directory,
# through a temporary mount of the container's snapshot.
printf '{"architecture":"amd64","os":"linux","config":{%s,"Cmd":["/bin/sh"],"Volumes":{"/opt/vol":{}}},"rootfs":{"type":"layers","diff_ids":["sha256:%s","sha256:%s","sha256:%s"]}}' \
    "$ENV" "$diff1" "$diff2" "$diff3" >"$T/app.json"
read -r app_man app_mans < <(manifest "$T/app.json" "$(layer "$l1" "$l1s"),$(layer "$l2" "$l2s"),$(layer "$l3" "$l3s")")
printf '{"architecture":"amd64","os":"linux","config":{%s,"Entrypoint":["/bin/sleep","infinity"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$ENV" "$diff1" >"$T/pause.json"
read -r pause_man pause_mans < <(manifest "$T/pause.json" "$(layer "$l1" "$l1s")")
entry() { printf '{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}' "$1" "$2" "$3"; }
printf '{"schemaVersion":2,"manifests":[%s,%s]}' "$(entry "$app_man" "$app_mans" app)" \
    "$(entry "$pause_man" "$pause_mans" pause)" >"$L/index.json"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$L/oci-layout"
rm -rf "$T"/layer[23] "$T"/layer[23].tar
du -sh "$L"

# ---------------------------------------------------------------- registry
step "local registry on 127.0.0.1"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
REG="127.0.0.1:$PORT"
cat >"$T/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $T/registry
http:
  addr: $REG
EOF
docker-registry serve "$T/registry.yml" >"$T/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://$REG/v2/')" 2>/dev/null && break
    sleep 0.1
done
python3 -c "import urllib.request; urllib.request.urlopen('http://$REG/v2/')" || fail "registry did not start"
APP="$REG/stratafs-e2e:latest"
PAUSE="$REG/stratafs-pause:latest"
# Our own images to our own registry: the machine's signature policy has no say.
skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$L:app" "docker://$APP"
skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$L:pause" "docker://$PAUSE"
rm -rf "$L"
skopeo inspect --tls-verify=false "docker://$APP" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("pushed", d["Name"], len(d["Layers"]), "layers")'

# ---------------------------------------------------------------- containerd + snapshotter
SNAP_SOCK="$T/stratafs.sock"
SNAP_ROOT="$T/snapshotter"
export NO_COLOR=1
start_snapshotter() {
    RUST_LOG=${RUST_LOG:-info} "$T/bin/stratafs" --root "$SNAP_ROOT" snapshotter --socket "$SNAP_SOCK" \
        >>"$T/snapshotter.log" 2>&1 &
    SNAP_PID=$!
    for _ in $(seq 100); do [ -S "$SNAP_SOCK" ] && break; sleep 0.1; done
    [ -S "$SNAP_SOCK" ] || fail "snapshotter did not start"
}

# start_containerd SNAPSHOTTER: a containerd of its own (root, state) whose CRI uses SNAPSHOTTER.
start_containerd() {
    local sn=$1 dir="$T/ctrd-$1"
    mkdir -p "$dir" "$T/cni/conf" "$T/cni/bin" "$T/logs"
    cat >"$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
[debug]
  level = "info"
[proxy_plugins]
  [proxy_plugins.stratafs]
    type = "snapshot"
    address = "$SNAP_SOCK"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$dir/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$PAUSE"
    disable_apparmor = true
    # Lowering a process's OOM score adjustment needs CAP_SYS_RESOURCE, which this machine lacks.
    restrict_oom_score_adj = true
    # How often the CRI asks the snapshotter for usage (ImageFsInfo, ContainerStats).
    stats_collect_period = 1
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "$sn"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = "$(command -v runc)"
          Root = "$T/runc"
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$T/cni/bin"
      conf_dir = "$T/cni/conf"
    [plugins."io.containerd.grpc.v1.cri".registry.mirrors."$REG"]
      endpoint = ["http://$REG"]
EOF
    # ImageFsInfo names containerd's directory for the snapshotter as the image filesystem; the
    # kubelet stats it for capacity (evictions). A proxy snapshotter has none: point it at
    # stratafs's root, as a node's setup would.
    if [ "$sn" = stratafs ]; then
        mkdir -p "$dir/root"
        ln -sfn "$SNAP_ROOT" "$dir/root/io.containerd.snapshotter.v1.stratafs"
    fi
    containerd --config "$dir/config.toml" >>"$T/containerd.log" 2>&1 &
    CTRD_PID=$!
    for _ in $(seq 100); do cri version >/dev/null 2>&1 && break; sleep 0.1; done
    cri version || fail "containerd's CRI did not start"
}

step "start stratafs snapshotter and containerd (CRI on stratafs)"
start_snapshotter
start_containerd stratafs
ctr_ plugins ls | grep -E 'stratafs|cri' | head

POD_ARGS=(--pod-name web --log-dir "$T/logs/web" --cgroup-parent "$CG_PARENT")
wait_exited() { # container-id -> prints its status line once exited
    local s
    for _ in $(seq 300); do
        s=$(cri status "$1")
        [ "$(echo "$s" | json state)" = CONTAINER_EXITED ] && { echo "$s"; return 0; }
        sleep 0.1
    done
    fail "container $1 did not exit: $s"
}

# ---------------------------------------------------------------- pull
step "PullImage through the CRI (layers unpacked into stratafs snapshots)"
cri pull "$APP"
cri pull "$PAUSE"
cri inspecti "$APP"
[ "$(cri inspecti "$APP" | json size)" -gt 10000000 ] || fail "image size not reported"
snaps ls
nsnap=$(snaps ls | tail -n +2 | grep -c Committed || true)
[ "$nsnap" = 3 ] || fail "expected 3 committed snapshots (the pause image shares the base), got $nsnap"

# ---------------------------------------------------------------- pod and containers
step "RunPodSandbox (pause image from the local registry)"
POD=$(cri runp "${POD_ARGS[@]}" | json pod_id)
[ "$(cri podstatus "$POD" | json state)" = SANDBOX_READY ] || fail "pod not ready"

step "CreateContainer/StartContainer: writes files and exits"
CW=$(cri create --pod "$POD" "${POD_ARGS[@]}" --name writer --image "$APP" -- sh -c '
    set -e
    test ! -e /opt/e2e/gone                       # whiteout in layer 3
    test "$(cat /opt/e2e/keep)" = keep
    test ! -e /opt/opq/old && test -f /opt/opq/new  # opaque directory in layer 3
    grep -q "from the image" /opt/vol/seed          # image volume, copied by the CRI
    head -c 200000 /dev/zero >/written
    rm /opt/e2e/keep
    echo WRITER-OK' | json container_id)
cri start "$CW" >/dev/null
st=$(wait_exited "$CW")
echo "$st"
[ "$(echo "$st" | json exit_code)" = 0 ] || fail "writer exited with $(echo "$st" | json exit_code): $(cat "$T/logs/web/writer_0.log" 2>/dev/null)"
grep -q WRITER-OK "$T/logs/web/writer_0.log" || fail "writer's log lacks its output"
upper=$(snaps mounts /unused "$CW" | grep -o 'upperdir=[^,]*' | cut -d= -f2)
[ -f "$upper/written" ] || fail "container write not in its snapshot's upper dir '$upper'"

step "a container with a read-only root filesystem (runc remounts the snapshot's mount read-only)"
CR=$(cri create --pod "$POD" "${POD_ARGS[@]}" --name readonly --readonly-rootfs --image "$APP" -- sh -c '
    if touch /should-fail 2>/dev/null; then echo "root is writable"; exit 1; fi
    test "$(cat /opt/e2e/keep)" = keep && echo RO-OK' | json container_id)
cri start "$CR" >/dev/null
st=$(wait_exited "$CR")
[ "$(echo "$st" | json exit_code)" = 0 ] || fail "read-only container: $st $(cat "$T/logs/web/readonly_0.log" 2>/dev/null)"
grep -q RO-OK "$T/logs/web/readonly_0.log" || fail "read-only container's log lacks its output"
cri rm "$CR" >/dev/null

step "ExecSync into a long-running container"
CL=$(cri create --pod "$POD" "${POD_ARGS[@]}" --name server --image "$APP" -- sleep infinity | json container_id)
cri start "$CL" >/dev/null
out=$(cri exec "$CL" -- sh -c 'echo exec-ok; cat /etc/stratafs-e2e; echo state >/state')
echo "$out"
[ "$(echo "$out" | json exit_code)" = 0 ] || fail "exec failed: $out"
echo "$out" | json stdout | grep 'stratafs e2e layer' >/dev/null || fail "exec output wrong: $out"
[ "$(cri exec "$CL" -- sh -c 'exit 3' | json exit_code)" = 3 ] || fail "exec exit code not passed on"
# ContainerStats (of a running container: the CRI also reads its cgroup): the writable layer is
# the snapshotter's Usage of the container's snapshot.
[ "$(cri exec "$CL" -- sh -c 'head -c 200000 /dev/zero >/written' | json exit_code)" = 0 ] || fail "exec write failed"
used=""
for _ in $(seq 100); do
    used=$(cri stats "$CL" | json writable_layer.used_bytes 2>/dev/null || true)
    [ -n "$used" ] && [ "$used" != None ] && [ "$used" -ge 200000 ] && break
    sleep 0.2
done
echo "writable layer of the server: $used bytes"
[ -n "$used" ] && [ "$used" != None ] && [ "$used" -ge 200000 ] && [ "$used" -lt 2000000 ] \
    || fail "ContainerStats writable layer is not ~200 KB: '$used'"

step "ImageFsInfo: usage from the snapshotter"
sum=$(snaps usage -b | awk 'NR > 1 { s += $2 } END { print s + 0 }')
fsused=""
for _ in $(seq 100); do
    info=$(cri imagefsinfo)
    fsused=$(echo "$info" | json image_filesystems.0.used_bytes 2>/dev/null || true)
    [ -n "$fsused" ] && [ "$fsused" != None ] && [ "$fsused" -ge "$sum" ] && break
    sleep 0.2
done
echo "$info"
echo "ImageFsInfo used_bytes $fsused; sum of the snapshots' usage $sum"
mp=$(echo "$info" | json image_filesystems.0.mountpoint)
[ "$(realpath "$mp")" = "$(realpath "$SNAP_ROOT")" ] || fail "image filesystem $mp is not the snapshotter's root"
df -h "$mp"
[ "$sum" -gt 100000000 ] || fail "snapshot usage implausibly small: $sum"
[ -n "$fsused" ] && [ "$fsused" != None ] && [ "$fsused" -ge "$sum" ] \
    && [ "$fsused" -le $((sum + sum / 10)) ] || fail "ImageFsInfo ($fsused) is not the snapshots' usage ($sum)"

# ---------------------------------------------------------------- snapshotter restart
step "restart the snapshotter under the pod, then restart the pod's container"
before=$(snaps ls | sort)
kill "$SNAP_PID"; wait "$SNAP_PID" || true
[ ! -e "$SNAP_SOCK" ] || fail "snapshotter left its socket"
# The container's mount belongs to its own FUSE server, not to the snapshotter.
[ "$(cri exec "$CL" -- sh -c 'cat /state && echo during >/during' | json exit_code)" = 0 ] \
    || fail "container broke while the snapshotter was down"
start_snapshotter
after=""
for _ in $(seq 50); do after=$(snaps ls 2>/dev/null | sort) && [ -n "$after" ] && break; sleep 0.2; done
[ "$before" = "$after" ] || fail "snapshots changed across a restart: $before // $after"
cri exec "$CL" -- cat /state /during | json stdout | grep during >/dev/null || fail "container lost its files"
# The kubelet restarts a container as a new one with the next attempt number.
cri stop "$CL" >/dev/null
[ "$(cri status "$CL" | json state)" = CONTAINER_EXITED ] || fail "server did not stop"
CL1=$(cri create --pod "$POD" "${POD_ARGS[@]}" --name server --attempt 1 --image "$APP" -- sleep infinity | json container_id)
cri start "$CL1" >/dev/null
cri rm "$CL" >/dev/null
out=$(cri exec "$CL1" -- sh -c 'test ! -e /state && test "$(cat /opt/e2e/keep)" = keep && echo fresh')
[ "$(echo "$out" | json stdout)" = fresh ] || fail "restarted container wrong: $out"

# ---------------------------------------------------------------- removal
step "stop and remove containers and pod, RemoveImage: nothing left"
cri stop "$CL1" >/dev/null
cri rm "$CL1" >/dev/null
cri rm "$CW" >/dev/null
cri stopp "$POD" >/dev/null
cri rmp "$POD" >/dev/null
[ "$(cri ps | json containers)" = "[]" ] || fail "containers left: $(cri ps)"
cri rmi "$APP"
cri rmi "$PAUSE"
left=""
for _ in $(seq 50); do left=$(snaps ls | tail -n +2); [ -z "$left" ] && break; sleep 0.2; done
[ -z "$left" ] || fail "snapshots left after image removal: $left"
ls "$SNAP_ROOT/layers" | grep -q . && fail "layer directories left: $(ls "$SNAP_ROOT/layers")"
# containerd mounts under its root and state, and in $TMPDIR/containerd-mount* to unpack.
left=$( (mounts_under "$T"; mounts_under "${TMPDIR:-/tmp}/containerd-mount") || true)
[ -z "$left" ] || fail "mounts left: $left"
servers=$(pgrep -af -- "$SNAP_ROOT/layers" || true)
[ -z "$servers" ] || fail "FUSE servers left: $servers"
echo "no snapshots, layer directories, mounts or FUSE servers left"

# ---------------------------------------------------------------- timings
if [ "$COMPARE" = 1 ]; then
    step "compare: CRI pull and pod sandbox + container start per snapshotter"
    now() { date +%s.%N; }
    # The machine is shared and noisy: each snapshotter runs COMPARE_ROUNDS times, in a rotating
    # order, and its best time counts.
    ROUNDS=${COMPARE_ROUNDS:-3}
    ORDER=(stratafs overlayfs native)
    declare -A PULL START
    for round in $(seq "$ROUNDS"); do
        for sn in "${ORDER[@]}"; do
            stop_containerd
            rm -rf "$T/ctrd-$sn"
            start_containerd "$sn" >/dev/null
            t0=$(now); cri pull "$APP" >/dev/null; t1=$(now)
            cri pull "$PAUSE" >/dev/null
            t2=$(now)
            pod=$(cri runp --pod-name "cmp-$sn" --cgroup-parent "$CG_PARENT" | json pod_id)
            ta=$(now)
            c=$(cri create --pod "$pod" --pod-name "cmp-$sn" --cgroup-parent "$CG_PARENT" --name c \
                --image "$APP" -- sleep infinity | json container_id)
            tb=$(now)
            cri start "$c" >/dev/null
            t3=$(now)
            [ "$(cri exec "$c" -- cat /opt/e2e/keep | json stdout)" = keep ] || fail "$sn: container wrong"
            p=$(echo "$t1 - $t0" | bc); s=$(echo "$t3 - $t2" | bc)
            printf 'round %s %-10s pull %6.2fs  pod+start %5.2fs (runp %.2f create %.2f start %.2f)\n' \
                "$round" "$sn" "$p" "$s" "$(echo "$ta - $t2" | bc)" "$(echo "$tb - $ta" | bc)" "$(echo "$t3 - $tb" | bc)"
            if [ -z "${PULL[$sn]:-}" ] || [ "$(echo "$p < ${PULL[$sn]}" | bc)" = 1 ]; then PULL[$sn]=$p; fi
            if [ -z "${START[$sn]:-}" ] || [ "$(echo "$s < ${START[$sn]}" | bc)" = 1 ]; then START[$sn]=$s; fi
            remove_all_pods
            cri rmi "$APP" >/dev/null; cri rmi "$PAUSE" >/dev/null
        done
        ORDER=("${ORDER[@]:1}" "${ORDER[0]}")
    done
    printf '\n%-10s %10s %8s %18s %8s\n' snapshotter "pull (s)" ratio "pod+start (s)" ratio
    for sn in stratafs overlayfs native; do
        printf '%-10s %10.2f %8.2f %18.2f %8.2f\n' "$sn" "${PULL[$sn]}" \
            "$(echo "${PULL[$sn]} / ${PULL[overlayfs]}" | bc -l)" "${START[$sn]}" \
            "$(echo "${START[$sn]} / ${START[overlayfs]}" | bc -l)"
    done
    echo "(best of $ROUNDS rounds; ratios against overlayfs)"
fi

step "PASS"
