#!/usr/bin/env bash
# End-to-end test: a real Docker daemon (Debian's docker.io 20.10, which loads graph driver
# plugins with --experimental) runs containers on the stratafs plugin: import, run, diff,
# commit, save, remove, load, restart (plugin stopped and plugin killed), and no mount left behind.
#
# Usage: scripts/e2e-docker.sh [--compare]
#   --compare  also time import/run/commit on dockerd's own vfs and overlay2 drivers
# Environment:
#   STRATAFS=PATH                 use this binary instead of `cargo build --release`
#   STRATAFS_PLUGIN_DRIVER=vfs    the driver behind the plugin (default stratafs)
#   E2E_DOCKER_DRIVER=overlay2    run the whole flow on a built-in dockerd driver instead of the
#                                 plugin (to check this script itself)
#   E2E_KEEP=1                    keep the temporary directory
# Runs as root; exits non-zero on the first failure. Everything it starts is stopped on exit.
set -euo pipefail

COMPARE=0
for arg in "$@"; do
    case "$arg" in
    --compare) COMPARE=1 ;;
    -h | --help)
        sed -n '2,16p' "$0"
        exit 0
        ;;
    *)
        echo "unknown argument $arg" >&2
        exit 2
        ;;
    esac
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib/rootfs.sh
. "$REPO/scripts/lib/rootfs.sh"
PLUGIN_DRIVER=${STRATAFS_PLUGIN_DRIVER:-stratafs}
MAIN_DRIVER=${E2E_DOCKER_DRIVER:-stratafs}
SOCKET=/run/docker/plugins/stratafs.sock
T=$(mktemp -d /var/tmp/stratafs-e2e.XXXXXX)
DOCKERD_PID=
PLUGIN_PID=
declare -A TIMES

step() { echo "=== [$(date +%T)] $*"; }
fail() {
    echo "FAIL: $*" >&2
    exit 1
}
dk() { docker -H "unix://$T/docker.sock" "$@"; }

# Run "$@" and record its wall time under key $1 (the remaining words are the command).
timed() {
    local key=$1
    shift
    local start end
    start=$(date +%s.%N)
    "$@"
    end=$(date +%s.%N)
    TIMES[$key]=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
    echo "    ($key: ${TIMES[$key]}s)"
}

# ---- processes -----------------------------------------------------------------------------

start_plugin() {
    step "start stratafs plugin (driver $PLUGIN_DRIVER)"
    # The default log level (info for stratafs) is what a user sees; RUST_LOG still wins.
    "$STRATAFS" plugin --socket "$SOCKET" \
        --state "$T/plugin-init.json" --driver "$PLUGIN_DRIVER" >>"$T/plugin.log" 2>&1 &
    PLUGIN_PID=$!
    for _ in $(seq 100); do
        [ -S "$SOCKET" ] && return 0
        kill -0 "$PLUGIN_PID" 2>/dev/null || {
            cat "$T/plugin.log" >&2
            fail "plugin exited at start"
        }
        sleep 0.1
    done
    fail "plugin socket $SOCKET did not appear"
}

# stop_plugin TERM|KILL
stop_plugin() {
    [ -n "$PLUGIN_PID" ] || return 0
    kill "-$1" "$PLUGIN_PID" 2>/dev/null || true
    for _ in $(seq 300); do
        kill -0 "$PLUGIN_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$PLUGIN_PID" 2>/dev/null && fail "plugin did not exit on SIG$1"
    wait "$PLUGIN_PID" 2>/dev/null || true
    PLUGIN_PID=
}

# start_dockerd DRIVER: data root per driver, the rest shared.
start_dockerd() {
    local driver=$1
    step "start dockerd --storage-driver=$driver"
    # cgroupfs: no systemd here; the ulimit is pinned because this machine lacks
    # CAP_SYS_RESOURCE to raise rlimits for containers (field notes).
    /usr/sbin/dockerd --experimental --storage-driver="$driver" --iptables=false --bridge=none \
        --ip-masq=false --data-root "$T/data-$driver" --exec-root "$T/exec" \
        --pidfile "$T/docker.pid" -H "unix://$T/docker.sock" \
        --exec-opt native.cgroupdriver=cgroupfs --default-ulimit nofile=20000:20000 \
        >>"$T/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 300); do
        dk info >/dev/null 2>&1 && return 0
        kill -0 "$DOCKERD_PID" 2>/dev/null || {
            tail -30 "$T/dockerd.log" >&2
            fail "dockerd exited at start"
        }
        sleep 0.2
    done
    tail -30 "$T/dockerd.log" >&2
    fail "dockerd did not answer"
}

stop_dockerd() {
    [ -n "$DOCKERD_PID" ] || return 0
    kill -TERM "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 600); do
        kill -0 "$DOCKERD_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$DOCKERD_PID" 2>/dev/null; then
        kill -KILL "$DOCKERD_PID" 2>/dev/null || true
        fail "dockerd did not exit on SIGTERM"
    fi
    wait "$DOCKERD_PID" 2>/dev/null || true
    DOCKERD_PID=
}

cleanup() {
    local rc=$?
    set +e
    if [ $rc -ne 0 ]; then
        echo "--- last lines of dockerd.log" >&2
        tail -25 "$T/dockerd.log" >&2
        echo "--- last lines of plugin.log" >&2
        tail -25 "$T/plugin.log" >&2
    fi
    if [ -n "$DOCKERD_PID" ]; then
        kill -TERM "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 200); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$DOCKERD_PID" 2>/dev/null
    fi
    if [ -n "$PLUGIN_PID" ]; then
        kill -TERM "$PLUGIN_PID" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$PLUGIN_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PLUGIN_PID" 2>/dev/null
    fi
    # Whatever is still mounted under the temporary directory (FUSE views, dockerd's overlay,
    # shm and netns mounts), deepest first.
    awk -v t="$T" '$2 == t || index($2, t "/") == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null || umount -f "$m"; done
    if [ "${E2E_KEEP:-0}" = 1 ]; then
        echo "kept $T"
    else
        rm -rf --one-file-system "$T"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'echo "FAIL: line $LINENO: $BASH_COMMAND" >&2' ERR

# ---- preparation ----------------------------------------------------------------------------

[ "$(id -u)" = 0 ] || fail "run as root"

step "docker daemon"
if [ ! -x /usr/sbin/dockerd ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io
fi
/usr/sbin/dockerd --version
docker --version

if [ -n "${STRATAFS:-}" ]; then
    step "using $STRATAFS"
else
    step "cargo build --release"
    (cd "$REPO" && cargo build --release --bin stratafs)
    STRATAFS=$REPO/target/release/stratafs
fi
[ -x "$STRATAFS" ] || fail "$STRATAFS is not executable"

step "base root filesystem (shared cache: debootstrap from the machine's apt mirror, or busybox)"
ROOTFS=$(ensure_rootfs_tar) || fail "no root filesystem tar"
ls -la "$ROOTFS"

if [ "$MAIN_DRIVER" = stratafs ]; then
    if [ -S "$SOCKET" ] && python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])" "$SOCKET" 2>/dev/null; then
        fail "another plugin is serving $SOCKET; stop it first"
    fi
    start_plugin
fi
start_dockerd "$MAIN_DRIVER"

# ---- the flow -------------------------------------------------------------------------------

step "docker info"
dk info >"$T/info.txt" 2>&1
sed -n '/Storage Driver/,/Logging Driver/p' "$T/info.txt"
grep -q "Storage Driver: $MAIN_DRIVER" "$T/info.txt" || fail "docker info does not show $MAIN_DRIVER"
if [ "$MAIN_DRIVER" = stratafs ]; then
    grep -q "^  Root Dir: $T/data-stratafs/stratafs" "$T/info.txt" ||
        fail "status lines missing or store not at Docker's home"
fi

CHANGE_SCRIPT='set -e
mkdir /e2e
echo added > /e2e/added.txt
ln -s added.txt /e2e/link
echo new > /etc/e2e-new
echo changed >> /etc/issue
rm /etc/motd
rm -rf /usr/share/doc
mv /etc/debian_version /etc/debian_version.renamed
mv /etc/apt/apt.conf.d /etc/apt/apt.conf.renamed'

# shellcheck disable=SC2016 # expanded inside the container
CHECK_SCRIPT='set -e
test "$(cat /e2e/added.txt)" = added
test "$(readlink /e2e/link)" = added.txt
test "$(cat /e2e/link)" = added
test "$(cat /etc/e2e-new)" = new
test "$(tail -n 1 /etc/issue)" = changed
test ! -e /etc/motd
test ! -e /usr/share/doc
test -d /usr/share
test ! -e /etc/debian_version
test -s /etc/debian_version.renamed
test ! -e /etc/apt/apt.conf.d
test -d /etc/apt/apt.conf.renamed
test -n "$(ls /etc/apt/apt.conf.renamed)"
echo E2E-CHECK-OK'

BASE_CHECK='set -e
test -f /etc/motd
test -d /usr/share/doc
test -f /etc/debian_version
test -d /etc/apt/apt.conf.d
test ! -e /e2e
echo E2E-BASE-OK'

# expect_output WHAT MARKER COMMAND...: run, show output, require MARKER in it.
expect_output() {
    local what=$1 marker=$2 out
    shift 2
    out=$("$@" 2>&1) || {
        echo "$out" >&2
        fail "$what: command failed"
    }
    echo "$out" | grep -qx "$marker" || {
        echo "$out" >&2
        fail "$what: no $marker"
    }
    echo "    $what: ok"
}

# The files the flow changes; a busybox fallback root lacks some, so they are added in a layer
# of their own (which exercises one more run and commit).
# shellcheck disable=SC2016 # expanded inside the container
FIXTURE='set -e
mkdir -p /etc/apt/apt.conf.d /usr/share/doc/e2e
[ -e /etc/motd ] || echo welcome > /etc/motd
[ -e /etc/issue ] || echo "e2e root" > /etc/issue
[ -e /etc/debian_version ] || echo 12 > /etc/debian_version
[ -n "$(ls /etc/apt/apt.conf.d)" ] || echo "APT::Quiet 1;" > /etc/apt/apt.conf.d/00e2e
[ -n "$(ls /usr/share/doc)" ] || echo docs > /usr/share/doc/e2e/README'

# import_base TAG: import the root filesystem (timed) and complete it with the fixture files.
import_base() {
    timed import dk import "$ROOTFS" "$1"
    if ! tar -tf "$ROOTFS" ./etc/motd ./etc/apt/apt.conf.d/ >/dev/null 2>&1; then
        echo "    (busybox root: adding the fixture files in a layer)"
        dk run --net=none --name fixture "$1" sh -c "$FIXTURE"
        dk commit fixture "$1" >/dev/null
        dk rm fixture >/dev/null
    fi
}

run_flow() {
    step "docker import"
    import_base e2e-base:1

    step "docker run --net=none (add, change, delete, rename; whole base directory removed)"
    timed run dk run --net=none --name c1 e2e-base:1 sh -c "$CHANGE_SCRIPT"

    step "docker diff"
    dk diff c1 | sort >"$T/diff.txt"
    cat "$T/diff.txt"
    for line in "A /e2e" "A /e2e/added.txt" "A /e2e/link" "A /etc/e2e-new" \
        "A /etc/debian_version.renamed" "A /etc/apt/apt.conf.renamed" "C /etc" "C /etc/issue" \
        "D /etc/motd" "D /etc/debian_version" "D /etc/apt/apt.conf.d" "C /usr" "C /usr/share" \
        "D /usr/share/doc"; do
        grep -qxF "$line" "$T/diff.txt" || fail "docker diff lacks '$line'"
    done
    if grep -q "^[ACD] /usr/share/doc/" "$T/diff.txt"; then
        fail "docker diff lists entries inside the deleted /usr/share/doc"
    fi

    step "docker commit"
    timed commit dk commit c1 e2e-changed:1

    step "run the committed image: every change is there, deleted paths are gone"
    expect_output "committed image" E2E-CHECK-OK dk run --rm --net=none e2e-changed:1 sh -c "$CHECK_SCRIPT"
    expect_output "base image untouched" E2E-BASE-OK dk run --rm --net=none e2e-base:1 sh -c "$BASE_CHECK"

    step "docker save: the top layer holds the changes and whiteouts"
    dk save -o "$T/save.tar" e2e-changed:1
    mkdir -p "$T/save"
    tar -C "$T/save" -xf "$T/save.tar"
    local top
    top=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["Layers"][-1])' \
        "$T/save/manifest.json")
    tar -tvf "$T/save/$top" | sort -k6 >"$T/layer.txt"
    cat "$T/layer.txt"
    tar -tf "$T/save/$top" | sed 's#^\./##; s#/$##' >"$T/layer-names.txt"
    for name in e2e/added.txt e2e/link etc/e2e-new etc/issue etc/.wh.motd \
        etc/.wh.debian_version etc/debian_version.renamed etc/apt/.wh.apt.conf.d \
        etc/apt/apt.conf.renamed usr/share/.wh.doc; do
        grep -qxF "$name" "$T/layer-names.txt" || fail "top layer lacks $name"
    done
    if grep -q "^usr/share/doc/" "$T/layer-names.txt"; then
        fail "top layer still carries files of the deleted /usr/share/doc"
    fi
    grep -E ' e2e/link -> added.txt$' "$T/layer.txt" >/dev/null || fail "symlink not kept in the layer"

    step "remove the container and the committed image"
    dk rm c1 >/dev/null
    dk rmi e2e-changed:1 >/dev/null
    dk image inspect e2e-changed:1 >/dev/null 2>&1 && fail "removed image is still there"

    step "docker load the saved image back (layers with whiteouts applied again)"
    dk load -i "$T/save.tar"
    expect_output "loaded image" E2E-CHECK-OK dk run --rm --net=none e2e-changed:1 sh -c "$CHECK_SCRIPT"
}

stratafs_mounts() { grep -E "^[^ ]+ $T/" /proc/mounts | grep fuse || true; }

restart_checks() {
    step "restart dockerd and the plugin (clean stop)"
    stop_dockerd
    stop_plugin TERM
    [ -z "$(stratafs_mounts)" ] || fail "mounts left after a clean stop: $(stratafs_mounts)"
    start_plugin
    start_dockerd stratafs
    expect_output "after restart" E2E-CHECK-OK dk run --rm --net=none e2e-changed:1 sh -c "$CHECK_SCRIPT"
    expect_output "after restart (base)" E2E-BASE-OK dk run --rm --net=none e2e-base:1 sh -c "$BASE_CHECK"

    step "plugin killed (SIGKILL) while a container runs; restarted under the same dockerd"
    dk run -d --net=none --name c-long e2e-changed:1 sleep 600 >/dev/null
    stop_plugin KILL
    # The new process resumes the last Init (dockerd does not send another), releases only
    # the killed one's dead mounts and keeps the running container's: it serves at once.
    start_plugin
    grep -q "stratafs plugin listening.*$SOCKET" "$T/plugin.log" ||
        fail "the plugin's log does not say where it listens"
    timed after-kill expect_output "same dockerd, new plugin" E2E-CHECK-OK \
        dk run --rm --net=none e2e-changed:1 sh -c "$CHECK_SCRIPT"
    awk -v t="${TIMES[after-kill]}" 'BEGIN { exit !(t < 15) }' ||
        fail "the first run after the plugin restart took ${TIMES[after-kill]}s"
    expect_output "the running container's root after the restart" E2E-CHECK-OK \
        dk exec c-long sh -c "$CHECK_SCRIPT"

    step "plugin stopped (SIGTERM) while a container runs; restarted under the same dockerd"
    local mounted
    mounted=$(stratafs_mounts | wc -l)
    stop_plugin TERM
    # dockerd asks the plugin for every container call, so the view is checked on the host.
    [ "$(stratafs_mounts | wc -l)" = "$mounted" ] ||
        fail "SIGTERM unmounted a running container's view"
    start_plugin
    expect_output "the running container's root after the plugin's restart" E2E-CHECK-OK \
        dk exec c-long sh -c "$CHECK_SCRIPT"
    expect_output "same dockerd, plugin restarted" E2E-CHECK-OK \
        dk run --rm --net=none e2e-changed:1 sh -c "$CHECK_SCRIPT"
    # docker cp mounts the running container's layer again: the adopted mount is shared.
    dk cp c-long:/etc/e2e-new "$T/cp-e2e-new"
    [ "$(cat "$T/cp-e2e-new")" = new ] || fail "docker cp from the running container"
    local stale
    stale=$(stratafs_mounts | awk '{ print $2 }' | while read -r m; do
        stat "$m" >/dev/null 2>&1 || echo "$m"
    done)
    [ -z "$stale" ] || fail "stale mounts after the plugin restart: $stale"
    dk rm -f c-long >/dev/null

    step "restart dockerd after the kill"
    stop_dockerd
    start_dockerd stratafs
    expect_output "after kill" E2E-CHECK-OK dk run --rm --net=none e2e-changed:1 sh -c "$CHECK_SCRIPT"

    step "remove images; stop everything; no stratafs mount left behind"
    dk rmi e2e-changed:1 e2e-base:1 >/dev/null
    stop_dockerd
    stop_plugin TERM
    if grep fuse /proc/mounts | grep -F "$T/"; then
        fail "fuse mounts left behind"
    fi
    if [ -n "$(ls -A "$T/data-stratafs/stratafs/layers" 2>/dev/null)" ]; then
        ls -la "$T/data-stratafs/stratafs/layers"
        fail "layers left in the store after removing every image"
    fi
}

run_flow
declare -A RESULTS
MAIN_LABEL=$MAIN_DRIVER
[ "$MAIN_DRIVER" = stratafs ] && MAIN_LABEL="plugin:$PLUGIN_DRIVER"
RESULTS[$MAIN_LABEL]="${TIMES[import]} ${TIMES[run]} ${TIMES[commit]}"
if [ "$MAIN_DRIVER" = stratafs ]; then
    restart_checks
else
    dk ps -aq | xargs -r docker -H "unix://$T/docker.sock" rm -f >/dev/null
    stop_dockerd
fi

if [ "$COMPARE" = 1 ]; then
    for drv in vfs overlay2; do
        [ "$drv" = "$MAIN_DRIVER" ] && continue
        start_dockerd "$drv"
        step "timing on dockerd's own $drv"
        import_base e2e-base:1
        timed run dk run --net=none --name c1 e2e-base:1 sh -c "$CHANGE_SCRIPT"
        timed commit dk commit c1 e2e-changed:1
        RESULTS[$drv]="${TIMES[import]} ${TIMES[run]} ${TIMES[commit]}"
        dk rm -f c1 >/dev/null
        stop_dockerd
    done
fi

step "timings (seconds, one run each; base image $(du -m "$ROOTFS" | cut -f1) MB)"
printf '%-16s %8s %8s %8s\n' driver import run commit
for drv in plugin:stratafs plugin:vfs vfs overlay2; do
    [ -n "${RESULTS[$drv]:-}" ] || continue
    # shellcheck disable=SC2086
    printf '%-16s %8s %8s %8s\n' "$drv" ${RESULTS[$drv]}
done
step "PASS"
