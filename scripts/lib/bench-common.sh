# shellcheck shell=bash disable=SC2034 # globals here are read by the sourcing script
# Shared helpers for scripts/bench.sh: logging, timing, medians and the result tables.
# Sourced, not executed.

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Notes printed under the tables (errors, skipped parts, machine limits), each said once.
NOTES=()
note() {
  local n
  for n in "${NOTES[@]}"; do [[ $n == "$*" ]] && return 0; done
  NOTES+=("$*")
  log "note: $*"
}

# Seconds between two $EPOCHREALTIME stamps (no fork for the stamps themselves).
seconds_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", b - a }'; }

# Median of the numbers given as arguments.
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# run_step LIMIT CMD...: run a command under a time limit, its output in $STEP_OUT (for error
# notes) and appended to $LOG. It runs as a background job so that a Ctrl-C interrupts `wait`
# at once and the exit trap can stop it (timeout puts itself in its own process group, out of
# reach of the terminal's SIGINT).
CHILD_PID=""
LAST_RC=0
LAST_LIMIT=0
run_step() {
  LAST_LIMIT=$1
  LAST_RC=0
  shift
  timeout -k 10 "$LAST_LIMIT" "$@" >"$STEP_OUT" 2>&1 &
  CHILD_PID=$!
  wait "$CHILD_PID" || LAST_RC=$?
  CHILD_PID=""
  cat "$STEP_OUT" >>"$LOG"
  return "$LAST_RC"
}

# timed FUNC ARGS...: run a workload function (exported with `export -f`) in a child bash and
# time it from inside the child, so process start-up is not counted. Sets ELAPSED (seconds).
ELAPSED=""
timed() {
  local stamp="$RUN_DIR/stamp" t0 t1
  rm -f "$stamp" "$stamp.part"
  # shellcheck disable=SC2016 # the child expands these itself
  run_step "$WORKLOAD_LIMIT" bash -c '
    set -euo pipefail
    stamp=$1; shift
    t0=$EPOCHREALTIME
    PART_STAMP=$stamp.part "$@"
    t1=$EPOCHREALTIME
    # A workload that times only part of itself leaves its own start and end there.
    [[ ! -s $stamp.part ]] || read -r t0 t1 < "$stamp.part"
    echo "$t0 $t1" > "$stamp"' _ "$stamp" "$@" || return
  [[ -s $stamp ]] || return 1
  read -r t0 t1 <"$stamp"
  ELAPSED=$(seconds_between "$t0" "$t1")
}

# limited FUNC ARGS...: the same, untimed, for set-up steps that must not hang the run either.
limited() {
  # shellcheck disable=SC2016 # the child expands these itself
  run_step "$WORKLOAD_LIMIT" bash -c 'set -euo pipefail; "$@"' _ "$@"
}

# Why the last step failed, for the notes: a time-out, or the last line it printed.
last_error() {
  local line
  if ((LAST_RC == 124 || LAST_RC == 137)); then
    printf 'timed out after %s s' "$LAST_LIMIT"
    return
  fi
  # Prefer the first line that says "error" (clap, cargo), else the last line.
  line=$(grep -m 1 -i 'error' "$STEP_OUT" 2>/dev/null ||
    grep -v '^unknown argument ignored: lazytime$' "$STEP_OUT" 2>/dev/null | tail -n 1 || true)
  line=${line:0:200}
  printf '%s' "${line:-exit status $LAST_RC}"
}

# ---- result tables --------------------------------------------------------------------------
# A row has a label and a unit: "s" (lower is better) or "MB/s" (higher is better).
declare -a ROWS=()
declare -A ROW_LABEL=() ROW_UNIT=() CELL=() MEM=() SECTION_OF=()

# --rows: a row outside ROW_FILTER is neither registered nor measured.
row_selected() { [[ -z ${ROW_FILTER:-} || ,$ROW_FILTER, == *",$1,"* ]]; }

row() { # row ID SECTION UNIT LABEL
  row_selected "$1" || return 0
  ROWS+=("$1")
  SECTION_OF[$1]=$2
  ROW_UNIT[$1]=$3
  ROW_LABEL[$1]=$4
}

# cell ROW BACKEND VALUE: VALUE is a number in the row's unit, or text such as "n/a (error)".
cell() { CELL["$1|$2"]=$3; }

# mem ROW BACKEND KB: keep the largest peak RSS seen for this row and backend.
mem() {
  local key="$1|$2"
  if [[ -z ${MEM[$key]:-} || $3 -gt ${MEM[$key]} ]]; then MEM[$key]=$3; fi
}

# A row label made safe for a markdown table cell.
md_label() { printf '%s' "${ROW_LABEL[$1]//|/\\|}"; }

is_number() { [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; }

fmt_value() { # fmt_value VALUE UNIT
  if ! is_number "$1"; then printf '%s' "$1"; return; fi
  case $2 in
    s) awk -v v="$1" 'BEGIN { printf (v < 10 ? "%.3f s" : "%.1f s"), v }' ;;
    MB/s) awk -v v="$1" 'BEGIN { printf "%.0f MB/s", v }' ;;
    MiB) awk -v v="$1" 'BEGIN { printf "%.1f MiB", v / 1024 }' ;;
  esac
}

fmt_ratio() { # fmt_ratio A B
  if is_number "$1" && is_number "$2" && awk -v b="$2" 'BEGIN { exit !(b > 0) }'; then
    awk -v a="$1" -v b="$2" 'BEGIN { r = a / b; if (r > 0 && r < 0.01) printf "1/%.0fx", 1 / r; else printf "%.2fx", r }'
  else
    printf -- '-'
  fi
}

value_or_dash() { # value_or_dash ROW BACKEND
  local v=${CELL["$1|$2"]:-}
  if [[ -z $v ]]; then
    if [[ ,$BACKENDS, == *",$2,"* ]]; then printf 'not run'; else printf -- '-'; fi
  else
    printf '%s' "$v"
  fi
}

print_main_table() {
  local section=$1 id s f k r
  if backend_selected stratafs-ring; then
    printf '| workload | stratafs /dev/fuse | stratafs ring | fuse-overlayfs | kernel overlay | ring/dev-fuse | dev-fuse/kernel | ring/kernel | ring/fuse-overlayfs |\n'
    printf '|---|---:|---:|---:|---:|---:|---:|---:|---:|\n'
  else
    printf '| workload | stratafs | fuse-overlayfs | kernel overlay | stratafs/fuse-overlayfs | stratafs/kernel |\n'
    printf '|---|---:|---:|---:|---:|---:|\n'
  fi
  for id in "${ROWS[@]}"; do
    [[ ${SECTION_OF[$id]} == "$section" ]] || continue
    s=$(value_or_dash "$id" stratafs)
    f=$(value_or_dash "$id" fuse-overlayfs)
    k=$(value_or_dash "$id" kernel)
    if backend_selected stratafs-ring; then
      r=$(value_or_dash "$id" stratafs-ring)
      printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$(md_label "$id")" \
        "$(fmt_value "$s" "${ROW_UNIT[$id]}")" "$(fmt_value "$r" "${ROW_UNIT[$id]}")" \
        "$(fmt_value "$f" "${ROW_UNIT[$id]}")" "$(fmt_value "$k" "${ROW_UNIT[$id]}")" \
        "$(fmt_ratio "$r" "$s")" "$(fmt_ratio "$s" "$k")" "$(fmt_ratio "$r" "$k")" "$(fmt_ratio "$r" "$f")"
      continue
    fi
    printf '| %s | %s | %s | %s | %s | %s |\n' "$(md_label "$id")" \
      "$(fmt_value "$s" "${ROW_UNIT[$id]}")" "$(fmt_value "$f" "${ROW_UNIT[$id]}")" \
      "$(fmt_value "$k" "${ROW_UNIT[$id]}")" "$(fmt_ratio "$s" "$f")" "$(fmt_ratio "$s" "$k")"
  done
}

print_mem_table() {
  local id s f any=0
  for id in "${ROWS[@]}"; do
    [[ -n ${MEM["$id|stratafs"]:-}${MEM["$id|fuse-overlayfs"]:-} ]] && any=1
  done
  ((any)) || { printf '(no FUSE server was measured)\n'; return; }
  printf '| workload | stratafs | fuse-overlayfs | stratafs/fuse-overlayfs |\n'
  printf '|---|---:|---:|---:|\n'
  for id in "${ROWS[@]}"; do
    s=${MEM["$id|stratafs"]:-}
    f=${MEM["$id|fuse-overlayfs"]:-}
    [[ -n $s$f ]] || continue
    printf '| %s | %s | %s | %s |\n' "$(md_label "$id")" "$(fmt_value "${s:--}" MiB)" \
      "$(fmt_value "${f:--}" MiB)" "$(fmt_ratio "$s" "$f")"
  done
}

print_archive_table() {
  local id s b
  printf '| workload | stratafs | baseline | stratafs/baseline |\n'
  printf '|---|---:|---:|---:|\n'
  for id in "${ROWS[@]}"; do
    [[ ${SECTION_OF[$id]} == archive ]] || continue
    s=${CELL["$id|stratafs"]:-not run}
    b=${CELL["$id|baseline"]:-not run}
    printf '| %s | %s | %s | %s |\n' "$(md_label "$id")" "$(fmt_value "$s" "${ROW_UNIT[$id]}")" \
      "$(fmt_value "$b" "${ROW_UNIT[$id]}")" "$(fmt_ratio "$s" "$b")"
  done
}

has_section() {
  local id
  for id in "${ROWS[@]}"; do [[ ${SECTION_OF[$id]} == "$1" ]] && return 0; done
  return 1
}
