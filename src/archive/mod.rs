//! Layer tars (OCI changesets): apply, export, changes, size, getter.
//!
//! Every path an archive names goes through [`safe_path`]; every whiteout decision through
//! `crate::layer::whiteout`; ownership that cannot be applied through `crate::layer::meta`.

mod apply;
mod changes;
pub mod decompress;
mod export;
mod getter;
pub mod safe_path;
mod walk;

use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::layer::idmap::IdMappings;
use crate::store::Store;

pub use apply::ApplyMode;
pub use changes::{lower_lookup, NodeAttrs};

/// What happened to a path between a parent and a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ChangeKind {
    /// The path exists in both and differs (or is a directory containing a change).
    Modify = 0,
    /// The path is new in the layer.
    Add = 1,
    /// The path was removed by the layer.
    Delete = 2,
}

/// One entry of `changes`: an absolute path inside the layer ("/etc/passwd") and its kind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Change {
    pub path: String,
    pub kind: ChangeKind,
}

/// Reads files of one layer by their path inside it (Docker's `FileGetCloser`), used to rebuild
/// a layer tar from tar-split metadata.
pub trait FileGetter: Send {
    /// Open the file at `path` (relative to the layer root, with or without a leading `/`).
    fn get(&self, path: &str) -> Result<Box<dyn Read + Send>>;
    /// Release what the getter holds. Calling `get` afterwards is an error.
    fn close(&mut self) -> Result<()>;
}

/// Unpack a layer tar into the (empty) `diff/` of layer `id`, keeping whiteouts as markers.
/// Returns the layer size (equal to [`layer_diff_size`] afterwards). On any error the
/// directory is emptied again.
pub fn apply_layer(store: &Store, id: &str, tar: &mut dyn Read, maps: &IdMappings) -> Result<u64> {
    let dir = store.diff_dir(id);
    if !store.exists(id) {
        return Err(Error::LayerNotFound(id.to_string()));
    }
    if !apply::is_empty_dir(&dir).ctx(|| format!("reading {}", dir.display()))? {
        return Err(Error::LayerNotEmpty { id: id.to_string() });
    }
    apply_to_dir(&dir, tar, maps, ApplyMode::Layer, None)?;
    layer_diff_size(store, id)
}

/// Unpack `tar` into `dir` in the given mode. On error `dir` is emptied, then refilled with a
/// copy of `restore` when given (the vfs driver's parent), and its root attributes restored.
pub fn apply_to_dir(
    dir: &Path,
    tar: &mut dyn Read,
    maps: &IdMappings,
    mode: ApplyMode,
    restore: Option<&Path>,
) -> Result<()> {
    let before = RootAttrs::read(dir)?;
    let res = apply::apply_tar(dir, tar, maps, mode);
    if let Err(err) = &res {
        tracing::warn!(dir = %dir.display(), %err, "apply failed; rolling the layer back");
        let rollback = (|| -> Result<()> {
            apply::empty_dir(dir).ctx(|| format!("emptying {}", dir.display()))?;
            if let Some(src) = restore {
                crate::layer::copy::copy_tree_contents(src, dir)?;
            }
            before.restore(dir)
        })();
        if let Err(e) = rollback {
            tracing::error!(dir = %dir.display(), %e, "could not roll back a failed apply");
        }
    }
    res
}

/// The layer root's own attributes before an apply: a `./` entry of the tar changes its owner,
/// mode, times and xattrs, so a rollback puts all of them back (found by the tar_apply fuzzer:
/// a failed apply left the root with the tar's `user.*` xattr).
struct RootAttrs {
    st: libc::stat,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl RootAttrs {
    fn read(dir: &Path) -> Result<RootAttrs> {
        let st = crate::sys::lstat(dir).ctx(|| format!("stat {}", dir.display()))?;
        let names =
            crate::sys::llistxattr(dir).ctx(|| format!("listing xattrs of {}", dir.display()))?;
        let mut xattrs = Vec::new();
        for name in names {
            // The kernel's xattr names are prefixed ASCII ("user.", "trusted."...).
            let Ok(name) = String::from_utf8(name) else {
                continue;
            };
            if let Some(value) = crate::sys::lgetxattr(dir, &name)
                .ctx(|| format!("reading xattr {name} of {}", dir.display()))?
            {
                xattrs.push((name, value));
            }
        }
        Ok(RootAttrs { st, xattrs })
    }

    fn restore(&self, dir: &Path) -> Result<()> {
        use std::os::fd::AsFd;
        let st = &self.st;
        let fd = crate::sys::open_dir(dir).ctx(|| format!("opening {}", dir.display()))?;
        let _ = crate::sys::lchownat(fd.as_fd(), Path::new(""), st.st_uid, st.st_gid);
        crate::sys::fchmod(fd.as_fd(), st.st_mode & 0o7777)
            .ctx(|| format!("chmod {}", dir.display()))?;
        let now =
            crate::sys::llistxattr(dir).ctx(|| format!("listing xattrs of {}", dir.display()))?;
        for name in now.iter().filter_map(|n| std::str::from_utf8(n).ok()) {
            if !self.xattrs.iter().any(|(kept, _)| kept == name) {
                crate::sys::lremovexattr_if_present(dir, name)
                    .ctx(|| format!("removing xattr {name} of {}", dir.display()))?;
            }
        }
        for (name, value) in &self.xattrs {
            crate::sys::lsetxattr(dir, name, value)
                .ctx(|| format!("restoring xattr {name} of {}", dir.display()))?;
        }
        crate::sys::lutimensat(
            fd.as_fd(),
            Path::new(""),
            (st.st_atime, st.st_atime_nsec),
            (st.st_mtime, st.st_mtime_nsec),
        )
        .ctx(|| format!("setting times of {}", dir.display()))
    }
}

/// Write layer `id`'s own changes (against its own parent) as a tar, walking only its `diff/`.
pub fn export_layer(store: &Store, id: &str, out: &mut dyn Write, maps: &IdMappings) -> Result<()> {
    if !store.exists(id) {
        return Err(Error::LayerNotFound(id.to_string()));
    }
    export::export_dir(&store.diff_dir(id), out, maps)
}

/// Changes of layer `id` against its own parent, walking only its `diff/`.
pub fn layer_changes(store: &Store, id: &str) -> Result<Vec<Change>> {
    let chain = store.chain(id)?;
    let lowers: Vec<_> = chain[1..].iter().map(|r| store.diff_dir(&r.id)).collect();
    changes::layer_dir_changes(&store.diff_dir(id), &lowers)
}

/// Size of layer `id` against its own parent, hard links counted once.
pub fn layer_diff_size(store: &Store, id: &str) -> Result<u64> {
    if !store.exists(id) {
        return Err(Error::LayerNotFound(id.to_string()));
    }
    changes::tree_size(&store.diff_dir(id))
}

/// File contents of layer `id` by path.
pub fn layer_getter(store: &Store, id: &str) -> Result<Box<dyn FileGetter>> {
    if !store.exists(id) {
        return Err(Error::LayerNotFound(id.to_string()));
    }
    dir_getter(&store.diff_dir(id))
}

/// File contents of any directory by path, confined to it.
pub fn dir_getter(dir: &Path) -> Result<Box<dyn FileGetter>> {
    Ok(Box::new(getter::DirGetter::open(dir)?))
}

/// Changes of the upper directory `upper` of a mount against its lower layers (directories
/// or tar indexes, topmost first), walking only `upper`.
pub fn upper_changes(upper: &Path, lowers: &[std::path::PathBuf]) -> Result<Vec<Change>> {
    changes::layer_dir_changes(upper, lowers)
}

/// Changes between two plain directory trees (`old` of `None` is the empty tree), comparing
/// type, mode, owner, size, mtime, link target and xattrs.
pub fn compare_trees(old: Option<&Path>, new: &Path) -> Result<Vec<Change>> {
    changes::compare(old, new)
}

/// Write the given changes of the plain tree `new` as a layer tar (deletions as whiteouts).
pub fn export_changes(new: &Path, changes: &[Change], out: &mut dyn Write) -> Result<()> {
    export::export_changes_to(new, changes, out)
}

/// Bytes of the files that `changes` add or modify in the plain tree `new`, hard links once.
pub fn changes_size(new: &Path, changes: &[Change]) -> Result<u64> {
    changes::size_of_changes(new, changes)
}

/// Export a layer directory (not a store layer) as `export_layer` does: for tools and tests.
pub fn export_dir(dir: &Path, out: &mut dyn Write, maps: &IdMappings) -> Result<()> {
    export::export_dir(dir, out, maps)
}

#[cfg(test)]
mod tests;

/// A tar of regular files (mode 0644) with these names and contents, for tests.
#[cfg(test)]
pub(crate) fn files_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data)
            .expect("appending to a tar in memory");
    }
    b.into_inner().expect("finishing a tar in memory")
}
