# shellcheck shell=bash disable=SC2034 # globals here are read by the sourcing script
# `scripts/bench.sh --rootless`: the read and write rows as an unprivileged user inside a user
# namespace, the way rootless Podman runs its mount program. Sourced by scripts/bench.sh.
#
# The outer run (real root) prepares everything, then runs bench.sh again as the user, in a user
# and mount namespace made by `unshare --map-root-user --map-auto --mount` (uid 0 -> the user,
# 1..65535 -> its /etc/subuid range through newuidmap/newgidmap, as Podman maps them). Inside,
# every backend mounts as namespace root: stratafs and fuse-overlayfs mount FUSE themselves (no
# fusermount3, no FUSE passthrough: the kernel grants that only to init-namespace root) and
# kernel overlayfs mounts with `userxattr` (Linux >= 5.11).
# - layers: a copy of the cached set with owners moved into the namespace's host range (as
#   rootless Podman's layers are) and user.overlay.opaque beside trusted.overlay.opaque.
# - cold runs: the namespace cannot drop the page cache; it asks the outer run over a FIFO,
#   which syncs and drops it, so "cold" means the same as in the root table.
# - /dev/fuse is opened up (0666) for the run when it is 0600 (no udev), restored afterwards.

ROOTLESS=0
DROP_SERVER_PID=""

# In the namespace: ask the outer run to drop the caches (see the header).
rootless_drop_caches() {
  echo drop >"$BENCH_DROP_REQ"
  local ack
  read -r ack <"$BENCH_DROP_ACK"
}

# Outer run: serve drop requests until the FIFO's writer side is gone for good.
drop_server() {
  local req
  while :; do
    while read -r req; do
      sync
      echo 3 >/proc/sys/vm/drop_caches
      echo ok >"$BENCH_DROP_ACK"
    done <"$BENCH_DROP_REQ"
  done
}

# The shifted copy of L1, L2 and L3 for the user, reused while the user's ids and the layers'
# parameters stay the same.
rootless_layers() {
  local rl="$SET/rootless" key n
  local sub_u sub_g
  sub_u=$(rootless_subuid_start)
  sub_g=$(rootless_subgid_start)
  key="$ROOTLESS_UID:$ROOTLESS_GID:$sub_u:$sub_g $(cat "$CACHE/rootfs.done" "$SET/l2.done" "$SET/l3.done" | tr '\n' ' ')"
  if [[ -f $rl.done && $(<"$rl.done") == "$key" && -d $rl/l3 && -f $rl/rootfs-nodev.tar ]]; then
    log "rootless layers: reusing $rl"
  else
    log "rootless layers: copying L1, L2, L3 to $rl with owners moved to the user's namespace"
    rm -rf --one-file-system "$rl" "$rl.done"
    mkdir -p "$rl"
    for n in L1 L2 L3; do
      cp -a --reflink=auto "${!n}" "$rl/${n,,}"
      python3 "$GEN" shift --tree "$rl/${n,,}" --root-uid "$ROOTLESS_UID" --root-gid "$ROOTLESS_GID" \
        --sub-uid "$sub_u" --sub-gid "$sub_g" --count 65535
    done
    # A user namespace cannot mknod devices (as for rootless Podman): the untar row unpacks the
    # root filesystem without its /dev nodes.
    cp "$ROOTFS_TAR" "$rl/rootfs-nodev.tar"
    # (A generated tree, made where debootstrap is unavailable, has no /dev: tar --delete
    # fails when nothing matches.)
    if tar -tf "$rl/rootfs-nodev.tar" | grep -q '^\./dev/.'; then
      tar --wildcards --delete -f "$rl/rootfs-nodev.tar" './dev/?*'
    fi
    chmod 0644 "$rl/rootfs-nodev.tar"
    echo "$key" >"$rl.done"
  fi
  L1="$rl/l1" L2="$rl/l2" L3="$rl/l3" ROOTFS_TAR="$rl/rootfs-nodev.tar"
  note "rootless: the tar -x row unpacks the root filesystem without its device nodes (no mknod in a user namespace)"
}

rootless_outer_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  [[ -z $DROP_SERVER_PID ]] || kill "$DROP_SERVER_PID" 2>/dev/null
  # The user's processes (the inner bench, its FUSE servers) go by pid; its mount namespace and
  # every mount in it go with them.
  rootless_cleanup
  [[ -z ${RL_RUN:-} ]] || rm -rf --one-file-system "$RL_RUN"
  exit "$rc"
}

# rootless_main ARGS...: the outer run (real root).
rootless_main() {
  local t
  command -v newuidmap >/dev/null || die "newuidmap not found (apt-get install uidmap)"
  command -v unshare >/dev/null || die "unshare not found (util-linux)"
  command -v setpriv >/dev/null || die "setpriv not found (util-linux)"
  if section_selected archive; then
    note "rootless: the archive section runs as root only; skipped"
    SECTIONS=${SECTIONS//archive/}
  fi
  # shellcheck source=SCRIPTDIR/rootless.sh
  source "$LIB_DIR/rootless.sh"
  mkdir -p "$CACHE"
  RL_RUN=$(mktemp -d "$CACHE/rootless-run.XXXXXX")
  chmod 0755 "$RL_RUN"
  LOG="$CACHE/bench-last.log"
  RUN_DIR="$RL_RUN"
  STEP_OUT="$RL_RUN/step.out"
  : >"$LOG"
  trap rootless_outer_cleanup EXIT
  trap 'log "interrupted"; exit 130' INT
  trap 'log "terminated"; exit 143' TERM
  require_tools
  if backend_selected kernel && [[ $(uname -r | awk -F. '{ print $1 * 1000 + $2 }') -lt 5011 ]]; then
    die "kernel overlayfs in a user namespace needs Linux >= 5.11 (drop kernel from --backends)"
  fi
  if backend_selected stratafs; then find_stratafs; fi
  probe_drop_caches
  prepare_layers
  LAYER_COUNTS=$(describe_layers)

  rootless_user_create "sfs-bench-$$" "$RL_RUN/home" subids
  rootless_open_fuse
  rootless_layers
  # The user runs copies: the checkout (often under /root) need not be readable by it.
  mkdir -p "$RL_RUN/bin"
  cp -r "$SCRIPT_DIR" "$RL_RUN/scripts"
  [[ -z ${STRATAFS:-} ]] || install -m 0755 "$STRATAFS" "$RL_RUN/bin/stratafs"
  mkfifo "$RL_RUN/drop.req" "$RL_RUN/drop.ack"
  mkdir -p "$RL_RUN/cache"
  chown "$ROOTLESS_UID:$ROOTLESS_GID" "$RL_RUN/drop.req" "$RL_RUN/drop.ack" "$RL_RUN/cache"
  BENCH_DROP_REQ="$RL_RUN/drop.req" BENCH_DROP_ACK="$RL_RUN/drop.ack"
  if ((DROP_OK)); then
    drop_server &
    DROP_SERVER_PID=$!
  fi
  {
    # Plain assignments, not declare -p: the file is sourced inside a function.
    for t in L1 L2 L3 ROOTFS_TAR COPYUP_LIST BIG_BYTES L1_ORIGIN LAYER_COUNTS DROP_OK \
      BENCH_DROP_REQ BENCH_DROP_ACK; do
      printf '%s=%q\n' "$t" "${!t}"
    done
    printf 'STRATAFS=%q\n' "$RL_RUN/bin/stratafs"
    printf 'STRATAFS_BENCH_CACHE=%q\n' "$RL_RUN/cache"
    printf 'BENCH_REPORT=%q\n' "$RL_RUN/cache/report.md"
    printf 'BENCH_DESCRIBE=%q\n' "$(git -C "$REPO_DIR" describe --always --dirty 2>/dev/null || echo '?')"
    printf 'BENCH_ROOTLESS_USER=%q\n' "$ROOTLESS_USER"
    printf 'BENCH_NOTES=(%s)\n' "$( ((${#NOTES[@]} == 0)) || printf '%q ' "${NOTES[@]}")"
  } >"$RL_RUN/env.sh"
  chmod 0644 "$RL_RUN/env.sh"
  log "running the workloads as $ROOTLESS_USER in a user namespace (log: $RL_RUN/cache/bench-last.log)"
  t=0
  STRATAFS_ENV="BENCH_ROOTLESS_ENV=$RL_RUN/env.sh" as_user \
    unshare --map-root-user --map-auto --mount \
    bash "$RL_RUN/scripts/bench.sh" "${ORIG_ARGS[@]}" || t=$?
  cat "$RL_RUN/cache/bench-last.log" >>"$LOG" 2>/dev/null || true
  ((t == 0)) || die "the rootless run failed (exit $t); see $LOG"
  cp "$RL_RUN/cache/report.md" "$REPO_DIR/bench-results-rootless.md"
  log "table written to $REPO_DIR/bench-results-rootless.md; command output in $LOG"
}

# In the namespace: take over what the outer run prepared.
rootless_inner_setup() {
  # shellcheck source=/dev/null
  source "$BENCH_ROOTLESS_ENV"
  NOTES=("${BENCH_NOTES[@]}")
  SECTIONS=${SECTIONS//archive/}
  note "rootless: run as $BENCH_ROOTLESS_USER in a user namespace (unshare --map-root-user --map-auto: 0 -> the user, 1..65535 -> its subuids); layers owned by the namespace's ids; FUSE servers mount as namespace root without passthrough; kernel overlay mounted with userxattr"
  ((DROP_OK)) || note "cannot write /proc/sys/vm/drop_caches: \"cold\" runs are NOT cold"
  export L1 L2 L3 ROOTFS_TAR COPYUP_LIST BIG_BYTES
}
