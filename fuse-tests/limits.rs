//! Names and paths at the kernel's limits (issue 21), differentially against kernel overlayfs
//! over the same lower layer: names of 1 to 255 bytes and paths of up to 4095 bytes below the
//! mount point, for every operation, on new (upper) entries and on entries of the lower layer
//! (copy-up, deletion, which for names over 251 bytes needs a whiteout that is not a `.wh.`
//! marker). Every step's result is compared, then the whole merged trees, live and after a
//! remount of stratafs over the same layers.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use stratafs::sys;

use crate::common::{self, MountGuard};

/// The name lengths tried: short, long, and every length around the `.wh.` limit (251).
const LENS: [usize; 9] = [1, 100, 200, 250, 251, 252, 253, 254, 255];

/// A name of `n` bytes starting with `tag` (distinct per tag and length).
fn name(tag: u8, n: usize) -> OsString {
    let mut v = vec![tag];
    v.extend((1..n).map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36]));
    OsString::from_vec(v)
}

/// A short label for a name in messages: its tag and length.
fn label(n: &OsStr) -> String {
    let b = n.as_bytes();
    format!("{}{}", b.first().map_or('?', |c| *c as char), b.len())
}

/// Where the operations run: the mount root, a lower directory nested so deep that a 255-byte
/// name in it makes a 4091-byte path, and a new directory as deep made through the mount.
fn bases() -> Vec<PathBuf> {
    vec![PathBuf::new(), deep(b'P'), deep(b'Q')]
}

/// 15 directories of 250 bytes and one of 70: 3835 bytes.
fn deep(tag: u8) -> PathBuf {
    let mut p = PathBuf::new();
    for i in 0..15u8 {
        p.push(name(tag + (i % 2), 250));
    }
    p.push(name(tag, 70));
    p
}

fn errno_of(e: &std::io::Error) -> String {
    format!("errno {}", e.raw_os_error().unwrap_or(-1))
}

fn res<T>(r: std::io::Result<T>) -> String {
    r.map_or_else(|e| errno_of(&e), |_| "ok".into())
}

/// A directory opened below `root` (the path stays within the kernel's limit).
fn open_dir(root: BorrowedFd<'_>, rel: &Path) -> std::io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    sys::openat(root, rel, libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

/// What an entry looks like: kind, permissions, owner, size or target or content, the test's
/// xattr, and for a directory its sorted names.
fn obs(dir: BorrowedFd<'_>, name: &Path) -> String {
    let st = match sys::fstatat(dir, name) {
        Ok(st) => st,
        Err(e) => return errno_of(&e),
    };
    let perm = st.st_mode & 0o7777;
    let who = format!("{perm:o} {}:{}", st.st_uid, st.st_gid);
    let xattr = sys::lgetxattr(&sys::fd_child_path(dir, name), "user.limits")
        .ok()
        .flatten()
        .map(|v| format!(" x={}", String::from_utf8_lossy(&v)))
        .unwrap_or_default();
    let what = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => {
            let data = sys::openat(dir, name, libc::O_RDONLY, 0).and_then(|f| {
                let mut buf = vec![0u8; 64];
                let n = std::io::Read::read(&mut std::fs::File::from(f), &mut buf)?;
                buf.truncate(n);
                Ok(buf)
            });
            match data {
                Ok(d) => format!("file {:?}", String::from_utf8_lossy(&d)),
                Err(e) => format!("file unreadable {}", errno_of(&e)),
            }
        }
        libc::S_IFDIR => match open_dir(dir, name).and_then(|d| sys::read_dir_fd(d.as_fd())) {
            Ok(mut es) => {
                es.sort_by(|a, b| a.name.cmp(&b.name));
                let names: Vec<String> = es.iter().map(|e| label(&e.name)).collect();
                format!("dir [{}]", names.join(" "))
            }
            Err(e) => format!("dir unlistable {}", errno_of(&e)),
        },
        libc::S_IFLNK => format!("link {:?}", sys::readlinkat(dir, name).ok()),
        libc::S_IFIFO => "fifo".into(),
        libc::S_IFCHR => format!("char {}", st.st_rdev),
        _ => "other".into(),
    };
    format!("{what} {who}{xattr}")
}

/// Every entry of the tree below `root` (paths relative to it), described by [`obs`], walked
/// through directory descriptors.
fn tree(root: BorrowedFd<'_>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out
}

fn walk(dir: BorrowedFd<'_>, rel: &Path, out: &mut BTreeMap<String, String>) {
    let Ok(entries) = sys::read_dir_fd(dir) else {
        out.insert(format!("{} (unlistable)", rel.display()), String::new());
        return;
    };
    for e in entries {
        let child = rel.join(&e.name);
        let key = child.iter().map(label).collect::<Vec<_>>().join("/");
        out.insert(key, obs(dir, Path::new(&e.name)));
        if let Ok(sub) = open_dir(dir, Path::new(&e.name)) {
            walk(sub.as_fd(), &child, out);
        }
    }
}

/// A lower layer with, in each of [`bases`]'s lower directories and for each length: a file to
/// append to (`F`), one to chmod (`C`), one to delete (`U`), one to rename (`R`), and a
/// directory with a file in it to delete (`D`).
fn build_lower(lower: &Path) {
    std::fs::create_dir_all(lower).unwrap();
    let root = sys::open_dir(lower).unwrap();
    let root = root.as_fd();
    let mut dirs = vec![PathBuf::new()];
    let mut p = PathBuf::new();
    for c in deep(b'P').iter() {
        p.push(c);
        sys::mkdirat(root, &p, 0o755).unwrap();
    }
    dirs.push(p);
    for base in dirs {
        let d = open_dir(root, &base).unwrap();
        let d = d.as_fd();
        for n in LENS {
            for tag in [b'F', b'C', b'U', b'R'] {
                let f = sys::openat(
                    d,
                    Path::new(&name(tag, n)),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_EXCL,
                    0o644,
                )
                .unwrap();
                sys::pwrite(f.as_fd(), b"lower", 0).unwrap();
            }
            let dn = name(b'D', n);
            sys::mkdirat(d, &dn, 0o755).unwrap();
            let kid = Path::new(&dn).join("kid");
            drop(sys::openat(d, &kid, libc::O_CREAT | libc::O_WRONLY, 0o644).unwrap());
        }
    }
}

/// One step run on both mounts (`f` gets the mount's root directory).
struct Diff<'a> {
    kernel: BorrowedFd<'a>,
    strata: BorrowedFd<'a>,
    diffs: Vec<String>,
    steps: usize,
}

impl Diff<'_> {
    /// A step in the directory `base` of the mount.
    fn step_in(&mut self, base: &Path, what: &str, f: impl Fn(BorrowedFd<'_>) -> String) {
        self.step(what, |root| match open_dir(root, base) {
            Ok(dir) => f(dir.as_fd()),
            Err(e) => format!("base: {}", errno_of(&e)),
        })
    }

    fn step(&mut self, what: &str, f: impl Fn(BorrowedFd<'_>) -> String) {
        let k = f(self.kernel);
        let s = f(self.strata);
        self.steps += 1;
        if k != s {
            self.diffs
                .push(format!("{what}\n  kernel:   {k}\n  stratafs: {s}"));
        }
    }
}

/// Every operation on names of every length in directory `base` of the merged view.
fn operations(d: &mut Diff<'_>, base: &Path) {
    let b = base.iter().count();
    for n in LENS {
        let [a, l, r, m, fi, nd, s] =
            [b'a', b'l', b'r', b'm', b'f', b'n', b's'].map(|t| name(t, n));
        let (a, l, r) = (Path::new(&a), Path::new(&l), Path::new(&r));
        let (m, fi, nd, s) = (Path::new(&m), Path::new(&fi), Path::new(&nd), Path::new(&s));
        let w = |op: &str| format!("{op} of a {n}-byte name at depth {b}");
        d.step_in(base, &w("create"), |dir| {
            let made = sys::openat(dir, a, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o644)
                .and_then(|f| sys::pwrite(f.as_fd(), b"hello", 0));
            format!("{} {}", res(made), obs(dir, a))
        });
        d.step_in(base, &w("open"), |dir| {
            res(sys::openat(dir, a, libc::O_RDWR, 0))
        });
        d.step_in(base, &w("chmod"), |dir| {
            format!("{} {}", res(sys::fchmodat(dir, a, 0o640)), obs(dir, a))
        });
        d.step_in(base, &w("chown"), |dir| {
            format!("{} {}", res(sys::lchownat(dir, a, 1234, 5678)), obs(dir, a))
        });
        d.step_in(base, &w("truncate"), |dir| {
            let t =
                sys::openat(dir, a, libc::O_WRONLY, 0).and_then(|f| sys::ftruncate(f.as_fd(), 2));
            format!("{} {}", res(t), obs(dir, a))
        });
        d.step_in(base, &w("setxattr"), |dir| {
            let p = sys::fd_child_path(dir, a);
            format!(
                "{} {}",
                res(sys::lsetxattr(&p, "user.limits", b"v")),
                obs(dir, a)
            )
        });
        d.step_in(base, &w("link"), |dir| {
            let linked = sys::linkat(dir, a, dir, l);
            let nlink = sys::fstatat(dir, l).map(|st| st.st_nlink);
            format!("{} {} {nlink:?}", res(linked), obs(dir, l))
        });
        d.step_in(base, &w("rename"), |dir| {
            let moved = sys::renameat2(dir, l.as_os_str(), dir, r.as_os_str(), 0);
            format!("{} {} {}", res(moved), obs(dir, l), obs(dir, r))
        });
        d.step_in(base, &w("unlink"), |dir| {
            format!("{} {}", res(sys::unlinkat(dir, r, 0)), obs(dir, r))
        });
        d.step_in(base, &w("mkdir"), |dir| {
            format!("{} {}", res(sys::mkdirat(dir, m, 0o755)), obs(dir, m))
        });
        d.step_in(base, &w("rmdir"), |dir| {
            format!(
                "{} {}",
                res(sys::unlinkat(dir, m, libc::AT_REMOVEDIR)),
                obs(dir, m)
            )
        });
        d.step_in(base, &w("mkfifo"), |dir| {
            format!(
                "{} {}",
                res(sys::mknodat(dir, fi, libc::S_IFIFO | 0o644, 0)),
                obs(dir, fi)
            )
        });
        d.step_in(base, &w("mknod"), |dir| {
            let dev = sys::makedev(1, 3);
            format!(
                "{} {}",
                res(sys::mknodat(dir, nd, libc::S_IFCHR | 0o644, dev)),
                obs(dir, nd)
            )
        });
        d.step_in(base, &w("symlink"), |dir| {
            let made = sys::symlinkat(OsStr::new("some/target"), dir, s);
            format!("{} {}", res(made), obs(dir, s))
        });
        // Entries of the lower layer (only in the lower directories).
        if base.iter().next().is_some_and(|c| c.as_bytes()[0] == b'Q') {
            continue;
        }
        let [f, c, u, rr, dd, moved] = [b'F', b'C', b'U', b'R', b'D', b'S'].map(|t| name(t, n));
        let (f, c, u, rr) = (Path::new(&f), Path::new(&c), Path::new(&u), Path::new(&rr));
        let (dd, moved) = (Path::new(&dd), Path::new(&moved));
        d.step_in(base, &w("copy-up by append"), |dir| {
            let wrote = sys::openat(dir, f, libc::O_WRONLY | libc::O_APPEND, 0)
                .and_then(|fd| std::io::Write::write_all(&mut std::fs::File::from(fd), b"+up"));
            format!("{} {}", res(wrote), obs(dir, f))
        });
        d.step_in(base, &w("copy-up by chmod"), |dir| {
            format!("{} {}", res(sys::fchmodat(dir, c, 0o600)), obs(dir, c))
        });
        d.step_in(base, &w("delete of a lower file"), |dir| {
            format!("{} {}", res(sys::unlinkat(dir, u, 0)), obs(dir, u))
        });
        d.step_in(base, &w("create over a deleted lower file"), |dir| {
            let made = sys::openat(dir, u, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o600);
            format!("{} {}", res(made), obs(dir, u))
        });
        d.step_in(base, &w("rename of a lower file"), |dir| {
            let mv = sys::renameat2(dir, rr.as_os_str(), dir, moved.as_os_str(), 0);
            format!("{} {} {}", res(mv), obs(dir, rr), obs(dir, moved))
        });
        d.step_in(base, &w("rename back over the deleted name"), |dir| {
            let mv = sys::renameat2(dir, moved.as_os_str(), dir, rr.as_os_str(), 0);
            format!("{} {} {}", res(mv), obs(dir, rr), obs(dir, moved))
        });
        d.step_in(base, &w("delete of a lower directory"), |dir| {
            let kid = dd.join("kid");
            let gone = sys::unlinkat(dir, &kid, 0)
                .and_then(|()| sys::unlinkat(dir, dd, libc::AT_REMOVEDIR));
            format!("{} {}", res(gone), obs(dir, dd))
        });
        d.step_in(base, &w("mkdir over a deleted lower directory"), |dir| {
            format!("{} {}", res(sys::mkdirat(dir, dd, 0o700)), obs(dir, dd))
        });
    }
    d.step_in(base, &format!("readdir at depth {b}"), |dir| {
        obs(dir, Path::new(""))
    });
}

/// Make the new deep directory through the mount, one level at a time.
fn make_new_deep(root: BorrowedFd<'_>) -> String {
    let mut p = PathBuf::new();
    let mut out = Vec::new();
    for c in deep(b'Q').iter() {
        p.push(c);
        out.push(res(sys::mkdirat(root, &p, 0o755)));
    }
    out.join(",")
}

fn mount_kernel(lower: &Path, b: &Path) -> MountGuard {
    let mp = b.join("kmnt");
    for d in ["kupper", "kwork", "kmnt"] {
        std::fs::create_dir_all(b.join(d)).unwrap();
    }
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            b.join("kupper").display(),
            b.join("kwork").display()
        ))
        .arg(&mp)
        .status()
        .unwrap();
    assert!(st.success(), "kernel overlay mount failed");
    MountGuard::new(&mp)
}

fn mount_strata(lower: &Path, b: &Path) -> MountGuard {
    common::use_test_binary();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        b.join("supper").display(),
        b.join("swork").display()
    );
    for d in ["supper", "swork"] {
        std::fs::create_dir_all(b.join(d)).unwrap();
    }
    common::mount_stratafs(&opts, &b.join("smnt"))
}

fn is_root() -> bool {
    sys::effective_ids().0 == 0
}

#[test]
fn every_name_and_path_the_kernel_accepts_works_as_on_kernel_overlayfs() {
    if !is_root() {
        eprintln!("skipped: needs root (kernel overlayfs as the reference)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let lower = t.path().join("lower");
    build_lower(&lower);
    let km = mount_kernel(&lower, t.path());
    let mut sm = Some(mount_strata(&lower, t.path()));
    let kroot = sys::open_dir(&km.path).unwrap();
    let sroot = sys::open_dir(&t.path().join("smnt")).unwrap();
    let mut d = Diff {
        kernel: kroot.as_fd(),
        strata: sroot.as_fd(),
        diffs: Vec::new(),
        steps: 0,
    };
    d.step("mkdir of a 3835-byte path, level by level", make_new_deep);
    for base in bases() {
        operations(&mut d, &base);
    }
    // A directory whose path in the upper layer is longer than one call takes: it stays, so
    // that the remount below scans it (quota usage) and lists it.
    let kept = deep(b'Q').join(name(b'k', 255));
    d.step("mkdir of a 4091-byte path", |root| {
        format!(
            "{} {}",
            res(sys::mkdirat(root, &kept, 0o755)),
            obs(root, &kept)
        )
    });
    // A path of the kernel's full length from the mount root.
    let full = deep(b'P').join(name(b'F', 255));
    assert_eq!(full.as_os_str().len(), 4091);
    d.step("stat of a 4091-byte path", |root| obs(root, &full));
    let too_long = deep(b'P').join(name(b'F', 255)).join("kid1");
    d.step("stat of a 4096-byte path", |root| obs(root, &too_long));
    let (steps, diffs) = (d.steps, std::mem::take(&mut d.diffs));
    assert!(
        diffs.is_empty(),
        "{} of {steps} steps differ from kernel overlayfs:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    let want = tree(kroot.as_fd());
    assert_eq!(tree(sroot.as_fd()), want, "the merged trees differ");
    drop(sroot);
    drop(sm.take());
    let _sm = mount_strata(&lower, t.path());
    let sroot = sys::open_dir(&t.path().join("smnt")).unwrap();
    assert_eq!(
        tree(sroot.as_fd()),
        want,
        "the merged trees differ after a remount of stratafs"
    );
    drop(sroot);
    drop(_sm);
    // The upper layer as a layer tar (whiteouts of long names included), applied onto a copy
    // of the lower layer,: the tree the mounts show.
    let applied = t.path().join("applied");
    build_lower(&applied); // (`cp -a` refuses paths this long)
    let mut tar = Vec::new();
    stratafs::archive::export_dir(&t.path().join("supper"), &mut tar, &Default::default()).unwrap();
    stratafs::archive::apply_to_dir(
        &applied,
        &mut tar.as_slice(),
        &Default::default(),
        stratafs::archive::ApplyMode::Merged,
        None,
    )
    .unwrap();
    let applied = sys::open_dir(&applied).unwrap();
    assert_eq!(
        tree(applied.as_fd()),
        want,
        "the exported upper applied onto the lower differs from the mounts"
    );
}
