//! The graph driver contract (Docker's `daemon/graphdriver`), as a Rust trait.
//!
//! Semantics follow `graphdriver.md`: layers have ids and optional parents; `get`/`put` are
//! reference counted mounts of the merged view; `diff`/`changes`/`diff_size` compare a layer with a
//! parent, walking only the layer's own directory when the parent is its own.

pub mod registry;
pub mod strata;
pub mod vfs;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use registry::{default_registry, Registry};

// The plain types of the contract live with the lower module that owns them (data flows down:
// store, archive and layer never import driver); re-exported here, where the contract is read.
pub use crate::archive::{Change, ChangeKind, FileGetter};
pub use crate::layer::idmap::{self, IdMap, IdMappings};
pub use crate::store::opts::{self, StorageOpts};
pub use crate::store::{CreateOpts, LayerInfo, LayerKind};

/// What a driver can promise about its archives.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Capabilities {
    /// The same layer always gives a byte-identical `diff` tar (sorted entries, fixed headers).
    pub deterministic_diffs: bool,
    /// Docker's `ReproducesExactDiffs`: `diff` gives back, byte for byte, the tar once given to
    /// `apply_diff`. Docker then keeps no tar-split metadata and checks `docker save` output
    /// against the imported digest, so only a driver that stores the original tar may say yes.
    pub reproduces_exact_diffs: bool,
}

/// A graph driver. Ids are validated by the driver; `parent` of `None` means "no parent".
pub trait Driver: Send + Sync {
    /// The driver's name, also the directory under the engine's root (`<root>/<name>`).
    fn name(&self) -> &'static str;

    /// Make a new empty read-only (parent) layer on top of `parent`.
    fn create(&self, id: &str, parent: Option<&str>, opts: &CreateOpts) -> Result<()>;
    /// Make a new empty writable (container) layer on top of `parent`.
    fn create_read_write(&self, id: &str, parent: Option<&str>, opts: &CreateOpts) -> Result<()>;
    /// Delete a layer. Refused while it is mounted or has children.
    fn remove(&self, id: &str) -> Result<()>;
    /// Mount the merged view of `id` and its parents; reference counted. Returns the mount point.
    fn get(&self, id: &str, mount_label: &str) -> Result<PathBuf>;
    /// Drop one reference taken by `get`; unmount at zero.
    fn put(&self, id: &str) -> Result<()>;
    /// Whether the layer exists.
    fn exists(&self, id: &str) -> bool;
    /// Human-readable diagnostics.
    fn status(&self) -> Vec<(String, String)>;
    /// Low-level facts about one layer (its directories, its parent chain).
    fn get_metadata(&self, id: &str) -> Result<BTreeMap<String, String>>;
    /// Unmount everything this driver mounted.
    fn cleanup(&self) -> Result<()>;
    /// Release what an earlier process left that nobody can use any more (mounts whose server
    /// died) and keep what still serves (a running container's mount), for a restarted
    /// engine or plugin. Drivers that keep nothing across processes have nothing to do.
    fn release_stale(&self) -> Result<()> {
        Ok(())
    }

    /// Write the changes of `id` against `parent` as an uncompressed OCI layer tar to `out`.
    fn diff(&self, id: &str, parent: Option<&str>, out: &mut dyn Write) -> Result<()>;
    /// The list of changed paths of `id` against `parent`.
    fn changes(&self, id: &str, parent: Option<&str>) -> Result<Vec<Change>>;
    /// Unpack an uncompressed OCI layer tar into the empty layer `id`. Returns its size in bytes.
    fn apply_diff(&self, id: &str, parent: Option<&str>, diff: &mut dyn Read) -> Result<u64>;
    /// Bytes of files added or modified by `id` against `parent`, hard links counted once.
    fn diff_size(&self, id: &str, parent: Option<&str>) -> Result<u64>;
    /// A getter for file contents by path within the layer.
    fn diff_getter(&self, id: &str) -> Result<Box<dyn FileGetter>>;
    /// Whether `path` is a live mount made by this driver.
    fn is_mounted(&self, path: &Path) -> bool;
    /// What the driver promises about its archives.
    fn capabilities(&self) -> Capabilities;

    /// Every layer, sorted by id. Not part of Docker's contract: for listings (`stratafs ls`).
    fn list(&self) -> Result<Vec<LayerInfo>> {
        Err(Error::NotSupported(format!(
            "{}: listing layers is not implemented",
            self.name()
        )))
    }

    /// The layer's own parent (the `parent` for which `diff`/`changes` walk one directory).
    fn parent(&self, id: &str) -> Result<Option<String>> {
        self.list()?
            .into_iter()
            .find(|l| l.id == id)
            .map(|l| l.parent)
            .ok_or_else(|| Error::LayerNotFound(id.to_string()))
    }
}

/// What a driver is constructed with (Docker's `graphdriver.Options` plus the engine root).
#[derive(Debug, Clone, Default)]
pub struct DriverConfig {
    /// The engine's root; the driver keeps its state under `<root>/<name>`.
    pub root: PathBuf,
    /// Driver options (`key=value`), as given by the engine.
    pub options: Vec<String>,
    /// User and group id maps for layers.
    pub id_mappings: IdMappings,
}

impl DriverConfig {
    /// For a driver that takes no driver options: an error naming the first one given.
    pub fn refuse_options(&self, driver: &str) -> Result<()> {
        match self.options.first() {
            Some(opt) => Err(Error::InvalidMountOption {
                option: opt.clone(),
                reason: format!("the {driver} driver takes no driver options"),
            }),
            None => Ok(()),
        }
    }
}
