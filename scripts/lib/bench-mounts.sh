# shellcheck shell=bash disable=SC2034 # globals here are read by the sourcing script
# Mounting and unmounting the three backends, finding the FUSE server's pid and its peak memory,
# and tearing everything down on exit. Sourced by scripts/bench.sh.

MOUNT_SEQ=0
MNT=""          # directory of the current mount: merged/, upper/, work/
MERGED=""       # its merged view
MOUNT_SECS=""   # time from starting the mount command until the mount point answered stat
SERVER_PID=""   # FUSE server of the current mount ("" for kernel overlay)
LAST_PEAK_KB="" # VmHWM of the server read just before the last unmount

# The mount command of each backend; all three take the same lowerdir/upperdir/workdir syntax.
backend_mount_cmd() { # BACKEND OPTIONS MERGED
  case $1 in
    # Beside the ring column, the stratafs column is /dev/fuse (the ring is the default where
    # enable_uring is set).
    stratafs) run_step 60 "$STRATAFS" -o "$2${DEV_FUSE_OPT:-}" "$3" ;;
    stratafs-ring) run_step 60 "$STRATAFS" -o "$2,uring" "$3" ;;
    fuse-overlayfs) run_step 60 fuse-overlayfs -o "$2" "$3" ;;
    # In a user namespace (--rootless) overlayfs keeps its xattrs in user.overlay.*.
    kernel) run_step 60 mount -t overlay overlay -o "$2${BENCH_ROOTLESS_ENV:+,userxattr}" "$3" ;;
    *) die "unknown backend $1" ;;
  esac
}

is_fuse_backend() { [[ $1 != kernel ]]; }

# Wait until MERGED is a mount point that answers stat (a daemonizing server may return early).
wait_ready() {
  local deadline=$((SECONDS + 30))
  until mountpoint -q "$1" && stat "$1" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.01
  done
}

# The process serving MERGED: the one whose command line holds MERGED as a whole argument.
# The pattern comes from a file so grep does not match its own command line.
server_pid() {
  local pattern="$RUN_DIR/pattern"
  printf '%s\n' "$1" >"$pattern"
  { grep -lzxF -f "$pattern" /proc/[0-9]*/cmdline 2>/dev/null || true; } |
    awk -F/ -v self="$$" '$3 != self { print $3; exit }'
}

peak_rss_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }

# mount_backend BACKEND ro|rw|rw-volatile: a fresh mount over L3:L2:L1 (plus a fresh upper dir for rw).
mount_backend() {
  local backend=$1 mode=$2 opts t0
  MOUNT_SEQ=$((MOUNT_SEQ + 1))
  MNT="$RUN_DIR/mnt/$backend-$MOUNT_SEQ"
  MERGED="$MNT/merged"
  SERVER_PID=""
  mkdir -p "$MERGED"
  opts="lowerdir=$L3:$L2:$L1"
  if [[ $mode == rw* ]]; then
    mkdir -p "$MNT/upper" "$MNT/work"
    opts+=",upperdir=$MNT/upper,workdir=$MNT/work"
  fi
  # rw-volatile: no flush of copy-ups (kernel overlayfs and stratafs flush each one otherwise;
  # fuse-overlayfs never does)
  [[ $mode != rw-volatile ]] || opts+=",volatile"

  t0=$EPOCHREALTIME
  if ! backend_mount_cmd "$backend" "$opts" "$MERGED" || ! wait_ready "$MERGED"; then
    unmount_backend
    return 1
  fi
  MOUNT_SECS=$(seconds_between "$t0" "$EPOCHREALTIME")
  if is_fuse_backend "$backend"; then
    SERVER_PID=$(server_pid "$MERGED")
    if [[ -n $SERVER_PID ]]; then
      echo "$SERVER_PID" >>"$RUN_DIR/servers"
    else
      note "$backend: no process has the mount point in its command line; memory not measured"
    fi
  fi
  # A ring column whose mount fell back to /dev/fuse (enable_uring put back to N by someone
  # else meanwhile, a kernel that refused the queues) would time the other transport.
  if [[ $backend == stratafs-ring ]] && ! serves_on_ring "$SERVER_PID"; then
    note "stratafs-ring: a mount was not served over io_uring (enable_uring is $(cat "$URING_PARAM" 2>/dev/null))"
    unmount_backend
    return 1
  fi
  return 0
}

# Whether the stratafs server PID has ring queue threads (ring-qN), as `stratafs status` tells.
serves_on_ring() {
  [[ -n $1 ]] && grep -qs '^ring-q' /proc/"$1"/task/*/comm
}

# A process that is gone or a zombie: a daemonized server is re-parented to PID 1, which does
# not always reap it (on this machine it does not), so /proc/PID may stay.
has_exited() {
  local state
  state=$(awk '/^State:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true)
  [[ -z $state || $state == Z || $state == X ]]
}

# Wait up to N seconds for a process to exit.
wait_exit() {
  local pid=$1 deadline=$((SECONDS + $2))
  until has_exited "$pid"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.05
  done
}

# Unmount the current mount, wait for its server to exit (its memory is read first) and delete
# the mount's directories, upper layer included.
unmount_backend() {
  LAST_PEAK_KB=""
  [[ -n $SERVER_PID ]] && LAST_PEAK_KB=$(peak_rss_kb "$SERVER_PID")
  if mountpoint -q "$MERGED" 2>/dev/null; then
    run_step 60 umount "$MERGED" || run_step 30 umount -l "$MERGED" || true
  fi
  if [[ -n $SERVER_PID ]] && ! wait_exit "$SERVER_PID" 30; then
    note "FUSE server $SERVER_PID did not exit 30 s after unmount; killed"
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
  if mountpoint -q "$MERGED" 2>/dev/null; then
    note "could not unmount $MERGED; left in place"
    return 1
  fi
  if [[ -n ${DEFER_DELETE:-} ]]; then
    # The next run must not start right after thousands of deletions: on ext4 without a
    # journal, allocating an inode then skips every recently deleted one (recently_deleted()),
    # which would charge one backend for the previous backend's clean-up.
    mkdir -p "$RUN_DIR/trash"
    mv "$MNT" "$RUN_DIR/trash/"
  else
    rm -rf --one-file-system "$MNT"
  fi
}

# Delete what the deferred runs left, then wait out ext4's "recently deleted" window (60 s) so
# that the next workload's inode allocations do not pay for it.
empty_trash() {
  [[ -d $RUN_DIR/trash ]] || return 0
  rm -rf --one-file-system "$RUN_DIR/trash"
  sync
  sleep "${TRASH_SETTLE_SECS:-65}"
}

# Exit trap: stop the running workload, unmount everything under the run directory (deepest
# first), stop the FUSE servers this run started (checked by pid and mount point), delete the run
# directory.
# FUSE over io_uring for the stratafs-ring column: the module parameter is set for the run
# and put back as it was by cleanup_all.
URING_PARAM=/sys/module/fuse/parameters/enable_uring
URING_OLD=
enable_uring() {
  [[ -w $URING_PARAM ]] || die "stratafs-ring: this kernel has no $URING_PARAM (Linux 6.14+)"
  URING_OLD=$(cat "$URING_PARAM")
  echo Y >"$URING_PARAM" || die "stratafs-ring: could not set $URING_PARAM"
  DEV_FUSE_OPT=",nouring"
}

cleanup_all() {
  local rc=$? mp pid
  trap - EXIT INT TERM
  set +e # best effort from here: one failed step must not skip the rest
  if [[ -n $URING_OLD ]]; then echo "$URING_OLD" >"$URING_PARAM"; fi
  if [[ -n ${CHILD_PID:-} ]]; then
    kill -TERM "$CHILD_PID" 2>/dev/null
    wait "$CHILD_PID" 2>/dev/null
  fi
  [[ -n ${RUN_DIR:-} && -d $RUN_DIR ]] || exit "$rc"
  while read -r mp; do
    umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null ||
      log "warning: could not unmount $mp"
  done < <(awk -v run="$RUN_DIR/" 'index($5, run) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  if [[ -f $RUN_DIR/servers ]]; then
    while read -r pid; do
      if grep -qzF "$RUN_DIR/" "/proc/$pid/cmdline" 2>/dev/null && ! wait_exit "$pid" 5; then
        kill -KILL "$pid" 2>/dev/null
      fi
    done <"$RUN_DIR/servers"
  fi
  if awk -v run="$RUN_DIR/" 'index($5, run) == 1 { found = 1 } END { exit !found }' \
    /proc/self/mountinfo; then
    log "warning: mounts remain under $RUN_DIR; not deleting it"
  else
    rm -rf --one-file-system "$RUN_DIR"
  fi
  exit "$rc"
}
