use std::ffi::OsStr;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::layer::{STAGING, WHITEOUT_BASE};
use super::*;
use crate::layer::whiteout;
use crate::sys::{self, TimeSpec};
use crate::union::lowers::LowerStack;

struct Env {
    _t: tempfile::TempDir,
    lower: PathBuf,
    lower2: PathBuf,
    upper: PathBuf,
    work: PathBuf,
}

fn env() -> Env {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().to_path_buf();
    for d in ["lower", "lower2", "upper", "work"] {
        fs::create_dir(p.join(d)).unwrap();
    }
    Env {
        lower: p.join("lower"),
        lower2: p.join("lower2"),
        upper: p.join("upper"),
        work: p.join("work"),
        _t: t,
    }
}

impl Env {
    fn layer(&self, quota: Option<u64>) -> UpperLayer {
        let lowers =
            Arc::new(LowerStack::open(&[self.lower.clone(), self.lower2.clone()]).unwrap());
        UpperLayer::open(&self.upper, &self.work, lowers, quota).unwrap()
    }
}

fn attr(mode: u32) -> NewAttr {
    NewAttr {
        mode,
        uid: 0,
        gid: 0,
        rdev: 0,
    }
}

/// Nothing staged is left behind (the shared whiteout file stays: it is not a staged entry).
fn staging_is_empty(e: &Env) -> bool {
    fs::read_dir(e.work.join(STAGING))
        .unwrap()
        .flatten()
        .all(|d| d.file_name() == WHITEOUT_BASE)
}

#[test]
fn copy_up_keeps_contents_holes_attributes_and_parents() {
    let e = env();
    fs::create_dir_all(e.lower.join("a/b")).unwrap();
    let f = e.lower.join("a/b/f");
    {
        let file = fs::File::create(&f).unwrap();
        use std::os::unix::fs::FileExt;
        file.write_at(b"head", 0).unwrap();
        file.write_at(b"tail", 8 << 20).unwrap();
    }
    fs::set_permissions(&f, fs::Permissions::from_mode(0o4751)).unwrap();
    sys::lsetxattr(&f, "user.note", b"kept").unwrap();
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o4751)).unwrap();
    fs::set_permissions(e.lower.join("a"), fs::Permissions::from_mode(0o711)).unwrap();
    std::os::unix::fs::chown(e.lower.join("a"), Some(7), Some(8)).unwrap();
    let ts = sys::TimeSpec::At {
        sec: 1_000_000,
        nsec: 5,
    };
    let dfd = sys::open_dir(&e.lower).unwrap();
    sys::set_times_at(dfd.as_fd(), OsStr::new("a/b/f"), ts, ts).unwrap();
    sys::set_times_at(dfd.as_fd(), OsStr::new("a"), ts, ts).unwrap();

    let up = e.layer(None);
    assert_eq!(
        up.copy_up(Path::new("a/b/f")).unwrap(),
        CopyUp::Copied { peers: vec![] }
    );
    assert_eq!(up.copy_up(Path::new("a/b/f")).unwrap(), CopyUp::Already);
    let u = e.upper.join("a/b/f");
    assert_eq!(fs::read(&u).unwrap(), fs::read(&f).unwrap());
    let (lm, um) = (fs::metadata(&f).unwrap(), fs::metadata(&u).unwrap());
    assert_eq!(um.mode(), lm.mode());
    assert_eq!((um.uid(), um.gid()), (1234, 5678));
    assert_eq!((um.mtime(), um.mtime_nsec()), (1_000_000, 5));
    assert!(um.blocks() < 100, "holes kept: {} blocks", um.blocks());
    assert_eq!(sys::lgetxattr(&u, "user.note").unwrap().unwrap(), b"kept");
    let ua = fs::metadata(e.upper.join("a")).unwrap();
    assert_eq!((ua.mode() & 0o7777, ua.uid(), ua.gid()), (0o711, 7, 8));
    assert_eq!(
        ua.mtime(),
        1_000_000,
        "parent times kept after its child was placed"
    );
    assert!(staging_is_empty(&e));
    assert_eq!(up.quota.used(), lm.len());
}

#[test]
fn copy_up_of_every_file_type() {
    let e = env();
    std::os::unix::fs::symlink("target/x", e.lower.join("l")).unwrap();
    let dfd = sys::open_dir(&e.lower).unwrap();
    sys::mknodat(dfd.as_fd(), OsStr::new("p"), libc::S_IFIFO | 0o640, 0).unwrap();
    sys::mknodat(dfd.as_fd(), OsStr::new("s"), libc::S_IFSOCK | 0o600, 0).unwrap();
    sys::mknodat(
        dfd.as_fd(),
        OsStr::new("c"),
        libc::S_IFCHR | 0o620,
        sys::makedev(1, 3),
    )
    .unwrap();
    fs::create_dir(e.lower.join("d")).unwrap();
    fs::write(e.lower.join("d/inside"), "x").unwrap();
    let up = e.layer(None);
    for n in ["l", "p", "s", "c", "d"] {
        up.copy_up(Path::new(n)).unwrap();
        let (l, u) = (
            sys::lstat(&e.lower.join(n)).unwrap(),
            sys::lstat(&e.upper.join(n)).unwrap(),
        );
        assert_eq!(u.st_mode, l.st_mode, "{n}");
        assert_eq!(u.st_rdev, l.st_rdev, "{n}");
    }
    assert_eq!(
        fs::read_link(e.upper.join("l")).unwrap(),
        Path::new("target/x")
    );
    // A directory is copied without its contents, which stay merged from below.
    assert!(!e.upper.join("d/inside").exists());
    assert_eq!(up.merged_children(Path::new("d")).unwrap(), ["inside"]);
}

#[test]
fn whiteouts_recreation_and_opaque_dirs() {
    let e = env();
    fs::create_dir_all(e.lower.join("d/sub")).unwrap();
    fs::write(e.lower.join("d/f"), "lower").unwrap();
    fs::write(e.lower.join("d/sub/x"), "x").unwrap();
    let up = e.layer(None);
    up.remove(Path::new("d/f"), false).unwrap();
    assert!(e.upper.join("d/.wh.f").exists());
    assert!(up.lower_of(Path::new("d/f")).is_none());
    assert_eq!(up.merged_children(Path::new("d")).unwrap(), ["sub"]);
    // Re-create: the marker goes.
    up.create_file(Path::new("d/f"), &attr(0o644)).unwrap();
    assert!(!e.upper.join("d/.wh.f").exists());
    assert_eq!(fs::read(e.upper.join("d/f")).unwrap(), b"");
    assert_eq!(
        up.create_file(Path::new("d/f"), &attr(0o644))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EEXIST)
    );
    // rmdir of a lower dir whose lower contents are all whited out.
    assert_eq!(
        up.remove(Path::new("d/sub"), true)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    up.remove(Path::new("d/sub/x"), false).unwrap();
    up.remove(Path::new("d/sub"), true).unwrap();
    assert!(e.upper.join("d/.wh.sub").exists());
    assert!(!e.upper.join("d/sub").exists());
    // A new directory over the whiteout is opaque.
    up.mkdir(Path::new("d/sub"), &attr(0o755)).unwrap();
    assert!(whiteout::is_opaque_dir(&e.upper.join("d/sub")));
    assert!(!e.upper.join("d/.wh.sub").exists());
    assert!(up.merged_is_empty(Path::new("d/sub")).unwrap());
    // A new directory where nothing was deleted is not.
    up.mkdir(Path::new("d/new"), &attr(0o755)).unwrap();
    assert!(!whiteout::is_opaque_dir(&e.upper.join("d/new")));
    // Removing an upper-only file leaves no marker.
    up.remove(Path::new("d/new"), true).unwrap();
    assert!(!e.upper.join("d/.wh.new").exists());
    assert!(staging_is_empty(&e));
}

#[test]
fn renaming_a_lower_directory_materialises_it() {
    let e = env();
    fs::create_dir_all(e.lower2.join("src/deep")).unwrap();
    fs::write(e.lower2.join("src/deep/a"), "a").unwrap();
    fs::write(e.lower2.join("src/gone"), "g").unwrap();
    fs::hard_link(e.lower2.join("src/deep/a"), e.lower2.join("src/a2")).unwrap();
    fs::create_dir_all(e.lower.join("src")).unwrap();
    fs::write(e.lower.join("src/top"), "t").unwrap();
    // A lower directory at the target name must not leak into the result.
    fs::create_dir_all(e.lower2.join("dst")).unwrap();
    let up = e.layer(None);
    up.remove(Path::new("src/gone"), false).unwrap();
    up.create_file(Path::new("src/new"), &attr(0o600)).unwrap();
    fs::write(e.upper.join("src/new"), "n").unwrap();
    up.rename(Path::new("src"), Path::new("dst"), 0).unwrap();
    let mut names = up.merged_children(Path::new("dst")).unwrap();
    names.sort();
    assert_eq!(names, ["a2", "deep", "new", "top"]);
    assert!(whiteout::is_opaque_dir(&e.upper.join("dst")));
    assert_eq!(fs::read(e.upper.join("dst/deep/a")).unwrap(), b"a");
    assert_eq!(fs::read(e.upper.join("dst/new")).unwrap(), b"n");
    assert_eq!(
        fs::metadata(e.upper.join("dst/a2")).unwrap().ino(),
        fs::metadata(e.upper.join("dst/deep/a")).unwrap().ino()
    );
    assert!(e.upper.join(".wh.src").exists());
    assert!(!e.upper.join("src").exists());
    assert!(up.source_of(Path::new("src")).is_none());
    assert!(staging_is_empty(&e));
}

#[test]
fn rename_files_noreplace_and_exchange() {
    let e = env();
    fs::write(e.lower.join("a"), "A").unwrap();
    fs::write(e.lower.join("b"), "B").unwrap();
    fs::create_dir(e.lower.join("d")).unwrap();
    fs::write(e.lower.join("d/x"), "x").unwrap();
    let up = e.layer(None);
    assert_eq!(
        up.rename(Path::new("a"), Path::new("b"), sys::RENAME_NOREPLACE)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EEXIST)
    );
    up.rename(Path::new("a"), Path::new("b"), sys::RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(
        fs::read(up.source_of(Path::new("a")).unwrap()).unwrap(),
        b"B"
    );
    assert_eq!(
        fs::read(up.source_of(Path::new("b")).unwrap()).unwrap(),
        b"A"
    );
    // Exchange a file with a lower directory.
    up.rename(Path::new("a"), Path::new("d"), sys::RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(up.merged_children(Path::new("a")).unwrap(), ["x"]);
    assert_eq!(
        fs::read(up.source_of(Path::new("d")).unwrap()).unwrap(),
        b"B"
    );
    up.rename(Path::new("b"), Path::new("c"), 0).unwrap();
    assert!(up.source_of(Path::new("b")).is_none());
    assert_eq!(fs::read(e.upper.join("c")).unwrap(), b"A");
    assert!(e.upper.join(".wh.b").exists());
    assert_eq!(
        up.rename(Path::new("c"), Path::new("a"), 0)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EISDIR)
    );
}

#[test]
fn hard_links_stay_linked() {
    let e = env();
    fs::create_dir(e.lower.join("x")).unwrap();
    fs::write(e.lower.join("f"), "data").unwrap();
    fs::hard_link(e.lower.join("f"), e.lower.join("x/g")).unwrap();
    fs::hard_link(e.lower.join("f"), e.lower.join("h")).unwrap();
    let up = e.layer(None);
    // Copy-up of one name links the others.
    let CopyUp::Copied { mut peers } = up.copy_up(Path::new("f")).unwrap() else {
        panic!("not copied");
    };
    peers.sort();
    assert_eq!(peers, [PathBuf::from("h"), PathBuf::from("x/g")]);
    let m = fs::metadata(e.upper.join("x/g")).unwrap();
    assert_eq!(m.ino(), fs::metadata(e.upper.join("f")).unwrap().ino());
    assert_eq!(m.nlink(), 3);
    assert_eq!(up.quota.used(), 4, "a linked inode counts once");
    up.remove(Path::new("h"), false).unwrap();
    assert_eq!(fs::metadata(e.upper.join("f")).unwrap().nlink(), 2);
}

#[test]
fn unlink_of_a_lower_hard_link_drops_the_count() {
    let e = env();
    fs::write(e.lower.join("f"), "data").unwrap();
    fs::hard_link(e.lower.join("f"), e.lower.join("g")).unwrap();
    let up = e.layer(None);
    up.remove(Path::new("g"), false).unwrap();
    let src = up.source_of(Path::new("f")).unwrap();
    assert_eq!(src.as_ref(), e.upper.join("f"));
    assert_eq!(fs::metadata(src).unwrap().nlink(), 1);
    assert!(up.source_of(Path::new("g")).is_none());
}

#[test]
fn quota_refuses_growth_and_deletion_frees() {
    let e = env();
    fs::write(e.lower.join("big"), vec![1u8; 600]).unwrap();
    let up = e.layer(Some(800));
    up.create_file(Path::new("f"), &attr(0o644)).unwrap();
    let fd = up.open_write(Path::new("f"), libc::O_WRONLY).unwrap();
    assert_eq!(up.write_fd(fd.as_fd(), &[7u8; 300], 0).unwrap(), 300);
    // Over-writing inside the file costs nothing.
    assert_eq!(up.write_fd(fd.as_fd(), &[8u8; 300], 0).unwrap(), 300);
    // 600 more do not fit: copy-up of the big file is refused and nothing appears.
    assert_eq!(
        up.copy_up(Path::new("big")).unwrap_err().raw_os_error(),
        Some(libc::EDQUOT)
    );
    assert!(!e.upper.join("big").exists());
    // A write that partly fits is shortened, then refused.
    assert_eq!(up.write_fd(fd.as_fd(), &[9u8; 800], 300).unwrap(), 500);
    assert_eq!(
        up.write_fd(fd.as_fd(), b"x", 800)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EDQUOT)
    );
    assert_eq!(fs::metadata(e.upper.join("f")).unwrap().len(), 800);
    assert_eq!(
        up.truncate_fd(fd.as_fd(), 2000).unwrap_err().raw_os_error(),
        Some(libc::EDQUOT)
    );
    drop(fd);
    up.remove(Path::new("f"), false).unwrap();
    assert_eq!(up.quota.used(), 0);
    up.copy_up(Path::new("big")).unwrap();
    assert_eq!(up.quota.used(), 600);
    // A remount scans the same usage.
    drop(up);
    assert_eq!(e.layer(Some(800)).quota.used(), 600);
}

#[test]
fn setattr_copies_up_and_keeps_times() {
    let e = env();
    fs::write(e.lower.join("f"), "content").unwrap();
    let up = e.layer(None);
    up.set_attr(
        Path::new("f"),
        &SetAttr {
            mode: Some(0o600),
            uid: Some(42),
            gid: Some(43),
            mtime: Some(TimeSpec::At { sec: 77, nsec: 0 }),
            ..Default::default()
        },
    )
    .unwrap();
    let m = fs::metadata(e.upper.join("f")).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()),
        (0o600, 42, 43, 77)
    );
    assert_eq!(fs::read(e.upper.join("f")).unwrap(), b"content");
    up.set_attr(
        Path::new("f"),
        &SetAttr {
            size: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(fs::read(e.upper.join("f")).unwrap(), b"con");
    assert_eq!(fs::read(e.lower.join("f")).unwrap(), b"content");
}

#[test]
fn staging_leftovers_are_removed_at_open() {
    let e = env();
    fs::create_dir_all(e.work.join(STAGING).join("123.4")).unwrap();
    fs::write(e.work.join(STAGING).join("123.5"), "partial").unwrap();
    let _up = e.layer(None);
    assert!(staging_is_empty(&e));
}

/// A crash at any step of a rename of a lower directory or file (the server or the machine
/// stopping between two of its system calls) leaves the entry under exactly one name, with all
/// its contents, for the next mount. A move followed by a separate whiteout failed this: a
/// crash between the two showed the entry under both names.
#[test]
fn a_crash_at_any_step_of_a_rename_leaves_one_name() {
    for (src, dst) in [("d", "e"), ("d", "sub/e"), ("f", "g"), ("f", "sub/g")] {
        for n in 1.. {
            let e = env();
            fs::create_dir_all(e.lower.join("d")).unwrap();
            fs::create_dir_all(e.lower.join("sub")).unwrap();
            fs::write(e.lower.join("d/x"), b"x").unwrap();
            fs::write(e.lower.join("d/y"), b"y").unwrap();
            fs::write(e.lower.join("f"), b"lower f").unwrap();
            let up = e.layer(None);
            // Part of the directory is in the upper already, changed there.
            up.copy_up(Path::new("d/x")).unwrap();
            fs::write(e.upper.join("d/x"), b"x2").unwrap();
            super::layer::crash_after(Some(n));
            let res = up.rename(Path::new(src), Path::new(dst), 0);
            let crashed = super::layer::crash_after(None);
            drop(up);
            // The next mount.
            let up = e.layer(None);
            let at: Vec<&str> = [src, dst]
                .into_iter()
                .filter(|p| up.source_of(Path::new(p)).is_some())
                .collect();
            assert_eq!(
                at.len(),
                1,
                "{src} -> {dst}, crash at step {n}: shown as {at:?}"
            );
            let rel = Path::new(at[0]);
            if src == "d" {
                assert_eq!(up.merged_children(rel).unwrap(), ["x", "y"], "crash at {n}");
                let x = fs::read(up.source_of(&rel.join("x")).unwrap()).unwrap();
                assert_eq!(x, b"x2", "{src} -> {dst}, crash at step {n}");
            } else {
                let body = fs::read(up.source_of(rel).unwrap()).unwrap();
                assert_eq!(body, b"lower f", "{src} -> {dst}, crash at step {n}");
            }
            if !crashed {
                res.unwrap();
                assert_eq!(at, [dst]);
                break;
            }
        }
    }
}
