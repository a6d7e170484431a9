#!/usr/bin/env bash
# Benchmark (not a test): the same workloads on stratafs, fuse-overlayfs and kernel overlayfs,
# side by side, each timing on a fresh mount, median of several runs. Prints a markdown table and
# writes it to bench-results.md. See `scripts/bench.sh --help`.
#
# How it measures:
# - every timing runs on a fresh mount over the cached layers L3:L2:L1 (read workloads without an
#   upper dir, write workloads with a fresh upper and work dir), is repeated --reps times, and the
#   median is reported; `sync` runs (untimed) before each one.
# - "cold": `sync; echo 3 > /proc/sys/vm/drop_caches` before the mount, so the mount time and
#   the workload both start from cold caches; "mount + find, cold" adds the two per run, which
#   keeps a backend that front-loads work into its mount honest.
# - "warm" walk: a second `find` on the same mount after an untimed first one.
# - "lower in page cache": the lower file is read directly first, then a fresh mount reads it.
# - the workload is timed inside the child shell ($EPOCHREALTIME), so no fork or mount is counted.
# - peak memory: VmHWM (a high-water mark kept by the kernel) of the process whose command line
#   holds the mount point, read just before the unmount; the largest over the runs is shown.
# - write workloads do not fsync unless the workload says so (dd conv=fsync): kernel overlayfs
#   itself fsyncs every copied-up file, the FUSE servers may not.
# - write runs keep their upper dirs until the row is done; they are deleted together and the
#   next row waits 65 s: on ext4 without a journal an inode allocation skips every inode deleted
#   in the last minute, so deleting one run's upper right before the next run would charge that
#   run (whichever backend it is) for the previous one's clean-up.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LIB_DIR="$SCRIPT_DIR/lib"
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)

# shellcheck source=SCRIPTDIR/lib/bench-common.sh
source "$LIB_DIR/bench-common.sh"
# shellcheck source=SCRIPTDIR/lib/bench-mounts.sh
source "$LIB_DIR/bench-mounts.sh"
# shellcheck source=SCRIPTDIR/lib/bench-layers.sh
source "$LIB_DIR/bench-layers.sh"
# shellcheck source=SCRIPTDIR/lib/bench-workloads.sh
source "$LIB_DIR/bench-workloads.sh"
# shellcheck source=SCRIPTDIR/lib/bench-archive.sh
source "$LIB_DIR/bench-archive.sh"
# shellcheck source=SCRIPTDIR/lib/bench-rootless.sh
source "$LIB_DIR/bench-rootless.sh"

usage() {
  cat <<EOF
usage: scripts/bench.sh [--quick] [--only read|write|archive] [--backends LIST] [--reps N]
                        [--rows IDS] [--rootless]

Runs read, write and archive workloads on stratafs, fuse-overlayfs and kernel overlayfs over one
cached layer set and prints a markdown table (also written to bench-results.md). Must run as root.

  --quick           small sizes (3,000 small files, 5,000-entry big dir, 256 MiB big file)
  --only SECTION    read, write or archive (default: read and write; archive with --only archive
                    or --archive)
  --archive         also run the archive section (stratafs apply/diff/changes vs tar/diff)
  --backends LIST   comma-separated subset of stratafs,fuse-overlayfs,kernel (default: all)
                    and stratafs-ring: stratafs with every request over io_uring (option uring;
                    enable_uring is set for the run and put back at exit; the stratafs column
                    then mounts with nouring, /dev/fuse)
  --transports      both stratafs transports beside fuse-overlayfs and kernel overlayfs
                    (= --backends stratafs,stratafs-ring,fuse-overlayfs,kernel)
  --reps N          timings per cell, median reported (default: 3)
  --rows IDS        only these rows (comma-separated ids) of the read and write sections:
                    r_mount r_find_cold (with r_mount_find) r_find_warm r_ls_big r_tar
                    r_big_cold r_big_warm w_untar w_touch w_touch_v w_echo w_append
                    w_append_v w_during w_rm w_dd
  --rootless        the read and write rows as an unprivileged user in a user namespace, as
                    rootless Podman runs its mount program (unshare --map-root-user --map-auto,
                    subuids through newuidmap; kernel overlay with userxattr); the table goes to
                    bench-results-rootless.md. Still started as root: it creates the user.

environment:
  STRATAFS               stratafs binary (default: target/release/stratafs, built if missing)
  STRATAFS_BENCH_CACHE   layer cache (default: /var/tmp/stratafs-bench)
  BENCH_WORKLOAD_LIMIT   seconds before one workload is killed (default: 300)

The noise floor of the machine: STRATAFS=/usr/bin/fuse-overlayfs scripts/bench.sh --backends
stratafs,fuse-overlayfs runs the same program in both columns; ratios far from 1.00x are noise.
EOF
}

parse_args() {
  PROFILE=full
  SECTIONS="read,write"
  BACKENDS="stratafs,fuse-overlayfs,kernel"
  REPS=3
  ROW_FILTER=""
  while (($#)); do
    case $1 in
      --quick) PROFILE=quick ;;
      --only)
        [[ ${2:-} =~ ^(read|write|archive)$ ]] || die "--only takes read, write or archive"
        SECTIONS=$2
        shift
        ;;
      --archive) SECTIONS+=",archive" ;;
      --backends)
        [[ ${2:-} =~ ^(stratafs|stratafs-ring|fuse-overlayfs|kernel)(,(stratafs|stratafs-ring|fuse-overlayfs|kernel))*$ ]] ||
          die "--backends takes a comma-separated list of stratafs, stratafs-ring, fuse-overlayfs, kernel"
        BACKENDS=$2
        shift
        ;;
      --transports) BACKENDS="stratafs,stratafs-ring,fuse-overlayfs,kernel" ;;
      --reps)
        [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--reps takes a positive number"
        REPS=$2
        shift
        ;;
      --rows)
        [[ ${2:-} =~ ^[rw]_[a-z_]+(,[rw]_[a-z_]+)*$ ]] || die "--rows takes comma-separated row ids (see --help)"
        ROW_FILTER=$2
        shift
        ;;
      --rootless) ROOTLESS=1 ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
  done
  IFS=, read -r -a BACKEND_LIST <<<"$BACKENDS"
}

set_sizes() {
  if [[ $PROFILE == quick ]]; then
    SMALL_FILES=3000 BIG_ENTRIES=5000 BIG_MIB=256 COPYUP_FILES=1000
    IMAGE_FILES=10000 DIFF_FILES=1000
  else
    SMALL_FILES=30000 BIG_ENTRIES=50000 BIG_MIB=1024 COPYUP_FILES=3000
    IMAGE_FILES=100000 DIFF_FILES=10000
  fi
  CACHE=${STRATAFS_BENCH_CACHE:-/var/tmp/stratafs-bench}
  SET="$CACHE/$PROFILE"
  WORKLOAD_LIMIT=${BENCH_WORKLOAD_LIMIT:-300}
}

section_selected() { [[ ,$SECTIONS, == *",$1,"* ]]; }
backend_selected() { [[ ,$BACKENDS, == *",$1,"* ]]; }

require_tools() {
  local t
  for t in timeout mountpoint find tar dd python3 awk grep; do
    command -v "$t" >/dev/null || die "missing tool: $t"
  done
  if backend_selected fuse-overlayfs && ! command -v fuse-overlayfs >/dev/null; then
    die "fuse-overlayfs not found (apt-get install fuse-overlayfs)"
  fi
  if backend_selected kernel && ! grep -qw overlay /proc/filesystems; then
    modprobe overlay 2>/dev/null || die "kernel overlayfs not available"
  fi
}

# The stratafs binary: $STRATAFS, or target/release/stratafs, built (cargo build --release) when
# missing or older than the sources. A failed build is not fatal: the stratafs cells read n/a.
find_stratafs() {
  if [[ -n ${STRATAFS:-} ]]; then
    [[ -x $STRATAFS ]] || die "STRATAFS=$STRATAFS is not executable"
    return 0
  fi
  STRATAFS="$REPO_DIR/target/release/stratafs"
  if [[ -x $STRATAFS ]] &&
    [[ -z $(find "$REPO_DIR/src" "$REPO_DIR/Cargo.toml" "$REPO_DIR/Cargo.lock" -newer "$STRATAFS" \
      -print -quit 2>/dev/null) ]]; then
    return 0
  fi
  log "building stratafs: cargo build --release (output in $LOG)"
  # shellcheck disable=SC2016 # the child expands it
  if ! run_step 3600 bash -c 'cd "$1" && cargo build --release' _ "$REPO_DIR"; then
    note "cargo build --release failed: $(last_error)"
  fi
}

probe_drop_caches() {
  DROP_OK=0
  if (echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then
    DROP_OK=1
  else
    note "cannot write /proc/sys/vm/drop_caches: \"cold\" runs are NOT cold"
  fi
}

report_header() {
  printf '# stratafs benchmark%s (%s)\n\n' "${BENCH_ROOTLESS_ENV:+, rootless}" \
    "$(date -u '+%Y-%m-%d %H:%M UTC')"
  printf -- '- machine: %s, %s CPUs, %s MiB RAM; layers on %s\n' "$(uname -r)" "$(nproc)" \
    "$(awk '/^MemTotal/ { printf "%d", $2 / 1024 }' /proc/meminfo)" \
    "$(findmnt -n -o FSTYPE -T "$CACHE" 2>/dev/null || echo '?')"
  printf -- '- profile: %s; median of %s runs, each on a fresh mount; caches dropped before cold runs: %s\n' \
    "$PROFILE" "$REPS" "$( ((DROP_OK)) && echo yes || echo NO)"
  printf -- '- layers (lowerdir=L3:L2:L1): L1 = %s; L2 = %s small files + half of big/ + bigfile; ' \
    "$L1_ORIGIN" "$SMALL_FILES"
  printf 'L3 = char 0/0 whiteouts, an opaque dir, half of big/ (%s)\n' "$LAYER_COUNTS"
  printf -- '- fuse-overlayfs: %s; stratafs: %s\n' \
    "$(fuse-overlayfs --version 2>/dev/null | awk '/fuse-overlayfs/ { print $3; exit }' || true)" \
    "${BENCH_DESCRIBE:-$(git -C "$REPO_DIR" describe --always --dirty 2>/dev/null || echo '?')}"
  printf -- '- times in seconds (lower is better) unless marked MB/s (higher is better); n/a (error): the backend failed, see notes\n'
}

report() {
  report_header
  if has_section read || has_section write; then
    local s
    for s in read write; do
      has_section "$s" || continue
      printf '\n## %s workloads\n\n' "$s"
      print_main_table "$s"
    done
    printf '\n## Peak memory of the FUSE server (VmHWM, largest over the runs)\n\n'
    print_mem_table
  fi
  if has_section archive; then
    printf '\n## archive workloads (stratafs CLI vs plain tools)\n\n'
    print_archive_table
  fi
  if ((${#NOTES[@]})); then
    printf '\n## Notes\n\n'
    printf -- '- %s\n' "${NOTES[@]}"
  fi
}

main() {
  ORIG_ARGS=("$@")
  parse_args "$@"
  # (In the --rootless run's user namespace the effective uid is 0 too.)
  [[ $EUID -eq 0 ]] || die "must run as root (kernel overlay mounts, char 0/0 whiteouts, drop_caches)"
  if [[ -n ${BENCH_ROOTLESS_ENV:-} ]]; then
    rootless_inner_setup
  elif ((ROOTLESS)); then
    set_sizes
    rootless_main
    return
  fi
  set_sizes
  mkdir -p "$CACHE"
  RUN_DIR=$(mktemp -d "$CACHE/run.XXXXXX")
  LOG="$CACHE/bench-last.log"
  STEP_OUT="$RUN_DIR/step.out"
  : >"$LOG"
  trap cleanup_all EXIT
  set -E
  trap 'log "failed (exit $?) at ${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND"' ERR
  trap 'log "interrupted"; exit 130' INT
  trap 'log "terminated"; exit 143' TERM
  export RUN_DIR WORKLOAD_LIMIT
  require_tools
  if backend_selected stratafs || backend_selected stratafs-ring || section_selected archive; then
    find_stratafs
  fi
  if backend_selected stratafs-ring; then enable_uring; fi
  if [[ -z ${BENCH_ROOTLESS_ENV:-} ]]; then
    probe_drop_caches
    prepare_layers
    LAYER_COUNTS=$(describe_layers)
  fi
  section_selected read && run_read_section
  section_selected write && run_write_section
  section_selected archive && run_archive_section
  local id
  for id in ${ROW_FILTER//,/ }; do
    [[ -n ${ROW_LABEL[$id]:-} || $id == r_mount_find ]] || note "--rows: no row $id in the sections run"
  done
  report | tee "${BENCH_REPORT:-$REPO_DIR/bench-results.md}"
  log "table written to ${BENCH_REPORT:-$REPO_DIR/bench-results.md}; command output in $LOG"
}

main "$@"
