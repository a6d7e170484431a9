//! Robustness of the write path through the mount program (`stratafs -o ... MERGED`):
//!
//! - crash tests: the server is SIGKILLed in the middle of a large copy-up, a large write of a
//!   new file and an overwrite of a copied-up file; after a lazy unmount and a remount over the
//!   same upper and work directories, the upper holds a consistent state for that path (never a
//!   half-copied file under its real name), the staging area is empty and the rest is intact;
//! - rootless tests: the server runs as an unprivileged user (mounting through fusermount3); what
//!   the backing filesystem refuses (chown, device nodes, set-id bits on a chowned file) is kept
//!   in `user.containers.override_stat` and shown by `stat` in the view, also after a remount.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{mount_stratafs, run_has_writeback_cache, tree_listing, MountGuard};

const MIB: u64 = 1 << 20;
const BLOCK: usize = 4096;
const STAGING: &str = "stratafs-staging";

/// Fill `buf` (starting at file offset `off`, block aligned) with the pattern of `seed`: every
/// 4 KiB block carries its index in its first 8 bytes and `seed` (non-zero) elsewhere, so that
/// data is neither sparse-friendly nor able to sit at the wrong offset unnoticed.
fn fill(buf: &mut [u8], off: u64, seed: u8) {
    for (i, b) in buf.chunks_mut(BLOCK).enumerate() {
        let idx = off / BLOCK as u64 + i as u64;
        b.fill(seed);
        let n = b.len().min(8);
        b[..n].copy_from_slice(&idx.to_le_bytes()[..n]);
    }
}

/// Write `size` bytes of the `seed` pattern to `f` from offset 0, in 1 MiB writes, counting
/// progress in `done`. Stops at the first error (the server was killed).
fn write_pattern(f: &mut fs::File, size: u64, seed: u8, done: &AtomicU64) -> std::io::Result<()> {
    let mut buf = vec![0u8; MIB as usize];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(MIB) as usize;
        fill(&mut buf[..n], off, seed);
        f.write_all(&buf[..n])?;
        off += n as u64;
        done.store(off, Ordering::SeqCst);
    }
    Ok(())
}

fn make_pattern_file(path: &Path, size: u64, seed: u8) {
    let mut f = fs::File::create(path).unwrap();
    write_pattern(&mut f, size, seed, &AtomicU64::new(0)).unwrap();
}

/// Check that every block of `path` is the pattern of one of `seeds` (or zeros, when
/// `holes_ok`: blocks a killed writer never reached), up to `upto` bytes.
fn check_blocks(path: &Path, upto: u64, seeds: &[u8], holes_ok: bool) -> Result<(), String> {
    let f = fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut f = f.take(upto);
    let mut buf = vec![0u8; MIB as usize];
    let mut want = vec![0u8; MIB as usize];
    let mut off = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return Err(format!("read {}: {e}", path.display())),
            }
        }
        if n == 0 {
            return Ok(());
        }
        for (i, got) in buf[..n].chunks(BLOCK).enumerate() {
            let boff = off + (i * BLOCK) as u64;
            let ok = seeds.iter().any(|&s| {
                let w = &mut want[..got.len()];
                fill(w, boff, s);
                w == got
            }) || (holes_ok && got.iter().all(|&b| b == 0));
            if !ok {
                return Err(format!(
                    "{}: block at {boff} is neither of the expected states",
                    path.display()
                ));
            }
        }
        off += n as u64;
    }
}

#[test]
fn a_server_leaving_late_does_not_unmount_its_successor() {
    // Container engines detach mounts lazily and may mount the same layers at the same path at
    // once. The old server learns of the unmount only when it next runs; when it then leaves it
    // must not unmount the path (fuser does so by path, which hits the new mount). The old
    // server is held with SIGSTOP to make "late" certain.
    let s = Setup::new();
    fs::write(s.lower.join("kept"), "lower").unwrap();
    let old = mount_stratafs(&s.opts(), &s.mp);
    assert!(s.mp.join("kept").exists());
    let old_pid = s.server_pid();
    signal(old_pid, libc::SIGSTOP);
    detach(old);
    let new = mount_stratafs(&s.opts(), &s.mp);
    let new_pid = s.server_pid();
    assert_ne!(old_pid, new_pid);
    signal(old_pid, libc::SIGCONT);
    wait_gone(old_pid, "its unmount");
    assert!(
        stratafs::union::mount::fuse_mounted(&s.mp),
        "the new mount is gone"
    );
    assert_eq!(fs::read_to_string(s.mp.join("kept")).unwrap(), "lower");
    fs::write(s.mp.join("new"), "upper").unwrap();
    assert_eq!(fs::read_to_string(s.upper.join("new")).unwrap(), "upper");
    drop(new);
    wait_gone(new_pid, "its unmount");
}

/// Lower, upper, work and mount point in one temporary directory.
struct Setup {
    _t: tempfile::TempDir,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mp: PathBuf,
    pidfile: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().to_path_buf();
        for d in ["lower", "upper", "work", "mp"] {
            fs::create_dir(r.join(d)).unwrap();
        }
        Setup {
            lower: r.join("lower"),
            upper: r.join("upper"),
            work: r.join("work"),
            mp: r.join("mp"),
            pidfile: r.join("server.pid"),
            _t: t,
        }
    }

    fn opts(&self) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={},pidfile={}",
            self.lower.display(),
            self.upper.display(),
            self.work.display(),
            self.pidfile.display()
        )
    }

    fn server_pid(&self) -> i32 {
        fs::read_to_string(&self.pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Whether the server holds a file of the staging area with data in it, named or not
    /// (copies are built unnamed, `O_TMPFILE`, where the filesystem allows).
    fn copy_in_staging(&self) -> bool {
        let staging = self.work.join(STAGING);
        let fds = format!("/proc/{}/fd", self.server_pid());
        fs::read_dir(fds).into_iter().flatten().flatten().any(|e| {
            fs::read_link(e.path()).is_ok_and(|t| t.starts_with(&staging))
                && fs::metadata(e.path()).is_ok_and(|m| m.is_file() && m.len() > 0)
        })
    }
}

/// A small tree in the lower layer and changes to it made through the mount (new file, copied-up
/// file, deleted file, new directory), which must survive the crash unchanged.
fn populate(s: &Setup) {
    let t = s.lower.join("tree");
    fs::create_dir_all(t.join("sub")).unwrap();
    fs::write(t.join("a"), "lower a").unwrap();
    fs::write(t.join("sub/b"), "lower b").unwrap();
    fs::write(t.join("del"), "to delete").unwrap();
}

fn change_through_mount(mp: &Path) {
    let t = mp.join("tree");
    fs::write(t.join("new"), "new file").unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(t.join("a"))
        .unwrap()
        .write_all(b" + appended")
        .unwrap();
    fs::remove_file(t.join("del")).unwrap();
    fs::create_dir(t.join("d2")).unwrap();
    fs::write(t.join("d2/x"), "x").unwrap();
}

/// SIGKILL the server and wait until it is gone (it is not our child: reaped by init).
fn kill_server(pid: i32) {
    signal(pid, libc::SIGKILL);
    wait_gone(pid, "SIGKILL");
}

fn signal(pid: i32, sig: i32) {
    if let Err(e) = stratafs::sys::kill(pid, sig) {
        panic!("kill -{sig} {pid}: {e}");
    }
}

/// Wait until process `pid` has exited (or is a zombie).
fn wait_gone(pid: i32, what: &str) {
    let t0 = Instant::now();
    loop {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        if stat.is_empty() || state.starts_with('Z') || state.starts_with('X') {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "server {pid} survived {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Lazily detach the dead mount (its connection is aborted) and drop the guard.
fn detach(guard: MountGuard) {
    let st = Command::new("umount")
        .arg("-l")
        .arg(&guard.path)
        .status()
        .unwrap();
    assert!(st.success(), "umount -l {}", guard.path.display());
    drop(guard);
}

/// After the remount: the work directory holds nothing but the staging directory, empty but
/// for the shared whiteout file (an empty regular file that whiteouts are hard-linked to).
fn assert_work_clean(s: &Setup) {
    let base = s.work.join(STAGING).join("whiteout");
    let mut found = Vec::new();
    let mut stack = vec![s.work.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            if e.path() == base {
                let md = e.metadata().unwrap();
                assert!(md.is_file() && md.len() == 0, "whiteout base {md:?}");
                continue;
            }
            found.push(e.path());
        }
    }
    assert_eq!(
        found,
        vec![s.work.join(STAGING)],
        "leftovers in the work directory after the remount"
    );
}

/// Poll `ready` until it holds, checking that the operation of `h` is still running then.
fn wait_under_way<T>(h: &std::thread::JoinHandle<T>, mut ready: impl FnMut() -> bool, what: &str) {
    let t0 = Instant::now();
    while !ready() {
        assert!(
            !h.is_finished(),
            "{what} finished before it was seen under way"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{what}: never saw it start"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Run `op` in a thread, wait for `ready` (polled), SIGKILL the server, and check that the
/// operation failed (the kill landed while it ran).
fn kill_during<F, R>(s: &Setup, op: F, mut ready: R, what: &str)
where
    F: FnOnce() -> std::io::Result<()> + Send + 'static,
    R: FnMut() -> bool,
{
    let pid = s.server_pid();
    let h = std::thread::spawn(op);
    let t0 = Instant::now();
    wait_under_way(&h, &mut ready, what);
    eprintln!("{what}: killing the server after {:?}", t0.elapsed());
    kill_server(pid);
    let res = h.join().expect("operation thread panicked");
    assert!(
        res.is_err(),
        "{what} completed although the server was killed during it"
    );
}

/// [`kill_during`] a write of `size` bytes of `byte` to the file `open` gives for `target`
/// (then fsync), killing once a quarter of it has been written.
fn kill_during_pattern_write(
    s: &Setup,
    target: PathBuf,
    open: fn(&Path) -> std::io::Result<fs::File>,
    size: u64,
    byte: u8,
    what: &str,
) {
    let done = Arc::new(AtomicU64::new(0));
    let d2 = done.clone();
    kill_during(
        s,
        move || {
            let mut f = open(&target)?;
            write_pattern(&mut f, size, byte, &d2)?;
            f.sync_all()
        },
        || done.load(Ordering::SeqCst) >= size / 4,
        what,
    );
}

/// The `tree/` part of the merged view and of the upper layer, for before/after checks.
fn snapshot(s: &Setup) -> (String, String) {
    (
        format!("{:?}", tree_listing(&s.mp.join("tree"))),
        format!("{:?}", tree_listing(&s.upper.join("tree"))),
    )
}

/// Detach the crashed mount, mount the same layers again and check what every crash test
/// checks: the work directory is clean and the rest of the tree is as it was `before`.
fn remount_after_crash(s: &Setup, crashed: MountGuard, before: &(String, String)) -> MountGuard {
    detach(crashed);
    let g = mount_stratafs(&s.opts(), &s.mp);
    assert_work_clean(s);
    assert_eq!(&snapshot(s), before, "the rest of the tree changed");
    g
}

#[test]
fn crash_during_large_copy_up_leaves_old_or_new() {
    const SIZE: u64 = 512 * MIB;
    let s = Setup::new();
    populate(&s);
    make_pattern_file(&s.lower.join("big.bin"), SIZE, 0x11);
    let g = mount_stratafs(&s.opts(), &s.mp);
    change_through_mount(&s.mp);
    let before = snapshot(&s);

    let target = s.mp.join("big.bin");
    kill_during(
        &s,
        move || {
            let mut f = fs::OpenOptions::new().append(true).open(target)?;
            f.write_all(b"Z")
        },
        // A staging file with data in it: the copy-up is under way.
        || s.copy_in_staging(),
        "copy-up of a 512 MiB file",
    );
    // The half-built copy had no name (or only one in staging): the real name has nothing
    // partial (checked below, after the remount cleaned staging).
    let _g = remount_after_crash(&s, g, &before);

    let up = s.upper.join("big.bin");
    let view = fs::metadata(s.mp.join("big.bin")).unwrap().len();
    eprintln!(
        "after the crash: upper big.bin {:?} bytes",
        fs::metadata(&up).map(|m| m.len()).ok()
    );
    match fs::metadata(&up) {
        Err(e) => {
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
            assert_eq!(view, SIZE);
        }
        Ok(m) => {
            // A complete copy, possibly with the appended byte: never a partial one.
            assert!(
                m.len() == SIZE || m.len() == SIZE + 1,
                "partial copy-up under the real name: {} bytes",
                m.len()
            );
            assert_eq!(view, m.len());
            if m.len() == SIZE + 1 {
                let mut f = fs::File::open(&up).unwrap();
                f.seek(SeekFrom::Start(SIZE)).unwrap();
                let mut last = [0u8; 1];
                f.read_exact(&mut last).unwrap();
                assert_eq!(&last, b"Z");
            }
            check_blocks(&up, SIZE, &[0x11], false).unwrap();
        }
    }
    // The lower file is untouched and the mount works again.
    check_blocks(&s.lower.join("big.bin"), SIZE, &[0x11], false).unwrap();
    fs::write(s.mp.join("tree/after"), "after").unwrap();
    assert_eq!(fs::read(s.upper.join("tree/after")).unwrap(), b"after");
}

#[test]
fn the_upper_layer_is_on_disk_once_the_server_has_left() {
    // Kernel overlayfs syncs the upper filesystem when unmounted; the kernel sends a FUSE
    // server no syncfs, so the server flushes the upper itself before it leaves. Seen through
    // delayed allocation: data not written yet shows as "delalloc".
    let s = Setup::new();
    let g = mount_stratafs(&s.opts(), &s.mp);
    let pid = s.server_pid();
    fs::write(s.mp.join("written"), vec![7u8; 200_000]).unwrap();
    let up = s.upper.join("written");
    if crate::common::awaits_writing(&up) != Some(true) {
        eprintln!("skipped: unwritten data cannot be told apart here (no delayed allocation)");
        return;
    }
    drop(g);
    wait_gone(pid, "its unmount");
    assert_eq!(fs::read(&up).unwrap(), vec![7u8; 200_000]);
    assert_eq!(
        crate::common::awaits_writing(&up),
        Some(false),
        "data written before the unmount is not on disk after the server left"
    );
}

/// With one reader thread, start `op` (a copy-up of a large lower file), wait until its copy
/// is under way, then make requests only the server can answer (a look-up and open of a file
/// never opened, a new file) and check they were answered while `op` still ran.
fn served_during(s: &Setup, what: &str, op: impl FnOnce() -> std::io::Result<()> + Send + 'static) {
    let h = std::thread::spawn(op);
    let t0 = Instant::now();
    wait_under_way(&h, || s.copy_in_staging(), what);
    let t1 = Instant::now();
    let other = s.mp.join("tree/sub/b");
    assert_eq!(fs::read_to_string(&other).unwrap(), "lower b");
    let new =
        s.mp.join(format!("tree/new-during-{}", what.replace(' ', "-")));
    fs::write(&new, "new").unwrap();
    let waited = t1.elapsed();
    let still_copying = !h.is_finished();
    h.join().expect("operation thread panicked").unwrap();
    eprintln!(
        "{what}: other requests took {waited:?} ({:?} in all)",
        t0.elapsed()
    );
    assert!(
        still_copying,
        "{what}: the other requests were answered only after the copy-up ({waited:?})"
    );
}

#[test]
fn other_requests_are_served_during_a_large_copy_up() {
    // One reader thread makes it certain: before copy-ups of large files ran off the reader
    // threads, the mount answered nothing else until the copy was made and flushed.
    const SIZE: u64 = 256 * MIB;
    let s = Setup::new();
    if crate::common::reflinks(&s.upper) {
        eprintln!("skipped: copy-ups are reflinks here, over before they can be caught");
        return;
    }
    populate(&s);
    make_pattern_file(&s.lower.join("append.bin"), SIZE, 0x21);
    make_pattern_file(&s.lower.join("chmod.bin"), SIZE, 0x22);
    let _g = mount_stratafs(&format!("{},threads=1", s.opts()), &s.mp);

    let target = s.mp.join("append.bin");
    served_during(&s, "append", move || {
        fs::OpenOptions::new()
            .append(true)
            .open(target)?
            .write_all(b"Z")
    });
    let target = s.mp.join("chmod.bin");
    served_during(&s, "chmod", move || {
        fs::set_permissions(target, fs::Permissions::from_mode(0o600))
    });

    // Both copy-ups completed in full.
    let up = s.upper.join("append.bin");
    assert_eq!(fs::metadata(&up).unwrap().len(), SIZE + 1);
    check_blocks(&up, SIZE, &[0x21], false).unwrap();
    let up = s.upper.join("chmod.bin");
    assert_eq!(
        fs::metadata(&up).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    check_blocks(&up, SIZE + 1, &[0x22], false).unwrap();
    assert_eq!(fs::metadata(s.mp.join("chmod.bin")).unwrap().len(), SIZE);
}

#[test]
fn crash_during_large_write_of_new_file() {
    const SIZE: u64 = 256 * MIB;
    let s = Setup::new();
    populate(&s);
    let g = mount_stratafs(&s.opts(), &s.mp);
    change_through_mount(&s.mp);
    let before = snapshot(&s);

    kill_during_pattern_write(
        &s,
        s.mp.join("new.bin"),
        |p| fs::File::create(p),
        SIZE,
        0x44,
        "write of a 256 MiB new file",
    );
    let _g = remount_after_crash(&s, g, &before);

    // The new file exists (its creation completed) with a prefix of what was written; blocks
    // the multi-threaded server had not reached yet read as zeros, nothing else.
    let up = s.upper.join("new.bin");
    let m = fs::metadata(&up).expect("the created file is in the upper");
    eprintln!("after the crash: new.bin has {} bytes", m.len());
    assert!(m.len() <= SIZE, "file longer than written: {}", m.len());
    assert_eq!(fs::metadata(s.mp.join("new.bin")).unwrap().len(), m.len());
    check_blocks(&up, SIZE, &[0x44], true).unwrap();
    // It can be replaced and removed through the remounted view.
    fs::write(s.mp.join("new.bin"), "small").unwrap();
    assert_eq!(fs::read(&up).unwrap(), b"small");
    fs::remove_file(s.mp.join("new.bin")).unwrap();
    assert!(!up.exists());
}

#[test]
fn crash_during_overwrite_of_copied_up_file() {
    const SIZE: u64 = 128 * MIB;
    let s = Setup::new();
    populate(&s);
    make_pattern_file(&s.lower.join("data.bin"), SIZE, 0x22);
    let g = mount_stratafs(&s.opts(), &s.mp);
    change_through_mount(&s.mp);
    // Copy it up (a writable open copies up) without changing it.
    drop(
        fs::OpenOptions::new()
            .write(true)
            .open(s.mp.join("data.bin"))
            .unwrap(),
    );
    assert_eq!(fs::metadata(s.upper.join("data.bin")).unwrap().len(), SIZE);
    let before = snapshot(&s);

    kill_during_pattern_write(
        &s,
        s.mp.join("data.bin"),
        |p| fs::OpenOptions::new().write(true).open(p),
        SIZE,
        0x33,
        "overwrite of a 128 MiB copied-up file",
    );
    let _g = remount_after_crash(&s, g, &before);

    let up = s.upper.join("data.bin");
    assert_eq!(fs::metadata(&up).unwrap().len(), SIZE);
    assert_eq!(fs::metadata(s.mp.join("data.bin")).unwrap().len(), SIZE);
    // Each block is old or new data; at least the part acknowledged before the kill is new.
    check_blocks(&up, SIZE, &[0x22, 0x33], false).unwrap();
    if run_has_writeback_cache() {
        // Acknowledged but unsynced writes may have been in the kernel's cache only.
        check_blocks(&s.lower.join("data.bin"), SIZE, &[0x22], false).unwrap();
        return;
    }
    let mut head = vec![0u8; BLOCK];
    fs::File::open(&up).unwrap().read_exact(&mut head).unwrap();
    let mut want = vec![0u8; BLOCK];
    fill(&mut want, 0, 0x33);
    assert_eq!(head, want, "acknowledged write lost");
    check_blocks(&s.lower.join("data.bin"), SIZE, &[0x22], false).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Rootless

pub(crate) const NOBODY: u32 = 65534;

/// The rootless tests change the mode of /dev/fuse: one at a time.
static DEV_FUSE: Mutex<()> = Mutex::new(());

/// /dev/fuse is 0600 on these machines; fusermount3 (run by the unprivileged server) opens it
/// as the user, so it is made 0666 for the test and its old mode restored afterwards.
pub(crate) struct DevFuseOpen {
    old: u32,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl DevFuseOpen {
    pub(crate) fn new() -> DevFuseOpen {
        let lock = DEV_FUSE.lock().unwrap_or_else(|e| e.into_inner());
        let old = fs::metadata("/dev/fuse").unwrap().mode() & 0o7777;
        fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
        DevFuseOpen { old, _lock: lock }
    }
}

impl Drop for DevFuseOpen {
    fn drop(&mut self) {
        let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.old));
    }
}

/// Run `sh -c script` as uid/gid 65534 with no supplementary groups; `caps` adds ambient
/// capabilities (e.g. "+mknod").
pub(crate) fn as_nobody(script: &str, caps: Option<&str>) -> Output {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups");
    if let Some(caps) = caps {
        c.arg(format!("--inh-caps={caps}"))
            .arg(format!("--ambient-caps={caps}"));
    }
    c.args(["sh", "-c", &format!("umask 022; {script}")])
        .output()
        .expect("running setpriv")
}

fn ok_nobody(script: &str, caps: Option<&str>) -> String {
    let out = as_nobody(script, caps);
    assert!(
        out.status.success(),
        "as uid {NOBODY}: {script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chown_tree(p: &Path) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{NOBODY}:{NOBODY}"))
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Mount as uid 65534 through the mount program (which then mounts with fusermount3).
fn mount_as_nobody(s: &Setup) -> MountGuard {
    ok_nobody(
        &format!(
            "{} -o {} {}",
            crate::common::stratafs_bin(),
            s.opts(),
            s.mp.display()
        ),
        None,
    );
    assert!(stratafs::union::mount::fuse_mounted(&s.mp));
    MountGuard::new(&s.mp)
}

fn override_of(p: &Path) -> String {
    let v = stratafs::sys::lgetxattr(p, "user.containers.override_stat")
        .unwrap_or_else(|e| panic!("getxattr {}: {e}", p.display()))
        .unwrap_or_else(|| panic!("no override_stat on {}", p.display()));
    String::from_utf8(v).unwrap()
}

/// `stat` in the view as the user: uid gid mode type major minor size.
fn view_stat(mp: &Path, names: &[&str]) -> String {
    let files: Vec<String> = names
        .iter()
        .map(|n| mp.join(n).display().to_string())
        .collect();
    ok_nobody(
        &format!("stat -c '%u %g %a %F %t %T %s' {}", files.join(" ")),
        None,
    )
}

fn rootless_setup() -> Setup {
    let s = Setup::new();
    fs::write(s.lower.join("f"), "hello\n").unwrap();
    fs::write(s.lower.join("g"), "g\n").unwrap();
    fs::create_dir(s.lower.join("d")).unwrap();
    fs::write(s.lower.join("d/x"), "x\n").unwrap();
    chown_tree(s._t.path());
    // Image layers hold files of other owners (here root) that the user cannot chown back.
    fs::create_dir(s.lower.join("rd")).unwrap();
    fs::write(s.lower.join("rd/rf"), "r\n").unwrap();
    s
}

#[test]
fn rootless_chown_chmod_mknod_kept_in_override_stat() {
    let _fuse = DevFuseOpen::new();
    let s = rootless_setup();
    let g = mount_as_nobody(&s);
    let mp = s.mp.display().to_string();
    ok_nobody(
        &format!("cd {mp} && chown 0:0 f && chown 1000:1000 g && chmod 4755 g && echo more >> f"),
        None,
    );
    // Device nodes: the kernel itself refuses mknod of a device to a caller without
    // CAP_MKNOD, before the request reaches the server (as for rootless containers). A caller
    // that has it (ambient capability) reaches the unprivileged server, whose backing mknod
    // fails with EPERM: the node must then be a regular file plus override_stat.
    let out = as_nobody(&format!("mknod {mp}/nocap c 1 3"), None);
    assert!(!out.status.success(), "mknod without CAP_MKNOD succeeded");
    ok_nobody(&format!("mknod {mp}/dev c 1 3"), Some("+mknod"));

    let want = "0 0 644 regular file 0 0 11\n\
                1000 1000 4755 regular file 0 0 2\n\
                65534 65534 644 character special file 1 3 0\n";
    assert_eq!(view_stat(&s.mp, &["f", "g", "dev"]), want);
    assert_eq!(
        ok_nobody(&format!("cat {mp}/f"), None),
        "hello\nmore\n",
        "write after copy-up"
    );

    // The upper files are plain files owned by the user, the rest is in the xattr.
    for (name, over) in [
        ("f", "0:0:644:file"),
        ("g", "1000:1000:4755:file"),
        ("dev", "65534:65534:644:char-1-3"),
    ] {
        let p = s.upper.join(name);
        let m = fs::symlink_metadata(&p).unwrap();
        assert!(m.file_type().is_file(), "{name} is not a regular file");
        assert_eq!((m.uid(), m.gid()), (NOBODY, NOBODY), "{name} owner");
        assert_eq!(override_of(&p), over, "{name} override_stat");
    }
    assert!(!s.upper.join("nocap").exists());

    // Same view after a remount (read back from the xattr).
    let st = Command::new("fusermount3")
        .args(["-u"])
        .arg(&s.mp)
        .status()
        .unwrap();
    assert!(st.success());
    drop(g);
    let _g = mount_as_nobody(&s);
    assert_eq!(view_stat(&s.mp, &["f", "g", "dev"]), want);
    assert_work_clean(&s);
}

#[test]
fn rootless_write_and_copy_up() {
    let _fuse = DevFuseOpen::new();
    let s = rootless_setup();
    let _g = mount_as_nobody(&s);
    let mp = s.mp.display().to_string();
    ok_nobody(
        &format!(
            "cd {mp} && echo y >> d/x && echo new > d/n && mkdir e && echo z > e/z && \
             mv g e/g2 && rm f && ln -s d/x l && echo more >> rd/rf && echo n > rd/new"
        ),
        None,
    );
    // Copy-up of root-owned lower entries keeps their owner in override_stat.
    assert_eq!(
        ok_nobody(&format!("stat -c '%u %g %a %F' {mp}/rd"), None),
        "0 0 755 directory\n"
    );
    assert_eq!(
        view_stat(&s.mp, &["rd/rf", "rd/new"]),
        "0 0 644 regular file 0 0 7\n65534 65534 644 regular file 0 0 2\n"
    );
    assert_eq!(override_of(&s.upper.join("rd")), "0:0:755:dir");
    assert_eq!(override_of(&s.upper.join("rd/rf")), "0:0:644:file");
    assert_eq!(
        stratafs::sys::lgetxattr(&s.upper.join("rd/new"), "user.containers.override_stat").unwrap(),
        None,
        "a new file of the user needs no override"
    );
    assert_eq!(
        ok_nobody(
            &format!("cat {mp}/d/x {mp}/d/n {mp}/e/z {mp}/e/g2 {mp}/l"),
            None
        ),
        "x\ny\nnew\nz\ng\nx\ny\n"
    );
    assert_eq!(
        ok_nobody(&format!("ls -A {mp}"), None),
        "d\ne\nl\nrd\n",
        "deleted and renamed entries gone"
    );
    // Copied up and new entries are owned by the user on the upper, with no override needed.
    for p in ["d/x", "d/n", "e/z", "e/g2"] {
        let m = fs::symlink_metadata(s.upper.join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (NOBODY, NOBODY), "{p}");
        assert!(!fs::read(s.upper.join(p)).unwrap().is_empty());
    }
    // The lower layer is untouched.
    assert_eq!(fs::read(s.lower.join("d/x")).unwrap(), b"x\n");
    assert_eq!(fs::read(s.lower.join("f")).unwrap(), b"hello\n");
}
