#!/usr/bin/env bash
# End-to-end: stratafs used by a plain unprivileged user, outside any user namespace and without
# /etc/subuid ranges (unprivileged CI). Run as root: it creates the user, then runs every stratafs
# command as that user (setpriv --reuid/--regid --clear-groups).
#
# 1. the fuse-overlayfs command line: `stratafs -o lowerdir=L2:L1,upperdir=U,workdir=W MP`,
#    mounted through the setuid fusermount3; create, append to and overwrite lower files
#    (copy-ups), delete lower files and directories, rename a lower directory, chmod, chown to
#    oneself, copy up a root-owned file; `fusermount3 -u`; then the upper directory is checked from
#    outside (contents, whiteouts, modes, the root owner kept in user.containers.override_stat) and
#    read back through a read-only mount with the upper as the top lower layer.
# 2. the layer store: `stratafs --root DIR create/apply/create-rw/mount`, the same kinds of changes
#    through the mount, `changes`, the upper directory checked, `umount`, `rm`.
#
# /dev/fuse is 0600 on machines without udev (distributions ship it 0666): an unprivileged
# server cannot open it then, so it is set to 0666 for the run and restored at exit. The stratafs
# binary is copied into the run directory (the checkout need not be readable by the user).
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

ensure_pkg fusermount3 fuse3
ensure_pkg setpriv util-linux
ensure_pkg python3 python3
ensure_pkg pgrep procps

STRATAFS=${STRATAFS:-}
if [ -z "$STRATAFS" ]; then
    step "building stratafs"
    (cd "$repo" && cargo build --release --quiet)
    STRATAFS="$repo/target/release/stratafs"
fi

work=$(mktemp -d /var/tmp/stratafs-e2e-unpriv.XXXXXX)
chmod 0755 "$work"
cleanup() {
    local rc=$?
    set +e
    # The user's mounts are in our mount namespace: detach what is left under $work.
    awk -v w="$work/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while read -r m; do fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m"; done
    rootless_cleanup
    rm -rf --one-file-system "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$work/bin"
install -m 0755 "$STRATAFS" "$work/bin/stratafs"
S="$work/bin/stratafs"
"$S" --version

step "creating an unprivileged user without subuid/subgid ranges"
user="sfs-up-$$"
rootless_user_create "$user" "$work/home" nosubids
! grep -q "^$user:" /etc/subuid /etc/subgid || fail "$user has subordinate ids"
rootless_open_fuse
uid=$ROOTLESS_UID gid=$ROOTLESS_GID
u() { as_user "$@"; }

# The override_stat value of a file ("" without one).
override_of() {
    python3 -c 'import os, sys
try:
    print(os.getxattr(sys.argv[1], "user.containers.override_stat", follow_symlinks=False).decode())
except OSError:
    print("")' "$1"
}
# A whiteout for NAME in DIR, in either format stratafs may write unprivileged.
is_whiteout() { [ -e "$1/.wh.$2" ] || [ "$(stat -c %F:%t:%T "$1/$2" 2>/dev/null)" = "character special file:0:0" ]; }

step "1. stratafs -o lowerdir=...,upperdir=...,workdir=... as $user"
d="$work/overlay"
mkdir -p "$d"/{l1/dir,l1/sub/deep,l1/gone.dir,l2,upper,work,mp,ro}
echo a >"$d/l1/a.txt"
echo old >"$d/l1/over.txt"
echo b >"$d/l1/dir/b.txt"
echo g >"$d/l1/gone.txt"
echo deep >"$d/l1/sub/deep/f"
echo x >"$d/l1/gone.dir/x"
echo c >"$d/l2/c.txt"
chown -R "$uid:$gid" "$d"
# A root-owned file anyone may write: its copy-up keeps root as the owner the view shows.
echo r >"$d/l1/rootfile"
chown 0:0 "$d/l1/rootfile"
chmod 0666 "$d/l1/rootfile"
lowers="$d/l2:$d/l1"
u "$S" -o "lowerdir=$lowers,upperdir=$d/upper,workdir=$d/work" "$d/mp"
line=$(awk -v m="$d/mp" '$5 == m' /proc/self/mountinfo)
echo "$line"
case $line in
    *" - fuse.stratafs "*"user_id=$uid,"*) ;;
    *) fail "$d/mp is not a stratafs mount of $user: $line" ;;
esac
u sh -es "$d/mp" "$uid" "$gid" <<'EOF' || fail "changes through the -o mount failed"
mp=$1 uid=$2 gid=$3
echo new > "$mp/new"
echo more >> "$mp/a.txt"
echo replaced > "$mp/over.txt"
rm "$mp/gone.txt"
rm -r "$mp/gone.dir" "$mp/sub"
mv "$mp/dir" "$mp/dir2"
chmod 0600 "$mp/dir2/b.txt"
chown "$uid:$gid" "$mp/c.txt"
echo x >> "$mp/rootfile"
ln -s new "$mp/link"
test "$(cat "$mp/a.txt")" = "$(printf 'a\nmore')"
test "$(cat "$mp/dir2/b.txt")" = b
test ! -e "$mp/dir" && test ! -e "$mp/gone.txt" && test ! -e "$mp/sub"
test "$(stat -c %u:%g "$mp/rootfile")" = 0:0
test "$(stat -c %a "$mp/dir2/b.txt")" = 600
EOF
pid=$(pgrep -u "$uid" -f -- "$d/mp" | head -n 1 || true)
u fusermount3 -u "$d/mp"
! mountpoint -q "$d/mp" || fail "$d/mp is still mounted after fusermount3 -u"
if [ -n "$pid" ]; then
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    ! kill -0 "$pid" 2>/dev/null || fail "the server ($pid) is still running after the unmount"
fi

step "1. the upper directory holds the changes"
up="$d/upper"
find "$up" -printf '  %M %u:%g %p\n' | sed "s|$up|U|"
[ "$(cat "$up/new")" = new ] || fail "upper/new"
[ "$(cat "$up/a.txt")" = "$(printf 'a\nmore')" ] || fail "upper/a.txt lacks the append"
[ "$(cat "$up/over.txt")" = replaced ] || fail "upper/over.txt"
[ "$(readlink "$up/link")" = new ] || fail "upper/link"
[ "$(stat -c %a "$up/dir2/b.txt")" = 600 ] || fail "upper/dir2/b.txt mode"
for w in gone.txt gone.dir sub dir; do is_whiteout "$up" "$w" || fail "no whiteout for $w"; done
[ -z "$(find "$up" ! -user "$uid")" ] || fail "upper files not owned by $user: $(find "$up" ! -user "$uid")"
o=$(override_of "$up/rootfile")
case $o in 0:0:*) ;; *) fail "upper/rootfile records owner '$o', want 0:0" ;; esac
[ "$(cat "$d/l1/a.txt")" = a ] && [ -e "$d/l1/gone.txt" ] && [ -d "$d/l1/dir" ] || fail "a lower layer changed"
echo "upper ok; rootfile override_stat: $o"

step "1. read-only mount with the upper as top layer shows the same view"
u "$S" -o "lowerdir=$up:$lowers" "$d/ro"
u sh -es "$d/ro" <<'EOF' || fail "read-only view differs"
mp=$1
test "$(cat "$mp/a.txt")" = "$(printf 'a\nmore')"
test "$(cat "$mp/new")" = new
test "$(cat "$mp/dir2/b.txt")" = b
test ! -e "$mp/gone.txt" && test ! -e "$mp/gone.dir" && test ! -e "$mp/sub" && test ! -e "$mp/dir"
test "$(stat -c %u:%g "$mp/rootfile")" = 0:0
! touch "$mp/nope" 2>/dev/null
EOF
u fusermount3 -u "$d/ro"

step "2. stratafs --root DIR create / apply / create-rw / mount as $user"
t="$work/tree"
mkdir -p "$t"/{etc,opt/app,var/old}
echo base >"$t/etc/conf"
echo s >"$t/etc/secret"
chmod 0600 "$t/etc/secret"
echo app >"$t/opt/app/bin"
chown -R 1234:1234 "$t/opt/app"
echo o >"$t/var/old/f"
tar --numeric-owner -C "$t" -cf "$work/base.tar" .
chmod 0644 "$work/base.tar"
store="$ROOTLESS_HOME/store"
st() { u "$S" --root "$store" "$@"; }
st create base
st apply base "$work/base.tar"
st create-rw ctr --parent base
mp=$(st mount ctr)
echo "mounted at $mp"
# The tar's owners (root, 1234) are kept in override_stat and shown by the mount (only the
# user itself may look into its mount: no allow_other).
[ "$(u stat -c %u:%g "$mp/etc/conf" "$mp/opt/app/bin" | tr '\n' ' ')" = "0:0 1234:1234 " ] ||
    fail "the mount does not show the tar's owners"
u sh -es "$mp" "$uid" "$gid" <<'EOF' || fail "changes through the store mount failed"
mp=$1 uid=$2 gid=$3
echo more >> "$mp/etc/conf"
rm "$mp/etc/secret"
rm -r "$mp/var/old"
echo n > "$mp/new"
chown "$uid:$gid" "$mp/new"
chmod 0700 "$mp/opt/app/bin"
test "$(stat -c %a:%u:%g "$mp/opt/app/bin")" = 700:1234:1234
test "$(stat -c %u:%g "$mp/new")" = "$uid:$gid"
EOF
changes=$(st changes ctr | sort)
echo "$changes"
for want in 'C /etc/conf' 'D /etc/secret' 'D /var/old' 'A /new' 'C /opt/app/bin'; do
    grep -qx "$want" <<<"$changes" || fail "stratafs changes misses '$want'"
done
upper=$(st inspect ctr | awk '$1 == "UpperDir:" { print $2 }')
[ -d "$upper" ] || fail "no upper directory in 'stratafs inspect ctr'"
[ "$(cat "$upper/etc/conf")" = "$(printf 'base\nmore')" ] || fail "upper etc/conf"
[ "$(cat "$upper/new")" = n ] || fail "upper new"
is_whiteout "$upper/etc" secret || fail "no whiteout for etc/secret"
is_whiteout "$upper/var" old || fail "no whiteout for var/old"
o=$(override_of "$upper/opt/app/bin")
[ "$o" = "1234:1234:700" ] || [ "$o" = "1234:1234:700:file" ] || fail "upper opt/app/bin override '$o'"
echo "upper ok; opt/app/bin override_stat: $o"
st umount ctr
! mountpoint -q "$mp" || fail "$mp still mounted after stratafs umount"
st rm ctr
st rm base
[ -z "$(st ls | tail -n +2)" ] || fail "layers left: $(st ls)"

echo "e2e-unprivileged: all checks passed"
