#!/usr/bin/env python3
"""Write a docker-save archive of synthetic layers, for the lazy-mount benchmark rows.

make-image.py OUT.tar big     one layer of 40,000 small files plus 1 GiB of incompressible
                              files (8 x 128 MiB), and a small layer of changes above it
make-image.py OUT.tar many N  one layer of N empty files in N/1000 directories
"""
import hashlib, io, json, os, sys, tarfile

out, kind = sys.argv[1], sys.argv[2]
work = out + ".layers"
os.makedirs(work, exist_ok=True)


def add(t, name, data=b"", mode=0o644):
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), mode, 1_700_000_000
    t.addfile(ti, io.BytesIO(data) if data else None)


layers = []
if kind == "big":
    p = f"{work}/1.tar"
    with tarfile.open(p, "w", format=tarfile.GNU_FORMAT) as t:
        for i in range(40_000):
            add(t, f"usr/share/d{i // 100}/f{i}", b"x" * (i % 3000))
        chunk = os.urandom(1 << 20)
        for n in range(8):
            ti = tarfile.TarInfo(f"opt/blob{n}")
            ti.size, ti.mtime = 128 << 20, 1_700_000_000
            # Distinct bytes per MiB (a counter), incompressible within each MiB.
            data = b"".join(i.to_bytes(8, "little") + chunk[8:] for i in range(n * 128, n * 128 + 128))
            t.addfile(ti, io.BytesIO(data))
    layers.append(p)
    p = f"{work}/2.tar"
    with tarfile.open(p, "w", format=tarfile.GNU_FORMAT) as t:
        add(t, "etc/motd", b"bench\n")
        add(t, "usr/share/.wh.d1")
    layers.append(p)
else:
    n = int(sys.argv[3])
    p = f"{work}/1.tar"
    with tarfile.open(p, "w", format=tarfile.GNU_FORMAT) as t:
        for i in range(n):
            add(t, f"d{i // 1000}/file-{i}")
    layers.append(p)


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


diff_ids = [sha(p) for p in layers]
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                  "rootfs": {"type": "layers", "diff_ids": ["sha256:" + d for d in diff_ids]}}).encode()
ch = hashlib.sha256(cfg).hexdigest()
with tarfile.open(out, "w") as t:
    names = []
    for p, d in zip(layers, diff_ids):
        t.add(p, arcname=f"{d}/layer.tar")
        names.append(f"{d}/layer.tar")
    for name, data in [(f"{ch}.json", cfg), ("manifest.json", json.dumps(
            [{"Config": f"{ch}.json", "RepoTags": [f"{kind}:1"], "Layers": names}]).encode())]:
        add(t, name, data)
for p in layers:
    os.remove(p)
os.rmdir(work)
