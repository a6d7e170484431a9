#!/usr/bin/env bash
# Time from an image archive to a mounted tree: `stratafs image mount --unpack` (first mount:
# unpack and verify; second mount: layers reused) against what people do by hand (`mkdir` +
# `tar -x` of each layer in order), then the lazy mount (the default: layers indexed, served
# from the tar): first `ls /` from mount start, second mount, find and tar -c against the
# unpacked mount, the gzip index pass against `gzip -dc`, and the server's RSS. The image is built from the cached Debian rootfs tar: three layers
# splitting the tree, plus a layer of changes (a 64 MiB file, edits, a deleted directory).
# Synthetic rows (scripts/lib/make-image.py): a 1.16 GB docker-save image (first ls / from mount
# start, the CPU time of `image mount`, which the machine's load does not change, and that CPU
# time by thread: sha256 runs beside the tar reader, so the busier thread bounds the wall) and a
# 1M-entry layer (server RSS after ls /, after find).
# Usage: scripts/bench-image.sh [--lazy-only]  (run as root; builds the release binary)
set -euo pipefail
cd "$(dirname "$0")/.."
LAZY_ONLY=${1:-}

cargo build --release --quiet
BIN=$PWD/target/release/stratafs
W=$(mktemp -d /var/tmp/stratafs-bench-image.XXXXXX)
cleanup() {
    for m in "$W"/m*; do
        mountpoint -q "$m" 2>/dev/null && umount -l "$m"
    done
    rm -rf "$W"
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
mount_rss() {  # RSS (MiB) of the mount server whose option file names the mount $1
    for p in $(pgrep -f lowerdir_file); do
        grep -qF "$1" "/proc/$p/cmdline" 2>/dev/null && awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$p/status"
    done
    true  # other mounts' servers (not ours) are no failure under set -e
}
synthetic_rows() {
    python3 scripts/lib/make-image.py "$W/big.tar" big
    python3 scripts/lib/make-image.py "$W/many.tar" many 1000000
    sync
    for round in 1 2; do
        rm -rf "$W/syn"
        t0=$(now)
        /usr/bin/time -o "$W/cpu" -f "%U %S" "$BIN" --root "$W/syn" image mount "$W/big.tar" "$W/mb" >/dev/null
        ls "$W/mb/" >/dev/null; t1=$(now)
        echo "lazy, 1.16 GB docker save: first ls / from image mount start $(secs "$t0" "$t1") s, image mount CPU $(awk '{print $1 + $2}' "$W/cpu") s (round $round)"
        "$BIN" --root "$W/syn" image umount "$W/mb"
    done
    # The hashing runs on its own thread beside the read and parse: on a quiet machine the
    # first ls / takes about the busier thread's CPU time, whatever the load here.
    if command -v perf >/dev/null; then
        rm -rf "$W/syn"
        perf record -q -e task-clock -c 100000 -o "$W/perf.data" "$BIN" --root "$W/syn" image mount "$W/big.tar" "$W/mb" >/dev/null 2>&1
        "$BIN" --root "$W/syn" image umount "$W/mb" >/dev/null
        echo "lazy, 1.16 GB docker save: image mount CPU by thread (ms): $(perf report -q -i "$W/perf.data" --sort comm --show-total-period 2>/dev/null | awk '$2 > 1e6 {printf "%s %.0f  ", $3, $2 / 1e6}')"
    fi
    rm -rf "$W/syn"
    "$BIN" --root "$W/syn" image mount "$W/many.tar" "$W/mm" >/dev/null
    ls "$W/mm/" >/dev/null
    a=$(mount_rss "$W/mm")
    find "$W/mm" >/dev/null
    echo "lazy, 1M-entry layer: server RSS after ls / $a MiB, after find $(mount_rss "$W/mm") MiB"
    "$BIN" --root "$W/syn" image umount "$W/mm"
    rm -f "$W/big.tar" "$W/many.tar"
}
if [ "$LAZY_ONLY" = --lazy-only ]; then
    synthetic_rows
    exit 0
fi
source scripts/lib/rootfs.sh
ROOTFS_TAR=$(ensure_rootfs_tar)

echo "building the image from $ROOTFS_TAR" >&2
mkdir -p "$W/src" "$W/layers"
tar -xf "$ROOTFS_TAR" -C "$W/src"
cd "$W/src"
# Layer 1: /usr; layer 2: /var and the library directories; layer 3: everything else.
tar -cf "$W/layers/1.tar" usr
tar -cf "$W/layers/2.tar" var $(ls -d lib* 2>/dev/null || true)
tar -cf "$W/layers/3.tar" --exclude=./usr --exclude=./var $(ls -A | grep -vE '^(usr|var|lib.*)$')
# Layer 4: changes.
mkdir -p "$W/chg/etc" "$W/chg/usr/share" "$W/chg/opt"
echo "bench" > "$W/chg/etc/motd"
cp etc/passwd "$W/chg/etc/passwd" && echo "bench:x:1000:1000::/home/bench:/bin/sh" >> "$W/chg/etc/passwd"
touch "$W/chg/usr/share/.wh.doc"
head -c 64M /dev/urandom > "$W/chg/opt/blob"
tar -cf "$W/layers/4.tar" -C "$W/chg" .
cd - >/dev/null

python3 - "$W" <<'EOF'
import hashlib, json, os, sys, tarfile, gzip, shutil
w = sys.argv[1]
layers = [f"{w}/layers/{i}.tar" for i in (1, 2, 3, 4)]
def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()
diff_ids = [sha(p) for p in layers]
cfg = json.dumps({"architecture": "amd64", "os": "linux",
                  "config": {"Cmd": ["/bin/bash"]},
                  "rootfs": {"type": "layers", "diff_ids": ["sha256:" + d for d in diff_ids]}}).encode()
cfg_hex = hashlib.sha256(cfg).hexdigest()
# docker save (uncompressed layers)
with tarfile.open(f"{w}/docker.tar", "w") as t:
    names = []
    for p, d in zip(layers, diff_ids):
        t.add(p, arcname=f"{d}/layer.tar"); names.append(f"{d}/layer.tar")
    for name, data in [(f"{cfg_hex}.json", cfg),
                       ("manifest.json", json.dumps([{"Config": f"{cfg_hex}.json", "RepoTags": ["bench:1"], "Layers": names}]).encode())]:
        ti = tarfile.TarInfo(name); ti.size = len(data)
        import io; t.addfile(ti, io.BytesIO(data))
# OCI layout with gzip layers
oci = f"{w}/oci"
os.makedirs(f"{oci}/blobs/sha256")
descs = []
for p in layers:
    gz = p + ".gz"
    with open(p, "rb") as src, gzip.open(gz, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst)
    h = sha(gz); shutil.move(gz, f"{oci}/blobs/sha256/{h}")
    descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + h,
                  "size": os.path.getsize(f"{oci}/blobs/sha256/{h}")})
open(f"{oci}/blobs/sha256/{cfg_hex}", "wb").write(cfg)
m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + cfg_hex, "size": len(cfg)},
                "layers": descs}).encode()
mh = hashlib.sha256(m).hexdigest()
open(f"{oci}/blobs/sha256/{mh}", "wb").write(m)
open(f"{oci}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
open(f"{oci}/index.json", "w").write(json.dumps({"schemaVersion": 2, "manifests": [
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + mh, "size": len(m)}]}))
EOF
echo "docker.tar: $(du -sh "$W/docker.tar" | cut -f1), OCI layout (gzip): $(du -sh "$W/oci" | cut -f1)" >&2

sync

t0=$(now); "$BIN" --root "$W/root" image mount --unpack "$W/docker.tar" "$W/m1" >/dev/null; t1=$(now)
test -f "$W/m1/etc/motd" && test ! -e "$W/m1/usr/share/doc"
echo "first mount (docker save, 4 layers unpacked + verified): $(secs "$t0" "$t1") s"
"$BIN" --root "$W/root" image umount "$W/m1"

t0=$(now); "$BIN" --root "$W/root" image mount --unpack "$W/oci" "$W/m2" >/dev/null; t1=$(now)
echo "second mount (OCI gzip archive of the same image, layers reused): $(secs "$t0" "$t1") s"
"$BIN" --root "$W/root" image umount "$W/m2"

rm -rf "$W/root"
t0=$(now); "$BIN" --root "$W/root" image mount --unpack "$W/oci" "$W/m3" >/dev/null; t1=$(now)
echo "first mount (OCI layout, gzip layers): $(secs "$t0" "$t1") s"
"$BIN" --root "$W/root" image umount "$W/m3"

# By hand: mkdir + tar -x of each layer in order (whiteouts are not applied by this).
t0=$(now)
mkdir "$W/byhand"
for d in $(tar -xOf "$W/docker.tar" manifest.json | python3 -c "import json,sys;print(' '.join(json.load(sys.stdin)[0]['Layers']))"); do
    tar -xOf "$W/docker.tar" "$d" | tar -x -C "$W/byhand"
done
t1=$(now)
echo "by hand (mkdir + tar -x of each layer from the docker save tar): $(secs "$t0" "$t1") s"
rm -rf "$W/byhand"
t0=$(now)
mkdir "$W/byhand"
for b in $(python3 -c "import json;m=json.load(open('$W/oci/index.json'))['manifests'][0]['digest'][7:];print(' '.join(l['digest'][7:] for l in json.load(open('$W/oci/blobs/sha256/'+m))['layers']))"); do
    tar -xzf "$W/oci/blobs/sha256/$b" -C "$W/byhand"
done
t1=$(now)
echo "by hand (tar -xz of each gzip layer of the OCI layout): $(secs "$t0" "$t1") s"

# Lazy mounts (the default): nothing unpacked, layers served from their tars.
server_rss() {  # RSS (MiB) of the mount server serving $1
    python3 - "$1" <<'PY'
import os, sys
want = sys.argv[1]
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        if want.encode() in args and b"-o" in args:
            for l in open(f"/proc/{pid}/status"):
                if l.startswith("VmRSS:"):
                    print(f"{int(l.split()[1]) / 1024:.1f}")
    except OSError:
        pass
PY
}
sync
rm -rf "$W/lazy"
t0=$(now); "$BIN" --root "$W/lazy" image mount "$W/docker.tar" "$W/m4" >/dev/null; ls "$W/m4/" >/dev/null; t1=$(now)
echo "lazy: first ls / from image mount start (docker save, uncompressed, indexed now): $(secs "$t0" "$t1") s"
"$BIN" --root "$W/lazy" image umount "$W/m4"
t0=$(now); "$BIN" --root "$W/lazy" image mount "$W/docker.tar" "$W/m4" >/dev/null; ls "$W/m4/" >/dev/null; t1=$(now)
echo "lazy: second mount + ls / (indexes reused): $(secs "$t0" "$t1") s"
"$BIN" --root "$W/root" image mount --unpack "$W/docker.tar" "$W/m5" >/dev/null
for round in 1 2; do
    for m in m4 m5; do
        t0=$(now); find "$W/$m" >/dev/null; t1=$(now)
        echo "find ($m, round $round): $(secs "$t0" "$t1") s"
    done
done
for round in 1 2; do
    for m in m4 m5; do
        t0=$(now); tar -cf - -C "$W/$m" . | cat >/dev/null; t1=$(now)
        echo "tar -c ($m, round $round): $(secs "$t0" "$t1") s"
    done
done
echo "lazy server RSS after find + tar: $(server_rss "$W/m4") MiB (unpacked mount: $(server_rss "$W/m5") MiB)"
"$BIN" --root "$W/lazy" image umount "$W/m4"
"$BIN" --root "$W/root" image umount "$W/m5"

# A fresh store: the store above holds indexes of the same layers (read in docker.tar).
t0=$(now); "$BIN" --root "$W/lazy-gz" image mount "$W/oci" "$W/m6" >/dev/null; ls "$W/m6/" >/dev/null; t1=$(now)
echo "lazy: first ls / from image mount start (OCI layout, gzip layers, decompressed + indexed now): $(secs "$t0" "$t1") s"
t0=$(now)
for b in $(python3 -c "import json;m=json.load(open('$W/oci/index.json'))['manifests'][0]['digest'][7:];print(' '.join(l['digest'][7:] for l in json.load(open('$W/oci/blobs/sha256/'+m))['layers']))"); do
    gzip -dc "$W/oci/blobs/sha256/$b" >/dev/null
done
t1=$(now)
echo "gzip -dc > /dev/null of the same layers: $(secs "$t0" "$t1") s"
t0=$(now); tar -cf - -C "$W/m6" . | cat >/dev/null; t1=$(now)
echo "tar -c (lazy, gzip layers from their decompressed copies): $(secs "$t0" "$t1") s"
"$BIN" --root "$W/lazy-gz" image umount "$W/m6"

synthetic_rows
