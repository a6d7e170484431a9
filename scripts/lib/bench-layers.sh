# shellcheck shell=bash disable=SC2034 # globals here are read by the sourcing script
# The benchmark's layer set, built once and cached under $CACHE:
#   L1 = Debian minbase root filesystem (debootstrap), or a generated tree of the same shape
#   L2 = many small files, half of big/, and bigfile (incompressible)
#   L3 = char 0/0 whiteouts over L1 and L2, an opaque directory, the other half of big/
# Whiteouts are char 0/0 devices and the opaque marker is trusted.overlay.opaque: the one format
# that kernel overlayfs, fuse-overlayfs and stratafs all read, so one layer set serves all three.
# Sourced by scripts/bench.sh.

GEN="$LIB_DIR/bench-gen.py"

# The Debian mirror of this machine's apt configuration (deb822 first, then sources.list).
apt_mirror() {
  local uri=""
  if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
    uri=$(awk 'tolower($1) == "uris:" && $2 !~ /security/ { print $2; exit }' \
      /etc/apt/sources.list.d/debian.sources)
  fi
  if [[ -z $uri && -r /etc/apt/sources.list ]]; then
    uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
      /etc/apt/sources.list | grep -v security | head -n 1 || true)
  fi
  printf '%s' "$uri"
}

# L1. $CACHE/rootfs.done records how the tree was made.
ensure_rootfs() {
  L1="$CACHE/rootfs"
  [[ -f $CACHE/rootfs.done && -d $L1 ]] && return 0
  rm -rf --one-file-system "$L1" "$L1.tmp"
  local mirror
  mirror=$(apt_mirror)
  if [[ -n $mirror ]] && command -v debootstrap >/dev/null; then
    log "L1: debootstrap --variant=minbase bookworm from the apt mirror (about a minute)"
    if debootstrap --variant=minbase bookworm "$L1.tmp" "$mirror" >"$CACHE/debootstrap.log" 2>&1; then
      mv "$L1.tmp" "$L1"
      echo "debootstrap --variant=minbase bookworm" >"$CACHE/rootfs.done"
      return 0
    fi
    log "debootstrap failed (see $CACHE/debootstrap.log)"
  else
    log "no apt mirror configured or no debootstrap"
  fi
  log "L1: falling back to a generated tree shaped like a minbase rootfs"
  rm -rf --one-file-system "$L1.tmp"
  python3 "$GEN" rootfs --out "$L1.tmp"
  mv "$L1.tmp" "$L1"
  echo "generated tree (debootstrap failed or unavailable)" >"$CACHE/rootfs.done"
}

# The root filesystem as a tarball, for the unpack workloads.
ensure_rootfs_tar() {
  ROOTFS_TAR="$CACHE/rootfs.tar"
  [[ -f $ROOTFS_TAR && $ROOTFS_TAR -nt $CACHE/rootfs.done ]] && return 0
  log "packing $ROOTFS_TAR"
  tar -cf "$ROOTFS_TAR.tmp" -C "$L1" --xattrs --numeric-owner .
  mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
}

# A cached layer is reused only if it was made with the same sizes: the marker holds them.
is_cached() { [[ -f $1 && $(<"$1") == "$2" ]]; }

ensure_layer2() {
  L2="$SET/l2"
  local params="small=$SMALL_FILES big=$BIG_ENTRIES mib=$BIG_MIB"
  is_cached "$SET/l2.done" "$params" && [[ -d $L2 ]] && return 0
  rm -rf --one-file-system "$L2"
  log "L2: $SMALL_FILES small files, $((BIG_ENTRIES / 2)) entries of big/, ${BIG_MIB} MiB bigfile"
  python3 "$GEN" layer2 --out "$L2" --small "$SMALL_FILES" --big "$BIG_ENTRIES"
  head -c "$((BIG_MIB * 1024 * 1024))" /dev/urandom >"$L2/bigfile"
  echo "$params" >"$SET/l2.done"
}

ensure_layer3() {
  L3="$SET/l3"
  COPYUP_LIST="$SET/copyup.list"
  local params="small=$SMALL_FILES big=$BIG_ENTRIES copyup=$COPYUP_FILES"
  is_cached "$SET/l3.done" "$params" && [[ $SET/l3.done -nt $CACHE/rootfs.done ]] &&
    [[ $SET/l3.done -nt $SET/l2.done ]] && return 0
  rm -rf --one-file-system "$L3"
  log "L3: whiteouts, an opaque directory, $((BIG_ENTRIES / 2)) entries of big/"
  python3 "$GEN" layer3 --out "$L3" --l1 "$L1" --small "$SMALL_FILES" --big "$BIG_ENTRIES" \
    --copyup "$COPYUP_FILES" --copyup-list "$COPYUP_LIST"
  echo "$params" >"$SET/l3.done"
}

prepare_layers() {
  mkdir -p "$SET"
  ensure_rootfs
  ensure_rootfs_tar
  ensure_layer2
  ensure_layer3
  BIG_BYTES=$(stat -c %s "$L2/bigfile")
  L1_ORIGIN=$(cat "$CACHE/rootfs.done")
  export L1 L2 L3 ROOTFS_TAR COPYUP_LIST BIG_BYTES
}

# Entry counts for the report header.
describe_layers() {
  local n
  for n in L1 L2 L3; do
    printf '%s=%s entries' "$n" "$(find "${!n}" | wc -l)"
    [[ $n == L3 ]] || printf ', '
  done
}
