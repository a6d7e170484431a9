# Shared by the end-to-end scripts and the benchmark: a Debian root filesystem tar, built once
# with debootstrap and cached. Source this file, then call `ensure_rootfs_tar`; it prints the path.
#
# The mirror comes from the machine's own apt configuration; no host name is written here.
# If debootstrap cannot reach it, a busybox-static root is built instead (say so on stderr).

STRATAFS_CACHE=${STRATAFS_CACHE:-/var/tmp/stratafs-cache}

apt_mirror() {
    local uri
    uri=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1 | awk '{print $2}')
    if [ -z "$uri" ]; then
        uri=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | grep -v security | head -n1 | awk '{print $2}')
    fi
    [ -n "$uri" ] || { echo "no apt mirror configured on this machine" >&2; return 1; }
    echo "$uri"
}

ensure_pkg() {
    # ensure_pkg COMMAND PACKAGE: install PACKAGE when COMMAND is missing.
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "+ installing $2" >&2
    if [ -z "${STRATAFS_APT_UPDATED:-}" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        export STRATAFS_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >&2
}

build_busybox_root() {
    local dir=$1
    ensure_pkg busybox busybox-static >&2 || return 1
    mkdir -p "$dir"/{bin,sbin,etc,tmp,usr/bin,usr/sbin,usr/share/doc/busybox,var/lib,root,proc,sys,dev}
    cp "$(command -v busybox)" "$dir/bin/busybox"
    for app in $("$dir/bin/busybox" --list); do ln -sf busybox "$dir/bin/$app"; done
    echo "root:x:0:0:root:/root:/bin/sh" > "$dir/etc/passwd"
    echo "root:x:0:" > "$dir/etc/group"
    echo "busybox root for stratafs tests" > "$dir/usr/share/doc/busybox/README"
    chmod 1777 "$dir/tmp"
}

# ensure_rootfs_tar: print the path of a cached root filesystem tar, building it if needed.
ensure_rootfs_tar() {
    local tarball="$STRATAFS_CACHE/rootfs.tar"
    if [ -s "$tarball" ]; then
        echo "$tarball"
        return 0
    fi
    mkdir -p "$STRATAFS_CACHE"
    (
        exec 9>"$STRATAFS_CACHE/.lock"
        flock 9
        [ -s "$tarball" ] && exit 0
        local dir="$STRATAFS_CACHE/rootfs.build"
        rm -rf "$dir"
        local mirror
        if ensure_pkg debootstrap debootstrap && mirror=$(apt_mirror) &&
            timeout 900 debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$STRATAFS_CACHE/debootstrap.log" 2>&1; then
            echo "+ built a Debian bookworm minbase root with debootstrap" >&2
        else
            echo "+ debootstrap failed (see $STRATAFS_CACHE/debootstrap.log); using a busybox-static root" >&2
            rm -rf "$dir"
            build_busybox_root "$dir"
        fi
        tar --numeric-owner --xattrs -C "$dir" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
        rm -rf "$dir"
    ) >&2 || return 1
    echo "$tarball"
}
