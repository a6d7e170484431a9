//! Layers on disk.
//!
//! ```text
//! <home>/                 (= <root>/<driver name>)
//!   store.lock            flock: held while the layer list changes (create, remove)
//!   layers/<id>/
//!     layer.json          the record: parent, kind, mount label, storage options
//!     diff/               the layer's own files and whiteout markers
//!     work/               scratch space on the same filesystem (copy-up staging)
//!     merged/             mount point of the merged view (made by `get`)
//!     lock                flock: held while the layer is mounted or unmounted
//!   tmp/                  staging for atomic create and for removal
//! ```
//!
//! A layer exists when `layers/<id>/layer.json` exists. Creation builds the whole layer in `tmp/`
//! and renames it into `layers/`, so a crash half-way leaves nothing that `exists` reports.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::layer::idmap::IdMappings;
use crate::sys::{self, FileLock};

pub mod durable;
pub mod opts;
pub use durable::{
    sync_dir, write_atomic, write_atomic_mode, write_json_atomic, write_json_atomic_mode,
};
pub use opts::StorageOpts;

const LAYERS: &str = "layers";
const TMP: &str = "tmp";
const RECORD: &str = "layer.json";
/// Longest id accepted; leaves room for suffixes within NAME_MAX.
const MAX_ID_LEN: usize = 200;

/// Whether a layer is a read-only parent or a container's writable layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayerKind {
    ReadOnly,
    ReadWrite,
}

/// One layer as listed by [`Driver::list`](crate::driver::Driver::list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    pub id: String,
    pub parent: Option<String>,
    pub kind: LayerKind,
    /// Where the layer's merged view is mounted now, if it is.
    pub mounted_at: Option<PathBuf>,
}

/// Options given when a layer is created.
#[derive(Debug, Clone, Default)]
pub struct CreateOpts {
    /// SELinux label for the mount (kept and reported, not interpreted).
    pub mount_label: String,
    /// Raw storage options (`size=50M`); drivers reject keys they do not know.
    pub storage_opt: BTreeMap<String, String>,
}

/// The small record kept beside each layer's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub kind: LayerKind,
    #[serde(default)]
    pub mount_label: String,
    #[serde(default)]
    pub storage_opt: StorageOpts,
    /// Seconds since the epoch.
    #[serde(default)]
    pub created: u64,
}

/// Refuse ids that are not a safe single path component.
pub fn validate_id(id: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidId {
            id: id.to_string(),
            reason,
        })
    };
    if id.is_empty() {
        return bad("empty");
    }
    if id == "." || id == ".." {
        return bad("not a name");
    }
    if id.len() > MAX_ID_LEN {
        return bad("longer than 200 bytes");
    }
    if id.contains('/') {
        return bad("contains '/'");
    }
    if id.contains('\0') {
        return bad("contains a NUL byte");
    }
    if id.chars().any(|c| c.is_control()) {
        return bad("contains a control character");
    }
    Ok(())
}

/// The on-disk store of one driver.
#[derive(Debug, Clone)]
pub struct Store {
    home: PathBuf,
}

impl Store {
    /// Open (creating if needed) the store at `home`, and drop staging left by a crash.
    pub fn open(home: &Path) -> Result<Store> {
        for d in [home.to_path_buf(), home.join(LAYERS), home.join(TMP)] {
            fs::create_dir_all(&d).ctx(|| format!("creating {}", d.display()))?;
        }
        let home = fs::canonicalize(home).ctx(|| format!("resolving {}", home.display()))?;
        let store = Store { home };
        {
            let _guard = store.lock_store()?;
            let tmp = store.home.join(TMP);
            for e in fs::read_dir(&tmp).ctx(|| format!("reading {}", tmp.display()))? {
                let path = e.ctx(|| format!("reading {}", tmp.display()))?.path();
                if let Err(err) = remove_tree(&path) {
                    tracing::warn!(path = %path.display(), %err, "could not drop leftover staging");
                }
            }
        }
        Ok(store)
    }

    /// The store's directory (`<root>/<driver name>`).
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// `layers/<id>`; the id must be valid.
    pub fn layer_dir(&self, id: &str) -> PathBuf {
        self.home.join(LAYERS).join(id)
    }

    /// The layer's own files.
    pub fn diff_dir(&self, id: &str) -> PathBuf {
        self.layer_dir(id).join("diff")
    }

    /// Scratch space beside `diff/` on the same filesystem.
    pub fn work_dir(&self, id: &str) -> PathBuf {
        self.layer_dir(id).join("work")
    }

    /// Where `get` mounts the merged view.
    pub fn merged_dir(&self, id: &str) -> PathBuf {
        self.layer_dir(id).join("merged")
    }

    /// Exclusive lock on the layer list (create/remove).
    pub fn lock_store(&self) -> Result<FileLock> {
        let p = self.home.join("store.lock");
        FileLock::exclusive(&p).ctx(|| format!("locking {}", p.display()))
    }

    /// Exclusive lock on one layer (mount/unmount/apply). The layer must exist.
    pub fn lock_layer(&self, id: &str) -> Result<FileLock> {
        validate_id(id)?;
        if !self.exists(id) {
            return Err(Error::LayerNotFound(id.to_string()));
        }
        let p = self.layer_dir(id).join("lock");
        FileLock::exclusive(&p).ctx(|| format!("locking {}", p.display()))
    }

    /// Whether layer `id` exists (an invalid id never does).
    pub fn exists(&self, id: &str) -> bool {
        validate_id(id).is_ok() && self.layer_dir(id).join(RECORD).is_file()
    }

    /// Create a new empty layer atomically. Its root is owned by the mapped container root.
    pub fn create(
        &self,
        id: &str,
        parent: Option<&str>,
        kind: LayerKind,
        opts: &CreateOpts,
        id_mappings: &IdMappings,
    ) -> Result<LayerRecord> {
        validate_id(id)?;
        if let Some(p) = parent {
            validate_id(p)?;
        }
        let storage_opt = StorageOpts::parse(&opts.storage_opt)?;
        let (root_uid, root_gid) = id_mappings.root_pair()?;
        let _guard = self.lock_store()?;
        if self.exists(id) {
            return Err(Error::LayerExists(id.to_string()));
        }
        if let Some(p) = parent {
            if !self.exists(p) {
                return Err(Error::ParentNotFound {
                    id: id.to_string(),
                    parent: p.to_string(),
                });
            }
        }
        let record = LayerRecord {
            id: id.to_string(),
            parent: parent.map(str::to_string),
            kind,
            mount_label: opts.mount_label.clone(),
            storage_opt,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let stage = self.staging_path(id);
        let built = (|| -> Result<()> {
            fs::create_dir(&stage).ctx(|| format!("creating {}", stage.display()))?;
            let diff = stage.join("diff");
            for d in [&diff, &stage.join("work")] {
                fs::create_dir(d).ctx(|| format!("creating {}", d.display()))?;
            }
            set_mode(&diff, 0o755)?;
            if (root_uid, root_gid) != sys::effective_ids() {
                std::os::unix::fs::chown(&diff, Some(root_uid), Some(root_gid))
                    .ctx(|| format!("giving {} to {root_uid}:{root_gid}", diff.display()))?;
            }
            write_record(&stage, &record)?;
            sync_dir(&stage)?;
            let dest = self.layer_dir(id);
            fs::rename(&stage, &dest)
                .ctx(|| format!("moving new layer into {}", dest.display()))?;
            sync_dir(&self.home.join(LAYERS))?;
            Ok(())
        })();
        if let Err(e) = built {
            let _ = remove_tree(&stage);
            return Err(e);
        }
        tracing::debug!(id, ?parent, ?kind, "created layer");
        Ok(record)
    }

    /// The record of layer `id`.
    pub fn record(&self, id: &str) -> Result<LayerRecord> {
        validate_id(id)?;
        let path = self.layer_dir(id).join(RECORD);
        let raw = match fs::read(&path) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::LayerNotFound(id.to_string()))
            }
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        serde_json::from_slice(&raw).map_err(|e| Error::CorruptLayer {
            id: id.to_string(),
            reason: format!("{}: {e}", path.display()),
        })
    }

    /// The layer and its ancestors, topmost (`id`) first. Fails on a missing parent or a cycle.
    pub fn chain(&self, id: &str) -> Result<Vec<LayerRecord>> {
        let mut out: Vec<LayerRecord> = Vec::new();
        let mut next = Some(id.to_string());
        while let Some(cur) = next {
            if out.iter().any(|r| r.id == cur) {
                return Err(Error::CorruptLayer {
                    id: id.to_string(),
                    reason: format!("parent chain loops at {cur}"),
                });
            }
            let rec = match self.record(&cur) {
                Err(Error::LayerNotFound(_)) if !out.is_empty() => {
                    return Err(Error::ParentNotFound {
                        id: out.last().map(|r| r.id.clone()).unwrap_or_default(),
                        parent: cur,
                    })
                }
                other => other?,
            };
            next = rec.parent.clone();
            out.push(rec);
        }
        Ok(out)
    }

    /// Every layer's record, sorted by id. Unreadable records are skipped with a warning.
    pub fn list(&self) -> Result<Vec<LayerRecord>> {
        let dir = self.home.join(LAYERS);
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).ctx(|| format!("reading {}", dir.display()))? {
            let e = e.ctx(|| format!("reading {}", dir.display()))?;
            let name = e.file_name();
            let Some(id) = name.to_str() else { continue };
            match self.record(id) {
                Ok(r) => out.push(r),
                Err(Error::LayerNotFound(_)) => {}
                Err(err) => tracing::warn!(id, %err, "skipping unreadable layer"),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Ids of the layers whose parent is `id`.
    pub fn children(&self, id: &str) -> Result<Vec<String>> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|r| r.parent.as_deref() == Some(id))
            .map(|r| r.id)
            .collect())
    }

    /// Delete a layer that has no children. The caller checks it is not mounted (under the
    /// layer lock). The layer disappears atomically, then its files are deleted.
    pub fn remove(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let doomed = {
            let _guard = self.lock_store()?;
            if !self.exists(id) {
                return Err(Error::LayerNotFound(id.to_string()));
            }
            let children = self.children(id)?;
            if !children.is_empty() {
                return Err(Error::HasChildren {
                    id: id.to_string(),
                    children,
                });
            }
            let doomed = self.staging_path(id);
            let src = self.layer_dir(id);
            fs::rename(&src, &doomed).ctx(|| format!("removing {}", src.display()))?;
            doomed
        };
        remove_tree(&doomed).ctx(|| format!("deleting {}", doomed.display()))?;
        tracing::debug!(id, "removed layer");
        Ok(())
    }

    /// Update the record of an existing layer (e.g. a new mount label).
    pub fn update_record(&self, record: &LayerRecord) -> Result<()> {
        if !self.exists(&record.id) {
            return Err(Error::LayerNotFound(record.id.clone()));
        }
        write_record(&self.layer_dir(&record.id), record)
    }

    /// The `status` lines every driver built on a store reports: where, on what, how many layers.
    pub fn status_lines(&self) -> Vec<(String, String)> {
        vec![
            ("Root Dir".into(), self.home.display().to_string()),
            ("Backing Filesystem".into(), sys::fs_type_name(&self.home)),
            (
                "Layers".into(),
                self.list()
                    .map(|l| l.len().to_string())
                    .unwrap_or_else(|e| e.to_string()),
            ),
        ]
    }

    /// Every layer as the driver lists it, with where each is mounted (if anywhere).
    pub fn layer_infos(
        &self,
        mounted_at: impl Fn(&str) -> Option<PathBuf>,
    ) -> Result<Vec<LayerInfo>> {
        Ok(self
            .list()?
            .into_iter()
            .map(|r| LayerInfo {
                mounted_at: mounted_at(&r.id),
                id: r.id,
                parent: r.parent,
                kind: r.kind,
            })
            .collect())
    }

    /// Summary facts about one layer for `get_metadata`.
    pub fn metadata(&self, id: &str) -> Result<BTreeMap<String, String>> {
        let chain = self.chain(id)?;
        let mut m = BTreeMap::new();
        m.insert("LayerDir".into(), self.layer_dir(id).display().to_string());
        m.insert("UpperDir".into(), self.diff_dir(id).display().to_string());
        m.insert("WorkDir".into(), self.work_dir(id).display().to_string());
        m.insert(
            "MergedDir".into(),
            self.merged_dir(id).display().to_string(),
        );
        let lowers: Vec<String> = chain[1..]
            .iter()
            .map(|r| self.diff_dir(&r.id).display().to_string())
            .collect();
        if !lowers.is_empty() {
            m.insert("LowerDir".into(), lowers.join(":"));
        }
        m.insert("Kind".into(), format!("{:?}", chain[0].kind));
        m.insert("Parents".into(), parent_ids(&chain));
        if let Some(size) = chain[0].storage_opt.size {
            m.insert("Quota".into(), size.to_string());
        }
        Ok(m)
    }

    fn staging_path(&self, id: &str) -> PathBuf {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        self.home
            .join(TMP)
            .join(format!("{id}.{}.{nanos}", std::process::id()))
    }
}

/// The ids of a layer's parents, nearest first and comma-separated, from its [`Store::chain`]
/// (the `Parents` fact of `get_metadata`).
pub fn parent_ids(chain: &[LayerRecord]) -> String {
    let parents = chain.get(1..).unwrap_or_default();
    parents
        .iter()
        .map(|r| r.id.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn write_record(layer_dir: &Path, record: &LayerRecord) -> Result<()> {
    write_json_atomic(&layer_dir.join(RECORD), record)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .ctx(|| format!("setting mode of {}", path.display()))
}

/// Delete a tree, making directories writable first so that an unprivileged owner can delete
/// read-only directories (as unpacked layers often contain).
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            make_dirs_writable(path);
            fs::remove_dir_all(path)
        }
        Err(e) => Err(e),
    }
}

fn make_dirs_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
    if let Ok(rd) = fs::read_dir(path) {
        for e in rd.flatten() {
            make_dirs_writable(&e.path());
        }
    }
}

#[cfg(test)]
mod tests;
