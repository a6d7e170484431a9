//! The `vfs` driver: each layer a full copy of its parent, as Docker's vfs. The fallback where
//! FUSE is missing and the oracle tests compare stratafs against. `get` returns the layer's
//! directory itself; reference counts live in memory only.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::archive::{self, ApplyMode};
use crate::driver::{
    Capabilities, Change, CreateOpts, Driver, DriverConfig, FileGetter, IdMappings,
};
use crate::error::{Error, Result};
use crate::layer::copy;
use crate::store::{self, LayerKind, Store};

/// The driver's registered name.
pub const NAME: &str = "vfs";

/// The copying driver.
#[derive(Debug)]
pub struct VfsDriver {
    store: Store,
    id_mappings: IdMappings,
    refs: Mutex<HashMap<String, usize>>,
}

impl VfsDriver {
    /// Open the driver's store under `<root>/vfs`.
    pub fn new(cfg: &DriverConfig) -> Result<Self> {
        cfg.refuse_options(NAME)?;
        Ok(VfsDriver {
            store: Store::open(&cfg.root.join(NAME))?,
            id_mappings: cfg.id_mappings.clone(),
            refs: Mutex::new(HashMap::new()),
        })
    }

    /// The on-disk store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn make(
        &self,
        id: &str,
        parent: Option<&str>,
        kind: LayerKind,
        opts: &CreateOpts,
    ) -> Result<()> {
        if let Some((k, v)) = opts.storage_opt.iter().next() {
            return Err(Error::InvalidStorageOpt {
                key: k.clone(),
                value: v.clone(),
                reason: "the vfs driver does not support storage options (no quota)".into(),
            });
        }
        self.store
            .create(id, parent, kind, opts, &self.id_mappings)?;
        if let Some(p) = parent {
            let copied = {
                let _guard = self.store.lock_layer(id)?;
                copy::copy_tree_contents(&self.store.diff_dir(p), &self.store.diff_dir(id))
            };
            if let Err(e) = copied {
                let _ = self.store.remove(id);
                return Err(e);
            }
        }
        Ok(())
    }

    fn tree(&self, id: Option<&str>) -> Result<Option<PathBuf>> {
        match id {
            Some(p) => {
                if !self.store.exists(p) {
                    return Err(Error::LayerNotFound(p.to_string()));
                }
                Ok(Some(self.store.diff_dir(p)))
            }
            None => Ok(None),
        }
    }

    fn compare(&self, id: &str, parent: Option<&str>) -> Result<(PathBuf, Vec<Change>)> {
        let new = self.tree(Some(id))?.unwrap_or_default();
        let old = self.tree(parent)?;
        let changes = archive::compare_trees(old.as_deref(), &new)?;
        Ok((new, changes))
    }
}

impl Driver for VfsDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn create(&self, id: &str, parent: Option<&str>, opts: &CreateOpts) -> Result<()> {
        self.make(id, parent, LayerKind::ReadOnly, opts)
    }

    fn create_read_write(&self, id: &str, parent: Option<&str>, opts: &CreateOpts) -> Result<()> {
        self.make(id, parent, LayerKind::ReadWrite, opts)
    }

    fn remove(&self, id: &str) -> Result<()> {
        let _guard = self.store.lock_layer(id)?;
        if self.refs.lock().get(id).copied().unwrap_or(0) > 0 {
            return Err(Error::Mounted {
                id: id.to_string(),
                path: self.store.diff_dir(id),
            });
        }
        self.store.remove(id)
    }

    fn get(&self, id: &str, _mount_label: &str) -> Result<PathBuf> {
        if !self.store.exists(id) {
            return Err(Error::LayerNotFound(id.to_string()));
        }
        *self.refs.lock().entry(id.to_string()).or_insert(0) += 1;
        Ok(self.store.diff_dir(id))
    }

    fn put(&self, id: &str) -> Result<()> {
        let mut refs = self.refs.lock();
        match refs.get_mut(id) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                refs.remove(id);
            }
            None => tracing::warn!(id, "put of a layer that is not held"),
        }
        Ok(())
    }

    fn exists(&self, id: &str) -> bool {
        self.store.exists(id)
    }

    fn status(&self) -> Vec<(String, String)> {
        let mut s = self.store.status_lines();
        s.push(("Held Layers".into(), self.refs.lock().len().to_string()));
        s
    }

    fn get_metadata(&self, id: &str) -> Result<BTreeMap<String, String>> {
        let mut m = BTreeMap::new();
        let chain = self.store.chain(id)?;
        m.insert("Dir".into(), self.store.diff_dir(id).display().to_string());
        m.insert("Parents".into(), store::parent_ids(&chain));
        Ok(m)
    }

    fn cleanup(&self) -> Result<()> {
        self.refs.lock().clear();
        Ok(())
    }

    fn diff(&self, id: &str, parent: Option<&str>, out: &mut dyn Write) -> Result<()> {
        let (new, changes) = self.compare(id, parent)?;
        archive::export_changes(&new, &changes, out)
    }

    fn changes(&self, id: &str, parent: Option<&str>) -> Result<Vec<Change>> {
        Ok(self.compare(id, parent)?.1)
    }

    fn apply_diff(&self, id: &str, parent: Option<&str>, diff: &mut dyn Read) -> Result<u64> {
        let own = self.store.record(id)?.parent;
        if own.as_deref() != parent {
            tracing::debug!(
                id,
                ?parent,
                ?own,
                "apply_diff parent differs from the layer's own; applying on the layer's copy"
            );
        }
        let restore = self.tree(own.as_deref())?;
        {
            let _guard = self.store.lock_layer(id)?;
            archive::apply_to_dir(
                &self.store.diff_dir(id),
                diff,
                &self.id_mappings,
                ApplyMode::Merged,
                restore.as_deref(),
            )?;
        }
        self.diff_size(id, own.as_deref())
    }

    fn diff_size(&self, id: &str, parent: Option<&str>) -> Result<u64> {
        let (new, changes) = self.compare(id, parent)?;
        archive::changes_size(&new, &changes)
    }

    fn diff_getter(&self, id: &str) -> Result<Box<dyn FileGetter>> {
        archive::layer_getter(&self.store, id)
    }

    fn is_mounted(&self, path: &Path) -> bool {
        self.refs
            .lock()
            .keys()
            .any(|id| self.store.diff_dir(id) == path)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            deterministic_diffs: true,
            reproduces_exact_diffs: false,
        }
    }

    fn list(&self) -> Result<Vec<crate::driver::LayerInfo>> {
        self.store.layer_infos(|_| None)
    }

    fn parent(&self, id: &str) -> Result<Option<String>> {
        Ok(self.store.record(id)?.parent)
    }
}
