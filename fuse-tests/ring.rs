//! The io_uring transport: when the kernel offers FUSE over io_uring and the mount asks for
//! it, the requests must really travel on the ring (the server says so in its log, and counts
//! the requests it answered there), and `nouring` must keep them on /dev/fuse.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common::mount_stratafs;

const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// One test at a time changes the module parameter.
static PARAM_LOCK: Mutex<()> = Mutex::new(());

/// Sets `enable_uring` to Y and puts back what it was when dropped.
struct UringEnabled {
    old: String,
}

impl UringEnabled {
    /// `None` when this kernel has no FUSE over io_uring or the parameter cannot be set.
    fn set() -> Option<UringEnabled> {
        let old = std::fs::read_to_string(PARAM).ok()?.trim().to_string();
        std::fs::write(PARAM, "Y").ok()?;
        Some(UringEnabled { old })
    }
}

impl Drop for UringEnabled {
    fn drop(&mut self) {
        let _ = std::fs::write(PARAM, &self.old);
    }
}

struct Served {
    log: String,
}

/// Mount with `extra` options, do some of everything through it, unmount, wait for the
/// server to leave and return its log.
fn serve_some(root: &Path, extra: &str) -> Served {
    for d in ["l", "u", "w"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("l/lower.txt"), b"from the lower layer\n").unwrap();
    std::fs::create_dir_all(root.join("l/dir")).unwrap();
    let (log, pidfile, mp) = (root.join("log"), root.join("pid"), root.join("m"));
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},log={},pidfile={}{extra}",
        root.join("l").display(),
        root.join("u").display(),
        root.join("w").display(),
        log.display(),
        pidfile.display(),
    );
    let guard = mount_stratafs(&opts, &mp);
    assert_eq!(
        std::fs::read(mp.join("lower.txt")).unwrap(),
        b"from the lower layer\n"
    );
    std::fs::write(mp.join("new.txt"), b"written").unwrap();
    std::fs::rename(mp.join("new.txt"), mp.join("dir/moved.txt")).unwrap();
    assert_eq!(std::fs::read(mp.join("dir/moved.txt")).unwrap(), b"written");
    let names: Vec<_> = std::fs::read_dir(&mp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    std::fs::remove_file(mp.join("lower.txt")).unwrap();
    assert!(!mp.join("lower.txt").exists());
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let st = Command::new("umount").arg(&mp).status().unwrap();
    assert!(st.success());
    drop(guard);
    let t = Instant::now();
    while PathBuf::from(format!("/proc/{pid}")).exists() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    Served {
        log: std::fs::read_to_string(&log).unwrap(),
    }
}

/// The number after `ring_requests=` in the server's exit line.
fn ring_requests(log: &str) -> u64 {
    let at = log
        .find("ring_requests=")
        .unwrap_or_else(|| panic!("no exit line in the log:\n{log}"));
    log[at + "ring_requests=".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn uring_serves_on_the_ring_when_offered_and_nouring_does_not() {
    let _lock = PARAM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(_enabled) = UringEnabled::set() else {
        eprintln!("skipped: this kernel has no {PARAM} (FUSE over io_uring needs Linux 6.14+)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = serve_some(&dir.path().join("ring"), ",uring");
    assert!(
        s.log.contains("transport=\"io_uring\""),
        "the ring was offered and asked for but not used:\n{}",
        s.log
    );
    let n = ring_requests(&s.log);
    assert!(n >= 10, "only {n} requests on the ring:\n{}", s.log);

    // A rerun of the suite with `uring` added to every mount (after ours) cannot ask for
    // /dev/fuse.
    let extra = std::env::var("STRATAFS_EXTRA_MOUNT_OPTS").unwrap_or_default();
    if extra.split(',').any(|o| o == "uring") {
        return;
    }
    let s = serve_some(&dir.path().join("dev"), ",nouring");
    assert!(s.log.contains("transport=\"dev-fuse\""), "{}", s.log);
    assert_eq!(ring_requests(&s.log), 0, "{}", s.log);
}
