#!/usr/bin/env python3
"""Concurrency torture through a stratafs mount (run by scripts/stress.sh; root only).

PROCS processes do random creates, writes, renames (lower directories too), unlinks, hard
links, chmods, copy-ups, mkdir/rmdir, listings and reads on a small set of overlapping names
for SECONDS. Errors a racing POSIX filesystem gives (ENOENT, EEXIST, ENOTEMPTY, ...) are
counted; any other fails the run. The server's RSS and open descriptors are sampled every
second. At the end the tree is checked: every listed entry lstat()s, no internal names, each
regular file's link count equals the names it has in the tree, and a fresh mount of the same
layers shows the same tree (names, kinds, sizes, modes, link groups).
"""

import argparse
import errno
import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import time

EXPECTED = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR,
            errno.EINVAL, errno.EMLINK, errno.EXDEV}
DIRS = ["d%d" % i for i in range(6)] + ["d%d/s%d" % (i, j) for i in range(3) for j in range(2)]
NAMES = ["n%d" % i for i in range(12)]


def make_lower(lower):
    rng = random.Random(7)
    for d in DIRS:
        os.makedirs(os.path.join(lower, d), exist_ok=True)
        for n in NAMES[:8]:
            with open(os.path.join(lower, d, n), "wb") as f:
                f.write(rng.randbytes(rng.randint(0, 40000)))
    os.link(os.path.join(lower, "d0", "n0"), os.path.join(lower, "d1", "hl"))


def rand_path(rng, mnt):
    d = rng.choice(DIRS + ["d%d" % rng.randrange(8)])
    if rng.random() < 0.15:
        return os.path.join(mnt, d)
    return os.path.join(mnt, d, rng.choice(NAMES))


def worker(mnt, seconds, seed, out):
    rng = random.Random(seed)
    counts, unexpected = {}, []
    end = time.time() + seconds
    trace = open(os.environ["STRESS_TRACE"] + ".%d" % seed, "w") if os.environ.get("STRESS_TRACE") else None
    while time.time() < end:
        op = rng.choice(("create", "write", "rename", "rename", "unlink", "link", "chmod",
                         "copyup", "read", "read", "mkdir", "rmdir", "list"))
        a, b = rand_path(rng, mnt), rand_path(rng, mnt)
        try:
            if op == "create":
                with open(a, "wb") as f:
                    f.write(rng.randbytes(rng.randint(0, 5000)))
            elif op == "write":
                fd = os.open(a, os.O_WRONLY | os.O_APPEND)
                os.write(fd, b"x" * rng.randint(1, 3000))
                os.close(fd)
            elif op == "rename":
                os.rename(a, b)
            elif op == "unlink":
                os.unlink(a)
            elif op == "link":
                os.link(a, b)
            elif op == "chmod":
                os.chmod(a, rng.choice((0o644, 0o600, 0o755)))
            elif op == "copyup":
                os.close(os.open(a, os.O_RDWR))
            elif op == "read":
                with open(a, "rb") as f:
                    f.read()
            elif op == "mkdir":
                os.mkdir(a)
            elif op == "rmdir":
                os.rmdir(a)
            elif op == "list":
                for n in os.listdir(os.path.dirname(a)):
                    try:
                        os.lstat(os.path.join(os.path.dirname(a), n))
                    except FileNotFoundError:
                        pass  # removed since the listing
            counts[op] = counts.get(op, 0) + 1
            if trace:
                trace.write("%s %s %s ok\n" % (op, os.path.relpath(a, mnt), os.path.relpath(b, mnt)))
        except OSError as e:
            if trace:
                trace.write("%s %s %s %s\n" % (op, os.path.relpath(a, mnt), os.path.relpath(b, mnt),
                                               errno.errorcode.get(e.errno, e.errno)))
            # link(2) of a directory: EPERM (the source may have become one since it was picked).
            dir_link = op == "link" and e.errno == errno.EPERM and os.path.isdir(a)
            if e.errno in EXPECTED or dir_link:
                key = "%s:%s" % (op, errno.errorcode.get(e.errno, e.errno))
                counts[key] = counts.get(key, 0) + 1
            else:
                unexpected.append("%s %s %s: %s" % (op, os.path.relpath(a, mnt), os.path.relpath(b, mnt), e))
    out.put((counts, unexpected))


def sample(pid):
    with open("/proc/%d/status" % pid) as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss, len(os.listdir("/proc/%d/fd" % pid))


def snapshot(root):
    """The tree under `root`: {rel: (kind, size, mode)}, link groups, and problems found."""
    tree, inos, bad = {}, {}, []
    def onerror(e):
        bad.append("cannot list %s: %s" % (os.path.relpath(e.filename, root), e.strerror))

    for dirpath, dirs, files in os.walk(root, onerror=onerror):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            if n.startswith(".wh.") or "stratafs-staging" in n:
                bad.append("internal name visible: " + rel)
            try:
                st = os.lstat(p)
            except OSError as e:
                bad.append("listed but lstat fails: %s: %s" % (rel, e))
                continue
            kind = "d" if os.path.isdir(p) and not os.path.islink(p) else "f"
            tree[rel] = (kind, st.st_size if kind == "f" else 0, st.st_mode)
            if kind == "f":
                inos.setdefault(st.st_ino, []).append((rel, st.st_nlink))
    groups = []
    for ino, names in inos.items():
        nlink = names[0][1]
        if any(nl != nlink for _, nl in names) or nlink != len(names):
            bad.append("link count %s for names %s" % ([nl for _, nl in names], [r for r, _ in names]))
        groups.append(sorted(r for r, _ in names))
    return tree, sorted(groups), bad


def mount(binary, opts, mnt, pidfile):
    subprocess.run([binary, "-o", opts + ",pidfile=" + pidfile, mnt], check=True)
    with open(pidfile) as f:
        return int(f.read())


def unmount(mnt, pid):
    subprocess.run(["umount", mnt], check=True)
    for _ in range(600):
        if not os.path.exists("/proc/%d" % pid):
            return
        time.sleep(0.05)
    raise RuntimeError("server still running after the unmount")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--procs", type=int, required=True)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    args = ap.parse_args()
    lower, upper, work, mnt = (os.path.join(args.work, d) for d in ("lower", "upper", "work", "mnt"))
    for d in (upper, work, mnt):
        os.makedirs(d, exist_ok=True)
    make_lower(lower)
    opts = "lowerdir=%s,upperdir=%s,workdir=%s" % (lower, upper, work)
    if os.environ.get("STRESS_LOG"):
        opts += ",log=" + os.environ["STRESS_LOG"]
    pidfile = os.path.join(args.work, "server.pid")
    pid = mount(args.bin, opts, mnt, pidfile)
    problems = []
    try:
        q = mp.Queue()
        procs = [mp.Process(target=worker, args=(mnt, args.seconds, args.seed + i, q))
                 for i in range(args.procs)]
        for p in procs:
            p.start()
        samples = []
        t0 = time.time()
        while any(p.is_alive() for p in procs) and q.qsize() < len(procs):
            samples.append(sample(pid))
            time.sleep(1)
            if time.time() - t0 > args.seconds + 120:
                problems.append("workers still running 120 s after the end: a hang")
                break
        results = [q.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=10)
        counts, unexpected = {}, []
        for c, u in results:
            for k, v in c.items():
                counts[k] = counts.get(k, 0) + v
            unexpected += u
        kinds = {}
        for u in unexpected:
            k = u.split(" ")[0] + " " + u.split("] ")[0].split("[")[-1]
            kinds[k] = kinds.get(k, 0) + 1
        problems += ["unexpected errors (op errno: count): %s" % kinds] if kinds else []
        problems += ["unexpected error: " + u for u in unexpected[:15]]
        live, live_groups, bad = snapshot(mnt)
        problems += ["live view: " + b for b in bad]
        samples.append(sample(pid))
    finally:
        unmount(mnt, pid)
    pid = mount(args.bin, opts, mnt, pidfile)
    try:
        fresh, fresh_groups, bad = snapshot(mnt)
        problems += ["fresh mount: " + b for b in bad]
    finally:
        unmount(mnt, pid)
    for rel in sorted(set(live) | set(fresh)):
        if live.get(rel) != fresh.get(rel):
            problems.append("%s: live %s, fresh mount %s" % (rel, live.get(rel), fresh.get(rel)))
    if live_groups != fresh_groups:
        problems.append("hard-link groups differ after a fresh mount")
    rss = [s[0] for s in samples]
    fds = [s[1] for s in samples]
    third = max(1, len(samples) // 3)
    ok_ops = sum(v for k, v in counts.items() if ":" not in k)
    failed_ops = sum(v for k, v in counts.items() if ":" in k)
    summary = {
        "procs": args.procs, "seconds": args.seconds, "seed": args.seed,
        "ops_ok": ok_ops, "ops_expected_errors": failed_ops, "entries_at_end": len(live),
        "rss_kib": {"first": rss[0], "max": max(rss), "last": rss[-1],
                    "mean_first_third": sum(rss[:third]) // third,
                    "mean_last_third": sum(rss[-third:]) // third},
        "fds": {"first": fds[0], "max": max(fds), "last": fds[-1],
                "mean_first_third": sum(fds[:third]) // third,
                "mean_last_third": sum(fds[-third:]) // third},
        "errors": {k: v for k, v in sorted(counts.items()) if ":" in k},
    }
    print(json.dumps(summary, indent=1))
    for p in problems[:50]:
        print("PROBLEM " + p)
    print("%d problems" % len(problems))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
