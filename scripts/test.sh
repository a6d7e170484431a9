#!/usr/bin/env bash
# The whole stratafs test suite: formatting, lints, unit tests, FUSE tests (fuse-tests/), binary
# tests (tests/), then any end-to-end scripts scripts/e2e-*.sh that are executable.
# Run as root on a machine with /dev/fuse: the FUSE tests mount. `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

# Commands the tests need, each with the Debian package that provides it.
REQUIRED=(
    "fusermount3:fuse3"
    "fuse-overlayfs:fuse-overlayfs"
    "setpriv:util-linux"
    "filefrag:e2fsprogs"
    "mkfs.xfs:xfsprogs"
    "mkfs.ext4:e2fsprogs"
    "prlimit:util-linux"
    "c++:g++"
)

install_missing() {
    local missing=() pair
    for pair in "${REQUIRED[@]}"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    ((${#missing[@]})) || return 0
    if [[ $(id -u) -ne 0 ]]; then
        echo "missing packages: ${missing[*]}; install them or run as root" >&2
        return 1
    fi
    step "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# Everything the tests create (stores, mount points) lives under one directory of this run, so
# the exit trap can find what they leave mounted without touching anyone else's mounts.
RUN_TMP=$(mktemp -d "${TMPDIR:-/tmp}/stratafs-test.XXXXXX")
# Traversable by everyone: the rootless tests run parts as an unprivileged user below it.
chmod 0755 "$RUN_TMP"
export TMPDIR=$RUN_TMP

# FUSE mount points under RUN_TMP, deepest first (mountinfo escapes spaces as \040).
leftover_mounts() {
    awk -v prefix="$RUN_TMP/" '{
        split($0, halves, " - "); split(halves[2], tail, " ")
        if (tail[1] ~ /^fuse/ && index($5, prefix) == 1) print $5
    }' /proc/self/mountinfo | sort -r
}

# FUSE over io_uring's module parameter as it was before the ring step set it (empty: not set).
URING_PARAM=/sys/module/fuse/parameters/enable_uring
uring_old=
restore_uring() {
    if [[ -n $uring_old ]]; then
        echo "$uring_old" >"$URING_PARAM" 2>/dev/null || echo "could not restore $URING_PARAM to $uring_old" >&2
        uring_old=
    fi
}

cleanup() {
    local rc=$? mp
    restore_uring
    while read -r mp; do
        [[ -n $mp ]] || continue
        mp=$(printf '%b' "$mp")
        echo "unmounting leftover $mp" >&2
        fusermount3 -u -z "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
    done < <(leftover_mounts)
    # --one-file-system: never delete through a mount that survived the unmount above.
    rm -rf --one-file-system "$RUN_TMP" 2>/dev/null || true
    if ((rc == 0)); then
        step "all steps passed"
    else
        step "FAILED (exit $rc)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "checking prerequisites"
install_missing
if [[ ! -e /dev/fuse ]]; then
    modprobe fuse 2>/dev/null || true
fi
# The fuse control filesystem: the unmount code (and the restart tests) find a mount's
# connection there, to abort one whose server is gone.
if [[ $(id -u) -eq 0 ]] && ! mountpoint -q /sys/fs/fuse/connections 2>/dev/null; then
    mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null || true
fi
[[ -e /dev/fuse ]] || echo "warning: /dev/fuse is missing; FUSE tests will fail" >&2
[[ $(id -u) -eq 0 ]] || echo "warning: not root; FUSE tests need root" >&2
cargo --version

export RUST_BACKTRACE=1

# The README's first command must work on a machine with only the Rust toolchain: build the
# binary with a `protoc` first on the PATH (and in PROTOC) that fails and leaves a mark if any
# build script runs it, then run the demo. (A fresh clone builds every build script.)
step "cargo run --release -- demo (no protoc on the PATH)"
no_protoc=$RUN_TMP/no-protoc
mkdir -p "$no_protoc"
printf '#!/bin/sh\necho "protoc was called: the build must not need it" >&2\ntouch "%s/called"\nexit 1\n' \
    "$no_protoc" >"$no_protoc/protoc"
chmod +x "$no_protoc/protoc"
PATH="$no_protoc:$PATH" PROTOC="$no_protoc/protoc" cargo run --release --quiet -- demo >"$RUN_TMP/demo.log"
if [[ -e $no_protoc/called ]]; then
    echo "the build ran protoc" >&2
    exit 1
fi
grep -q 'changes of demo-top' "$RUN_TMP/demo.log" || { cat "$RUN_TMP/demo.log" >&2; exit 1; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "the crate's shape: no file over 800 lines, no import cycle (scripts/check-house.py)"
python3 scripts/check-house.py

step "cargo test --all-targets (unit, fuse-tests, cli)"
cargo test --all-targets 2>&1 | tee "$RUN_TMP/cargo-test.log"
# The mode rootless mounts get (no passthrough: the kernel's writeback cache instead), for every
# FUSE test; the mount servers add the options (src/union/server.rs).
step "the FUSE tests again without passthrough (STRATAFS_EXTRA_MOUNT_OPTS=nopassthrough)"
STRATAFS_EXTRA_MOUNT_OPTS=nopassthrough cargo test --test fuse 2>&1 | tee -a "$RUN_TMP/cargo-test.log"

# Simulated power cuts (scripts/crash.sh): a few cuts on ext4 and XFS, about 1.5 minutes; the
# script runs many more (200 by default).
step "scripts/crash.sh 12 (simulated power cuts, ext4 and XFS)"
scripts/crash.sh 12

# The FUSE suite again with every mount on the io_uring transport (issue 18, ~8 min on 2
# cores): enable_uring is set for this step and put back as it was (also by the exit trap).
step "cargo test --test fuse over io_uring (STRATAFS_EXTRA_MOUNT_OPTS=uring)"
if [[ -w $URING_PARAM ]] && uring_old=$(cat "$URING_PARAM") && echo Y >"$URING_PARAM" 2>/dev/null; then
    STRATAFS_EXTRA_MOUNT_OPTS=uring cargo test --test fuse 2>&1 | tee -a "$RUN_TMP/cargo-test.log"
    restore_uring
else
    uring_old=
    echo "skipped: this kernel has no settable $URING_PARAM (FUSE over io_uring needs Linux 6.14+ and root)" >&2
fi

# A short coverage-guided run of every fuzz target (the kept corpus and crashes are replayed by
# tests/fuzz_corpus.rs above); STRATAFS_FUZZ_SECONDS per target, 0 skips.
fuzz_secs=${STRATAFS_FUZZ_SECONDS:-20}
if ((fuzz_secs > 0)); then
    step "scripts/fuzz.sh --check $fuzz_secs (each target, instrumented build in fuzz/target)"
    scripts/fuzz.sh --check "$fuzz_secs"
fi
shopt -s nullglob
e2e_passed=0 e2e_failed=0 failed_scripts=()
for script in scripts/e2e-*.sh; do
    if [[ -x $script ]]; then
        step "$script"
        if "$script"; then
            e2e_passed=$((e2e_passed + 1))
        else
            e2e_failed=$((e2e_failed + 1))
            failed_scripts+=("$script")
        fi
    else
        echo "skipping $script (not executable)" >&2
    fi
done

# One closing line over all test binaries and end-to-end scripts.
((e2e_failed == 0)) || echo "failed end-to-end scripts: ${failed_scripts[*]}" >&2
awk -v ep="$e2e_passed" -v ef="$e2e_failed" '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p + ep, f + ef, i }' \
    "$RUN_TMP/cargo-test.log"
((e2e_failed == 0))
