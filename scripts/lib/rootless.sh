# shellcheck shell=bash disable=SC2034 # globals here are read by the sourcing script
# Shared by the rootless end-to-end scripts and `scripts/bench.sh --rootless`: a throwaway
# unprivileged user (with or without /etc/subuid and /etc/subgid ranges), commands run as that
# user, and /dev/fuse opened up for it. Source this file as root; call `rootless_cleanup` from the
# exit trap (it undoes everything the functions below did, in reverse, and never fails).
#
# Why each piece is needed:
# - /dev/fuse is mode 0600 on machines without udev (distributions ship it 0666): an unprivileged
#   FUSE server, in a user namespace or not, cannot open it then. rootless_open_fuse sets 0666 and
#   rootless_cleanup puts the old mode back.
# - the user's home and XDG_RUNTIME_DIR are made by hand (no login session, no systemd-logind):
#   rootless Podman keeps its run root and pause process state in XDG_RUNTIME_DIR.
# - setpriv --reset-env gives the user a clean login-like environment (HOME, USER, PATH).

ROOTLESS_USER=""
ROOTLESS_UID=""
ROOTLESS_GID=""
ROOTLESS_HOME=""
ROOTLESS_RUNTIME=""
ROOTLESS_FUSE_MODE=""

# rootless_user_create NAME HOME subids|nosubids: a fresh user with HOME as its home directory.
# "subids": it gets /etc/subuid and /etc/subgid ranges (useradd picks ranges no other user has);
# "nosubids": it gets none, as on unprivileged CI.
rootless_user_create() {
    local name=$1 home=$2 kind=$3
    if [ "$kind" = subids ]; then
        useradd -m -d "$home" -s /bin/bash "$name"
    else
        useradd -m -d "$home" -s /bin/bash -K SUB_UID_COUNT=0 -K SUB_GID_COUNT=0 "$name"
    fi
    ROOTLESS_USER=$name
    ROOTLESS_UID=$(id -u "$name")
    ROOTLESS_GID=$(id -g "$name")
    ROOTLESS_HOME=$home
    if [ "$kind" = subids ]; then
        # useradd adds ranges only when login.defs asks for them; add one ourselves otherwise,
        # past every range already given out.
        local f start
        for f in /etc/subuid /etc/subgid; do
            grep -q "^$name:" "$f" 2>/dev/null && continue
            start=$(awk -F: 'BEGIN { m = 100000 } $2 + $3 > m { m = $2 + $3 } END { print m }' "$f" 2>/dev/null || echo 100000)
            echo "$name:$start:65536" >>"$f"
        done
    else
        sed -i "/^$name:/d" /etc/subuid /etc/subgid 2>/dev/null || true
    fi
    ROOTLESS_RUNTIME=/run/user/$ROOTLESS_UID
    mkdir -p "$ROOTLESS_RUNTIME"
    chown "$ROOTLESS_UID:$ROOTLESS_GID" "$ROOTLESS_RUNTIME"
    chmod 0700 "$ROOTLESS_RUNTIME"
}

# The first subordinate uid and gid of the user (for host-side ownership checks).
rootless_subuid_start() { awk -F: -v u="$ROOTLESS_USER" '$1 == u { print $2; exit }' /etc/subuid; }
rootless_subgid_start() { awk -F: -v u="$ROOTLESS_USER" '$1 == u { print $2; exit }' /etc/subgid; }

# as_user CMD...: run CMD as the user in its home, with a login-like environment, no
# supplementary groups and no user namespace. STRATAFS_ENV (if set) holds extra NAME=VALUE words.
as_user() {
    # shellcheck disable=SC2086 # STRATAFS_ENV is a list of NAME=VALUE words
    setpriv --reuid="$ROOTLESS_UID" --regid="$ROOTLESS_GID" --clear-groups --reset-env \
        env XDG_RUNTIME_DIR="$ROOTLESS_RUNTIME" ${STRATAFS_ENV:-} \
        sh -c 'cd "$HOME" && exec "$@"' sh "$@"
}

# Let unprivileged users open /dev/fuse (see the header); the old mode is restored at clean-up.
rootless_open_fuse() {
    [ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
    [ -c /dev/fuse ] || { echo "no /dev/fuse" >&2; return 1; }
    if [ -z "$ROOTLESS_FUSE_MODE" ]; then
        ROOTLESS_FUSE_MODE=$(stat -c %a /dev/fuse)
    fi
    chmod 0666 /dev/fuse
}

# Pids of the user's processes (its FUSE servers, Podman's pause process, ...).
rootless_pids() {
    [ -n "$ROOTLESS_UID" ] || return 0
    ps -o pid= -u "$ROOTLESS_UID" 2>/dev/null | tr -d ' ' || true
}

rootless_cleanup() {
    local pid
    if [ -n "$ROOTLESS_USER" ]; then
        # Stop every process of the user by pid (the throwaway user runs nothing else): its
        # FUSE servers in Podman's mount namespace are not visible from here, and the namespace
        # (with its mounts) goes away with its last process.
        for pid in $(rootless_pids); do kill -TERM "$pid" 2>/dev/null || true; done
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            [ -z "$(rootless_pids)" ] && break
            sleep 0.2
        done
        for pid in $(rootless_pids); do kill -KILL "$pid" 2>/dev/null || true; done
        userdel "$ROOTLESS_USER" 2>/dev/null || true
        sed -i "/^$ROOTLESS_USER:/d" /etc/subuid /etc/subgid 2>/dev/null || true
        [ -n "$ROOTLESS_RUNTIME" ] && rm -rf --one-file-system "$ROOTLESS_RUNTIME"
        ROOTLESS_USER=""
    fi
    if [ -n "$ROOTLESS_FUSE_MODE" ]; then
        chmod "$ROOTLESS_FUSE_MODE" /dev/fuse 2>/dev/null || true
        ROOTLESS_FUSE_MODE=""
    fi
}
