#!/usr/bin/env python3
"""Simulated power cuts under a stratafs mount (run by scripts/crash.sh; root only).

The upper and work directories live on a small filesystem image (ext4 or XFS) that is itself a
file on an XFS "holder" filesystem with reflinks. While a workload runs through the mount, a
cut is a reflink copy (FICLONE) of the image file: one instant of what the loop device has
written, i.e. what the disk holds, without what was only in the guest filesystem's page cache.
Each copy is then mounted (its journal replayed, as after a power cut), opened as a store by a
fresh stratafs mount over the same lower layer, checked, unmounted and checked with fsck -n.

Invariants (everything the workload writes describes itself: a header with length + sha256):
  - every lower file shows its complete lower content (copy-ups never empty or short);
  - a big lower file being appended to keeps its lower content intact, followed by whole
    append records, at least as many as were fsynced before the cut;
  - a renamed lower directory shows under exactly one of its names, with all its files, and
    not under a name older than the last rename whose directory fsync finished before the cut;
  - a file replaced with write-tmp + fsync + rename + fsync(dir) is its old or its new
    complete content, and not older than the last replacement finished before the cut;
  - every file of a tar extracted and fsynced before the cut is complete;
  - no staging names or whiteout files in the view, every entry lstat()s, the store opens,
    fsck finds nothing.
"""

import argparse
import hashlib
import io
import os
import random
import shutil
import subprocess
import sys
import tarfile
import threading
import time

SMALL_DIRS, SMALL_FILES = 8, 40
BIG_FILES, BIG_SIZE = 6, 8 << 20
TREE_DIRS, TREE_FILES = 12, 15
OVER_FILES = 16
TAR_FILES = 150
REC = 512


def blob(tag, size, rng):
    body = rng.randbytes(size)
    return b"SFS1 %d %s %s\n" % (size, hashlib.sha256(body).hexdigest().encode(), tag.encode()) + body


def parse(data):
    """The tag of a self-describing blob, or None when it is not complete and intact."""
    nl = data.find(b"\n")
    if nl < 0 or not data.startswith(b"SFS1 "):
        return None
    try:
        _, size, digest, tag = data[:nl].decode().split(" ")
        size = int(size)
    except ValueError:
        return None
    body = data[nl + 1:]
    if len(body) != size or hashlib.sha256(body).hexdigest() != digest:
        return None
    return tag


def record(name, seq):
    head = b"A %s %08d " % (name.encode(), seq)
    return head + b"." * (REC - len(head) - 1) + b"\n"


def run(*cmd, check=True, quiet=True):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if check and r.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(cmd), r.returncode, r.stdout.decode(errors="replace")[-2000:]))
    return r


def fsync_path(path, directory=False):
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_lower(lower, tarball):
    rng = random.Random(1)
    expect = {}
    for d in range(SMALL_DIRS):
        for f in range(SMALL_FILES):
            expect["small/d%02d/f%03d" % (d, f)] = blob("s%d.%d" % (d, f), rng.randint(0, 12000), rng)
    for b in range(BIG_FILES):
        expect["big/b%d" % b] = blob("b%d" % b, BIG_SIZE, rng)
    for d in range(TREE_DIRS):
        for f in range(TREE_FILES):
            expect["tree/t%02d/f%02d" % (d, f)] = blob("t%d.%d" % (d, f), rng.randint(1, 6000), rng)
    for o in range(OVER_FILES):
        expect["over/o%02d" % o] = blob("o%02d.v0" % o, rng.randint(1, 20000), rng)
    for rel, data in expect.items():
        p = os.path.join(lower, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    tar_expect = {}
    with tarfile.open(tarball, "w") as t:
        for i in range(TAR_FILES):
            name = "x%02d/f%03d" % (i % 10, i)
            data = blob("x%d" % i, rng.randint(0, 9000), rng)
            tar_expect[name] = data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            t.addfile(info, io.BytesIO(data))
    return expect, tar_expect


class Workload:
    """Threads changing the mount at `mp`; what they made durable is recorded under `lock`."""

    def __init__(self, mp, expect, tarball, seed):
        self.mp, self.expect, self.tarball = mp, expect, tarball
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors = []
        self.ops = 0
        self.names = {"t%02d" % d: ["t%02d" % d] for d in range(TREE_DIRS)}
        self.name_durable = {d: 0 for d in self.names}
        self.over_durable = {"o%02d" % o: 0 for o in range(OVER_FILES)}
        self.over_started = dict(self.over_durable)
        self.appended = {"b%d" % b: 0 for b in range(BIG_FILES)}
        self.append_durable = dict(self.appended)
        self.untar_done = []
        self.untar_n = 0
        self.threads = [threading.Thread(target=self.loop, args=(fn,), daemon=True)
                        for fn in (self.storm, self.storm, self.append, self.rename_dir,
                                   self.overwrite, self.untar)]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()

    def loop(self, fn):
        rng = random.Random(self.rng.random())
        while not self.stop.is_set():
            try:
                fn(rng)
                with self.lock:
                    self.ops += 1
            except Exception as e:  # recorded: the run fails on any workload error
                self.errors.append("%s: %r" % (fn.__name__, e))
                return

    def path(self, *parts):
        return os.path.join(self.mp, *parts)

    def storm(self, rng):
        """Copy-ups of small lower files by chmod, utime, open for writing, and reads."""
        rel = "small/d%02d/f%03d" % (rng.randrange(SMALL_DIRS), rng.randrange(SMALL_FILES))
        p = self.path(rel)
        op = rng.randrange(4)
        if op == 0:
            os.chmod(p, rng.choice((0o644, 0o640, 0o600)))
        elif op == 1:
            os.utime(p, (rng.randrange(1 << 30), rng.randrange(1 << 30)))
        elif op == 2:
            os.close(os.open(p, os.O_RDWR))
        else:
            with open(p, "rb") as f:
                if f.read() != self.expect[rel]:
                    raise RuntimeError("live read of %s differs" % rel)

    def append(self, rng):
        name = "b%d" % rng.randrange(BIG_FILES)
        with self.lock:
            seq = self.appended[name]
            n = rng.randint(1, 8)
            self.appended[name] = seq + n
        # One writer per file at a time: records are numbered in file order.
        with self.file_lock(name):
            fd = os.open(self.path("big", name), os.O_WRONLY | os.O_APPEND)
            try:
                have = os.fstat(fd).st_size - len(self.expect["big/" + name])
                first = have // REC
                for s in range(first, first + n):
                    os.write(fd, record(name, s))
                if rng.random() < 0.5:
                    os.fsync(fd)
                    with self.lock:
                        self.append_durable[name] = first + n
            finally:
                os.close(fd)

    _file_locks = {}

    def file_lock(self, name):
        return self._file_locks.setdefault(name, threading.Lock())

    def rename_dir(self, rng):
        d = "t%02d" % rng.randrange(TREE_DIRS)
        with self.lock:
            hist = self.names[d]
            if len(hist) >= 4:
                time.sleep(0.2)
                return
            old, new = hist[-1], "%s.g%d" % (d, len(hist))
            hist.append(new)
        os.rename(self.path("tree", old), self.path("tree", new))
        fsync_path(self.path("tree"), directory=True)
        with self.lock:
            self.name_durable[d] = len(hist) - 1
        time.sleep(rng.random() * 0.3)

    def overwrite(self, rng):
        o = "o%02d" % rng.randrange(OVER_FILES)
        with self.lock:
            v = self.over_started[o] + 1
            self.over_started[o] = v
        tmp = self.path("over", ".new-" + o)
        with open(tmp, "wb") as f:
            f.write(blob("%s.v%d" % (o, v), rng.randint(1, 20000), rng))
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.path("over", o))
        fsync_path(self.path("over"), directory=True)
        with self.lock:
            self.over_durable[o] = v

    def untar(self, rng):
        with self.lock:
            if self.untar_n >= 4:
                time.sleep(0.2)
                return
            self.untar_n += 1
            n = self.untar_n
        dest = self.path("untar%d" % n)
        os.mkdir(dest)
        run("tar", "-xf", self.tarball, "-C", dest)
        for root, dirs, files in os.walk(dest):
            for f in files:
                fsync_path(os.path.join(root, f))
            fsync_path(root, directory=True)
        fsync_path(self.mp, directory=True)
        with self.lock:
            self.untar_done.append(n)

    def durable(self):
        with self.lock:
            return {
                "name_durable": dict(self.name_durable),
                "over_durable": dict(self.over_durable),
                "append_durable": dict(self.append_durable),
                "untar_done": list(self.untar_done),
            }

    def possible(self):
        with self.lock:
            return {"names": {d: list(h) for d, h in self.names.items()},
                    "over_started": dict(self.over_started)}


def check_view(v, expect, tar_expect, dur, pos):
    """Every invariant violated by the view at `v`, as strings."""
    bad = []
    for root, dirs, files in os.walk(v):
        for n in dirs + files:
            p = os.path.join(root, n)
            rel = os.path.relpath(p, v)
            if n.startswith(".wh.") or "stratafs-staging" in n:
                bad.append("internal name visible: " + rel)
            try:
                os.lstat(p)
            except OSError as e:
                bad.append("listed but lstat fails: %s: %s" % (rel, e))
    for rel, data in expect.items():
        top = rel.split("/")[0]
        if top == "small":
            try:
                with open(os.path.join(v, rel), "rb") as f:
                    got = f.read()
            except OSError as e:
                bad.append("%s: %s" % (rel, e))
                continue
            if got != data:
                bad.append("%s: %d bytes, not its %d lower bytes" % (rel, len(got), len(data)))
        elif top == "big":
            name = rel.split("/")[1]
            with open(os.path.join(v, rel), "rb") as f:
                head = f.read(len(data))
                tail = f.read()
            if head != data:
                bad.append("%s: lower content not intact (%d of %d bytes equal)" % (
                    rel, len(head) if head == data[:len(head)] else -1, len(data)))
                continue
            good = 0
            while tail[good * REC:(good + 1) * REC] == record(name, good):
                good += 1
            if good < dur["append_durable"][name]:
                bad.append("%s: %d append records, %d were fsynced" % (rel, good, dur["append_durable"][name]))
    for d in range(TREE_DIRS):
        d = "t%02d" % d
        hist = pos["names"][d]
        seen = [i for i, n in enumerate(hist) if os.path.lexists(os.path.join(v, "tree", n))]
        if len(seen) != 1:
            bad.append("tree/%s: visible as %s (history %s)" % (d, [hist[i] for i in seen], hist))
            continue
        if seen[0] < dur["name_durable"][d]:
            bad.append("tree/%s: at %s, but the rename to %s was synced" % (d, hist[seen[0]], hist[dur["name_durable"][d]]))
        at = os.path.join(v, "tree", hist[seen[0]])
        want = sorted("f%02d" % f for f in range(TREE_FILES))
        if sorted(os.listdir(at)) != want:
            bad.append("tree/%s: holds %s" % (hist[seen[0]], sorted(os.listdir(at))))
            continue
        for f in want:
            with open(os.path.join(at, f), "rb") as fh:
                if fh.read() != expect["tree/%s/%s" % (d, f)]:
                    bad.append("tree/%s/%s: content differs" % (hist[seen[0]], f))
    for o in range(OVER_FILES):
        o = "o%02d" % o
        with open(os.path.join(v, "over", o), "rb") as f:
            tag = parse(f.read())
        if tag is None:
            bad.append("over/%s: neither old nor complete new content" % o)
            continue
        ver = int(tag.split(".v")[1])
        if ver < dur["over_durable"][o] or ver > pos["over_started"][o]:
            bad.append("over/%s: version %d, synced %d" % (o, ver, dur["over_durable"][o]))
    for n in dur["untar_done"]:
        for name, data in tar_expect.items():
            p = os.path.join(v, "untar%d" % n, name)
            try:
                with open(p, "rb") as f:
                    if f.read() != data:
                        bad.append("untar%d/%s: incomplete after fsync" % (n, name))
            except OSError as e:
                bad.append("untar%d/%s: %s" % (n, name, e))
    return bad


def mount_opts(fs):
    return ["-o", "nouuid"] if fs == "xfs" else []


def unmount_server(mp, pidfile):
    """Unmount a stratafs mount and wait for its server to leave (it holds the upper open)."""
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        pid = None
    r = run("umount", mp, check=False)
    for _ in range(2400):
        if pid is None or not os.path.exists("/proc/%d" % pid):
            return
        time.sleep(0.05)
    threads = []
    for t in sorted(os.listdir("/proc/%d/task" % pid)):
        try:
            with open("/proc/%d/task/%s/wchan" % (pid, t)) as f:
                threads.append(f.read())
        except OSError:
            pass
    dump = "/var/tmp/stratafs-crash-hang-%d.txt" % pid
    if shutil.which("gdb"):
        with open(dump, "w") as f:
            subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt 12"],
                           stdout=f, stderr=subprocess.STDOUT, timeout=120)
    os.kill(pid, 9)  # our own server: the run goes on with the next round
    raise Hang("stratafs server %d still running 120 s after the unmount (umount: %s; threads wait in %s; "
               "stacks in %s)" % (pid, r.stdout.decode(errors="replace").strip() or "ok",
                                   sorted(set(threads)), dump))


class Hang(RuntimeError):
    pass


def umount_retry(mp):
    for _ in range(100):
        if run("umount", mp, check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("cannot unmount " + mp)


def check_cut(args, clone, lower, expect, tar_expect, dur, pos, tag):
    cm, cv = os.path.join(args.work, "cut-fs"), os.path.join(args.work, "cut-view")
    os.makedirs(cm, exist_ok=True)
    os.makedirs(cv, exist_ok=True)
    bad = []
    loop = run("losetup", "-f", "--show", clone).stdout.decode().strip()
    try:
        r = run("mount", *mount_opts(args.fs), loop, cm, check=False)
        if r.returncode != 0:
            return ["%s: the cut does not mount: %s" % (tag, r.stdout.decode(errors="replace"))]
        try:
            pidfile = os.path.join(args.work, "cut.pid")
            r = run(args.bin, "-o", "lowerdir=%s,upperdir=%s/upper,workdir=%s/work,pidfile=%s" % (
                lower, cm, cm, pidfile), cv, check=False)
            if r.returncode != 0:
                bad.append("%s: the store does not open: %s" % (tag, r.stdout.decode(errors="replace")))
            else:
                try:
                    bad += ["%s: %s" % (tag, b) for b in check_view(cv, expect, tar_expect, dur, pos)]
                finally:
                    try:
                        unmount_server(cv, pidfile)
                    except Hang as e:
                        bad.append("%s: %s" % (tag, e))
        finally:
            umount_retry(cm)
        # Drop what the block device's own cache holds (mount's probe read the superblock
        # before the journal was replayed): fsck must read what the disk holds now.
        run("blockdev", "--flushbufs", loop, check=False)
        if args.fs == "xfs":
            r = run("xfs_repair", "-n", loop, check=False)
        else:
            r = run("e2fsck", "-fn", loop, check=False)
        if r.returncode != 0:
            bad.append("%s: fsck: %s" % (tag, r.stdout.decode(errors="replace")[-1500:]))
    finally:
        run("losetup", "-d", loop, check=False)
    return bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--fs", choices=("ext4", "xfs"), required=True)
    ap.add_argument("--cuts", type=int, default=20)
    ap.add_argument("--per-round", type=int, default=8)
    ap.add_argument("--work", required=True, help="a directory on the reflink holder filesystem")
    ap.add_argument("--lower", required=True, help="a directory for the lower layer (any filesystem)")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--mount-opts", default="")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    lower = args.lower
    tarball = os.path.join(lower, "..", "untar.tar")
    if not os.path.isdir(os.path.join(lower, "small")):
        shutil.rmtree(lower, ignore_errors=True)
        os.makedirs(lower)
    expect, tar_expect = make_lower(lower, tarball)
    img = os.path.join(args.work, "disk.img")
    disk, mp = os.path.join(args.work, "disk"), os.path.join(args.work, "merged")
    os.makedirs(disk, exist_ok=True)
    os.makedirs(mp, exist_ok=True)
    cuts = violations = ops = 0
    bad_all = []
    rounds = 0
    t0 = time.time()
    while cuts < args.cuts:
        rounds += 1
        if os.path.exists(img):
            os.unlink(img)
        with open(img, "wb") as f:
            f.truncate(512 << 20)
        if args.fs == "xfs":
            run("mkfs.xfs", "-q", "-f", img)
        else:
            run("mkfs.ext4", "-q", "-F", img)
        run("mount", "-o", "loop", img, disk)
        try:
            os.makedirs(os.path.join(disk, "upper"))
            os.makedirs(os.path.join(disk, "work"))
            run("sync", "-f", disk)  # the store itself exists before the workload starts
            opts = "lowerdir=%s,upperdir=%s/upper,workdir=%s/work" % (lower, disk, disk)
            if args.mount_opts:
                opts += "," + args.mount_opts
            pidfile = os.path.join(args.work, "main.pid")
            run(args.bin, "-o", opts + ",pidfile=" + pidfile, mp)
            try:
                w = Workload(mp, expect, tarball, rng.random())
                w.start()
                for _ in range(min(args.per_round, args.cuts - cuts)):
                    time.sleep(rng.random() * 1.2)
                    if w.errors:
                        break
                    dur = w.durable()
                    clone = os.path.join(args.work, "cut.img")
                    run("cp", "--reflink=always", img, clone)
                    pos = w.possible()
                    cuts += 1
                    tag = "%s cut %d (round %d, %d ops)" % (args.fs, cuts, rounds, w.ops)
                    try:
                        bad = check_cut(args, clone, lower, expect, tar_expect, dur, pos, tag)
                    finally:
                        os.unlink(clone)
                    for b in bad:
                        print("VIOLATION " + b, flush=True)
                    violations += 1 if bad else 0
                    bad_all += bad
                w.finish()
                ops += w.ops
                for e in w.errors:
                    print("WORKLOAD ERROR %s round %d: %s" % (args.fs, rounds, e), flush=True)
                    bad_all.append(e)
            finally:
                try:
                    unmount_server(mp, pidfile)
                except Hang as e:
                    print("VIOLATION %s round %d: %s" % (args.fs, rounds, e), flush=True)
                    bad_all.append(str(e))
        finally:
            umount_retry(disk)
    os.unlink(img)
    print("%s: %d cuts in %d rounds (%d workload ops, %.0f s, seed %d): %d cuts with violations" % (
        args.fs, cuts, rounds, ops, time.time() - t0, args.seed, violations), flush=True)
    sys.exit(1 if bad_all else 0)


if __name__ == "__main__":
    main()
