#!/usr/bin/env python3
"""Generate the benchmark's synthetic trees (used by scripts/bench.sh, not by the crate).

One process writes tens of thousands of files, which a shell loop would do one fork per file.
Every tree is deterministic for a given seed so cached layer sets stay comparable between runs.
"""

import argparse
import os
import random
import stat
import sys


def write_file(path, size, rng):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(rng.randbytes(size))


def whiteout(path):
    """A char 0/0 device: the whiteout spelling kernel overlayfs, fuse-overlayfs and stratafs read."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))


def small_paths(count):
    """Relative paths of COUNT small files, ~30 per directory, two levels deep."""
    per_dir = 30
    dirs = max(1, (count + per_dir - 1) // per_dir)
    paths = []
    for i in range(count):
        d = i % dirs
        paths.append(f"small/d{d // 10:03d}/e{d % 10}/f{i:06d}")
    return paths


def cmd_layer2(args):
    """L2: COUNT small files of 1-8 KiB plus the even half of the big merged directory."""
    rng = random.Random(args.seed)
    for rel in small_paths(args.small):
        write_file(os.path.join(args.out, rel), rng.randint(1024, 8192), rng)
    big = os.path.join(args.out, "big")
    os.makedirs(big, exist_ok=True)
    for i in range(0, args.big, 2):
        open(os.path.join(big, f"f{i:06d}"), "wb").close()


def cmd_layer3(args):
    """L3: whiteouts over L1 and L2, an opaque directory, and the odd half of big/."""
    out = args.out
    os.makedirs(out, exist_ok=True)
    # Whiteouts of single L1 files and of whole L1 directories.
    for rel in ("etc/motd", "etc/issue.net", "usr/share/info"):
        if os.path.lexists(os.path.join(args.l1, rel)):
            whiteout(os.path.join(out, rel))
    doc = os.path.join(args.l1, "usr/share/doc")
    if os.path.isdir(doc):
        for name in sorted(os.listdir(doc))[::3]:
            whiteout(os.path.join(out, "usr/share/doc", name))
    # Whiteouts of every 50th L2 small file, and of one whole L2 directory.
    paths = small_paths(args.small)
    dirs = sorted({os.path.dirname(p) for p in paths})
    gone_dir = dirs[1] if len(dirs) > 1 else None
    opaque_dir = dirs[0]
    hidden = set()
    for i, rel in enumerate(paths):
        top = os.path.dirname(rel)
        if top in (gone_dir, opaque_dir):
            hidden.add(rel)
        elif i % 50 == 7:
            whiteout(os.path.join(out, rel))
            hidden.add(rel)
    if gone_dir:
        whiteout(os.path.join(out, gone_dir))
    # An opaque directory (trusted.overlay.opaque, read by all three backends) with new files.
    opq = os.path.join(out, opaque_dir)
    os.makedirs(opq, exist_ok=True)
    os.setxattr(opq, "trusted.overlay.opaque", b"y")
    rng = random.Random(args.seed)
    for i in range(5):
        write_file(os.path.join(opq, f"new{i}"), 2048, rng)
    write_file(os.path.join(out, "etc/stratafs-bench"), 64, rng)
    # The odd half of big/: 50/50 split over two layers, interleaved names.
    big = os.path.join(out, "big")
    os.makedirs(big, exist_ok=True)
    for i in range(1, args.big, 2):
        open(os.path.join(big, f"f{i:06d}"), "wb").close()
    # Lower files that stay visible: the copy-up storm touches these, spread over all dirs.
    visible = [p for p in paths if p not in hidden]
    step = max(1, len(visible) // args.copyup)
    with open(args.copyup_list, "w") as f:
        for rel in visible[::step][: args.copyup]:
            f.write(rel + "\n")


def cmd_rootfs(args):
    """Fallback L1 when debootstrap fails: a tree shaped like a minbase rootfs (~6.7k entries,
    ~200 MB: many small files, some large ones, symlinks, usr/share/doc and man pages)."""
    rng = random.Random(args.seed)
    out = args.out
    for d in ("bin", "sbin", "lib"):
        os.makedirs(os.path.join(out, "usr", d), exist_ok=True)
        os.symlink(f"usr/{d}", os.path.join(out, d))
    for d in ("dev", "proc", "sys", "tmp", "run", "root", "home", "var/log", "var/lib/dpkg"):
        os.makedirs(os.path.join(out, d), exist_ok=True)
    for rel, size in (("etc/motd", 286), ("etc/issue.net", 20), ("etc/passwd", 900)):
        write_file(os.path.join(out, rel), size, rng)
    for i in range(300):
        write_file(os.path.join(out, f"etc/conf{i // 30}/c{i}.conf"), rng.randint(100, 4000), rng)
    for i in range(400):
        write_file(os.path.join(out, f"usr/bin/tool{i}"), rng.randint(20_000, 400_000), rng)
    for i in range(300):
        write_file(os.path.join(out, f"usr/lib/x86_64-linux-gnu/lib{i}.so.1"),
                   rng.randint(10_000, 300_000), rng)
    for i in range(90):
        for j in range(6):
            write_file(os.path.join(out, f"usr/share/doc/pkg{i}/file{j}"),
                       rng.randint(200, 8000), rng)
    for i in range(2500):
        write_file(os.path.join(out, f"usr/share/man/man{i % 8 + 1}/page{i}.gz"),
                   rng.randint(500, 6000), rng)
    for i in range(1800):
        write_file(os.path.join(out, f"usr/share/zoneinfo/z{i // 100}/zone{i}"),
                   rng.randint(100, 3000), rng)
    write_file(os.path.join(out, "usr/share/info/dir"), 1000, rng)
    for i in range(600):
        write_file(os.path.join(out, f"var/lib/dpkg/info/p{i}.list"), rng.randint(100, 5000), rng)


def cmd_files(args):
    """COUNT files of SIZE bytes under PREFIX, ~100 per directory (archive-section trees)."""
    rng = random.Random(args.seed)
    for i in range(args.count):
        rel = f"{args.prefix}/d{i // 10000:02d}/e{(i // 100) % 100:02d}/f{i:06d}"
        write_file(os.path.join(args.out, rel), args.size, rng)


def cmd_shift(args):
    """Rootless copy of a layer: owners moved into a user namespace's host range (container id
    0 -> --root-uid, N -> --sub-uid + N - 1, as rootless Podman maps them) and opaque
    directories marked with user.overlay.opaque too (trusted.* is unreadable in a user
    namespace; kernel overlayfs mounted with userxattr, fuse-overlayfs and stratafs read it)."""

    def host(cid, root, sub):
        if cid == 0:
            return root
        if cid > args.count:
            raise SystemExit(f"id {cid} is outside the namespace's {args.count} ids")
        return sub + cid - 1

    def shift(path):
        st = os.lstat(path)
        os.lchown(path, host(st.st_uid, args.root_uid, args.sub_uid),
                  host(st.st_gid, args.root_gid, args.sub_gid))

    for top, dirs, files in os.walk(args.tree):
        # Each directory once, as the top of its own step; symlinks to directories are listed
        # in dirs but not walked into.
        shift(top)
        try:
            if os.getxattr(top, "trusted.overlay.opaque", follow_symlinks=False) == b"y":
                os.setxattr(top, "user.overlay.opaque", b"y", follow_symlinks=False)
        except OSError:
            pass
        for name in files + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            shift(os.path.join(top, name))


def main():
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("layer2")
    s.add_argument("--out", required=True)
    s.add_argument("--small", type=int, required=True)
    s.add_argument("--big", type=int, required=True)
    s.add_argument("--seed", type=int, default=2)
    s = sub.add_parser("layer3")
    s.add_argument("--out", required=True)
    s.add_argument("--l1", required=True)
    s.add_argument("--small", type=int, required=True)
    s.add_argument("--big", type=int, required=True)
    s.add_argument("--copyup", type=int, required=True)
    s.add_argument("--copyup-list", required=True)
    s.add_argument("--seed", type=int, default=3)
    s = sub.add_parser("rootfs")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=1)
    s = sub.add_parser("files")
    s.add_argument("--out", required=True)
    s.add_argument("--prefix", required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--size", type=int, default=512)
    s.add_argument("--seed", type=int, default=4)
    s = sub.add_parser("shift")
    s.add_argument("--tree", required=True)
    s.add_argument("--root-uid", type=int, required=True)
    s.add_argument("--root-gid", type=int, required=True)
    s.add_argument("--sub-uid", type=int, required=True)
    s.add_argument("--sub-gid", type=int, required=True)
    s.add_argument("--count", type=int, required=True)
    args = p.parse_args()
    {"layer2": cmd_layer2, "layer3": cmd_layer3, "rootfs": cmd_rootfs, "files": cmd_files,
     "shift": cmd_shift}[
        args.cmd
    ](args)


if __name__ == "__main__":
    sys.exit(main())
