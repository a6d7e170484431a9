//! The write path, differentially: one scripted sequence of operations runs on kernel overlayfs
//! (the oracle, over the same layers in kernel format) and on stratafs, and every result
//! (return code or errno, stat fields that should agree, contents, listings) is compared.
//!
//! stratafs is mounted in-process from the library (the `-o` mount program lands with the read
//! path's server); the kernel mount needs root.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use stratafs::sys;
use stratafs::union::fs::UnionFs;
use stratafs::union::ids::IdView;
use stratafs::union::layers::Layers;
use stratafs::union::options::MountOptions;
use stratafs::union::tree::Tree;

/// One filesystem operation of a script.
#[derive(Debug, Clone)]
enum Op {
    Write(&'static str, &'static str),
    Append(&'static str, &'static str),
    CreateExcl(&'static str),
    Truncate(&'static str, u64),
    /// open(O_WRONLY|O_TRUNC) and close, writing nothing.
    OpenTrunc(&'static str),
    Mkdir(&'static str),
    Unlink(&'static str),
    Rmdir(&'static str),
    Rename(&'static str, &'static str, u32),
    Link(&'static str, &'static str),
    Symlink(&'static str, &'static str),
    Mkfifo(&'static str),
    Chmod(&'static str, u32),
    Chown(&'static str, u32, u32),
    Utime(&'static str, i64),
    SetXattr(&'static str, &'static str, &'static str),
    RemoveXattr(&'static str, &'static str),
    /// Observe: the user.* xattrs of a path, with their values.
    Xattrs(&'static str),
    /// Observe: stat + contents (or listing) of a path.
    Look(&'static str),
    /// Write through an fd kept open across an unlink of its name.
    WriteAfterUnlink(&'static str),
    /// Make the kernel forget unused dentries and inodes (drop_caches): later looks are
    /// answered from the server's cached listings.
    Forget,
}

fn errno_of(e: &std::io::Error) -> String {
    format!("errno {}", e.raw_os_error().unwrap_or(-1))
}

fn res(r: std::io::Result<()>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => errno_of(&e),
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn look(p: &Path) -> String {
    let md = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) => return errno_of(&e),
    };
    let ft = md.file_type();
    let mut s = format!("mode {:o} uid {} gid {}", md.mode(), md.uid(), md.gid());
    if !ft.is_dir() {
        // Times the script set are compared exactly; "now" only as recent (the two sides run
        // one after the other, and a second may tick between them).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mtime = if (now - md.mtime()).abs() < 3600 {
            "recent".to_string()
        } else {
            md.mtime().to_string()
        };
        s += &format!(" nlink {} size {} mtime {mtime}", md.nlink(), md.size());
    }
    if ft.is_file() {
        s += &format!(
            " data {:?}",
            fs::read(p).map(|d| String::from_utf8_lossy(&d).into_owned())
        );
    } else if ft.is_symlink() {
        s += &format!(" -> {:?}", fs::read_link(p).ok());
    } else if ft.is_dir() {
        let mut names: Vec<String> = fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        s += &format!(" [{}]", names.join(" "));
    }
    s
}

fn run(root: &Path, op: &Op) -> String {
    let p = |r: &str| root.join(r);
    match op {
        Op::Write(f, d) => res(fs::write(p(f), d)),
        Op::Append(f, d) => res(fs::OpenOptions::new()
            .append(true)
            .open(p(f))
            .and_then(|mut h| h.write_all(d.as_bytes()))),
        Op::CreateExcl(f) => res(fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(p(f))
            .map(drop)),
        Op::Truncate(f, n) => res(fs::OpenOptions::new()
            .write(true)
            .open(p(f))
            .and_then(|h| h.set_len(*n))),
        Op::OpenTrunc(f) => res(fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(p(f))
            .map(drop)),
        Op::Mkdir(d) => res(fs::create_dir(p(d))),
        Op::Unlink(f) => res(fs::remove_file(p(f))),
        Op::Rmdir(d) => res(fs::remove_dir(p(d))),
        Op::Rename(a, b, flags) => {
            let (ca, cb) = (cpath(&p(a)), cpath(&p(b)));
            // SAFETY: valid C strings.
            let r = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    ca.as_ptr(),
                    libc::AT_FDCWD,
                    cb.as_ptr(),
                    *flags,
                )
            };
            res(if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            })
        }
        Op::Link(a, b) => res(fs::hard_link(p(a), p(b))),
        Op::Symlink(t, l) => res(std::os::unix::fs::symlink(t, p(l))),
        Op::Mkfifo(f) => {
            let c = cpath(&p(f));
            // SAFETY: valid C string.
            let r = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
            res(if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            })
        }
        Op::Chmod(f, m) => {
            use std::os::unix::fs::PermissionsExt;
            res(fs::set_permissions(p(f), fs::Permissions::from_mode(*m)))
        }
        Op::Chown(f, u, g) => res(std::os::unix::fs::lchown(p(f), Some(*u), Some(*g))),
        Op::Utime(f, t) => {
            let c = cpath(&p(f));
            let ts = [libc::timespec {
                tv_sec: *t,
                tv_nsec: 0,
            }; 2];
            // SAFETY: valid C string and two timespecs.
            let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) };
            res(if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            })
        }
        Op::SetXattr(f, n, v) => res(stratafs::sys::lsetxattr(&p(f), n, v.as_bytes())),
        Op::RemoveXattr(f, n) => res(stratafs::sys::lremovexattr(&p(f), n)),
        Op::Xattrs(f) => match stratafs::sys::llistxattr(&p(f)) {
            Ok(names) => {
                let mut out: Vec<String> = names
                    .iter()
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .filter(|n| n.starts_with("user."))
                    .map(|n| {
                        let v = stratafs::sys::lgetxattr(&p(f), &n);
                        format!("{n}={v:?}")
                    })
                    .collect();
                out.sort();
                out.join(" ")
            }
            Err(e) => errno_of(&e),
        },
        Op::Look(f) => look(&p(f)),
        Op::Forget => res(fs::write("/proc/sys/vm/drop_caches", "2")),
        Op::WriteAfterUnlink(f) => {
            let r = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p(f))
                .and_then(|mut h| {
                    fs::remove_file(p(f))?;
                    h.write_all(b"+late")?;
                    use std::io::{Read, Seek};
                    h.rewind()?;
                    let mut s = String::new();
                    h.read_to_string(&mut s)?;
                    Ok(s)
                });
            match r {
                Ok(s) => format!("ok {s}"),
                Err(e) => errno_of(&e),
            }
        }
    }
}

/// The lower layer every script starts from (plain files only: same bytes in both formats).
fn build_lower(dir: &Path) {
    fs::create_dir_all(dir.join("etc/deep/er")).unwrap();
    fs::write(dir.join("etc/passwd"), "root:x:0:0\n").unwrap();
    fs::write(dir.join("etc/deep/er/f"), "deep").unwrap();
    fs::create_dir_all(dir.join("empty")).unwrap();
    fs::create_dir_all(dir.join("full")).unwrap();
    fs::write(dir.join("full/a"), "a").unwrap();
    fs::write(dir.join("full/b"), "b").unwrap();
    fs::write(dir.join("full/xa"), "with xattrs").unwrap();
    stratafs::sys::lsetxattr(&dir.join("full/xa"), "user.note", b"kept").unwrap();
    fs::write(dir.join("hl1"), "linked").unwrap();
    fs::hard_link(dir.join("hl1"), dir.join("etc/hl2")).unwrap();
    std::os::unix::fs::symlink("passwd", dir.join("etc/pw")).unwrap();
    fs::write(dir.join("ro"), "readonly").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.join("ro"), fs::Permissions::from_mode(0o444)).unwrap();
    std::os::unix::fs::chown(dir.join("etc/passwd"), Some(12), Some(34)).unwrap();
    let c = cpath(&dir.join("fifo"));
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let ts = [libc::timespec {
        tv_sec: 1000,
        tv_nsec: 0,
    }; 2];
    for f in ["etc/passwd", "hl1", "ro", "full/a"] {
        let c = cpath(&dir.join(f));
        // SAFETY: valid C string and two timespecs.
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) };
    }
}

/// A mount that goes away in Drop, even when the test fails.
enum Mounted {
    Kernel(PathBuf),
    Strata(Option<fuser::BackgroundSession>, PathBuf),
}

impl Drop for Mounted {
    fn drop(&mut self) {
        match self {
            Mounted::Kernel(p) => {
                let _ = Command::new("umount").arg("-l").arg(&*p).status();
            }
            Mounted::Strata(s, p) => {
                if let Some(s) = s.take() {
                    let _ = s.umount_and_join();
                }
                // Still there when the unmount failed (busy, or the session died first): a
                // lazy unmount, so no mount outlives the test.
                if stratafs::union::mount::fuse_mounted(p) {
                    let _ = Command::new("umount").arg("-l").arg(&*p).status();
                }
            }
        }
    }
}

/// Fields drop in order: the mount goes before its temporary directory is deleted.
struct Side {
    m: Option<Mounted>,
    _t: tempfile::TempDir,
    upper: PathBuf,
    mnt: PathBuf,
}

fn side(kernel: bool, opts_extra: &str) -> Side {
    let t = tempfile::tempdir().unwrap();
    let b = t.path();
    for d in ["lower", "upper", "work", "mnt"] {
        fs::create_dir(b.join(d)).unwrap();
    }
    build_lower(&b.join("lower"));
    let o = format!(
        "lowerdir={},upperdir={},workdir={}{}",
        b.join("lower").display(),
        b.join("upper").display(),
        b.join("work").display(),
        opts_extra
    );
    let m = if kernel {
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &o])
            .arg(b.join("mnt"))
            .status()
            .unwrap();
        assert!(st.success(), "kernel overlay mount failed");
        Mounted::Kernel(b.join("mnt"))
    } else {
        let opts = MountOptions::parse(&o).unwrap();
        let layers = Layers::open(Some(&b.join("upper")), &[b.join("lower")]).unwrap();
        let tree = Tree::new(layers, IdView::default()).unwrap();
        let ufs = UnionFs::new(tree, opts);
        let mut cfg = fuser::Config::default();
        cfg.mount_options = vec![
            fuser::MountOption::FSName("stratafs".into()),
            fuser::MountOption::DefaultPermissions,
        ];
        cfg.n_threads = Some(4);
        cfg.clone_fd = true;
        let s = fuser::spawn_mount(ufs, b.join("mnt"), &cfg).unwrap();
        Mounted::Strata(Some(s), b.join("mnt"))
    };
    Side {
        upper: b.join("upper"),
        mnt: b.join("mnt"),
        _t: t,
        m: Some(m),
    }
}

/// Run `script` on both and compare step by step.
fn differential(script: &[Op]) -> (Side, Side) {
    let k = side(true, "");
    let s = side(false, "");
    let mut diffs = Vec::new();
    for (i, op) in script.iter().enumerate() {
        let a = run(&k.mnt, op);
        let b = run(&s.mnt, op);
        if a != b {
            diffs.push(format!("step {i} {op:?}\n  kernel:   {a}\n  stratafs: {b}"));
        }
    }
    assert!(diffs.is_empty(), "differences:\n{}", diffs.join("\n"));
    (k, s)
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

use Op::*;

#[test]
fn basic_writes_copy_up_and_attributes() {
    if !is_root() {
        eprintln!("skipped: needs root for the kernel oracle");
        return;
    }
    differential(&[
        Look("etc/passwd"),
        Append("etc/passwd", "u:x:1:1\n"),
        Look("etc/passwd"),
        Look("etc"),
        Write("new", "hello"),
        Look("new"),
        CreateExcl("new"),
        CreateExcl("excl"),
        Look("excl"),
        Truncate("etc/deep/er/f", 2),
        Look("etc/deep/er/f"),
        Look("etc/deep"),
        Chmod("ro", 0o600),
        Look("ro"),
        OpenTrunc("full/b"),
        Look("full/b"),
        Write("full/a", "rewritten"),
        Look("full/a"),
        Chown("full/a", 5, 6),
        Look("full/a"),
        Utime("full/b", 4242),
        Look("full/b"),
        Chmod("fifo", 0o640),
        Look("fifo"),
        Mkfifo("fifo2"),
        Look("fifo2"),
        Symlink("target", "sym"),
        Look("sym"),
        Look("etc/pw"),
        SetXattr("etc/pw", "trusted.x", "1"),
        SetXattr("full/b", "user.k", "v"),
        Look("full"),
    ]);
}

#[test]
fn copy_ups_below_listed_lower_directories_keep_their_listings_right() {
    // Directories copied up on the way to a file keep the merged listings they had (only the
    // path's entries change); what they show must stay what kernel overlayfs shows, also once
    // the kernel has forgotten its entries and asks again.
    if !is_root() {
        return;
    }
    differential(&[
        Look("etc"),
        Look("etc/deep"),
        Look("etc/deep/er"),
        Append("etc/deep/er/f", "+"),
        Look("etc/deep/er"),
        Look("etc/deep"),
        Look("etc"),
        Write("etc/deep/new", "n"),
        Unlink("etc/passwd"),
        Chmod("full/a", 0o600),
        Look("full"),
        Forget,
        Look("etc/deep/er/f"),
        Look("etc/deep/er"),
        Look("etc/deep"),
        Look("etc"),
        Look("full/a"),
        Look("full/b"),
    ]);
}

#[test]
fn xattrs_of_new_and_copied_up_files_follow_every_change() {
    // stratafs remembers that an upper file has no xattrs (to skip reading them at every
    // setattr and getxattr); each change must make it look again.
    if !is_root() {
        return;
    }
    differential(&[
        CreateExcl("n1"),
        Xattrs("n1"),
        SetXattr("n1", "user.a", "1"),
        Xattrs("n1"),
        Append("etc/passwd", "x"),
        Xattrs("etc/passwd"),
        SetXattr("etc/passwd", "user.b", "2"),
        Xattrs("etc/passwd"),
        Chown("etc/passwd", 7, 8),
        Look("etc/passwd"),
        RemoveXattr("n1", "user.a"),
        Xattrs("n1"),
        SetXattr("n1", "user.c", "3"),
        Forget,
        Xattrs("n1"),
        Xattrs("etc/passwd"),
        Look("n1"),
        // A lower file with xattrs, looked up first (what the look-up learnt must not make
        // its copy-up skip them), copied up by a chmod and by an append.
        Look("full/xa"),
        Xattrs("full/xa"),
        Chmod("full/xa", 0o600),
        Xattrs("full/xa"),
        Append("full/xa", "+"),
        Forget,
        Xattrs("full/xa"),
        Look("full/xa"),
    ]);
}

#[test]
fn deletes_whiteouts_and_recreation() {
    if !is_root() {
        return;
    }
    differential(&[
        Unlink("full/a"),
        Look("full"),
        Look("full/a"),
        Rmdir("full"),
        Unlink("full/b"),
        Rmdir("full"),
        Look("full"),
        Mkdir("full"),
        Look("full"),
        Write("full/a", "again"),
        Look("full"),
        Rmdir("empty"),
        Look("empty"),
        Write("empty", "now a file"),
        Look("empty"),
        Unlink("etc/pw"),
        Symlink("elsewhere", "etc/pw"),
        Look("etc/pw"),
        Unlink("nothing"),
        Rmdir("etc"),
        Rmdir("hl1"),
        Unlink("etc/deep"),
    ]);
}

#[test]
fn renames_of_files_and_upper_dirs() {
    if !is_root() {
        return;
    }
    differential(&[
        Rename("etc/passwd", "etc/passwd2", 0),
        Look("etc"),
        Look("etc/passwd2"),
        Rename("ro", "full/a", 0),
        Look("full"),
        Look("full/a"),
        Rename("full/b", "etc/pw", libc::RENAME_NOREPLACE),
        Rename("full/b", "fifo", libc::RENAME_EXCHANGE),
        Look("fifo"),
        Look("full/b"),
        Mkdir("nd"),
        Write("nd/x", "x"),
        Rename("nd", "nd2", 0),
        Look("nd2"),
        Rename("nd2", "empty", 0),
        Look("empty"),
        Rename("missing", "x", 0),
        Rename("etc/passwd2", "full", 0),
    ]);
}

/// Set times through the open file `f` and by `path`; what `f` and `path` show afterwards.
fn set_times(f: &fs::File, path: &Path, by_fd: i64, by_path: i64) -> String {
    use std::os::fd::AsRawFd;
    let ts = |s| {
        [libc::timespec {
            tv_sec: s,
            tv_nsec: 0,
        }; 2]
    };
    let (a, b) = (ts(by_fd), ts(by_path));
    let c = cpath(path);
    // SAFETY: an open fd, a valid C string, two timespecs each.
    let rc = unsafe {
        (
            libc::futimens(f.as_raw_fd(), a.as_ptr()),
            libc::utimensat(libc::AT_FDCWD, c.as_ptr(), b.as_ptr(), 0),
        )
    };
    let open_mtime = f.metadata().map(|m| m.mtime()).unwrap_or(-1);
    let path_mtime = fs::metadata(path).map(|m| m.mtime()).unwrap_or(-1);
    format!(
        "rc {rc:?}, open file {open_mtime}, {} {path_mtime}",
        path.display()
    )
}

#[test]
fn times_of_a_file_open_for_writing_reach_that_file() {
    // A times change of a file open for writing goes through the open file (no path
    // resolution), also after another file took its name.
    if !is_root() {
        return;
    }
    let run = |root: &Path| {
        let f = fs::OpenOptions::new()
            .append(true)
            .open(root.join("full/a"))
            .unwrap(); // a copy-up, kept open
        let mut seen = vec![set_times(&f, &root.join("full/a"), 1111, 2222)];
        fs::rename(root.join("full/b"), root.join("full/a")).unwrap();
        seen.push(set_times(&f, &root.join("full/a"), 3333, 4444));
        let n = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(root.join("new"))
            .unwrap();
        seen.push(set_times(&n, &root.join("new"), 5555, 6666));
        seen.join("; ").replace(&root.display().to_string(), "")
    };
    let (k, s) = (side(true, ""), side(false, ""));
    assert_eq!(run(&s.mnt), run(&k.mnt));
}

#[test]
fn hard_links_and_open_unlinked_files() {
    if !is_root() {
        return;
    }
    differential(&[
        Link("etc/passwd", "pwlink"),
        Look("pwlink"),
        Look("etc/passwd"),
        Append("pwlink", "more"),
        Look("etc/passwd"),
        Write("scratch", "abc"),
        WriteAfterUnlink("scratch"),
        Look("scratch"),
        WriteAfterUnlink("full/a"),
        Look("full"),
    ]);
}

/// Where stratafs is meant to differ: hard-link groups of a lower file stay linked on copy-up
/// (kernel overlayfs without index=on breaks them), and a lower directory can be renamed.
#[test]
fn lower_hard_links_and_directory_rename() {
    if !is_root() {
        return;
    }
    let s = side(false, "");
    let m = &s.mnt;
    fs::write(m.join("hl1"), "changed").unwrap();
    assert_eq!(fs::read_to_string(m.join("etc/hl2")).unwrap(), "changed");
    assert_eq!(fs::metadata(m.join("hl1")).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(m.join("hl1")).unwrap().ino(),
        fs::metadata(m.join("etc/hl2")).unwrap().ino()
    );
    fs::remove_file(m.join("etc/hl2")).unwrap();
    assert_eq!(fs::metadata(m.join("hl1")).unwrap().nlink(), 1);

    fs::write(m.join("etc/deep/new"), "n").unwrap();
    fs::rename(m.join("etc"), m.join("etc2")).unwrap();
    assert!(fs::symlink_metadata(m.join("etc")).is_err());
    assert_eq!(look(&m.join("etc2/deep")), look(&m.join("etc2/deep")));
    let mut names: Vec<_> = fs::read_dir(m.join("etc2/deep"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["er", "new"]);
    assert_eq!(
        fs::read_to_string(m.join("etc2/deep/er/f")).unwrap(),
        "deep"
    );
    // The upper layer says what diff must export: a whiteout for the old name and an opaque,
    // fully materialised new directory.
    assert!(s.upper.join(".wh.etc").exists());
    assert!(s.upper.join("etc2/.wh..wh..opq").exists());
    assert!(s.upper.join("etc2/passwd").exists());
    assert!(!s.upper.join("etc").exists());
    drop(s.m);
}

#[test]
fn quota_refuses_and_deleting_frees() {
    if !is_root() {
        return;
    }
    let s = side(false, ",quota=65536");
    let m = &s.mnt;
    fs::write(m.join("a"), vec![1u8; 40000]).unwrap();
    let e = fs::write(m.join("b"), vec![2u8; 40000]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT));
    assert_eq!(
        fs::read(m.join("a")).unwrap().len(),
        40000,
        "nothing written is lost"
    );
    fs::remove_file(m.join("a")).unwrap();
    fs::remove_file(m.join("b")).unwrap();
    // The space of an unlinked file is freed when its last handle is released, and the kernel
    // sends RELEASE asynchronously after close(2): allow it a moment to arrive.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match fs::write(m.join("c"), vec![3u8; 60000]) {
            Ok(()) => break,
            Err(e)
                if e.raw_os_error() == Some(libc::EDQUOT)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("deleting files did not free their quota: {e}"),
        }
    }
    drop(s.m);
}

/// A scratch directory with empty `lower/`, `upper/` and `work/`, and the mount options over
/// them (`extra` appended).
fn scratch(extra: &str) -> (tempfile::TempDir, String) {
    let t = tempfile::tempdir().unwrap();
    let b = t.path();
    for d in ["lower", "upper", "work"] {
        fs::create_dir(b.join(d)).unwrap();
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}{extra}",
        b.join("lower").display(),
        b.join("upper").display(),
        b.join("work").display()
    );
    (t, opts)
}

#[test]
fn overwriting_a_lower_file_copies_none_of_its_old_data() {
    // An open with O_TRUNC (`>`, `cp` over a file) throws the old data away: it is not copied
    // up first. Here the lower file is bigger than the layer's quota, so a copy would fail.
    if !is_root() {
        return;
    }
    let (t, opts) = scratch(",quota=65536");
    let b = t.path();
    fs::write(b.join("lower/big"), vec![7u8; 100_000]).unwrap();
    fs::write(b.join("lower/big2"), vec![8u8; 100_000]).unwrap();
    let g = crate::common::mount_stratafs(&opts, &b.join("mnt"));
    fs::write(g.path.join("big"), "small").expect("overwriting the big lower file");
    assert_eq!(fs::read(g.path.join("big")).unwrap(), b"small");
    assert_eq!(fs::read(b.join("upper/big")).unwrap(), b"small");
    // A copy-up that keeps the data still counts it.
    let e = fs::OpenOptions::new()
        .append(true)
        .open(g.path.join("big2"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT));
    assert_eq!(fs::read(g.path.join("big2")).unwrap().len(), 100_000);
}

#[test]
fn copied_up_data_is_on_disk_before_the_copy_takes_its_name() {
    // A machine crash must not leave a copied-up file empty under its name: the copy's data is
    // flushed before the rename into the layer, as kernel overlayfs does (one file copied up,
    // and a lower directory renamed, which copies its tree). Seen through delayed allocation:
    // data not written yet shows as "delalloc". (Volatile mounts skip the flush; not checked
    // here: other tests' directory renames flush the whole filesystem at any moment.)
    if !is_root() {
        return;
    }
    let (t, opts) = scratch("");
    let b = t.path();
    fs::write(b.join("probe"), vec![1u8; 20_000]).unwrap();
    if crate::common::awaits_writing(&b.join("probe")) != Some(true) {
        eprintln!("skipped: unwritten data cannot be told apart here (no delayed allocation)");
        return;
    }
    fs::create_dir(b.join("lower/d")).unwrap();
    fs::write(b.join("lower/f"), vec![3u8; 50_000]).unwrap();
    fs::write(b.join("lower/d/g"), vec![4u8; 50_000]).unwrap();
    let g = crate::common::mount_stratafs(&opts, &b.join("mnt"));
    use std::os::unix::fs::PermissionsExt;
    // A copy-up with the data, nothing written after it.
    fs::set_permissions(g.path.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(g.path.join("d"), g.path.join("d2")).unwrap();
    for (copy, byte) in [("f", 3u8), ("d2/g", 4)] {
        let copy = b.join("upper").join(copy);
        assert_eq!(fs::read(&copy).unwrap(), vec![byte; 50_000]);
        assert_eq!(
            crate::common::awaits_writing(&copy),
            Some(false),
            "{}: the copy's data is not on disk yet",
            copy.display()
        );
    }
}

#[test]
fn many_threads_writing_at_once() {
    if !is_root() {
        return;
    }
    let s = side(false, "");
    let m = s.mnt.clone();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let m = m.clone();
            std::thread::spawn(move || {
                fs::create_dir_all(m.join(format!("t{t}"))).unwrap();
                for i in 0..50 {
                    fs::write(m.join(format!("t{t}/f{i}")), format!("{t}-{i}")).unwrap();
                }
                fs::OpenOptions::new()
                    .append(true)
                    .open(m.join("full/a"))
                    .and_then(|mut h| h.write_all(b"x"))
                    .unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for t in 0..8 {
        for i in 0..50 {
            assert_eq!(
                fs::read_to_string(m.join(format!("t{t}/f{i}"))).unwrap(),
                format!("{t}-{i}")
            );
        }
    }
    assert_eq!(fs::read_to_string(m.join("full/a")).unwrap(), "axxxxxxxx");
    drop(s.m);
}

/// Renames through the real mount program, where the server holds a kernel notifier: the
/// write path must never ask the kernel to invalidate an entry while the kernel waits for our
/// reply with the directory locked (that deadlocked `mv` inside a Podman container).
#[test]
fn renames_through_the_mount_program_do_not_hang() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let b = t.path();
    for d in ["lower/etc/sub", "upper", "work"] {
        fs::create_dir_all(b.join(d)).unwrap();
    }
    fs::write(b.join("lower/etc/debian_version"), "12.5\n").unwrap();
    fs::write(b.join("lower/etc/sub/f"), "x").unwrap();
    fs::write(b.join("lower/etc/peer"), "linked").unwrap();
    fs::hard_link(b.join("lower/etc/peer"), b.join("lower/etc/peer2")).unwrap();
    let mp = b.join("mnt");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        b.join("lower").display(),
        b.join("upper").display(),
        b.join("work").display()
    );
    let _guard = crate::common::mount_stratafs(&opts, &mp);
    let m = mp.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = (|| -> std::io::Result<()> {
            fs::write(m.join("etc/new"), "n")?;
            fs::rename(
                m.join("etc/debian_version"),
                m.join("etc/debian_version.moved"),
            )?;
            fs::rename(m.join("etc/peer"), m.join("etc/peer.moved"))?;
            fs::rename(m.join("etc/sub"), m.join("etc/sub.moved"))?;
            fs::rename(m.join("etc"), m.join("etc.moved"))?;
            Ok(())
        })();
        let _ = tx.send(r);
    });
    let r = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("renames hung for 30 s");
    r.unwrap();
    assert_eq!(
        fs::read_to_string(mp.join("etc.moved/debian_version.moved")).unwrap(),
        "12.5\n"
    );
    assert_eq!(
        fs::read_to_string(mp.join("etc.moved/peer2")).unwrap(),
        "linked"
    );
    assert_eq!(
        fs::read_to_string(mp.join("etc.moved/sub.moved/f")).unwrap(),
        "x"
    );
    assert!(!mp.join("etc").exists());
}

/// Append `data` to the file at `p` (through the mount).
fn append(p: &Path, data: &[u8]) {
    let mut f = fs::OpenOptions::new().append(true).open(p).unwrap();
    f.write_all(data).unwrap();
}

/// Build lower/ with `files` (name, mode, group) under a fresh directory everyone may traverse, and
/// mount it read-write: stratafs through the mount program, or kernel overlayfs.
fn rw_mount(
    kernel: bool,
    files: &[(&str, u32, u32)],
) -> (tempfile::TempDir, crate::common::MountGuard) {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let b = t.path();
    fs::set_permissions(b, fs::Permissions::from_mode(0o755)).unwrap();
    for d in ["lower", "upper", "work"] {
        fs::create_dir_all(b.join(d)).unwrap();
    }
    for (name, mode, gid) in files {
        fs::write(b.join("lower").join(name), "data").unwrap();
        std::os::unix::fs::chown(b.join("lower").join(name), Some(0), Some(*gid)).unwrap();
        fs::set_permissions(
            b.join("lower").join(name),
            fs::Permissions::from_mode(*mode),
        )
        .unwrap();
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        b.join("lower").display(),
        b.join("upper").display(),
        b.join("work").display()
    );
    let mp = b.join("mnt");
    let guard = if kernel {
        fs::create_dir_all(&mp).unwrap();
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&mp)
            .status()
            .unwrap();
        assert!(st.success(), "kernel overlay mount failed");
        crate::common::MountGuard::new(&mp)
    } else {
        crate::common::mount_stratafs(&opts, &mp)
    };
    (t, guard)
}

#[test]
fn unprivileged_writes_drop_setuid_and_setgid() {
    // The kernel leaves this to stratafs (FUSE_HANDLE_KILLPRIV_V2): a write or truncate by a
    // caller without CAP_FSETID clears setuid (and setgid where group-executable); root's
    // writes keep them. Kernel overlayfs is the oracle.
    if !is_root() {
        return;
    }
    // s: setgid without group execute, writer not in the group; m: the same, writer in it.
    let files = [
        ("w", 0o6777, 0),
        ("t", 0o6777, 0),
        ("s", 0o2767, 0),
        ("m", 0o2767, 65534),
        ("r", 0o4777, 0),
    ];
    let modes = |kernel: bool| {
        let (_t, g) = rw_mount(kernel, &files);
        let mp = g.path.display().to_string();
        let st = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
            ])
            .arg(format!(
                "echo x >> {mp}/w && truncate -s 1 {mp}/t && echo x >> {mp}/s && echo x >> {mp}/m"
            ))
            .status()
            .unwrap();
        assert!(
            st.success(),
            "unprivileged writes failed (kernel: {kernel})"
        );
        append(&g.path.join("r"), b"root");
        files
            .iter()
            .map(|(n, _, _)| {
                format!(
                    "{n} {:o}",
                    fs::metadata(g.path.join(n)).unwrap().mode() & 0o7777
                )
            })
            .collect::<Vec<_>>()
    };
    let kernel = modes(true);
    let strata = modes(false);
    assert_eq!(strata, kernel, "stratafs vs kernel overlayfs");
    assert_eq!(strata, ["w 777", "t 777", "s 767", "m 2767", "r 4777"]);
}

#[test]
fn whiteouts_share_one_inode_and_survive_a_remount() {
    if !is_root() {
        return;
    }
    let files = [("a", 0o644, 0), ("b", 0o644, 0), ("c", 0o644, 0)];
    let (t, g) = rw_mount(false, &files);
    fs::remove_file(g.path.join("a")).unwrap();
    fs::remove_file(g.path.join("b")).unwrap();
    let up = t.path().join("upper");
    let (wa, wb) = (
        fs::metadata(up.join(".wh.a")).unwrap(),
        fs::metadata(up.join(".wh.b")).unwrap(),
    );
    assert!(wa.is_file() && wa.len() == 0, "whiteout {wa:?}");
    assert_eq!(wa.ino(), wb.ino(), "whiteouts are links of one file");
    drop(g);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        t.path().join("lower").display(),
        up.display(),
        t.path().join("work").display()
    );
    let g = crate::common::mount_stratafs(&opts, &t.path().join("mnt"));
    let mut names: Vec<String> = fs::read_dir(&g.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["c"]);
    // A deleted name can be made again, and goes again.
    fs::write(g.path.join("a"), "new").unwrap();
    assert_eq!(fs::read_to_string(g.path.join("a")).unwrap(), "new");
    fs::remove_file(g.path.join("a")).unwrap();
    assert!(!g.path.join("a").exists());
    // The failed look-up above may be cached by the kernel: a new file must still show.
    fs::write(g.path.join("a"), "again").unwrap();
    assert_eq!(fs::read_to_string(g.path.join("a")).unwrap(), "again");
    assert!(!g.path.join("never").exists());
    fs::create_dir(g.path.join("never")).unwrap();
    assert!(g.path.join("never").is_dir());
}

#[test]
fn copied_up_entries_stay_upper_after_the_kernel_forgets_them() {
    // A node the kernel forgets (memory pressure; here drop_caches) is made again from its
    // parent's cached listing at the next lookup: that listing must know about the copy-up.
    if !is_root() {
        return;
    }
    let files = [("f", 0o644, 0), ("g", 0o644, 0)];
    let (_t, g) = rw_mount(false, &files);
    // List first, so the root's listing is cached before the copy-ups.
    assert_eq!(fs::read_dir(&g.path).unwrap().count(), 2);
    std::os::unix::fs::chown(g.path.join("f"), Some(12), Some(34)).unwrap();
    append(&g.path.join("g"), b" more");
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    let f = fs::metadata(g.path.join("f")).unwrap();
    assert_eq!((f.uid(), f.gid()), (12, 34), "owner of the copied-up f");
    assert_eq!(fs::read_to_string(g.path.join("g")).unwrap(), "data more");
}

#[test]
fn a_hard_link_keeps_working_after_the_name_it_was_found_by_goes() {
    // The kernel knows a hard-linked file as one inode; stratafs serves it by one of its names.
    // Unlinking that name must leave the file reachable, writable and current by the other.
    if !is_root() {
        return;
    }
    let (t, g) = rw_mount(false, &[("a", 0o644, 0)]);
    let lower = t.path().join("lower");
    fs::create_dir(lower.join("d")).unwrap_or(());
    drop(g);
    fs::hard_link(lower.join("a"), lower.join("d/b")).unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        t.path().join("upper").display(),
        t.path().join("work").display()
    );
    let g = crate::common::mount_stratafs(&opts, &t.path().join("mnt"));
    let (a, b) = (g.path.join("a"), g.path.join("d/b"));
    let ino = fs::metadata(&a).unwrap().ino();
    assert_eq!(fs::metadata(&b).unwrap().ino(), ino);
    fs::remove_file(&a).unwrap();
    append(&b, b" more");
    let md = fs::metadata(&b).unwrap();
    assert_eq!((md.ino(), md.nlink()), (ino, 1));
    assert_eq!(fs::read_to_string(&b).unwrap(), "data more");
}

#[test]
fn a_directory_swapped_for_a_symlink_leads_nowhere_outside_the_layer() {
    // The server turns the kernel's requests into paths from its tree; another request (a
    // rename and a symlink through the mount) may swap a directory on such a path for a
    // symlink in the upper before the path is used. Here the swap is made in the upper
    // directly (the race's outcome, made certain): reads, writes, chmod and setxattr through
    // the old path must fail or stay in the layer, never reach what the symlink points at.
    if !is_root() {
        return;
    }
    let (t, g) = rw_mount(false, &[]);
    let d = g.path.join("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("secret"), "inside").unwrap();
    fs::write(d.join("victim"), "inside").unwrap();
    // The kernel now knows d/secret and d/victim (the entries stay cached).
    assert_eq!(fs::read_to_string(d.join("secret")).unwrap(), "inside");
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), "host secret").unwrap();
    fs::write(outside.join("victim"), "host file").unwrap();
    fs::set_permissions(
        outside.join("victim"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    crate::common::set_xattr(&outside.join("secret"), "user.host", b"leak");
    let up = t.path().join("upper");
    fs::rename(up.join("d"), up.join("d.moved")).unwrap();
    std::os::unix::fs::symlink(&outside, up.join("d")).unwrap();

    // Attribute reads too: the kernel caches no xattrs, so these reach the server.
    let leaked = sys::lgetxattr(&d.join("secret"), "user.host");
    assert!(
        !matches!(&leaked, Ok(Some(v)) if v == b"leak"),
        "getxattr through the swapped directory read the outside file's xattr"
    );
    let names = sys::llistxattr(&d.join("secret")).unwrap_or_default();
    assert!(
        !names.iter().any(|n| n == b"user.host"),
        "listxattr through the swapped directory listed the outside file's xattrs"
    );
    let read = fs::read_to_string(d.join("secret"));
    assert!(
        !matches!(&read, Ok(s) if s == "host secret"),
        "read through the swapped directory reached outside: {read:?}"
    );
    let _ = fs::OpenOptions::new()
        .append(true)
        .open(d.join("victim"))
        .and_then(|mut f| f.write_all(b" + written"));
    let _ = fs::set_permissions(
        d.join("victim"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    );
    let _ = sys::lsetxattr(&d.join("victim"), "user.evil", b"1");
    assert_eq!(
        fs::read_to_string(outside.join("victim")).unwrap(),
        "host file"
    );
    let md = fs::metadata(outside.join("victim")).unwrap();
    assert_eq!(md.mode() & 0o777, 0o644, "mode of the outside file changed");
    assert!(
        matches!(
            sys::lgetxattr(&outside.join("victim"), "user.evil"),
            Ok(None)
        ),
        "xattr set on the outside file"
    );
    drop(g);
}

#[test]
fn a_lower_file_changed_while_open_for_reading_can_be_opened_again() {
    // A chmod, truncate or xattr change copies a lower file up on the same inode while a
    // passthrough reader holds the lower file as that inode's backing file. Later opens, for
    // writing and for reading, work (they failed with EIO) and see the copy; the reader keeps
    // reading the lower file, as with kernel overlayfs.
    if !is_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let s = side(false, "");
    let read_rest = |r: &mut fs::File| {
        let mut v = String::new();
        std::io::Read::read_to_string(r, &mut v).unwrap();
        v
    };
    let f = s.mnt.join("etc/passwd");
    let mut r = fs::File::open(&f).unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .and_then(|mut w| w.write_all(b"u:x:1:1\n"))
        .expect("open for writing after a chmod, a reader open");
    assert_eq!(fs::read_to_string(&f).unwrap(), "root:x:0:0\nu:x:1:1\n");
    assert_eq!(
        read_rest(&mut r),
        "root:x:0:0\n",
        "the reader keeps the lower file"
    );
    drop(r);
    assert_eq!(fs::read_to_string(&f).unwrap(), "root:x:0:0\nu:x:1:1\n");

    let g = s.mnt.join("full/b");
    let mut r = fs::File::open(&g).unwrap();
    sys::lsetxattr(&g, "user.k", b"v").unwrap();
    fs::write(&g, "new b").expect("truncating open after a setxattr, a reader open");
    assert_eq!(fs::read_to_string(&g).unwrap(), "new b");
    assert_eq!(read_rest(&mut r), "b");

    let h = s.mnt.join("full/a");
    let mut r = fs::File::open(&h).unwrap();
    let c = cpath(&h);
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 0) }, 0);
    assert_eq!(
        fs::read_to_string(&h).expect("reading after a truncate"),
        ""
    );
    assert_eq!(read_rest(&mut r), "a");
    assert_eq!(fs::read_to_string(s.upper.join("full/a")).unwrap(), "");
    drop(s.m);
}

#[test]
fn a_lower_file_open_for_reading_can_be_opened_for_writing() {
    // A passthrough reader of a lower file holds it as the inode's backing file; the writer's
    // open gets the copy-up as a new inode. As with kernel overlayfs the reader keeps reading
    // the lower file, and opens after the copy-up see the change.
    if !is_root() {
        return;
    }
    let s = side(false, "");
    let f = s.mnt.join("etc/passwd");
    let mut r = fs::File::open(&f).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .and_then(|mut w| w.write_all(b"u:x:1:1\n"))
        .expect("writer while a reader of the lower file is open");
    assert_eq!(fs::read_to_string(&f).unwrap(), "root:x:0:0\nu:x:1:1\n");
    let mut old = String::new();
    std::io::Read::read_to_string(&mut r, &mut old).unwrap();
    assert_eq!(old, "root:x:0:0\n", "the reader keeps the file it opened");
    // Another writer while the first reader is still open goes to the same copy.
    fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .and_then(|mut w| w.write_all(b"v:x:2:2\n"))
        .expect("second writer");
    drop(r);
    assert_eq!(
        fs::read_to_string(&f).unwrap(),
        "root:x:0:0\nu:x:1:1\nv:x:2:2\n"
    );
    assert_eq!(
        fs::read_to_string(s.upper.join("etc/passwd")).unwrap(),
        "root:x:0:0\nu:x:1:1\nv:x:2:2\n"
    );
    let lower = s.upper.parent().unwrap().join("lower/etc/passwd");
    assert_eq!(
        fs::read_to_string(lower).unwrap(),
        "root:x:0:0\n",
        "lower untouched"
    );
    // The same for an open that truncates (`>`), also while a reader is open.
    let g = s.mnt.join("full/a");
    let mut r = fs::File::open(&g).unwrap();
    fs::write(&g, "over").expect("truncating writer while a reader is open");
    let mut old = String::new();
    std::io::Read::read_to_string(&mut r, &mut old).unwrap();
    assert_eq!(old, "a");
    assert_eq!(fs::read_to_string(&g).unwrap(), "over");
    drop(s.m);
}

#[test]
fn readers_and_writers_of_a_quota_file_open_it_together() {
    // With a quota stratafs serves writes itself (it counts the bytes) while reads could go
    // straight to the backing file; the kernel fails (EIO) an open of one kind while one of
    // the other is open, so readers of such files are served too.
    if !is_root() {
        return;
    }
    let s = side(false, ",quota=1048576");
    let f = s.mnt.join("log");
    let mut w = fs::File::create(&f).unwrap();
    w.write_all(b"line\n").unwrap();
    assert_eq!(
        fs::read(&f).expect("reader while a writer is open"),
        b"line\n"
    );
    drop(w);
    let mut r = fs::File::open(&f).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .and_then(|mut w| w.write_all(b"more\n"))
        .expect("writer while a reader is open");
    let mut got = String::new();
    std::io::Read::read_to_string(&mut r, &mut got).unwrap();
    assert_eq!(got, "line\nmore\n");
    drop(r);
    drop(s.m);
}
