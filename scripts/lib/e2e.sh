# Shared by the end-to-end scripts: progress lines, failure, the root check. Source it.

step() { printf '\n=== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# need_root [WHY]: the scripts start engines and mounts as root (WHY says what else needs it).
need_root() { [ "$(id -u)" = 0 ] || fail "run as root${1:+ ($1)}"; }
