#!/usr/bin/env bash
# End-to-end: rootless Podman (an unprivileged user with /etc/subuid and /etc/subgid ranges) with
# stratafs as the mount_program of containers/storage's overlay driver, the role fuse-overlayfs
# has for rootless Podman today. Run as root (it creates the user); every Podman command runs as
# that user.
#
# What it checks, as the user: import a root filesystem; `podman run` that writes, chowns to a
# container uid other than root, deletes and renames a lower directory; `podman diff`; the upper
# directory seen through `podman unshare` (ids inside the user namespace) and from the host (ids
# shifted into the subuid range); `podman commit` and a run of the commit; `podman build` of a
# Containerfile with several RUN steps (users, installed files with owners, deletions, a
# directory rename); `podman save` of both images, with the owners and whiteouts of each layer tar
# checked; that no stratafs server is left once the containers are gone.
# `--fuse-overlayfs` runs the same checks with fuse-overlayfs as mount program (they pass there).
#
# Choices, each because of this kind of machine (Debian 12, Podman 4.3, no systemd session):
# - the user, its home, its subuid/subgid lines and /run/user/UID (XDG_RUNTIME_DIR) are made
#   here and removed at exit; commands run through `setpriv --reset-env` (no login session).
# - `uidmap` (newuidmap/newgidmap, setuid) maps the subuid range into Podman's user namespace.
# - /dev/fuse is 0600 where there is no udev: set to 0666 for the run (a FUSE server in the
#   user's namespace cannot open it otherwise), the old mode restored at exit.
# - networking: `--network=none` / netns = "none" everywhere (no slirp4netns or pasta needed;
#   `podman build` ignores netns from containers.conf, so it gets `--network=none` itself).
# - runtime = "runc": crun refuses machines with cgroup v1 controllers mounted beside cgroup2
#   ("cgroups in hybrid mode not supported").
# - cgroup_manager = "cgroupfs": a user without a systemd session has no systemd to ask; on
#   cgroup v1 rootless containers get no cgroup at all. (cgroups = "disabled" is not an option
#   with runc: "requested OCI runtime runc is not compatible with NoCgroups".)
# - events_logger = "file": no journald session for the user.
# - default_ulimits pinned: without CAP_SYS_RESOURCE, raising rlimits fails ("error setting
#   rlimit type 7").
# - the stratafs binary is copied into the run directory: the checkout (often under /root) need
#   not be readable by the user.
# - the root filesystem tar is handed to `podman import` on stdin, for the same reason.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=lib/rootfs.sh
. "$here/lib/rootfs.sh"
# shellcheck source=lib/rootless.sh
. "$here/lib/rootless.sh"

# shellcheck source=lib/e2e.sh
. "$here/lib/e2e.sh"

need_root "the script creates the unprivileged user"

step "installing podman, buildah, uidmap, runc and fuse3 if missing"
ensure_pkg podman podman
ensure_pkg buildah buildah
ensure_pkg newuidmap uidmap
ensure_pkg runc runc
ensure_pkg fusermount3 fuse3
ensure_pkg python3 python3
ensure_pkg pgrep procps

# --fuse-overlayfs: the same checks with fuse-overlayfs as mount program, the reference the
# checks were written against (they pass there too).
fstype="fuse stratafs"
if [ "${1:-}" = "--fuse-overlayfs" ]; then
    ensure_pkg fuse-overlayfs fuse-overlayfs
    STRATAFS=$(command -v fuse-overlayfs)
    fstype="fuse.fuse-overlayfs fuse-overlayfs"
fi
STRATAFS=${STRATAFS:-}
if [ -z "$STRATAFS" ]; then
    step "building stratafs"
    (cd "$repo" && cargo build --release --quiet)
    STRATAFS="$repo/target/release/stratafs"
fi

work=$(mktemp -d /var/tmp/stratafs-e2e-rootless.XXXXXX)
chmod 0755 "$work"
cleanup() {
    local rc=$?
    set +e
    if [ -n "$ROOTLESS_USER" ]; then
        as_user podman rm -a -f -t 0 >/dev/null 2>&1
        as_user podman system reset -f >/dev/null 2>&1
    fi
    rootless_cleanup
    # Mounts of the user's Podman live in its own mount namespace, gone with its processes;
    # anything under $work in ours (none is expected) is detached before the directory goes.
    grep " $work" /proc/mounts | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m"; done
    rm -rf --one-file-system "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$work/bin"
install -m 0755 "$STRATAFS" "$work/bin/stratafs"
STRATAFS="$work/bin/stratafs"
"$STRATAFS" --version

rootfs=$(ensure_rootfs_tar)
echo "root filesystem: $rootfs"

step "creating an unprivileged user with subuid/subgid ranges"
user="sfs-rl-$$"
rootless_user_create "$user" "$work/home" subids
sub_u=$(rootless_subuid_start)
sub_g=$(rootless_subgid_start)
[ -n "$sub_u" ] && [ -n "$sub_g" ] || fail "no subuid/subgid range for $user"
grep "^$user:" /etc/subuid /etc/subgid
rootless_open_fuse
mkdir -p "$ROOTLESS_HOME/.config/containers"
cat >"$ROOTLESS_HOME/.config/containers/storage.conf" <<CONF
[storage]
driver = "overlay"

[storage.options.overlay]
mount_program = "$STRATAFS"
CONF
cat >"$ROOTLESS_HOME/.config/containers/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "none"

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
CONF
chown -R "$ROOTLESS_UID:$ROOTLESS_GID" "$ROOTLESS_HOME/.config"

pm() { as_user podman "$@"; }

step "podman info: rootless, overlay with stratafs as mount program"
info=$(pm info --format '{{.Host.Security.Rootless}} {{.Store.GraphDriverName}} {{index .Store.GraphOptions "overlay.mount_program"}}')
echo "$info"
case $info in
    "true overlay "*"$STRATAFS"*) ;;
    *) fail "podman is not rootless overlay with stratafs as mount program: $info" ;;
esac

step "podman import (as $user)"
pm import -q - localhost/rl-base <"$rootfs" >/dev/null
pm images

step "podman run: write, chown to a non-root container uid, delete, rename a lower directory"
changes='set -e
echo hello > /root/added.txt
mkdir -p /opt/owned && echo owned > /opt/owned/f && chown -R 1234:2345 /opt/owned
chown 1234:2345 /etc/debian_version
echo more >> /etc/motd
rm -rf /usr/share/doc
rm -f /etc/issue
mv /etc/apt /etc/apt.renamed
test -e /etc/apt.renamed/sources.list.d
test "$(stat -c %u:%g /opt/owned/f /etc/debian_version | sort -u)" = 1234:2345'
pm run --name c1 localhost/rl-base sh -c "$changes"

step "podman diff"
diffout=$(pm diff c1 | sort)
echo "$diffout" | grep -v '^A /etc/apt.renamed/'
for want in 'A /root/added.txt' 'A /opt/owned/f' 'C /etc/debian_version' 'C /etc/motd' \
    'D /usr/share/doc' 'D /etc/issue' 'D /etc/apt' 'A /etc/apt.renamed' \
    'A /etc/apt.renamed/sources.list.d'; do
    grep -qx "$want" <<<"$diffout" || fail "podman diff misses '$want'"
done

step "podman unshare: the upper directory holds what the container wrote"
upper=$(pm inspect c1 --format '{{.GraphDriver.Data.UpperDir}}')
echo "upper: $upper"
[ -d "$upper" ] || fail "no upper directory at $upper"
# Inside the user namespace: the container's ids. A whiteout is a .wh. file or a 0/0 device.
pm unshare sh -s "$upper" <<'EOF' || fail "upper directory check in the user namespace failed"
set -e
up=$1
wh() { [ -e "$1/.wh.$2" ] || [ "$(stat -c %t:%T "$1/$2" 2>/dev/null)" = 0:0 ]; }
test "$(cat "$up/root/added.txt")" = hello
test "$(stat -c %u:%g "$up/opt/owned" "$up/opt/owned/f" "$up/etc/debian_version" | sort -u)" = 1234:2345
test "$(stat -c %u:%g "$up/root/added.txt")" = 0:0
tail -n 1 "$up/etc/motd" | grep -qx more
wh "$up/usr/share" doc
wh "$up/etc" issue
wh "$up/etc" apt
test -e "$up/etc/apt.renamed/sources.list.d"
ls -ln "$up/opt/owned" "$up/etc" | sed 's/^/  /'
echo "upper ok (namespace ids)"
EOF
# From the host: the same files owned by the subordinate ids (container id N -> sub start + N - 1)
# and by the user itself (container root).
want="$((sub_u + 1233)):$((sub_g + 2344))"
got=$(stat -c %u:%g "$upper/opt/owned/f")
[ "$got" = "$want" ] || fail "host owner of opt/owned/f is $got, want $want"
got=$(stat -c %u:%g "$upper/root/added.txt")
[ "$got" = "$ROOTLESS_UID:$ROOTLESS_GID" ] || fail "host owner of root/added.txt is $got, want the user"
echo "upper ok (host ids: $want for container 1234:2345)"

step "a running container's root is a FUSE mount of the mount program in the user's mount namespace"
pm run -d --name c2 localhost/rl-base sh -c 'echo running > /root/running; sleep 120' >/dev/null
merged=$(pm inspect c2 --format '{{.GraphDriver.Data.MergedDir}}')
upper2=$(pm inspect c2 --format '{{.GraphDriver.Data.UpperDir}}')
found=""
for _ in $(seq 1 100); do
    if pm unshare cat "$upper2/root/running" 2>/dev/null | grep -qx running; then found=1; break; fi
    sleep 0.1
done
[ -n "$found" ] || fail "the running container's write is not in its upper directory"
pm unshare awk -v m="$merged" '$5 == m' /proc/self/mountinfo | tee "$work/mountinfo"
grep -q " - $fstype " "$work/mountinfo" || fail "$merged is not a $fstype mount"
pm rm -f -t 0 c2 >/dev/null

step "podman commit, then run the commit"
pm commit -q c1 localhost/rl-changed >/dev/null
verify='set -e
test "$(cat /root/added.txt)" = hello
test "$(stat -c %u:%g /opt/owned/f /etc/debian_version | sort -u)" = 1234:2345
test ! -e /usr/share/doc
test ! -e /etc/issue
test ! -e /etc/apt
test -e /etc/apt.renamed/sources.list.d
echo verified'
[ "$(pm run --rm localhost/rl-changed sh -c "$verify")" = verified ] || fail "the committed image lacks the changes"

step "podman build: a Containerfile with several RUN steps"
mkdir -p "$ROOTLESS_HOME/ctx"
echo payload >"$ROOTLESS_HOME/ctx/payload.txt"
cat >"$ROOTLESS_HOME/ctx/Containerfile" <<'EOF'
FROM localhost/rl-base
RUN groupadd -g 2000 app && useradd -u 2000 -g app -m -d /home/app app
COPY payload.txt /opt/payload.txt
RUN install -d -o app -g app -m 0750 /srv/app && \
    install -o 2000 -g 2000 -m 0640 /opt/payload.txt /srv/app/payload.txt && \
    chown 3000:3001 /opt/payload.txt
RUN rm -rf /var/cache/debconf /etc/motd && mv /var/log /var/log.old && \
    su app -s /bin/sh -c 'echo mine > /home/app/notes'
EOF
chown -R "$ROOTLESS_UID:$ROOTLESS_GID" "$ROOTLESS_HOME/ctx"
pm build -q --network=none -t localhost/rl-built ctx >/dev/null
built_check='set -e
test "$(id -u app):$(id -g app)" = 2000:2000
test "$(stat -c %u:%g:%a /srv/app /srv/app/payload.txt)" = "2000:2000:750
2000:2000:640"
test "$(stat -c %u:%g /opt/payload.txt /home/app/notes)" = "3000:3001
2000:2000"
test ! -e /var/cache/debconf && test ! -e /etc/motd && test ! -e /var/log && test -d /var/log.old
echo verified'
[ "$(pm run --rm localhost/rl-built sh -c "$built_check")" = verified ] || fail "the built image is wrong"

# layer_entries ARCHIVE_DIR: one line per entry of every layer tar of an unpacked docker-archive,
# in layer order: "INDEX PATH UID GID MODE TYPE" (TYPE: tar's type flag, 0 regular, 5 directory).
layer_entries() {
    python3 - "$1" <<'EOF'
import json, os, sys, tarfile
root = sys.argv[1]
with open(os.path.join(root, "manifest.json")) as f:
    layers = json.load(f)[0]["Layers"]
for i, layer in enumerate(layers):
    with tarfile.open(os.path.join(root, layer)) as t:
        for m in t:
            name = m.name[2:] if m.name.startswith("./") else m.name
            print(i, name.rstrip("/"), m.uid, m.gid, "%o" % (m.mode & 0o7777), m.type.decode())
EOF
}

# saved_layers IMAGE: save IMAGE as the user, unpack it and list its entries into $work/entries.
saved_layers() {
    rm -rf "$ROOTLESS_HOME/saved.tar" "$work/saved"
    pm save -q -o saved.tar "$1"
    mkdir -p "$work/saved"
    tar -C "$work/saved" -xf "$ROOTLESS_HOME/saved.tar"
    layer_entries "$work/saved" >"$work/entries"
    echo "$(wc -l <"$work/entries") entries in $(awk '{print $1}' "$work/entries" | sort -u | wc -l) layers"
}

# expect_entry LAYER PATH UID GID [MODE]: the entry is in layer LAYER ("last": the top layer).
expect_entry() {
    local layer=$1 path=$2 uid=$3 gid=$4 mode=${5:-}
    [ "$layer" = last ] && layer=$(awk 'END {print $1}' "$work/entries")
    awk -v l="$layer" -v p="$path" -v u="$uid" -v g="$gid" -v m="$mode" \
        '$1 == l && $2 == p && $3 == u && $4 == g && (m == "" || $5 == m) { ok = 1 } END { exit !ok }' \
        "$work/entries" || {
        grep -F " $path " "$work/entries" >&2 || true
        # Kept past the clean-up for a look at the whole layer.
        cp "$work/entries" /var/tmp/stratafs-e2e-rootless-failed.entries
        echo "all entries: /var/tmp/stratafs-e2e-rootless-failed.entries" >&2
        fail "layer $layer of the saved image lacks $path owned $uid:$gid${mode:+ mode $mode}"
    }
}

step "podman save of the commit: owners and whiteouts in its layer tar"
saved_layers localhost/rl-changed
expect_entry last opt/owned 1234 2345
expect_entry last opt/owned/f 1234 2345
expect_entry last etc/debian_version 1234 2345
expect_entry last root/added.txt 0 0
expect_entry last usr/share/.wh.doc 0 0
expect_entry last etc/.wh.issue 0 0
expect_entry last etc/.wh.apt 0 0
expect_entry last etc/apt.renamed/sources.list.d 0 0
if awk '$2 ~ /(^|\/)\.wh\.\.wh\.(plnk|orph|work)/ { bad = 1 } END { exit !bad }' "$work/entries"; then
    fail "the saved layer holds overlay or stratafs internals"
fi
echo "commit layer ok"

step "podman save of the build: owners and whiteouts in each RUN layer"
saved_layers localhost/rl-built
# Layers: 0 base, 1 useradd, 2 COPY, 3 install, 4 deletions.
expect_entry 1 home/app 2000 2000
expect_entry 1 home/app/.profile 2000 2000
expect_entry 1 etc/passwd 0 0
expect_entry 3 srv/app 2000 2000 750
expect_entry 3 srv/app/payload.txt 2000 2000 640
expect_entry 3 opt/payload.txt 3000 3001
expect_entry 4 etc/.wh.motd 0 0
expect_entry 4 var/cache/.wh.debconf 0 0
expect_entry 4 var/.wh.log 0 0
expect_entry 4 var/log.old 0 0
expect_entry 4 home/app/notes 2000 2000
echo "build layers ok"

step "removing containers and images: no stratafs server is left"
pm rm -a -f -t 0 >/dev/null
pm rmi -a -f >/dev/null
left=""
for _ in $(seq 1 100); do
    left=$(ps -o pid=,args= -u "$ROOTLESS_UID" | grep -F -- "$STRATAFS" | grep -v grep || true)
    [ -z "$left" ] && break
    sleep 0.1
done
[ -z "$left" ] || fail "stratafs servers are left after podman rm/rmi: $left"

echo "e2e-podman-rootless: all checks passed"
