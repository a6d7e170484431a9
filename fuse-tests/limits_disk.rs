//! The mount at the machine's limits:
//!
//! - a full upper filesystem (a small loop-mounted ext4 image): copy-ups, creates, writes and
//!   whiteouts fail with ENOSPC and leave the lower file and the view intact (no short copy under
//!   the real name, no staging leftovers), and work again once space is freed;
//! - a server under a low `RLIMIT_NOFILE` answers EMFILE/ENFILE, stays mounted and recovers;
//! - a 10,000-entry directory renamed while it is being listed.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{mount_stratafs, tree_listing};

const MIB: usize = 1 << 20;
const STAGING: &str = "stratafs-staging";

/// A small ext4 image loop-mounted at `dir`; unmounted (and its loop device freed) on drop,
/// also when the test fails. Declare it before the FUSE mount over it, so it drops after.
struct LoopFs {
    dir: PathBuf,
}

impl LoopFs {
    /// `mib` MiB with at most `inodes` inodes, no reserved blocks (root would use them).
    fn new(scratch: &Path, mib: usize, inodes: usize) -> LoopFs {
        let image = scratch.join("upper.img");
        let f = fs::File::create(&image).unwrap();
        f.set_len((mib * MIB) as u64).unwrap();
        let st = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-N"])
            .arg(inodes.to_string())
            .arg(&image)
            .status()
            .expect("running mkfs.ext4");
        assert!(st.success(), "mkfs.ext4 failed");
        let dir = scratch.join("fs");
        fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&dir)
            .status()
            .expect("running mount");
        assert!(st.success(), "loop mount of the ext4 image failed");
        LoopFs { dir }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        // `-d` frees the loop device the mount set up. The FUSE server over it may take a
        // moment to leave after its lazy unmount; then lazily.
        let mut ok = false;
        for _ in 0..20 {
            ok = Command::new("umount")
                .arg("-d")
                .arg(&self.dir)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if !ok {
            let _ = Command::new("umount")
                .args(["-l", "-d"])
                .arg(&self.dir)
                .status();
        }
    }
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Fill the filesystem at `dir` (blocks with one file, then inodes with empty files) until
/// it refuses; returns the filler paths (the first is the big file).
fn fill_up(dir: &Path) -> Vec<PathBuf> {
    let filler = dir.join("filler");
    fs::create_dir_all(&filler).unwrap();
    let big = filler.join("blocks");
    let mut f = fs::File::create(&big).unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(errno(&e), libc::ENOSPC, "filling: {e}");
                break;
            }
        }
    }
    let _ = f.sync_all();
    let mut out = vec![big];
    for i in 0.. {
        let p = filler.join(format!("i{i}"));
        match fs::File::create(&p) {
            Ok(_) => out.push(p),
            Err(e) => {
                assert_eq!(errno(&e), libc::ENOSPC, "filling inodes: {e}");
                break;
            }
        }
    }
    out
}

/// Names in the staging directory (must be none between operations).
fn staging_leftovers(work: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(work.join(STAGING)) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // The whiteout base file lives there for good.
        .filter(|n| !n.starts_with(".whiteout") && !n.starts_with("whiteout"))
        .collect()
}

/// Write `data` to a file through the mount and flush it; the first error of any step.
fn write_through(path: &Path, append: bool, data: &[u8]) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .append(append)
        .truncate(!append)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[test]
fn full_upper_fails_with_enospc_and_recovers() {
    let scratch = tempfile::tempdir().unwrap();
    let lower = scratch.path().join("lower");
    fs::create_dir_all(lower.join("dir")).unwrap();
    let big: Vec<u8> = (0..4 * MIB).map(|i| (i % 251) as u8).collect();
    fs::write(lower.join("big"), &big).unwrap();
    fs::write(lower.join("small"), b"small").unwrap();
    fs::write(lower.join("dir/file"), b"in dir").unwrap();
    fs::write(lower.join("gone"), b"to delete").unwrap();

    let upperfs = LoopFs::new(scratch.path(), 8, 256);
    let (upper, work) = (upperfs.dir.join("upper"), upperfs.dir.join("work"));
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    let mp = scratch.path().join("mnt");
    let _m = mount_stratafs(
        &format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        ),
        &mp,
    );
    let view_before = tree_listing(&mp);
    let fillers = fill_up(&upperfs.dir);

    // Copy-up of a 4 MiB lower file: no room.
    let e = write_through(&mp.join("big"), true, b"+").expect_err("copy-up on a full disk");
    assert_eq!(errno(&e), libc::ENOSPC, "copy-up: {e}");
    // A new file: no inode.
    let e = write_through(&mp.join("new"), false, b"new").expect_err("create on a full disk");
    assert_eq!(errno(&e), libc::ENOSPC, "create: {e}");
    // A whiteout inside a lower directory not yet in the upper: its parent must be made.
    let e = fs::remove_file(mp.join("dir/file")).expect_err("whiteout on a full disk");
    assert_eq!(errno(&e), libc::ENOSPC, "whiteout: {e}");
    let e = fs::create_dir(mp.join("newdir")).expect_err("mkdir on a full disk");
    assert_eq!(errno(&e), libc::ENOSPC, "mkdir: {e}");

    // Nothing half done is visible: the view, the upper and the staging area are as before.
    assert_eq!(
        tree_listing(&mp),
        view_before,
        "the view changed after failed writes"
    );
    assert_eq!(
        fs::read(mp.join("big")).unwrap(),
        big,
        "lower content through the view"
    );
    assert!(
        !upper.join("big").exists(),
        "a short copy-up took the real name"
    );
    assert!(!upper.join("new").exists(), "a failed create left its file");
    assert_eq!(staging_leftovers(&work), Vec::<String>::new());

    // Room again: every operation works.
    for f in &fillers {
        fs::remove_file(f).unwrap();
    }
    write_through(&mp.join("big"), true, b"+").expect("copy-up after freeing space");
    write_through(&mp.join("new"), false, b"new").expect("create after freeing space");
    fs::remove_file(mp.join("dir/file")).expect("whiteout after freeing space");
    fs::create_dir(mp.join("newdir")).expect("mkdir after freeing space");
    fs::remove_file(mp.join("gone")).expect("whiteout after freeing space");
    let mut want = big.clone();
    want.push(b'+');
    assert_eq!(fs::read(mp.join("big")).unwrap(), want);
    assert_eq!(fs::read(mp.join("new")).unwrap(), b"new");
    assert!(!mp.join("dir/file").exists() && !mp.join("gone").exists());
    assert_eq!(
        fs::read(lower.join("big")).unwrap(),
        big,
        "the lower file changed"
    );
    assert_eq!(staging_leftovers(&work), Vec::<String>::new());
}

#[test]
fn writes_that_fill_the_upper_fail_cleanly() {
    let scratch = tempfile::tempdir().unwrap();
    let lower = scratch.path().join("lower");
    fs::create_dir_all(&lower).unwrap();
    fs::write(lower.join("small"), b"small").unwrap();
    let upperfs = LoopFs::new(scratch.path(), 8, 256);
    let (upper, work) = (upperfs.dir.join("upper"), upperfs.dir.join("work"));
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    let mp = scratch.path().join("mnt");
    let _m = mount_stratafs(
        &format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        ),
        &mp,
    );
    // A copied-up file grown through the mount until the disk is full.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(mp.join("small"))
        .unwrap();
    let chunk = vec![7u8; 256 * 1024];
    let mut written = 5usize;
    let err = loop {
        match f.write(&chunk).and_then(|n| f.sync_data().map(|_| n)) {
            Ok(n) => written += n,
            Err(e) => break e,
        }
        assert!(
            written < 64 * MIB,
            "an 8 MiB filesystem took {written} bytes"
        );
    };
    assert_eq!(errno(&err), libc::ENOSPC, "write on a full disk: {err}");
    drop(f);
    // What was written is there, the rest was refused; the mount still answers.
    let len = fs::metadata(mp.join("small")).unwrap().len() as usize;
    assert!(
        len >= 5 && len <= written + chunk.len(),
        "{len} vs {written}"
    );
    let mut head = [0u8; 5];
    fs::File::open(mp.join("small"))
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert_eq!(&head, b"small");
    assert_eq!(fs::read(lower.join("small")).unwrap(), b"small");
    // Truncating frees the space; writing works again.
    fs::OpenOptions::new()
        .write(true)
        .open(mp.join("small"))
        .unwrap()
        .set_len(0)
        .unwrap();
    write_through(&mp.join("after"), false, &vec![1u8; MIB]).expect("write after truncation");
    assert_eq!(fs::read(mp.join("after")).unwrap().len(), MIB);
    assert_eq!(staging_leftovers(&work), Vec::<String>::new());
}

/// The mount server's pid, from its `pidfile=`.
fn server_pid(pidfile: &Path) -> u32 {
    fs::read_to_string(pidfile)
        .expect("reading the pid file")
        .trim()
        .parse()
        .expect("a pid")
}

/// Set the soft `RLIMIT_NOFILE` of `pid` (the hard one stays: raising it back needs
/// CAP_SYS_RESOURCE, which this machine lacks).
fn set_nofile(pid: u32, limit: u64) {
    let st = Command::new("prlimit")
        .arg(format!("--nofile={limit}:"))
        .arg(format!("--pid={pid}"))
        .status()
        .expect("running prlimit");
    assert!(st.success(), "prlimit failed");
}

#[test]
fn server_out_of_file_descriptors_answers_and_recovers() {
    let scratch = tempfile::tempdir().unwrap();
    let lower = scratch.path().join("lower");
    fs::create_dir_all(&lower).unwrap();
    for i in 0..300 {
        fs::write(lower.join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    let (upper, work) = (scratch.path().join("upper"), scratch.path().join("work"));
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    let pidfile = scratch.path().join("pid");
    let mp = scratch.path().join("mnt");
    let _m = mount_stratafs(
        &format!(
            "lowerdir={},upperdir={},workdir={},pidfile={}",
            lower.display(),
            upper.display(),
            work.display(),
            pidfile.display()
        ),
        &mp,
    );
    let pid = server_pid(&pidfile);
    let fd_count = || fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64;
    let base = fd_count();
    set_nofile(pid, base + 32);

    // Hold many files open, read and written (copy-ups among them) through the mount.
    let mut open = Vec::new();
    let mut refused = 0;
    for i in 0..300 {
        let p = mp.join(format!("f{i}"));
        let res = if i % 2 == 0 {
            fs::File::open(&p)
        } else {
            fs::OpenOptions::new().append(true).open(&p)
        };
        match res {
            Ok(f) => open.push(f),
            Err(e) => {
                assert!(
                    [libc::EMFILE, libc::ENFILE].contains(&errno(&e)),
                    "opening {} under a low RLIMIT_NOFILE: {e}",
                    p.display()
                );
                refused += 1;
            }
        }
        let res = fs::File::create(mp.join(format!("new{i}")));
        if let Err(e) = res {
            assert!(
                [libc::EMFILE, libc::ENFILE].contains(&errno(&e)),
                "creating under a low RLIMIT_NOFILE: {e}"
            );
            refused += 1;
        }
    }
    assert!(refused > 0, "nothing was refused: the limit did not bite");
    // The mount is alive while the limit holds.
    assert!(fs::metadata(&mp).is_ok(), "the mount died");
    drop(open);
    // Recovers once the files are closed, still under the low limit.
    for i in 0..300 {
        let p = mp.join(format!("f{i}"));
        let mut s = String::new();
        fs::File::open(&p)
            .and_then(|mut f| f.read_to_string(&mut s))
            .unwrap_or_else(|e| panic!("reading {} after the files were closed: {e}", p.display()));
        assert!(s.starts_with(&format!("file {i}")), "{s:?}");
    }
    write_through(&mp.join("f1"), true, b"!").expect("a copy-up after recovering");
    let created = (0..300)
        .filter(|i| mp.join(format!("new{i}")).exists())
        .count();
    assert_eq!(fs::read_dir(&mp).unwrap().count(), 300 + created);
    set_nofile(pid, 1024);
    write_through(&mp.join("last"), false, b"x").expect("a create with the limit raised");
}

fn listing_survives_rename(dir_in_upper: bool) {
    const N: usize = 10_000;
    let scratch = tempfile::tempdir().unwrap();
    let lower = scratch.path().join("lower");
    let (upper, work) = (scratch.path().join("upper"), scratch.path().join("work"));
    let base = if dir_in_upper { &upper } else { &lower };
    fs::create_dir_all(base.join("big")).unwrap();
    for d in [&lower, &upper, &work] {
        fs::create_dir_all(d).unwrap();
    }
    for i in 0..N {
        fs::write(base.join(format!("big/entry-{i:05}")), b"").unwrap();
    }
    let mp = scratch.path().join("mnt");
    let _m = mount_stratafs(
        &format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        ),
        &mp,
    );
    let mut names = std::collections::BTreeSet::new();
    let mut it = fs::read_dir(mp.join("big")).unwrap();
    for e in it.by_ref().take(100) {
        assert!(names.insert(e.unwrap().file_name()));
    }
    fs::rename(mp.join("big"), mp.join("moved")).expect("renaming the directory being listed");
    for e in it {
        let e = e.expect("listing on after the rename");
        assert!(
            names.insert(e.file_name()),
            "{:?} listed twice",
            e.file_name()
        );
    }
    assert_eq!(names.len(), N, "the listing lost entries");
    assert!(!mp.join("big").exists());
    assert_eq!(fs::read_dir(mp.join("moved")).unwrap().count(), N);
    // The same, after a remount (what is on disk, not only in the server's memory).
    drop(_m);
    let _m = mount_stratafs(
        &format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        ),
        &mp,
    );
    assert!(!mp.join("big").exists());
    assert_eq!(fs::read_dir(mp.join("moved")).unwrap().count(), N);
}

#[test]
fn lower_directory_of_10000_renamed_while_listed() {
    listing_survives_rename(false);
}

#[test]
fn upper_directory_of_10000_renamed_while_listed() {
    listing_survives_rename(true);
}
