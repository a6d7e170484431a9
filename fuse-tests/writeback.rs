//! What the kernel's writeback cache changes (the mode without passthrough: rootless,
//! `nopassthrough`, kernels before 6.9): the kernel keeps written pages and owns the size and
//! mtime of cached files, writes pages back later and in any order, and reads the rest of a page
//! it writes part of. Each test passes in every mode (the test command reruns the suite with
//! `STRATAFS_EXTRA_MOUNT_OPTS=nopassthrough`, where the writeback cache is on); the negotiation
//! tests check which mode a mount gets.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{mount_stratafs, MountGuard};

/// A lower layer with `lower` in it, an empty upper, and the view mounted with `extra`
/// options (comma-separated, may be empty).
struct Setup {
    _t: tempfile::TempDir,
    lower: PathBuf,
    upper: PathBuf,
    mp: PathBuf,
    log: PathBuf,
    guard: Option<MountGuard>,
}

impl Setup {
    fn new(extra: &str, lower: &[(&str, &[u8])]) -> Setup {
        Setup::with_upper(extra, lower, &[])
    }

    /// [`Setup::new`] with files already in the upper layer (copied up in an earlier mount).
    fn with_upper(extra: &str, lower: &[(&str, &[u8])], upper: &[(&str, &[u8])]) -> Setup {
        let t = tempfile::tempdir().unwrap();
        let (l, u, w, mp) = (
            t.path().join("lower"),
            t.path().join("upper"),
            t.path().join("work"),
            t.path().join("merged"),
        );
        for d in [&l, &u, &w, &mp] {
            fs::create_dir_all(d).unwrap();
        }
        for (name, data) in lower {
            fs::write(l.join(name), data).unwrap();
        }
        for (name, data) in upper {
            fs::write(u.join(name), data).unwrap();
        }
        let log = t.path().join("server.log");
        let mut opts = format!(
            "lowerdir={},upperdir={},workdir={},log={}",
            l.display(),
            u.display(),
            w.display(),
            log.display()
        );
        if !extra.is_empty() {
            opts = format!("{opts},{extra}");
        }
        let guard = mount_stratafs(&opts, &mp);
        Setup {
            _t: t,
            lower: l,
            upper: u,
            mp,
            log,
            guard: Some(guard),
        }
    }

    fn at(&self, name: &str) -> PathBuf {
        self.mp.join(name)
    }

    /// Unmount (the server writes everything back and leaves) and hand back the upper dir.
    fn unmount(&mut self) -> &Path {
        let st = Command::new("umount").arg(&self.mp).status().unwrap();
        assert!(st.success(), "umount {}", self.mp.display());
        self.guard = None;
        &self.upper
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The server's INIT log line, once the mount answered (INIT runs after the mount returns).
fn init_line(s: &Setup) -> String {
    let _ = fs::metadata(&s.mp);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let log = fs::read_to_string(&s.log).unwrap_or_default();
        if let Some(l) = log.lines().find(|l| l.contains("FUSE session initialised")) {
            return l.to_string();
        }
        assert!(Instant::now() < until, "no INIT line in the log: {log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `writeback=true` unless the run adds `nowriteback` to every mount.
fn writeback_expected() -> &'static str {
    let extra = std::env::var("STRATAFS_EXTRA_MOUNT_OPTS").unwrap_or_default();
    if extra.split(',').any(|o| o == "nowriteback") {
        "writeback=false"
    } else {
        "writeback=true"
    }
}

#[test]
fn without_passthrough_the_writeback_cache_is_on_and_nowriteback_turns_it_off() {
    let s = Setup::new("nopassthrough", &[]);
    let l = init_line(&s);
    assert!(
        l.contains("passthrough=false") && l.contains(writeback_expected()),
        "{l}"
    );
    let s = Setup::new("nopassthrough,nowriteback", &[]);
    let l = init_line(&s);
    assert!(l.contains("writeback=false"), "{l}");
    // A quota counts every write as it is made: no writeback cache there.
    let s = Setup::new("nopassthrough,quota=1M", &[]);
    let l = init_line(&s);
    assert!(l.contains("writeback=false"), "{l}");
}

/// Root of a user namespace (as rootless Podman runs its mount program) gets no passthrough
/// from the kernel (it wants CAP_SYS_ADMIN in the initial namespace at every open): the server
/// must not ask for it there (which would shut the writeback cache out), whatever its euid.
#[test]
fn in_a_user_namespace_the_server_takes_the_writeback_cache_not_passthrough() {
    let t = tempfile::tempdir().unwrap();
    let (l, u, w, mp) = (
        t.path().join("lower"),
        t.path().join("upper"),
        t.path().join("work"),
        t.path().join("merged"),
    );
    for d in [&l, &u, &w, &mp] {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(l.join("f"), b"lower\n").unwrap();
    let log = t.path().join("server.log");
    let script = format!(
        "set -e; {bin} -o lowerdir={l},upperdir={u},workdir={w},log={log} {mp}; \
         printf 'x%.0s' $(seq 1 5000) >{mp}/f; stat -c %s {mp}/f; umount {mp}",
        bin = crate::common::stratafs_bin(),
        l = l.display(),
        u = u.display(),
        w = w.display(),
        log = log.display(),
        mp = mp.display()
    );
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
        .output()
        .expect("running unshare");
    let logged = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.status.success(),
        "in a user namespace: {} {}\nlog: {logged}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5000");
    let line = logged
        .lines()
        .find(|l| l.contains("FUSE session initialised"))
        .unwrap_or_else(|| panic!("no INIT line: {logged}"));
    assert!(
        line.contains("passthrough=false") && line.contains(writeback_expected()),
        "{line}"
    );
    assert_eq!(fs::read(u.join("f")).unwrap(), vec![b'x'; 5000]);
}

#[test]
fn appends_from_two_descriptors_interleave_and_stat_follows() {
    let mut s = Setup::new("", &[("log", b"base\n")]);
    let open = || OpenOptions::new().append(true).open(s.at("log")).unwrap();
    let (mut a, mut b) = (open(), open());
    let mut want = b"base\n".to_vec();
    for i in 0..50 {
        let (fa, fb) = (format!("a{i}\n"), format!("bb{i}\n"));
        a.write_all(fa.as_bytes()).unwrap();
        want.extend_from_slice(fa.as_bytes());
        b.write_all(fb.as_bytes()).unwrap();
        want.extend_from_slice(fb.as_bytes());
        assert_eq!(fs::metadata(s.at("log")).unwrap().len(), want.len() as u64);
        assert_eq!(a.metadata().unwrap().len(), want.len() as u64);
    }
    assert_eq!(fs::read(s.at("log")).unwrap(), want);
    drop((a, b));
    assert_eq!(fs::read(s.at("log")).unwrap(), want);
    let up = s.unmount().to_path_buf();
    assert_eq!(fs::read(up.join("log")).unwrap(), want);
}

#[test]
fn size_after_writes_without_close_and_data_on_disk_after_fsync_and_close() {
    let mut s = Setup::new("", &[]);
    let mut f = File::create(s.at("new")).unwrap();
    let data = pattern(5000, 1);
    f.write_all(&data).unwrap();
    assert_eq!(fs::metadata(s.at("new")).unwrap().len(), 5000);
    // A write past the end leaves a hole; stat by name and by fd agree.
    f.write_all_at(b"z", 10_000).unwrap();
    assert_eq!(fs::metadata(s.at("new")).unwrap().len(), 10_001);
    assert_eq!(f.metadata().unwrap().len(), 10_001);
    // fsync: the data is in the upper file before the close.
    f.sync_all().unwrap();
    let on_disk = fs::read(s.upper.join("new")).unwrap();
    assert_eq!(on_disk.len(), 10_001);
    assert_eq!(&on_disk[..5000], &data[..]);
    assert!(on_disk[5000..10_000].iter().all(|b| *b == 0));
    assert_eq!(on_disk[10_000], b'z');
    // close: what was written since is there too.
    f.write_all_at(b"tail", 10_001).unwrap();
    drop(f);
    assert_eq!(fs::metadata(s.upper.join("new")).unwrap().len(), 10_005);
    // The mtime the view shows after the close is the file's.
    let shown = fs::metadata(s.at("new")).unwrap();
    let disk = fs::metadata(s.upper.join("new")).unwrap();
    assert_eq!(shown.mtime(), disk.mtime());
    let up = s.unmount().to_path_buf();
    let mut want = data.clone();
    want.resize(10_000, 0);
    want.extend_from_slice(b"ztail");
    assert_eq!(fs::read(up.join("new")).unwrap(), want);
}

#[test]
fn truncate_while_cached_shrinks_and_grows_the_cached_file() {
    let big = pattern(3 * 4096 + 100, 7);
    let mut s = Setup::new("", &[("t", &big)]);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(s.at("t"))
        .unwrap();
    let mut got = Vec::new();
    f.read_to_end(&mut got).unwrap();
    assert_eq!(got, big);
    // Dirty a page, then cut through it.
    f.write_all_at(b"DIRTY", 4000).unwrap();
    f.set_len(4002).unwrap();
    assert_eq!(fs::metadata(s.at("t")).unwrap().len(), 4002);
    let mut want = big[..4000].to_vec();
    want.extend_from_slice(b"DI");
    assert_eq!(fs::read(s.at("t")).unwrap(), want);
    // Grow by name: zeros after the old end, also in pages cached before.
    fs::OpenOptions::new()
        .write(true)
        .open(s.at("t"))
        .unwrap()
        .set_len(9000)
        .unwrap();
    want.resize(9000, 0);
    assert_eq!(fs::read(s.at("t")).unwrap(), want);
    f.seek(SeekFrom::Start(0)).unwrap();
    got.clear();
    f.read_to_end(&mut got).unwrap();
    assert_eq!(got, want);
    // truncate(2) to zero, then a write from the other end of the first page.
    Command::new("truncate")
        .args(["-s", "0"])
        .arg(s.at("t"))
        .status()
        .unwrap();
    assert_eq!(fs::metadata(s.at("t")).unwrap().len(), 0);
    f.write_all_at(b"q", 10).unwrap();
    want = vec![0; 10];
    want.push(b'q');
    assert_eq!(fs::read(s.at("t")).unwrap(), want);
    drop(f);
    let up = s.unmount().to_path_buf();
    assert_eq!(fs::read(up.join("t")).unwrap(), want);
    assert_eq!(fs::read(s.lower.join("t")).unwrap(), big);
}

#[test]
fn mmap_write_is_seen_through_another_descriptor_and_reaches_the_upper() {
    let base = pattern(2 * 4096, 3);
    let mut s = Setup::new("", &[("m", &base)]);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(s.at("m"))
        .unwrap();
    let len = base.len();
    // SAFETY: a shared mapping of `len` bytes of an open file, unmapped below; the slice
    // built over it is used only while it is mapped.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: p maps len bytes (checked above).
    let map = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len) };
    map[100..105].copy_from_slice(b"MMAP1");
    map[5000..5005].copy_from_slice(b"MMAP2");
    let mut want = base.clone();
    want[100..105].copy_from_slice(b"MMAP1");
    want[5000..5005].copy_from_slice(b"MMAP2");
    // Another descriptor (and another open) sees the stores at once.
    let mut other = Vec::new();
    File::open(s.at("m"))
        .unwrap()
        .read_to_end(&mut other)
        .unwrap();
    assert_eq!(other, want);
    // SAFETY: p and len as mapped.
    assert_eq!(unsafe { libc::msync(p, len, libc::MS_SYNC) }, 0);
    // SAFETY: p and len as mapped; map is not used after this.
    assert_eq!(unsafe { libc::munmap(p, len) }, 0);
    assert_eq!(fs::read(s.upper.join("m")).unwrap(), want);
    drop(f);
    let up = s.unmount().to_path_buf();
    assert_eq!(fs::read(up.join("m")).unwrap(), want);
    assert_eq!(fs::read(s.lower.join("m")).unwrap(), base);
}

#[test]
fn write_only_open_of_a_lower_file_then_partial_page_writes() {
    let base = pattern(3 * 4096 + 123, 9);
    let mut s = Setup::new("", &[("w", &base), ("a", &base)]);
    // Read first, so the kernel holds the lower file's pages when the copy-up comes.
    assert_eq!(fs::read(s.at("w")).unwrap(), base);
    let f = OpenOptions::new().write(true).open(s.at("w")).unwrap();
    f.write_all_at(b"XY", 4097).unwrap();
    f.write_all_at(b"end", base.len() as u64 - 1).unwrap();
    drop(f);
    let mut want = base.clone();
    want[4097..4099].copy_from_slice(b"XY");
    want.truncate(base.len() - 1);
    want.extend_from_slice(b"end");
    assert_eq!(fs::read(s.at("w")).unwrap(), want);
    // Never read through the mount before: the rest of each page comes from the copy.
    let mut g = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_APPEND)
        .open(s.at("a"))
        .unwrap();
    g.write_all(b"++").unwrap();
    g.write_all_at(b"mid", 6000).unwrap();
    drop(g);
    let mut want_a = base.clone();
    want_a.extend_from_slice(b"++");
    // O_APPEND: Linux appends pwrite's data too.
    want_a.extend_from_slice(b"mid");
    assert_eq!(fs::read(s.at("a")).unwrap(), want_a);
    let up = s.unmount().to_path_buf();
    assert_eq!(fs::read(up.join("w")).unwrap(), want);
    assert_eq!(fs::read(up.join("a")).unwrap(), want_a);
    assert_eq!(fs::read(s.lower.join("w")).unwrap(), base);
}

#[test]
fn write_only_open_of_an_upper_file_then_partial_page_writes() {
    let base = pattern(3 * 4096 + 5, 11);
    let mut s = Setup::with_upper("", &[], &[("u", &base)]);
    // Nothing of it is cached: the kernel reads each page it writes part of.
    let f = OpenOptions::new().write(true).open(s.at("u")).unwrap();
    f.write_all_at(b"ab", 10).unwrap();
    f.write_all_at(b"cd", 4096 + 4000).unwrap();
    f.write_all_at(b"ef", 3 * 4096 + 1).unwrap();
    drop(f);
    let mut want = base.clone();
    want[10..12].copy_from_slice(b"ab");
    want[8096..8098].copy_from_slice(b"cd");
    want[12289..12291].copy_from_slice(b"ef");
    assert_eq!(fs::read(s.at("u")).unwrap(), want);
    let up = s.unmount().to_path_buf();
    assert_eq!(fs::read(up.join("u")).unwrap(), want);
}

#[test]
fn reopened_upper_file_shows_a_change_made_behind_the_mount() {
    // Changing the upper directory of a mounted view is not supported, but a file that
    // changed there since its last open must not be served from stale cached pages.
    let s = Setup::new("", &[]);
    fs::write(s.at("c"), b"first version\n").unwrap();
    assert_eq!(fs::read(s.at("c")).unwrap(), b"first version\n");
    assert_eq!(fs::read(s.at("c")).unwrap(), b"first version\n");
    // Same size (the kernel keeps the size it has cached for a day): only the content and
    // the mtime tell.
    std::thread::sleep(Duration::from_millis(20));
    fs::write(s.upper.join("c"), b"FIRST VERSION\n").unwrap();
    assert_eq!(fs::read(s.at("c")).unwrap(), b"FIRST VERSION\n");
}
