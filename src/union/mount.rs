//! `get`/`put` lifecycle of merged-view mounts: reference counts, background servers,
//! stale-mount cleanup.
//!
//! Each mounted layer has one background server process (the `stratafs` binary run in its
//! fuse-overlayfs-compatible `-o` form), so a mount outlives the command that made it. The
//! reference count, the server's pid and the mount point live in `layers/<id>/mount.json`,
//! changed only under the layer's flock, so several processes can drive one store. A mount
//! whose server died (ENOTCONN, or the pid is gone) is detached by the next `get`/`put`/
//! `cleanup`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::layer::idmap::IdMappings;
use crate::store::Store;
use crate::sys;
use crate::union::{mountinfo, ring};

const STATE_FILE: &str = "mount.json";
const LOWERS_FILE: &str = "lowers";
const PID_FILE: &str = "mount.pid";
const LOG_FILE: &str = "mount.log";

/// What `layers/<id>/mount.json` records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct MountState {
    refs: u32,
    pid: i32,
    mountpoint: PathBuf,
}

/// Mounts of one store's layers.
#[derive(Debug, Clone)]
pub struct MountManager {
    store: Store,
    id_mappings: IdMappings,
}

impl MountManager {
    pub fn new(store: Store, id_mappings: IdMappings) -> Self {
        MountManager { store, id_mappings }
    }

    fn state_path(&self, id: &str) -> PathBuf {
        self.store.layer_dir(id).join(STATE_FILE)
    }

    fn read_state(&self, id: &str) -> Option<MountState> {
        let raw = std::fs::read(self.state_path(id)).ok()?;
        match serde_json::from_slice(&raw) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(id, %e, "ignoring unreadable mount state");
                None
            }
        }
    }

    fn write_state(&self, id: &str, st: &MountState) -> Result<()> {
        let path = self.state_path(id);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec(st).map_err(|e| Error::CorruptLayer {
            id: id.to_string(),
            reason: e.to_string(),
        })?;
        std::fs::write(&tmp, body).ctx(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).ctx(|| format!("writing {}", path.display()))
    }

    fn clear_state(&self, id: &str) {
        let _ = std::fs::remove_file(self.state_path(id));
    }

    /// Whether the recorded server still serves the recorded mount.
    fn live(&self, st: &MountState) -> bool {
        server_alive(st.pid) && self.is_mounted(&st.mountpoint)
    }

    /// Mount (or take another reference on) the merged view of `id`; returns the mount point.
    pub fn get(&self, id: &str, _mount_label: &str) -> Result<PathBuf> {
        let _guard = self.store.lock_layer(id)?;
        let merged = self.store.merged_dir(id);
        if let Some(mut st) = self.read_state(id) {
            if st.refs > 0 && self.live(&st) {
                st.refs += 1;
                self.write_state(id, &st)?;
                return Ok(st.mountpoint);
            }
            tracing::warn!(id, pid = st.pid, "cleaning up a stale mount");
            self.stop(id, &st)?;
            self.clear_state(id);
        }
        if fuse_mounted(&merged) {
            // Left by a crash before the state was written.
            detach(&merged)?;
        }
        std::fs::create_dir_all(&merged).ctx(|| format!("creating {}", merged.display()))?;
        let pid = self.spawn_server(id, &merged)?;
        self.write_state(
            id,
            &MountState {
                refs: 1,
                pid,
                mountpoint: merged.clone(),
            },
        )?;
        Ok(merged)
    }

    /// Run the mount program for `id` onto `merged`; returns the server's pid.
    fn spawn_server(&self, id: &str, merged: &Path) -> Result<i32> {
        let _ = &self.id_mappings; // files are stored with host ids: shown as they are.
        let chain = self.store.chain(id)?;
        let dir = self.store.layer_dir(id);
        let lowers: Vec<String> = chain[1..]
            .iter()
            .map(|r| self.store.diff_dir(&r.id).display().to_string())
            .collect();
        let esc = |p: &Path| p.display().to_string().replace(',', "\\,");
        let mut opts = Vec::new();
        if !lowers.is_empty() {
            let lf = dir.join(LOWERS_FILE);
            std::fs::write(&lf, lowers.join("\n") + "\n")
                .ctx(|| format!("writing {}", lf.display()))?;
            opts.push(format!("lowerdir_file={}", esc(&lf)));
        }
        opts.push(format!("upperdir={}", esc(&self.store.diff_dir(id))));
        opts.push(format!("workdir={}", esc(&self.store.work_dir(id))));
        if let Some(q) = chain[0].storage_opt.size {
            opts.push(format!("quota={q}"));
        }
        let pidfile = dir.join(PID_FILE);
        let _ = std::fs::remove_file(&pidfile);
        opts.push(format!("pidfile={}", esc(&pidfile)));
        opts.push(format!("log={}", esc(&dir.join(LOG_FILE))));
        let bin = find_binary()?;
        tracing::debug!(id, bin = %bin.display(), layers = lowers.len() + 1, "mounting");
        let out = Command::new(&bin)
            .arg("-o")
            .arg(opts.join(","))
            .arg(merged)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .ctx(|| format!("running {}", bin.display()))?;
        if !out.status.success() {
            return Err(Error::Mount {
                id: id.to_string(),
                reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Ok(pid)
    }

    /// Drop one reference; unmount at zero.
    pub fn put(&self, id: &str) -> Result<()> {
        let _guard = self.store.lock_layer(id)?;
        let Some(mut st) = self.read_state(id) else {
            tracing::warn!(id, "put of a layer that is not mounted");
            return Ok(());
        };
        if st.refs > 1 && self.live(&st) {
            st.refs -= 1;
            return self.write_state(id, &st);
        }
        self.stop(id, &st)?;
        self.clear_state(id);
        Ok(())
    }

    /// Unmount `st`'s mount point and wait for its server to go: it flushes the upper layer
    /// first (as an unmount of kernel overlayfs does), so that is on disk once `put` returns.
    fn stop(&self, id: &str, st: &MountState) -> Result<()> {
        let device = mountinfo::fuse_mount_device(&st.mountpoint);
        if fuse_mounted(&st.mountpoint) {
            unmount(&st.mountpoint).map_err(|e| Error::Mount {
                id: id.to_string(),
                reason: format!("unmounting {}: {e}", st.mountpoint.display()),
            })?;
        }
        // The kernel ends the connection (and the server) only when the view's last mount
        // goes. One in another mount namespace (a running container's root) or a lazy unmount
        // with open files keeps it serving for as long as they last: waiting is pointless.
        if device.is_some_and(|d| mountinfo::still_mounted_anywhere(&d)) && server_alive(st.pid) {
            tracing::info!(
                id,
                pid = st.pid,
                "unmounted here; the view is still in use elsewhere and its server stays until then"
            );
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while server_alive(st.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if server_alive(st.pid) {
            tracing::warn!(id, pid = st.pid, "server still running after unmount");
        }
        Ok(())
    }

    /// Detach the mounts whose server is gone and keep the live ones with their reference
    /// counts: a plugin restarted under a running engine adopts the mounts of its containers,
    /// whose `put` comes later.
    pub fn release_stale(&self) -> Result<()> {
        self.each_mount_state(|id, st| {
            match st {
                Some(st) if st.refs > 0 && self.live(&st) => {
                    tracing::info!(id, pid = st.pid, refs = st.refs, "keeping a live mount");
                }
                Some(st) => {
                    tracing::info!(id, pid = st.pid, "cleaning up a stale mount");
                    self.stop(id, &st)?;
                    self.clear_state(id);
                }
                None => self.clear_state(id),
            }
            Ok(())
        })
    }

    /// Unmount everything of this store.
    pub fn cleanup(&self) -> Result<()> {
        self.each_mount_state(|id, st| {
            if let Some(st) = st {
                self.stop(id, &st)?;
            }
            self.clear_state(id);
            Ok(())
        })
    }

    /// Run `f` on every layer that has mount state (`None`: unreadable), under the layer's
    /// lock; a failure is logged and the others still run; the first error is returned.
    fn each_mount_state(&self, f: impl Fn(&str, Option<MountState>) -> Result<()>) -> Result<()> {
        let mut first_err = None;
        for rec in self.store.list()? {
            if !self.state_path(&rec.id).exists() {
                continue;
            }
            let res = self
                .store
                .lock_layer(&rec.id)
                .and_then(|_guard| f(&rec.id, self.read_state(&rec.id)));
            if let Err(e) = res {
                tracing::warn!(id = rec.id, %e, "cleanup of a mount failed");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Whether `path` is a live FUSE mount.
    pub fn is_mounted(&self, path: &Path) -> bool {
        fuse_mounted(path) && std::fs::symlink_metadata(path).is_ok()
    }

    /// Where `id` is mounted now, if it is.
    pub fn mounted_at(&self, id: &str) -> Option<PathBuf> {
        let st = self.read_state(id)?;
        (st.refs > 0 && self.live(&st)).then_some(st.mountpoint)
    }

    /// Diagnostics for `status` (active mounts, passthrough, transports, ...): one
    /// `Mount ID` line per live mount with its mount point and request transport.
    pub fn status(&self) -> Vec<(String, String)> {
        let live: Vec<(String, MountState)> = self
            .store
            .list()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| {
                let st = self.read_state(&r.id)?;
                (st.refs > 0 && self.live(&st)).then_some((r.id, st))
            })
            .collect();
        let mut lines = vec![
            ("Active Mounts".into(), live.len().to_string()),
            ("FUSE Passthrough".into(), passthrough_status()),
            ("FUSE over io_uring".into(), uring_status()),
        ];
        for (id, st) in live {
            let at = st.mountpoint.display();
            let transport = transport_of(st.pid);
            lines.push((
                format!("Mount {id}"),
                format!("{at}, transport {transport}"),
            ));
        }
        lines
    }
}

const URING_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// Whether new mounts can be served over io_uring (the fuse module's switch).
pub fn uring_status() -> String {
    match std::fs::read_to_string(URING_PARAM) {
        Ok(v) if v.trim() == "Y" => "enabled (enable_uring=Y)".into(),
        Ok(_) => format!("disabled ({URING_PARAM} = N)"),
        Err(_) => "unavailable (kernel without it: Linux 6.14+)".into(),
    }
}

/// The request transport of the server `pid`, told by its ring queue threads: each queue of
/// the ring has one, and a server on `/dev/fuse` has none.
fn transport_of(pid: i32) -> String {
    match sys::thread_names(pid) {
        Ok(names) => {
            let queues = names
                .iter()
                .filter(|n| n.starts_with(ring::QUEUE_THREAD_PREFIX))
                .count();
            match queues {
                0 => "/dev/fuse".into(),
                1 => "io_uring (1 queue)".into(),
                n => format!("io_uring ({n} queues)"),
            }
        }
        Err(e) => format!("unknown ({e})"),
    }
}

/// Whether FUSE passthrough can be used for file reads, and why not.
pub fn passthrough_status() -> String {
    let kernel = sys::kernel_version();
    match (sys::is_root(), kernel) {
        (false, _) => "unavailable (needs root)".into(),
        (true, Some(v)) if v >= (6, 9) => "available".into(),
        (true, Some((a, b))) => format!("unavailable (kernel {a}.{b} < 6.9)"),
        (true, None) => "unknown (kernel version unreadable)".into(),
    }
}

/// Whether the server process is running (a zombie has exited).
fn server_alive(pid: i32) -> bool {
    sys::process_exists(pid) && !sys::process_is_zombie(pid)
}

/// Unmount a FUSE mount: plainly, lazily when busy or dead.
fn unmount(path: &Path) -> std::io::Result<()> {
    if sys::is_root() {
        match sys::umount2(path, 0) {
            Ok(()) => Ok(()),
            Err(_) => sys::umount2(path, libc::MNT_DETACH),
        }
    } else {
        let plain = Command::new("fusermount3")
            .arg("-u")
            .arg(path)
            .stderr(Stdio::null())
            .status();
        if matches!(plain, Ok(s) if s.success()) {
            return Ok(());
        }
        detach(path).map_err(|e| std::io::Error::other(e.to_string()))
    }
}

/// Lazily detach a (possibly dead) mount.
fn detach(path: &Path) -> Result<()> {
    if sys::is_root() {
        return sys::umount2(path, libc::MNT_DETACH)
            .ctx(|| format!("detaching {}", path.display()));
    }
    let st = Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(path)
        .status()
        .ctx(|| "running fusermount3")?;
    if st.success() {
        Ok(())
    } else {
        Err(Error::io(
            format!("fusermount3 -u -z {}", path.display()),
            std::io::Error::other(format!("exited with {st}")),
        ))
    }
}

/// Whether `/proc/self/mountinfo` lists a FUSE mount at `path` (live or dead).
pub fn fuse_mounted(path: &Path) -> bool {
    mountinfo::fuse_mount_device(path).is_some()
}

/// The `stratafs` binary to run as mount server: `$STRATAFS_BIN`, this executable if it is
/// `stratafs`, a `stratafs` beside it or one directory up (tests run from target/*/deps),
/// else `PATH`.
fn find_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("STRATAFS_BIN") {
        return Ok(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        if exe.file_name().is_some_and(|n| n == "stratafs") {
            return Ok(exe);
        }
        if let Some(dir) = exe.parent() {
            for cand in [dir.join("stratafs"), dir.join("../stratafs")] {
                if cand.is_file() {
                    return Ok(cand);
                }
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let c = d.join("stratafs");
            if c.is_file() {
                return Ok(c);
            }
        }
    }
    Err(Error::PrerequisitesNotSatisfied(
        "cannot find the stratafs binary to serve mounts (set STRATAFS_BIN)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_mounted() {
        let d = tempfile::tempdir().unwrap();
        assert!(!fuse_mounted(d.path()));
    }
}
