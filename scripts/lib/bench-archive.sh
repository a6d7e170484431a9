# shellcheck shell=bash
# Archive workloads (issue 5) through the stratafs CLI, each beside the plain tool doing the same
# job: apply vs tar -x, diff vs tar -c, changes vs a whole-tree comparison (diff -rq).
# Sourced by scripts/bench.sh.

# The stratafs CLI on the section's own store.
sfs() { "$STRATAFS" --root "$ARCH_ROOT" --driver stratafs "$@"; }

# ---- workloads (exported; run in a child bash) -----------------------------------------------
wl_sfs_apply() { sfs apply "$1" "$ROOTFS_TAR" >/dev/null; }
wl_tar_x() { tar -xf "$ROOTFS_TAR" -C "$1"; }
wl_sfs_diff() { sfs diff "$1" | wc -c >/dev/null; }
wl_tar_c() { tar -cf - -C "$ARCH/changes-many" . | wc -c >/dev/null; }
wl_sfs_changes() { sfs changes "$1" >/dev/null; }
# diff exits 1 when the trees differ, which they do.
wl_diff_rq() {
  local rc=0
  diff -rq "$ARCH/image" "$ARCH/image-changed" >/dev/null || rc=$?
  ((rc <= 1))
}
export -f sfs wl_sfs_apply wl_tar_x wl_sfs_diff wl_tar_c wl_sfs_changes wl_diff_rq

# ---- cached inputs -----------------------------------------------------------------------------
# image/ (IMAGE_FILES files), changes-many/ (DIFF_FILES new files), changes-few/ (5 modified +
# 5 added files over image/), image-changed/ (image/ with changes-few/ applied), and their tars.
ensure_archive_inputs() {
  ARCH="$SET/archive"
  local params="image=$IMAGE_FILES diff=$DIFF_FILES"
  is_cached "$ARCH.done" "$params" && return 0
  rm -rf --one-file-system "$ARCH"
  mkdir -p "$ARCH"
  log "archive inputs: a $IMAGE_FILES-file image, $DIFF_FILES- and 10-file change sets"
  python3 "$GEN" files --out "$ARCH/image" --prefix img --count "$IMAGE_FILES" --size 256
  python3 "$GEN" files --out "$ARCH/changes-many" --prefix chg --count "$DIFF_FILES" --size 4096
  python3 "$GEN" files --out "$ARCH/changes-few" --prefix img --count 5 --size 300 --seed 9
  python3 "$GEN" files --out "$ARCH/changes-few" --prefix new --count 5 --size 300 --seed 10
  cp -a "$ARCH/image" "$ARCH/image-changed"
  cp -a "$ARCH/changes-few/." "$ARCH/image-changed/"
  local t
  for t in image changes-many changes-few; do
    tar -cf "$ARCH/$t.tar" -C "$ARCH/$t" --numeric-owner .
  done
  echo "$params" >"$ARCH.done"
}

# ---- measuring ---------------------------------------------------------------------------------
# time_reps ROW COLUMN SETUP RUN: REPS timings of RUN (given the rep's argument from SETUP).
# SETUP N prints nothing and leaves the argument for rep N in REP_ARG.
time_reps() {
  local row=$1 column=$2 setup=$3 run=$4 i
  local -a times=()
  for ((i = 1; i <= REPS; i++)); do
    if ! "$setup" "$i"; then
      cell "$row" "$column" "n/a (error)"
      note "$column, ${ROW_LABEL[$row]}: set-up failed: $(last_error)"
      return 0
    fi
    sync
    if ! timed "$run" "$REP_ARG"; then
      cell "$row" "$column" "n/a (error)"
      note "$column, ${ROW_LABEL[$row]}: $(last_error)"
      return 0
    fi
    times+=("$ELAPSED")
  done
  cell "$row" "$column" "$(median "${times[@]}")"
  log "  $column: $(fmt_value "${CELL["$row|$column"]}" s)"
}

setup_new_layer() { REP_ARG="apply$1"; limited sfs create "$REP_ARG"; }
setup_plain_dir() { REP_ARG="$RUN_DIR/plain$1"; rm -rf --one-file-system "$REP_ARG"; mkdir -p "$REP_ARG"; }
setup_diff_layer() { REP_ARG=many; }
setup_changes_layer() { REP_ARG=few; }
setup_nothing() { REP_ARG=""; }

# One base layer holding the image, and two children: many new files, and 10 changes.
build_archive_layers() {
  limited sfs create base &&
    limited sfs apply base "$ARCH/image.tar" &&
    limited sfs create --parent base many &&
    limited sfs apply many "$ARCH/changes-many.tar" &&
    limited sfs create --parent base few &&
    limited sfs apply few "$ARCH/changes-few.tar"
}

stratafs_cli_ready() { "$STRATAFS" apply --help >/dev/null 2>&1; }

run_archive_section() {
  ensure_archive_inputs
  ARCH_ROOT="$RUN_DIR/store"
  mkdir -p "$ARCH_ROOT"
  export ARCH ARCH_ROOT STRATAFS
  row a_apply archive s "apply rootfs tar (stratafs apply vs tar -x into a plain dir)"
  row a_diff archive s "diff of a layer with $DIFF_FILES new files (vs tar -c of them)"
  row a_changes archive s "changes: 10 changed files over a $IMAGE_FILES-file image (vs diff -rq)"

  local cli=1 layers=1
  if [[ -z ${STRATAFS:-} ]] || ! stratafs_cli_ready; then
    cli=0
    note "archive: stratafs side skipped: \`stratafs apply --help\` fails (CLI not ready)"
  fi
  log "workload: ${ROW_LABEL[a_apply]}"
  time_reps a_apply baseline setup_plain_dir wl_tar_x
  if ((cli)); then time_reps a_apply stratafs setup_new_layer wl_sfs_apply; fi
  if ((cli)) && ! build_archive_layers; then
    layers=0
    note "archive: building the base/many/few layers failed: $(last_error)"
  fi
  log "workload: ${ROW_LABEL[a_diff]}"
  time_reps a_diff baseline setup_nothing wl_tar_c
  if ((cli && layers)); then time_reps a_diff stratafs setup_diff_layer wl_sfs_diff; fi
  log "workload: ${ROW_LABEL[a_changes]}"
  time_reps a_changes baseline setup_nothing wl_diff_rq
  if ((cli && layers)); then time_reps a_changes stratafs setup_changes_layer wl_sfs_changes; fi
  local r
  for r in a_apply a_diff a_changes; do
    [[ -n ${CELL["$r|stratafs"]:-} ]] || cell "$r" stratafs "n/a (error)"
  done
}
