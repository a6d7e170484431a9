//! Snapshot semantics as containerd defines them, on top of [`Store`]: synchronous, so that the
//! gRPC layer can run each call on a blocking thread.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use parking_lot::Mutex;

use super::api::{Info, Mount, Usage};
use super::meta::{Db, Kind, SnapshotRecord};
use super::SnapshotError;
use crate::driver::{CreateOpts, IdMappings};
use crate::error::{Error, IoContext};
use crate::store::{LayerKind, Store};
use crate::sys::FileLock;

type Result<T, E = SnapshotError> = std::result::Result<T, E>;

/// What an update asks for: the snapshot's name and its new labels (the only mutable field).
#[derive(Debug, Clone, Default)]
pub struct Update {
    pub name: String,
    pub labels: HashMap<String, String>,
}

/// The record of snapshot `key`, or NotFound.
fn snapshot<'a>(db: &'a Db, key: &str) -> Result<&'a SnapshotRecord> {
    db.snapshots
        .get(key)
        .ok_or_else(|| SnapshotError::NotFound(key.to_string()))
}

/// The mount type containerd hands to `mount.fuse3`, which runs `stratafs overlay TARGET -o ...`.
pub const FUSE_MOUNT_TYPE: &str = "fuse3.stratafs";
/// How containerd's unpacker names the active snapshot a layer is applied into
/// (`extract-UNIQUE CHAINID`, by `ctr images import`, pulls and the CRI alike).
const UNPACK_KEY_PREFIX: &str = "extract-";
/// The label prefix containerd uses for a label update of one key (`labels.KEY`).
const LABELS_FIELD: &str = "labels";
/// Longest `lowerdir=` option passed inline. The option travels as one argument through
/// containerd and mount.fuse3 to `stratafs overlay` (never into the kernel's one-page mount data),
/// so the hard limit is Linux's 128 KiB per argument (~2,800 layers at this root's path length);
/// past this, the list goes into a file named by `lowerdir_file=` instead.
const LOWERDIR_INLINE_MAX: usize = 64 * 1024;
/// The file beside a snapshot's `diff/` that lists its lower directories when they are too many.
const LOWERDIR_FILE: &str = "lowerdirs";

/// One snapshotter's state: the layer store and the key table, under `root`.
pub struct Core {
    root: PathBuf,
    store: Store,
    db: Mutex<Db>,
    /// Held for the snapshotter's lifetime: one server per root.
    _root_lock: FileLock,
}

impl Core {
    /// Open (creating if needed) the snapshotter state under `root`. Fails if another snapshotter
    /// already serves this root.
    pub fn open(root: &Path) -> Result<Core> {
        // Root-only when made here: it holds containerd's snapshot table.
        crate::socket::create_private_dir(root)?;
        let root = fs::canonicalize(root).ctx(|| format!("resolving {}", root.display()))?;
        // Layer paths end up inside comma-separated mount options and colon-separated lowerdir
        // lists, where neither character can be escaped reliably through mount.fuse3.
        let shown = root.display().to_string();
        if shown.contains(',') || shown.contains(':') {
            return Err(SnapshotError::InvalidArgument(format!(
                "snapshotter root {shown} must not contain ',' or ':'"
            )));
        }
        let lock_path = root.join("snapshotter.lock");
        let root_lock = FileLock::try_exclusive(&lock_path)
            .ctx(|| format!("locking {}", lock_path.display()))?
            .ok_or_else(|| {
                SnapshotError::FailedPrecondition(format!(
                    "another snapshotter is already using {shown}"
                ))
            })?;
        let store = Store::open(&root)?;
        let mut db = Db::load(&root)?;
        // A crash between creating a layer and saving the table leaves a layer whose id the
        // saved counter hands out again: start past every id on disk.
        let highest = store
            .list()?
            .iter()
            .filter_map(|r| r.id.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        db.next_id = db.next_id.max(highest);
        for (key, rec) in &db.snapshots {
            if !store.exists(&rec.id) {
                tracing::warn!(key, id = rec.id, "snapshot's layer directory is missing");
            }
        }
        tracing::info!(root = %root.display(), snapshots = db.snapshots.len(), "snapshotter state loaded");
        Ok(Core {
            root,
            store,
            db: Mutex::new(db),
            _root_lock: root_lock,
        })
    }

    /// Prepare (`kind` Active) or View (`kind` View) a new snapshot `key` on top of committed
    /// `parent` ("" = none), returning its mounts.
    pub fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        if key.is_empty() {
            return Err(SnapshotError::InvalidArgument("empty snapshot key".into()));
        }
        let mut db = self.db.lock();
        if db.snapshots.contains_key(key) {
            return Err(SnapshotError::AlreadyExists(key.to_string()));
        }
        let parent = (!parent.is_empty()).then(|| parent.to_string());
        let parent_id = match &parent {
            None => None,
            Some(p) => {
                let rec = snapshot(&db, p)?;
                if rec.kind != Kind::Committed {
                    return Err(SnapshotError::InvalidArgument(format!(
                        "parent {p:?} is not a committed snapshot"
                    )));
                }
                Some(rec.id.clone())
            }
        };
        let id = db.allocate_id();
        let layer_kind = match kind {
            Kind::Committed => LayerKind::ReadOnly,
            Kind::Active | Kind::View => LayerKind::ReadWrite,
        };
        self.store.create(
            &id,
            parent_id.as_deref(),
            layer_kind,
            &CreateOpts::default(),
            &IdMappings::default(),
        )?;
        let now = SystemTime::now();
        db.snapshots.insert(
            key.to_string(),
            SnapshotRecord {
                id: id.clone(),
                kind,
                parent,
                labels,
                created: now,
                updated: now,
            },
        );
        if let Err(e) = db.save(&self.root) {
            // Keep memory and disk in step; the layer becomes an orphan for Cleanup otherwise.
            db.snapshots.remove(key);
            let _ = self.store.remove(&id);
            return Err(e.into());
        }
        tracing::info!(key, id, ?kind, "created snapshot");
        self.mounts_locked(&db, key)
    }

    /// The mounts of an active snapshot or view.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let db = self.db.lock();
        self.mounts_locked(&db, key)
    }

    fn mounts_locked(&self, db: &Db, key: &str) -> Result<Vec<Mount>> {
        let top = snapshot(db, key)?;
        if top.kind == Kind::Committed {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key:?} is committed, not active: it has no mounts"
            )));
        }
        let chain = db.chain(key)?;
        let lowers: Vec<String> = chain[1..]
            .iter()
            .map(|(_, r)| self.store.diff_dir(&r.id).display().to_string())
            .collect();
        let own = self.store.diff_dir(&top.id).display().to_string();
        let lower_option = || {
            let file = self.store.layer_dir(&top.id).join(LOWERDIR_FILE);
            lowerdir_option(&lowers, &file, LOWERDIR_INLINE_MAX)
        };
        Ok(vec![match (top.kind, lowers.len()) {
            (Kind::Active, 0) => bind(own, "rw"),
            (Kind::View, 0) => bind(own, "ro"),
            // A view of one layer is that layer, read-only: no FUSE server needed.
            (Kind::View, 1) => bind(lowers[0].clone(), "ro"),
            (Kind::View, _) => layered(FUSE_MOUNT_TYPE, vec![lower_option()?]),
            // containerd unpacks each image layer into an `extract-` snapshot. Handed an
            // `overlay` mount, its diff applier writes the layer straight into `upperdir`, as for
            // its own overlayfs snapshotter (whiteouts as 0/0 devices, opaque directories as
            // `trusted.overlay.opaque`, both of which stratafs reads), instead of through a FUSE
            // server started for the one layer. The lower list is inline: containerd reads it
            // (for the layer's parents) but mounts nothing.
            (Kind::Active, _) if is_unpack_key(key) => layered(
                "overlay",
                vec![
                    format!("lowerdir={}", lowers.join(":")),
                    format!("upperdir={own}"),
                    format!("workdir={}", self.store.work_dir(&top.id).display()),
                ],
            ),
            _ => layered(
                FUSE_MOUNT_TYPE,
                vec![
                    lower_option()?,
                    format!("upperdir={own}"),
                    format!("workdir={}", self.store.work_dir(&top.id).display()),
                    // The mount server runs detached under containerd: say where it logs.
                    format!(
                        "log={}",
                        self.store.layer_dir(&top.id).join("mount.log").display()
                    ),
                ],
            ),
        }])
    }

    /// Turn active snapshot `key` into committed snapshot `name` (same layer directory).
    pub fn commit(&self, name: &str, key: &str, labels: HashMap<String, String>) -> Result<()> {
        if name.is_empty() {
            return Err(SnapshotError::InvalidArgument("empty snapshot name".into()));
        }
        let mut db = self.db.lock();
        let rec = snapshot(&db, key)?.clone();
        if rec.kind != Kind::Active {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key:?} is not active"
            )));
        }
        if db.snapshots.contains_key(name) {
            return Err(SnapshotError::AlreadyExists(name.to_string()));
        }
        let mut layer = self.store.record(&rec.id)?;
        layer.kind = LayerKind::ReadOnly;
        self.store.update_record(&layer)?;
        let now = SystemTime::now();
        let committed = SnapshotRecord {
            kind: Kind::Committed,
            labels,
            created: now,
            updated: now,
            ..rec.clone()
        };
        db.snapshots.remove(key);
        db.snapshots.insert(name.to_string(), committed);
        if let Err(e) = db.save(&self.root) {
            db.snapshots.remove(name);
            db.snapshots.insert(key.to_string(), rec);
            return Err(e.into());
        }
        tracing::info!(key, name, "committed snapshot");
        Ok(())
    }

    /// Remove a snapshot that has no children, and its layer directory.
    pub fn remove(&self, key: &str) -> Result<()> {
        let id = {
            let mut db = self.db.lock();
            if !db.snapshots.contains_key(key) {
                return Err(SnapshotError::NotFound(key.to_string()));
            }
            let children = db.children(key);
            if !children.is_empty() {
                return Err(SnapshotError::FailedPrecondition(format!(
                    "cannot remove snapshot {key:?}: it has children {}",
                    children.join(", ")
                )));
            }
            let Some(rec) = db.snapshots.remove(key) else {
                return Err(SnapshotError::NotFound(key.to_string()));
            };
            if let Err(e) = db.save(&self.root) {
                db.snapshots.insert(key.to_string(), rec);
                return Err(e.into());
            }
            rec.id
        };
        // The key is gone; deleting the files may take a while and needs no table lock. If it
        // fails, Cleanup collects the orphan later.
        match self.store.remove(&id) {
            Ok(()) | Err(Error::LayerNotFound(_)) => {}
            Err(err) => tracing::warn!(key, id, %err, "removing the snapshot's layer failed"),
        }
        tracing::info!(key, id, "removed snapshot");
        Ok(())
    }

    /// Info of one snapshot.
    pub fn stat(&self, key: &str) -> Result<Info> {
        let db = self.db.lock();
        let rec = snapshot(&db, key)?;
        Ok(info(key, rec))
    }

    /// Update the mutable fields (labels) of a snapshot: all of them when `fieldpaths` is empty,
    /// else `labels` (all labels) and `labels.KEY` (one label; absent or empty deletes it).
    pub fn update(&self, new: Update, fieldpaths: Option<Vec<String>>) -> Result<Info> {
        let mut db = self.db.lock();
        let rec = snapshot(&db, &new.name)?;
        let mut updated = rec.clone();
        match fieldpaths.filter(|p| !p.is_empty()) {
            None => updated.labels = new.labels.clone(),
            Some(paths) => {
                for path in paths {
                    if path == LABELS_FIELD {
                        updated.labels = new.labels.clone();
                    } else if let Some(label) = path
                        .strip_prefix(LABELS_FIELD)
                        .and_then(|p| p.strip_prefix('.'))
                    {
                        match new.labels.get(label).filter(|v| !v.is_empty()) {
                            Some(v) => updated.labels.insert(label.to_string(), v.clone()),
                            None => updated.labels.remove(label),
                        };
                    } else {
                        return Err(SnapshotError::InvalidArgument(format!(
                            "cannot update field {path:?} of snapshot {:?}",
                            new.name
                        )));
                    }
                }
            }
        }
        updated.updated = SystemTime::now();
        let old = db.snapshots.insert(new.name.clone(), updated.clone());
        if let Err(e) = db.save(&self.root) {
            if let Some(old) = old {
                db.snapshots.insert(new.name.clone(), old);
            }
            return Err(e.into());
        }
        Ok(info(&new.name, &updated))
    }

    /// Size and inodes of the snapshot's own layer directory (not its parents').
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let dir = {
            let db = self.db.lock();
            let rec = snapshot(&db, key)?;
            self.store.diff_dir(&rec.id)
        };
        Ok(disk_usage(&dir)?)
    }

    /// Every snapshot.
    pub fn list(&self) -> Vec<Info> {
        let db = self.db.lock();
        db.snapshots.iter().map(|(k, r)| info(k, r)).collect()
    }

    /// Delete layer directories that no snapshot refers to (left by a crash or a failed removal).
    /// Returns the ids removed.
    pub fn cleanup(&self) -> Result<Vec<String>> {
        let db = self.db.lock();
        let used: HashSet<&str> = db.snapshots.values().map(|r| r.id.as_str()).collect();
        let mut orphans: Vec<String> = self
            .store
            .list()?
            .into_iter()
            .map(|r| r.id)
            .filter(|id| !used.contains(id.as_str()))
            .collect();
        let mut removed = Vec::new();
        // Orphans may be parents of orphans: remove leaves first, until nothing more goes.
        loop {
            let before = orphans.len();
            orphans.retain(|id| match self.store.remove(id) {
                Ok(()) | Err(Error::LayerNotFound(_)) => {
                    removed.push(id.clone());
                    false
                }
                Err(Error::HasChildren { .. }) => true,
                Err(err) => {
                    tracing::warn!(id, %err, "could not remove orphaned layer");
                    false
                }
            });
            if orphans.is_empty() || orphans.len() == before {
                break;
            }
        }
        if !orphans.is_empty() {
            tracing::warn!(?orphans, "orphaned layers still have children in use");
        }
        tracing::info!(?removed, "cleanup");
        Ok(removed)
    }
}

/// `lowerdir=A:B:...`, or, when that is longer than `max`, `lowerdir_file=FILE` with the list
/// written to `file` (one directory per line, topmost first; rewritten atomically, since a
/// snapshot's parents never change the content is always the same).
fn lowerdir_option(lowers: &[String], file: &Path, max: usize) -> crate::error::Result<String> {
    let inline = format!("lowerdir={}", lowers.join(":"));
    if inline.len() <= max {
        return Ok(inline);
    }
    tracing::debug!(layers = lowers.len(), file = %file.display(), "lowerdir list goes to a file");
    let tmp = file.with_extension("tmp");
    let mut body = lowers.join("\n");
    body.push('\n');
    fs::write(&tmp, body).ctx(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, file).ctx(|| format!("writing {}", file.display()))?;
    Ok(format!("lowerdir_file={}", file.display()))
}

/// Whether `key` is one containerd unpacks a layer into: its own part (after the proxy's
/// `namespace/id/`) starts with containerd's unpack prefix, `extract-`.
fn is_unpack_key(key: &str) -> bool {
    key.rsplit('/')
        .next()
        .unwrap_or(key)
        .starts_with(UNPACK_KEY_PREFIX)
}

fn bind(source: String, access: &str) -> Mount {
    Mount {
        r#type: "bind".into(),
        source,
        target: String::new(),
        options: vec![access.into(), "rbind".into()],
    }
}

/// A layered mount of type `fs_type` (`fuse3.stratafs`, or `overlay` for unpacking) with
/// overlay-style options.
fn layered(fs_type: &str, options: Vec<String>) -> Mount {
    Mount {
        r#type: fs_type.into(),
        source: "overlay".into(),
        target: String::new(),
        options,
    }
}

fn info(key: &str, rec: &SnapshotRecord) -> Info {
    Info {
        kind: rec.kind,
        name: key.to_string(),
        parent: rec.parent.clone().unwrap_or_default(),
        labels: rec.labels.clone(),
        created_at: rec.created,
        updated_at: rec.updated,
    }
}

/// Allocated bytes and inodes under `dir` (itself included), a hard-linked inode counted once,
/// as containerd's own snapshotters count them.
fn disk_usage(dir: &Path) -> crate::error::Result<Usage> {
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).ctx(|| format!("measuring {}", path.display()))?;
        if seen.insert((meta.dev(), meta.ino())) {
            usage.inodes += 1;
            usage.size += (meta.blocks() * 512) as i64;
        }
        if meta.is_dir() {
            for e in fs::read_dir(&path).ctx(|| format!("reading {}", path.display()))? {
                stack.push(e.ctx(|| format!("reading {}", path.display()))?.path());
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_past_layers_left_by_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (opts, maps) = (CreateOpts::default(), IdMappings::default());
        store
            .create("7", None, LayerKind::ReadWrite, &opts, &maps)
            .unwrap();
        let core = Core::open(dir.path()).unwrap();
        let m = core.create(Kind::Active, "k", "", HashMap::new()).unwrap();
        assert_eq!(m[0].source, store.diff_dir("8").display().to_string());
        assert_eq!(core.cleanup().unwrap(), ["7"]);
    }

    #[test]
    fn long_lowerdir_lists_go_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(LOWERDIR_FILE);
        let lowers: Vec<String> = (0..5).map(|i| format!("/s/layers/{i}/diff")).collect();
        assert_eq!(
            lowerdir_option(&lowers[..2], &file, 50).unwrap(),
            "lowerdir=/s/layers/0/diff:/s/layers/1/diff"
        );
        assert!(!file.exists());
        let opt = lowerdir_option(&lowers, &file, 50).unwrap();
        assert_eq!(opt, format!("lowerdir_file={}", file.display()));
        let listed = fs::read_to_string(&file).unwrap();
        assert_eq!(listed.lines().collect::<Vec<_>>(), lowers);
    }
}
