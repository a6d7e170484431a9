#!/usr/bin/env bash
# Benchmark (not a test): the cost of one FUSE request on each stratafs transport, beside the
# same system call on kernel overlayfs. One process makes N calls the kernel cannot answer from
# its caches (getxattr of a missing name: one GETXATTR request each; statfs: one STATFS each),
# one after the other, so each call is a full round trip: us/call = elapsed / N.
# With --perf, `perf stat` counts the FUSE server's context switches, CPU migrations and CPU
# time per request during the loop.
#
#   scripts/bench-requests.sh [--calls N] [--reps R] [--perf]
#
# Root only (kernel overlay mounts, enable_uring); enable_uring is set for the run and put
# back as it was at exit.
set -euo pipefail

CALLS=200000
REPS=3
PERF=0
while (($#)); do
  case $1 in
    --calls) CALLS=$2; shift ;;
    --reps) REPS=$2; shift ;;
    --perf) PERF=1 ;;
    -h | --help) sed -n 2,13p "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
[[ $EUID -eq 0 ]] || { echo "must run as root" >&2; exit 1; }

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STRATAFS=${STRATAFS:-$REPO_DIR/target/release/stratafs}
PARAM=/sys/module/fuse/parameters/enable_uring
[[ -w $PARAM ]] || { echo "this kernel has no $PARAM (Linux 6.14+)" >&2; exit 1; }
URING_OLD=$(cat "$PARAM")
WORK=$(mktemp -d /var/tmp/stratafs-reqbench.XXXXXX)

cleanup() {
  local mp
  for mp in "$WORK"/*/m; do
    mountpoint -q "$mp" 2>/dev/null && { umount "$mp" || umount -l "$mp"; }
  done
  echo "$URING_OLD" >"$PARAM"
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
echo Y >"$PARAM"

# The loop itself, timed inside the process: python's os calls, nothing else.
LOOP='
import os, sys, time
path, n, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t0 = time.perf_counter()
if kind == "getxattr":
    for _ in range(n):
        try:
            os.getxattr(path, "user.stratafs-bench-missing")
        except OSError:
            pass
else:
    for _ in range(n):
        os.statvfs(path)
print(f"{(time.perf_counter() - t0) / n * 1e6:.2f}")
'

# mount BACKEND DIR: a read-only view of DIR/l (and an empty second layer) on DIR/m.
mount_one() {
  local backend=$1 d=$2
  mkdir -p "$d/l" "$d/e" "$d/m"
  : >"$d/l/f"
  case $backend in
    dev-fuse) "$STRATAFS" -o "lowerdir=$d/l:$d/e,nouring" "$d/m" ;;
    ring) "$STRATAFS" -o "lowerdir=$d/l:$d/e,uring" "$d/m" ;;
    kernel) mount -t overlay overlay -o "lowerdir=$d/l:$d/e" "$d/m" ;;
  esac
}

server_pid() { pgrep -f -x -- ".*$1/m" | head -n 1 || true; }

declare -A RESULT=()
BACKENDS=(dev-fuse ring kernel)
for kind in getxattr statfs; do
  for ((i = 1; i <= REPS; i++)); do
    for b in "${BACKENDS[@]}"; do
      d="$WORK/$b-$kind-$i"
      mount_one "$b" "$d"
      python3 -c "$LOOP" "$d/m/f" 1000 "$kind" >/dev/null # warm: the look-up, the code
      pid=$(server_pid "$d")
      if ((PERF)) && [[ -n $pid ]]; then
        perf stat -x, -e task-clock,context-switches,cpu-migrations -p "$pid" \
          -o "$d/perf" -- python3 -c "$LOOP" "$d/m/f" "$CALLS" "$kind" >"$d/us"
        awk -F, -v n="$CALLS" -v b="$b" -v k="$kind" '
          $3 == "task-clock" { printf "  %s %s: server CPU %.2f us/call", b, k, $1 * 1000 / n }
          $3 == "context-switches" { printf ", %.2f switches/call", $1 / n }
          $3 == "cpu-migrations" { printf ", %.3f migrations/call\n", $1 / n }' "$d/perf" >&2
      else
        python3 -c "$LOOP" "$d/m/f" "$CALLS" "$kind" >"$d/us"
      fi
      RESULT[$kind|$b]+=" $(cat "$d/us")"
      umount "$d/m"
    done
  done
done

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
printf '| call (%s in a row, median of %s) | stratafs /dev/fuse | stratafs ring | kernel overlay | ring/dev-fuse | dev-fuse/kernel | ring/kernel |\n' "$CALLS" "$REPS"
printf '|---|---:|---:|---:|---:|---:|---:|\n'
for kind in getxattr statfs; do
  # shellcheck disable=SC2086 # lists of numbers
  dv=$(median ${RESULT[$kind|dev-fuse]}) rg=$(median ${RESULT[$kind|ring]}) k=$(median ${RESULT[$kind|kernel]})
  awk -v k="$kind" -v d="$dv" -v r="$rg" -v o="$k" 'BEGIN {
    printf "| %s | %.2f us | %.2f us | %.2f us | %.2fx | %.2fx | %.2fx |\n", k, d, r, o, r / d, d / o, r / o }'
done
