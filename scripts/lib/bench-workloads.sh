# shellcheck shell=bash
# The read (issue 3) and write (issue 4) workloads and the loop that runs one workload on every
# backend: REPS times, each on a fresh mount (and a fresh upper dir), median reported.
# Sourced by scripts/bench.sh.

# ---- workloads: run in a child bash (exported), $1 = the merged directory ---------------------
wl_none() { :; }
wl_find() { find "$1" -printf '%i %s %m %U\n' >/dev/null; }
wl_ls_big() { ls -l "$1/big" >/dev/null; }
# GNU tar does not read file data when its output is /dev/null: pipe it.
wl_tar_small() { tar -cf - -C "$1" usr etc small | wc -c >/dev/null; }
wl_read_big() { dd if="$1/bigfile" of=/dev/null bs=1M status=none; }
wl_untar() {
  mkdir "$1/newroot"
  tar -xf "$ROOTFS_TAR" -C "$1/newroot"
  [[ -e $1/newroot/etc/passwd ]]
}
wl_touch() { cd "$1" && xargs -a "$COPYUP_LIST" touch --; }
# Small-file writes (issue 17): ECHO_FILES new files, each made by the shell's own echo (open
# O_CREAT|O_TRUNC, one write, close; no fork), in a new directory.
ECHO_FILES=2000
wl_echo() {
  local i
  mkdir "$1/echo"
  for ((i = 0; i < ECHO_FILES; i++)); do
    echo "file $i" >"$1/echo/f$i"
  done
  [[ -s $1/echo/f$((ECHO_FILES - 1)) ]]
}
wl_append() {
  printf x >>"$1/bigfile"
  [[ $(stat -c %s "$1/bigfile") -eq $((BIG_BYTES + 1)) ]]
}
# Requests during a large copy-up: the append starts the copy of the big lower file; 50 ms in,
# a listing with attributes and a read of files not looked up yet are timed (only they are).
wl_during_copyup() {
  local pid t0 t1
  printf x >>"$1/bigfile" &
  pid=$!
  sleep 0.05
  t0=$EPOCHREALTIME
  ls -l "$1/usr/bin" >/dev/null
  cat "$1/etc/passwd" "$1/etc/group" >/dev/null
  t1=$EPOCHREALTIME
  wait "$pid"
  [[ $(stat -c %s "$1/bigfile") -eq $((BIG_BYTES + 1)) ]]
  echo "$t0 $t1" >"$PART_STAMP"
}
wl_rm_tree() {
  rm -rf "${1:?}/usr/share"
  [[ ! -e $1/usr/share ]]
}
wl_dd_new() {
  dd if="$L2/bigfile" of="$1/newbig" bs=1M conv=fsync status=none
  [[ $(stat -c %s "$1/newbig") -eq $BIG_BYTES ]]
}
export ECHO_FILES
export -f wl_none wl_find wl_ls_big wl_tar_small wl_read_big wl_untar wl_touch wl_echo wl_append \
  wl_during_copyup wl_rm_tree wl_dd_new

# ---- before-mount steps (main shell) -----------------------------------------------------------
pre_none() { :; }
pre_cold() { drop_caches; }
# Lower file in the page cache: the read then measures the backend, not the disk.
pre_warm_big() { dd if="$L2/bigfile" of=/dev/null bs=1M status=none; }

drop_caches() {
  ((DROP_OK)) || return 0
  # In the --rootless user namespace the outer run drops them (bench-rootless.sh).
  if [[ -n ${BENCH_ROOTLESS_ENV:-} ]]; then
    rootless_drop_caches
    return
  fi
  sync
  echo 3 >/proc/sys/vm/drop_caches
}

# ---- the measuring loop ------------------------------------------------------------------------
mb_per_s() { awk -v b="$1" -v t="$2" 'BEGIN { printf "%.3f", b / t / 1e6 }'; }

# measure_once BACKEND ROW MODE PRE POST RUN: one timed run on a fresh mount. PRE runs before
# the mount (main shell); POST after it, untimed; RUN is timed ("mount": the mount time itself is
# the result). Sets RUN_SECS and MOUNT_SECS, or WHY (and returns 1) when the backend failed.
RUN_SECS=""
WHY=""
measure_once() {
  local backend=$1 row=$2 mode=$3 pre=$4 post=$5 run=$6
  printf '== %s, %s\n' "$backend" "$row" >>"$LOG"
  "$pre"
  sync # start each run without the previous run's dirty pages being written back
  WHY=""
  if ! mount_backend "$backend" "$mode"; then
    WHY="mount failed: $(last_error)"
  elif [[ $post != wl_none ]] && ! limited "$post" "$MERGED"; then
    WHY="set-up failed: $(last_error)"
  elif [[ $run != mount ]] && ! timed "$run" "$MERGED"; then
    WHY="$(last_error)"
  fi
  unmount_backend || true
  [[ -n $LAST_PEAK_KB ]] && mem "$row" "$backend" "$LAST_PEAK_KB"
  [[ -z $WHY ]] || return 1
  if [[ $run == mount ]]; then RUN_SECS=$MOUNT_SECS; else RUN_SECS=$ELAPSED; fi
}

# measure_row ROW MODE PRE POST RUN [SUM_ROW]: one workload on every selected backend, REPS
# rounds, the backends taking turns within a round so that a noisy spell on the shared machine
# hits all of them alike. The median goes in the table; SUM_ROW, if given, gets the median of
# mount time + RUN time of the same runs. A backend that fails once is n/a for the row.
measure_row() {
  local row=$1 sum_row=${6:-} i backend t
  local -A times=() sums=() failed=()
  [[ -n ${ROW_LABEL[$row]:-} ]] || return 0 # not selected (--rows)
  log "workload: ${ROW_LABEL[$row]}"
  for ((i = 1; i <= REPS; i++)); do
    for backend in "${BACKEND_LIST[@]}"; do
      [[ -z ${failed[$backend]:-} ]] || continue
      if measure_once "$backend" "$row" "${@:2:4}"; then
        times[$backend]+=" $RUN_SECS"
        # Each run, with the load it ran at: a shared machine's noise shows in the spread.
        log "    $backend, run $i: $RUN_SECS (load $(cut -d' ' -f1 /proc/loadavg))"
        sums[$backend]+=" $(awk -v a="$MOUNT_SECS" -v b="$RUN_SECS" 'BEGIN { print a + b }')"
      else
        failed[$backend]=1
        if [[ $WHY == "mount failed: "* ]]; then
          note "$backend: $WHY"
        else
          note "$backend, ${ROW_LABEL[$row]}: $WHY"
        fi
      fi
    done
  done
  for backend in "${BACKEND_LIST[@]}"; do
    if [[ -n ${failed[$backend]:-} ]]; then
      cell "$row" "$backend" "n/a (error)"
      [[ -z $sum_row ]] || cell "$sum_row" "$backend" "n/a (error)"
    else
      # shellcheck disable=SC2086 # a list of numbers
      t=$(median ${times[$backend]})
      [[ ${ROW_UNIT[$row]} != MB/s ]] || t=$(mb_per_s "$BIG_BYTES" "$t")
      cell "$row" "$backend" "$t"
      # shellcheck disable=SC2086 # a list of numbers
      [[ -z $sum_row ]] || cell "$sum_row" "$backend" "$(median ${sums[$backend]})"
    fi
    log "  $backend: $(fmt_value "${CELL["$row|$backend"]}" "${ROW_UNIT[$row]}")"
  done
}

# ---- sections ----------------------------------------------------------------------------------
run_read_section() {
  local gib
  gib=$(awk -v b="$BIG_BYTES" 'BEGIN { printf "%g", b / 2^30 }')
  row r_mount read s "mount, until the mount point answers stat (cold)"
  row r_find_cold read s "find -printf '%i %s %m %U', cold"
  row r_mount_find read s "mount + find, cold"
  row r_find_warm read s "find -printf, warm (2nd walk, same mount)"
  row r_ls_big read s "ls -l big/ ($BIG_ENTRIES entries, 2 layers), cold"
  row r_tar read s "tar -c usr etc small | wc -c (every small file), cold"
  row r_big_cold read MB/s "read ${gib} GiB file (dd bs=1M), cold [MB/s]"
  row r_big_warm read MB/s "read ${gib} GiB file, lower in page cache [MB/s]"
  measure_row r_mount ro pre_cold wl_none mount
  measure_row r_find_cold ro pre_cold wl_none wl_find r_mount_find
  measure_row r_find_warm ro pre_none wl_find wl_find
  measure_row r_ls_big ro pre_cold wl_none wl_ls_big
  measure_row r_tar ro pre_cold wl_none wl_tar_small
  measure_row r_big_cold ro pre_cold wl_none wl_read_big
  measure_row r_big_warm ro pre_warm_big wl_none wl_read_big
}

run_write_section() {
  local gib
  gib=$(awk -v b="$BIG_BYTES" 'BEGIN { printf "%g", b / 2^30 }')
  row w_untar write s "tar -x rootfs tarball into MERGED/newroot"
  row w_touch write s "touch $(wc -l <"$COPYUP_LIST") lower files (copy-up storm)"
  row w_touch_v write s "touch $(wc -l <"$COPYUP_LIST") lower files, volatile mounts"
  row w_echo write s "echo > $ECHO_FILES new files (small-file writes)"
  row w_append write s "append 1 byte to the ${gib} GiB lower file (copy-up)"
  row w_append_v write s "append 1 byte to the ${gib} GiB lower file, volatile mounts"
  row w_during write s "ls -l usr/bin + cat 2 files while the ${gib} GiB append copies up"
  row w_rm write s "rm -rf MERGED/usr/share ($(find "$L1/usr/share" | wc -l) lower entries)"
  row w_dd write s "dd a new ${gib} GiB file, conv=fsync"
  # Rows that make thousands of inodes keep their upper dirs until the row is done (see
  # unmount_backend); the big-file rows delete each run's GiB at once, as before (keeping nine
  # copies around would time the disk's write-back instead).
  DEFER_DELETE=1
  measure_row w_untar rw pre_none wl_none wl_untar
  empty_trash
  measure_row w_touch rw pre_none wl_none wl_touch
  empty_trash
  measure_row w_touch_v rw-volatile pre_none wl_none wl_touch
  empty_trash
  measure_row w_echo rw pre_none wl_none wl_echo
  empty_trash
  measure_row w_rm rw pre_none wl_none wl_rm_tree
  DEFER_DELETE=""
  TRASH_SETTLE_SECS=0 empty_trash
  measure_row w_append rw pre_none wl_none wl_append
  measure_row w_append_v rw-volatile pre_none wl_none wl_append
  measure_row w_during rw pre_none wl_none wl_during_copyup
  measure_row w_dd rw pre_warm_big wl_none wl_dd_new
}
