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

/// `stratafs --root ROOT ARGS` with `STRATAFS_EXTRA_MOUNT_OPTS=extra` (which the mount
/// servers it starts read); panics unless it succeeds; its stdout.
fn cli(root: &Path, extra: &str, args: &[&str]) -> String {
    let out = Command::new(crate::common::stratafs_bin())
        .arg("--root")
        .arg(root)
        .args(["--driver", "stratafs"])
        .args(args)
        .env("STRATAFS_EXTRA_MOUNT_OPTS", extra)
        .env_remove("RUST_LOG")
        .output()
        .expect("running stratafs");
    assert!(
        out.status.success(),
        "stratafs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What `stratafs status` says of the mount of layer `id`.
fn status_of_mount(root: &Path, id: &str) -> String {
    let out = cli(root, "", &["--json", "status"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    v["status"][format!("Mount {id}")]
        .as_str()
        .unwrap_or_else(|| panic!("no line for the mount of {id}: {out}"))
        .to_string()
}

/// Mount layer `id` of the store at `root` with `extra` options; unmounted when dropped.
fn driver_mount(root: &Path, id: &str, extra: &str) -> crate::common::MountGuard {
    let mp = cli(root, extra, &["mount", id]);
    crate::common::MountGuard::new(Path::new(mp.trim()))
}

#[test]
fn status_shows_each_mounts_transport() {
    let _lock = PARAM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    cli(root, "", &["create", "base"]);
    cli(root, "", &["create-rw", "--parent", "base", "top"]);

    let guard = driver_mount(root, "top", "nouring");
    let line = status_of_mount(root, "top");
    assert!(line.ends_with("transport /dev/fuse"), "{line}");
    assert!(
        line.starts_with(&guard.path.display().to_string()),
        "{line}"
    );
    cli(root, "", &["umount", "top"]);
    drop(guard);

    let Some(_enabled) = UringEnabled::set() else {
        eprintln!("ring part skipped: this kernel has no {PARAM}");
        return;
    };
    let guard = driver_mount(root, "top", "uring");
    let line = status_of_mount(root, "top");
    let queues = stratafs::sys::possible_cpus();
    let want = if queues == 1 {
        "transport io_uring (1 queue)".to_string()
    } else {
        format!("transport io_uring ({queues} queues)")
    };
    assert!(line.ends_with(&want), "{line}, wanted {want}");
    cli(root, "", &["umount", "top"]);
    drop(guard);
    let out = cli(root, "", &["--json", "status"]);
    assert!(!out.contains("Mount top"), "{out}");
}

/// `/etc/fuse.conf` with `user_allow_other` (which fusermount3 wants before it mounts
/// `allow_root` for a user) for the test; put back as it was when dropped.
struct UserAllowOther {
    old: Option<Vec<u8>>,
}

const FUSE_CONF: &str = "/etc/fuse.conf";

impl UserAllowOther {
    fn set() -> UserAllowOther {
        let old = std::fs::read(FUSE_CONF).ok();
        let mut text = old.clone().unwrap_or_default();
        text.extend_from_slice(b"\nuser_allow_other\n");
        std::fs::write(FUSE_CONF, text).unwrap();
        UserAllowOther { old }
    }
}

impl Drop for UserAllowOther {
    fn drop(&mut self) {
        let _ = match &self.old {
            Some(t) => std::fs::write(FUSE_CONF, t),
            None => std::fs::remove_file(FUSE_CONF),
        };
    }
}

/// A uid that is neither root nor the mount's owner (`nobody`).
const STRANGER: u32 = 65533;

/// `stat PATH` as `uid`: Ok, or the error it printed.
fn stat_as(uid: u32, path: &Path) -> Result<(), String> {
    let out = Command::new("setpriv")
        .args([format!("--reuid={uid}"), format!("--regid={uid}")])
        .args(["--clear-groups", "stat", "--"])
        .arg(path)
        .output()
        .expect("running setpriv");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// As on /dev/fuse (fuser's check), a mount its owner made `allow_root` serves its owner and
/// root over the ring and refuses every other user, whom the kernel lets in.
#[test]
fn ring_serves_the_owner_and_root_of_an_allow_root_mount_and_refuses_others() {
    use crate::robust::{as_nobody, DevFuseOpen, NOBODY};
    use std::os::unix::fs::{chown, PermissionsExt};

    let _lock = PARAM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(_enabled) = UringEnabled::set() else {
        eprintln!("skipped: this kernel has no {PARAM} (FUSE over io_uring needs Linux 6.14+)");
        return;
    };
    let _dev = DevFuseOpen::new();
    let _conf = UserAllowOther::set();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for transport in ["uring", "nouring"] {
        let root = dir.path().join(transport);
        for d in ["l", "m"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("l/f"), "x").unwrap();
        chown(root.join("m"), Some(NOBODY), Some(NOBODY)).unwrap();
        chown(&root, Some(NOBODY), Some(NOBODY)).unwrap();
        let (mp, log) = (root.join("m"), root.join("log"));
        let out = as_nobody(
            &format!(
                "STRATAFS_EXTRA_MOUNT_OPTS={transport} {} -o lowerdir={},allow_root,log={} {}",
                crate::common::stratafs_bin(),
                root.join("l").display(),
                log.display(),
                mp.display()
            ),
            None,
        );
        assert!(
            out.status.success(),
            "mount as nobody ({transport}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let guard = crate::common::MountGuard::new(&mp);
        let f = mp.join("f");
        // The stranger first: once an entry is in the kernel's cache, a stat of it is
        // answered there without asking the server, on either transport.
        let e = stat_as(STRANGER, &f).expect_err("another user got in");
        assert!(e.contains("Permission denied"), "{transport}: {e}");
        assert_eq!(stat_as(NOBODY, &f), Ok(()), "the owner ({transport})");
        assert_eq!(stat_as(0, &f), Ok(()), "root ({transport})");
        let st = Command::new("umount").arg(&mp).status().unwrap();
        assert!(st.success());
        drop(guard);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if transport == "uring" {
            assert!(text.contains("transport=\"io_uring\""), "{text}");
        } else {
            assert!(text.contains("transport=\"dev-fuse\""), "{text}");
        }
    }
}

/// `Cpus_allowed_list` of each thread of process `pid`: (thread name, CPUs).
fn thread_cpus(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(t.join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or("")
            .trim()
            .to_string();
        out.push((comm.trim().to_string(), cpus));
    }
    out
}

/// The ring's queue threads are pinned to their CPUs, but the stat-ahead threads a queue
/// thread starts (at the first listing) must not inherit that pin: they would share the one
/// CPU of the listing caller and its queue thread while the others idle.
#[test]
fn stat_ahead_threads_started_by_a_ring_queue_are_not_pinned() {
    let _lock = PARAM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(_enabled) = UringEnabled::set() else {
        eprintln!("skipped: this kernel has no {PARAM} (FUSE over io_uring needs Linux 6.14+)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("l/many")).unwrap();
    // More entries than the request stats alone (the stat-ahead threads take a listing of 16+).
    for i in 0..64 {
        std::fs::write(root.join(format!("l/many/f{i}")), b"x").unwrap();
    }
    let (log, pidfile, mp) = (root.join("log"), root.join("pid"), root.join("m"));
    let opts = format!(
        "lowerdir={},log={},pidfile={},uring",
        root.join("l").display(),
        log.display(),
        pidfile.display(),
    );
    let guard = mount_stratafs(&opts, &mp);
    let mut n = 0;
    for e in std::fs::read_dir(mp.join("many")).unwrap() {
        assert!(e.unwrap().metadata().unwrap().is_file());
        n += 1;
    }
    assert_eq!(n, 64);
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let threads = thread_cpus(pid);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("transport=\"io_uring\""), "{text}");
    // The main thread's CPUs: those the server was started with (it is never pinned).
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let main = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string();
    let helpers: Vec<_> = threads
        .iter()
        .filter(|(name, _)| name.starts_with("stratafs-statah"))
        .collect();
    assert!(!helpers.is_empty(), "no stat-ahead thread: {threads:?}");
    for (name, cpus) in &helpers {
        assert_eq!(cpus, &main, "{name} is pinned: {threads:?}");
    }
    let st = Command::new("umount").arg(&mp).status().unwrap();
    assert!(st.success());
    drop(guard);
}

/// An unprivileged user's mount made inside a user namespace of its own (as rootless Podman
/// runs its mount program: root of the namespace mounts FUSE itself) is served over the ring
/// too: the kernel asks no capability for the ring's commands.
#[test]
fn a_mount_in_an_unprivileged_users_namespace_is_served_on_the_ring() {
    use crate::robust::{as_nobody, DevFuseOpen, NOBODY};
    use std::os::unix::fs::{chown, PermissionsExt};

    let _lock = PARAM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(_enabled) = UringEnabled::set() else {
        eprintln!("skipped: this kernel has no {PARAM} (FUSE over io_uring needs Linux 6.14+)");
        return;
    };
    let _dev = DevFuseOpen::new();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in ["l", "u", "w", "m"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("l/f"), "lower\n").unwrap();
    for d in ["u", "w", "m"] {
        chown(root.join(d), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    chown(root, Some(NOBODY), Some(NOBODY)).unwrap();
    let (mp, log) = (root.join("m"), root.join("log"));
    let script = format!(
        "set -e; STRATAFS_EXTRA_MOUNT_OPTS= {bin} -o lowerdir={l},upperdir={u},workdir={w},uring,log={log} {mp}; \
         cat {mp}/f; echo new > {mp}/new; cat {mp}/new; umount {mp}",
        bin = crate::common::stratafs_bin(),
        l = root.join("l").display(),
        u = root.join("u").display(),
        w = root.join("w").display(),
        log = log.display(),
        mp = mp.display(),
    );
    let out = as_nobody(
        &format!(
            "unshare --user --map-root-user --mount sh -c '{}'",
            script.replace('\'', "'\\''")
        ),
        None,
    );
    // The server leaves after the unmount; its exit line ends the log.
    let t = Instant::now();
    let mut text = String::new();
    while t.elapsed() < Duration::from_secs(20) {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("ring_requests=") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        out.status.success(),
        "{}{}\nlog: {text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "lower\nnew\n");
    assert!(text.contains("transport=\"io_uring\""), "{text}");
    assert!(ring_requests(&text) >= 3, "{text}");
    assert_eq!(std::fs::read(root.join("u/new")).unwrap(), b"new\n");
}
