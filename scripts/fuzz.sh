#!/usr/bin/env bash
# Coverage-guided fuzzing of stratafs on stable Rust: libFuzzer (libfuzzer-sys builds it from
# source with the C++ compiler) over code instrumented with LLVM's sanitizer-coverage pass, the
# flags `cargo fuzz build -s none` passes, with no nightly feature.
#
#   scripts/fuzz.sh TARGET SECONDS [LIBFUZZER_ARGS...]   fuzz one target
#   scripts/fuzz.sh all SECONDS                           each target in turn, SECONDS each
#   scripts/fuzz.sh --check SECONDS                       each target for SECONDS on a throwaway
#                                                         copy of the corpus (the test command)
#   scripts/fuzz.sh --build                               build the targets only
#   scripts/fuzz.sh --list                                name the targets
#
# Targets: the bodies are in src/fuzzing/ (replayed without instrumentation by
# tests/fuzz_corpus.rs). The corpus grows in fuzz/corpus/TARGET; a crash is written to
# fuzz/regressions/TARGET/ (commit it with the fix: the replay test then runs it forever).
# As root, every run happens in a private mount namespace where the whole tree is read-only but
# the corpus, the regressions and a scratch tmpfs: a target that escaped its scratch directory
# (a path traversal in the code under test) fails instead of writing to the machine.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
FUZZ="$ROOT/fuzz"
TARGETS=(tar_apply image_archive mount_options plugin_json snapshotter)
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN="$FUZZ/target/$TRIPLE/release"

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

install_missing() {
    command -v c++ >/dev/null 2>&1 && return 0
    if [[ $(id -u) -ne 0 ]]; then
        echo "fuzz.sh: a C++ compiler (Debian g++) is needed to build libFuzzer" >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q && apt-get install -y -q --no-install-recommends g++
}

build() {
    # FUZZ_NO_BUILD=1: run the targets as last built (several runs side by side).
    [[ -n ${FUZZ_NO_BUILD:-} && -x $BIN/${TARGETS[0]} ]] && return 0
    install_missing
    # --target: the flags then reach only the targets' code, not build scripts or proc macros.
    (cd "$FUZZ" && RUSTFLAGS="${RUSTFLAGS:-} --cfg fuzzing -Cpasses=sancov-module \
        -Cllvm-args=-sanitizer-coverage-level=4 \
        -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
        -Cllvm-args=-sanitizer-coverage-pc-table \
        -Cllvm-args=-sanitizer-coverage-trace-compares" \
        cargo build --release --target "$TRIPLE" --bins)
}

# Run "$@" with the filesystem read-only but for the given writable directories (root only).
confined() {
    local writable=$1; shift
    if [[ $(id -u) -ne 0 ]] || ! command -v unshare >/dev/null; then
        "$@"
        return
    fi
    local scratch rc=0
    scratch=$(mktemp -d "${TMPDIR:-/tmp}/stratafs-fuzz.XXXXXX")
    unshare --mount --propagation private -- bash -c '
        set -e
        writable=$1 scratch=$2; shift 2
        for d in $writable; do mount --bind "$d" "$d"; done
        mount -t tmpfs -o size=512m tmpfs "$scratch"
        # Every other mount read-only, deepest last so the binds above stay writable.
        awk "{print \$2}" /proc/self/mounts | while read -r m; do
            m=$(printf "%b" "$m")
            case " $writable $scratch " in *" $m "*) continue ;; esac
            case "$m" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;; esac
            mount -o remount,bind,ro "$m" 2>/dev/null || true
        done
        export TMPDIR=$scratch
        exec "$@"
    ' confined "$writable" "$scratch" "$@" || rc=$?
    rmdir "$scratch" 2>/dev/null || true
    return "$rc"
}

run() {
    local target=$1 secs=$2; shift 2
    local corpus="${CORPUS_ROOT:-$FUZZ/corpus}/$target" crashes="${CRASH_ROOT:-$FUZZ/regressions}/$target"
    mkdir -p "$corpus" "$crashes"
    local dict=()
    [[ -f "$FUZZ/dict/$target.dict" ]] && dict=(-dict="$FUZZ/dict/$target.dict")
    echo "fuzz.sh: $target for ${secs}s (corpus $(ls "$corpus" | wc -l) inputs)"
    confined "$corpus $crashes" "$BIN/$target" "$corpus" "${dict[@]}" \
        -artifact_prefix="$crashes/" -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 \
        -max_len=65536 -print_final_stats=1 "$@"
}

case "${1:-}" in
    ""|-h|--help) usage ;;
    --list) printf '%s\n' "${TARGETS[@]}"; exit 0 ;;
    --build) build; exit 0 ;;
esac
if [[ ${1:-} == --check ]]; then
    [[ $# -eq 2 ]] || usage 2
    build
    work=$(mktemp -d "${TMPDIR:-/tmp}/stratafs-fuzz-check.XXXXXX")
    cp -r "$FUZZ/corpus" "$work/corpus"
    export CORPUS_ROOT=$work/corpus CRASH_ROOT=$work/crashes
    status=0
    for t in "${TARGETS[@]}"; do
        if ! run "$t" "$2" >"$work/$t.log" 2>&1; then
            status=1
            echo "fuzz.sh: $t FAILED; its log ends:" >&2
            tail -n 40 "$work/$t.log" >&2
            for c in "$work/crashes/$t"/*; do
                [[ -f $c ]] && { echo "crash input $c (hex):" >&2; od -An -tx1 -v "$c" | head -n 64 >&2; }
            done
        else
            grep -h '^stat::number_of_executed_units\|^#.*DONE' "$work/$t.log" | tail -n 1 | sed "s/^/fuzz.sh: $t: /"
        fi
    done
    rm -rf "$work"
    exit "$status"
fi
[[ $# -ge 2 ]] || usage 2
target=$1 secs=$2; shift 2
build
if [[ $target == all ]]; then
    for t in "${TARGETS[@]}"; do run "$t" "$secs" "$@"; done
else
    printf '%s\n' "${TARGETS[@]}" | grep -qx "$target" || { echo "unknown target $target" >&2; usage 2; }
    run "$target" "$secs" "$@"
fi
