//! The `stratafs` driver: layers as plain directories plus whiteout markers ([`Store`]), a FUSE
//! merged view for `get` ([`MountManager`]), archives walking only a layer's own directory.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::archive;
use crate::driver::{
    Capabilities, Change, CreateOpts, Driver, DriverConfig, FileGetter, IdMappings, LayerInfo,
};
use crate::error::{Error, Result};
use crate::store::{LayerKind, Store};
use crate::union::mount::MountManager;

/// The driver's registered name.
pub const NAME: &str = "stratafs";

/// The FUSE layered driver.
#[derive(Debug)]
pub struct StrataDriver {
    store: Store,
    mounts: MountManager,
    id_mappings: IdMappings,
}

impl StrataDriver {
    /// Open the driver's store under `<root>/stratafs`. Fails with "prerequisites not satisfied"
    /// where `/dev/fuse` is missing.
    pub fn new(cfg: &DriverConfig) -> Result<Self> {
        cfg.refuse_options(NAME)?;
        if !Path::new("/dev/fuse").exists() {
            return Err(Error::PrerequisitesNotSatisfied(
                "/dev/fuse is missing (load the fuse module)".into(),
            ));
        }
        let store = Store::open(&cfg.root.join(NAME))?;
        let mounts = MountManager::new(store.clone(), cfg.id_mappings.clone());
        Ok(StrataDriver {
            store,
            mounts,
            id_mappings: cfg.id_mappings.clone(),
        })
    }

    /// The on-disk store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether `parent` is the layer's own parent (the fast, one-directory case).
    fn is_own_parent(&self, id: &str, parent: Option<&str>) -> Result<bool> {
        Ok(self.store.record(id)?.parent.as_deref() == parent)
    }

    /// Run `f` with the merged trees of `parent` (if any) and `id` mounted.
    fn with_merged_trees<T>(
        &self,
        id: &str,
        parent: Option<&str>,
        f: impl FnOnce(Option<&Path>, &Path) -> Result<T>,
    ) -> Result<T> {
        let new = self.get(id, "")?;
        let result = (|| {
            let old = match parent {
                Some(p) => Some(self.get(p, "")?),
                None => None,
            };
            let r = f(old.as_deref(), &new);
            if let Some(p) = parent {
                self.put(p)?;
            }
            r
        })();
        self.put(id)?;
        result
    }
}

impl Driver for StrataDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn create(&self, id: &str, parent: Option<&str>, opts: &CreateOpts) -> Result<()> {
        self.store
            .create(id, parent, LayerKind::ReadOnly, opts, &self.id_mappings)
            .map(drop)
    }

    fn create_read_write(&self, id: &str, parent: Option<&str>, opts: &CreateOpts) -> Result<()> {
        self.store
            .create(id, parent, LayerKind::ReadWrite, opts, &self.id_mappings)
            .map(drop)
    }

    fn remove(&self, id: &str) -> Result<()> {
        let _guard = self.store.lock_layer(id)?;
        if let Some(path) = self.mounts.mounted_at(id) {
            return Err(Error::Mounted {
                id: id.to_string(),
                path,
            });
        }
        self.store.remove(id)
    }

    fn get(&self, id: &str, mount_label: &str) -> Result<PathBuf> {
        self.mounts.get(id, mount_label)
    }

    fn put(&self, id: &str) -> Result<()> {
        self.mounts.put(id)
    }

    fn exists(&self, id: &str) -> bool {
        self.store.exists(id)
    }

    fn status(&self) -> Vec<(String, String)> {
        let mut s = self.store.status_lines();
        s.push((
            "Whiteout Format".to_string(),
            ".wh. files (reads char 0/0 and overlay xattrs too)".to_string(),
        ));
        s.extend(self.mounts.status());
        s
    }

    fn get_metadata(&self, id: &str) -> Result<BTreeMap<String, String>> {
        self.store.metadata(id)
    }

    fn cleanup(&self) -> Result<()> {
        self.mounts.cleanup()
    }

    fn release_stale(&self) -> Result<()> {
        self.mounts.release_stale()
    }

    fn diff(&self, id: &str, parent: Option<&str>, out: &mut dyn Write) -> Result<()> {
        if self.is_own_parent(id, parent)? {
            return archive::export_layer(&self.store, id, out, &self.id_mappings);
        }
        self.with_merged_trees(id, parent, |old, new| {
            let changes = archive::compare_trees(old, new)?;
            archive::export_changes(new, &changes, out)
        })
    }

    fn changes(&self, id: &str, parent: Option<&str>) -> Result<Vec<Change>> {
        if self.is_own_parent(id, parent)? {
            return archive::layer_changes(&self.store, id);
        }
        self.with_merged_trees(id, parent, archive::compare_trees)
    }

    fn apply_diff(&self, id: &str, _parent: Option<&str>, diff: &mut dyn Read) -> Result<u64> {
        let _guard = self.store.lock_layer(id)?;
        archive::apply_layer(&self.store, id, diff, &self.id_mappings)
    }

    fn diff_size(&self, id: &str, parent: Option<&str>) -> Result<u64> {
        if self.is_own_parent(id, parent)? {
            return archive::layer_diff_size(&self.store, id);
        }
        self.with_merged_trees(id, parent, |old, new| {
            let changes = archive::compare_trees(old, new)?;
            archive::changes_size(new, &changes)
        })
    }

    fn diff_getter(&self, id: &str) -> Result<Box<dyn FileGetter>> {
        archive::layer_getter(&self.store, id)
    }

    fn is_mounted(&self, path: &Path) -> bool {
        self.mounts.is_mounted(path)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            deterministic_diffs: true,
            reproduces_exact_diffs: false,
        }
    }

    fn list(&self) -> Result<Vec<LayerInfo>> {
        self.store.layer_infos(|id| self.mounts.mounted_at(id))
    }

    fn parent(&self, id: &str) -> Result<Option<String>> {
        Ok(self.store.record(id)?.parent)
    }
}
