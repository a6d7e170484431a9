//! Helpers shared by the FUSE tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Path of the built `stratafs` binary, which the library spawns as the mount server.
pub fn stratafs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_stratafs")
}

/// Point the library at the binary under test (it spawns it as the mount server).
pub fn use_test_binary() {
    std::env::set_var("STRATAFS_BIN", stratafs_bin());
}

/// A mount that is lazily unmounted when dropped, even when the test fails.
#[derive(Debug)]
pub struct MountGuard {
    pub path: PathBuf,
}

impl MountGuard {
    pub fn new(path: &Path) -> MountGuard {
        MountGuard {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if stratafs::union::mount::fuse_mounted(&self.path) || is_overlay_mounted(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

fn is_overlay_mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = path.display().to_string();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_str()) && l.contains(" - overlay "))
}

/// Mount with the mount-program form `stratafs -o OPTS MP`; panics with its error output.
pub fn mount_stratafs(opts: &str, mp: &Path) -> MountGuard {
    std::fs::create_dir_all(mp).unwrap();
    let out = Command::new(stratafs_bin())
        .arg("-o")
        .arg(opts)
        .arg(mp)
        .output()
        .expect("running stratafs");
    assert!(
        out.status.success(),
        "stratafs -o {opts} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    MountGuard::new(mp)
}

/// One lower, an upper, a work directory and a mount point in a temporary directory: the
/// layout of a test of one stratafs mount over one lower layer, mounted again as needed.
pub struct OneLower {
    _tmp: tempfile::TempDir,
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mp: PathBuf,
}

impl OneLower {
    pub fn new() -> OneLower {
        let t = tempfile::tempdir().unwrap();
        let l = OneLower {
            lower: t.path().join("lower"),
            upper: t.path().join("upper"),
            work: t.path().join("work"),
            mp: t.path().join("merged"),
            _tmp: t,
        };
        for d in [&l.lower, &l.upper, &l.work, &l.mp] {
            std::fs::create_dir_all(d).unwrap();
        }
        l
    }

    pub fn mount(&self) -> MountGuard {
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower.display(),
            self.upper.display(),
            self.work.display()
        );
        mount_stratafs(&opts, &self.mp)
    }

    /// Unmount now (not lazily), failing the test if the mount is busy.
    pub fn unmount(&self, guard: MountGuard) {
        let st = Command::new("umount").arg(&self.mp).status().unwrap();
        assert!(st.success(), "umount {}", self.mp.display());
        drop(guard);
    }
}

/// Read-only kernel overlayfs over `lowers` (topmost first); adds an empty bottom layer since
/// the kernel wants two lower directories.
pub fn mount_kernel_overlay(lowers: &[&Path], scratch: &Path, mp: &Path) -> MountGuard {
    std::fs::create_dir_all(mp).unwrap();
    let empty = scratch.join("empty-bottom");
    std::fs::create_dir_all(&empty).unwrap();
    let mut l: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    l.push(empty.display().to_string());
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("lowerdir={}", l.join(":")))
        .arg(mp)
        .status()
        .expect("running mount");
    assert!(st.success(), "kernel overlay mount failed");
    MountGuard::new(mp)
}

/// Every path under `root` with a description: kind, mode, owner and content or target.
pub fn tree_listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let what = if ft.is_dir() {
            walk(root, &p, out);
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("link->{}", std::fs::read_link(&p).unwrap().display())
        } else if ft.is_file() {
            format!(
                "file:{}",
                String::from_utf8_lossy(&std::fs::read(&p).unwrap())
            )
        } else if ft.is_char_device() {
            format!("char:{}", m.rdev())
        } else {
            "other".to_string()
        };
        out.insert(
            rel,
            format!("{what} {:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid()),
        );
    }
}

/// Same as [`tree_listing`] but only the kinds and contents (for comparing with expectations).
pub fn tree_shape(root: &Path) -> BTreeMap<String, String> {
    tree_listing(root)
        .into_iter()
        .map(|(k, v)| (k, v.split(' ').next().unwrap_or("").to_string()))
        .collect()
}

/// Build a map from `(path, description)` pairs.
pub fn expect(items: &[(&str, &str)]) -> BTreeMap<String, String> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Write `content` to `root/rel`, creating parents.
pub fn put_file(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// A kernel-style whiteout (char device 0/0) at `root/rel`.
pub fn put_char_whiteout(root: &Path, rel: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let st = Command::new("mknod")
        .arg(&p)
        .args(["c", "0", "0"])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Set an xattr (panics on failure).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    stratafs::sys::lsetxattr(path, name, value)
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", path.display()));
}

/// Whether the data of `path` still waits to be written (delayed allocation: FIEMAP's
/// "delalloc" extents, as `filefrag -v` lists them); `None` where filefrag is missing or fails.
pub fn awaits_writing(path: &Path) -> Option<bool> {
    let out = Command::new("filefrag").arg("-v").arg(path).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).contains("delalloc"))
}

/// Whether files in `dir` can be reflinked (XFS with reflink=1, btrfs): a copy-up there is
/// one `FICLONE`, too quick for a test to catch it under way.
pub fn reflinks(dir: &Path) -> bool {
    let (a, b) = (dir.join(".reflink-probe"), dir.join(".reflink-probe.copy"));
    let ok = std::fs::write(&a, b"probe").is_ok()
        && Command::new("cp")
            .arg("--reflink=always")
            .arg(&a)
            .arg(&b)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|st| st.success());
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    ok
}

/// Whether this run's mounts get the kernel's writeback cache: every mount without passthrough
/// (the test command's `STRATAFS_EXTRA_MOUNT_OPTS=nopassthrough` rerun) unless `nowriteback`.
/// A write(2) the kernel has acknowledged may then still wait in its page cache: a server
/// killed before the write-back loses it, as a power cut loses what was not fsynced.
pub fn run_has_writeback_cache() -> bool {
    let extra = std::env::var(stratafs::union::server::EXTRA_OPTS_ENV).unwrap_or_default();
    let has = |name: &str| extra.split(',').any(|o| o.trim() == name);
    has("nopassthrough") && !has("nowriteback")
}
