//! Layer tars (OCI changesets): apply, export, changes, size, getter.
//! (Interface fixed; implementation lands with the archive issue.)

use std::io::{Read, Write};

use crate::driver::{Change, FileGetter, IdMappings};
use crate::error::{Error, Result};
use crate::store::Store;

fn todo(what: &str) -> Error {
    Error::NotSupported(format!("{what}: not implemented yet"))
}

/// Unpack a layer tar into the (empty) `diff/` of layer `id`, keeping whiteouts as markers.
/// Returns the layer size (equal to [`layer_diff_size`] afterwards).
pub fn apply_layer(
    _store: &Store,
    _id: &str,
    _tar: &mut dyn Read,
    _maps: &IdMappings,
) -> Result<u64> {
    Err(todo("apply_diff"))
}

/// Write layer `id`'s own changes (against its own parent) as a tar, walking only its `diff/`.
pub fn export_layer(
    _store: &Store,
    _id: &str,
    _out: &mut dyn Write,
    _maps: &IdMappings,
) -> Result<()> {
    Err(todo("diff"))
}

/// Changes of layer `id` against its own parent, walking only its `diff/`.
pub fn layer_changes(_store: &Store, _id: &str) -> Result<Vec<Change>> {
    Err(todo("changes"))
}

/// Size of layer `id` against its own parent, hard links counted once.
pub fn layer_diff_size(_store: &Store, _id: &str) -> Result<u64> {
    Err(todo("diff_size"))
}

/// File contents of layer `id` by path.
pub fn layer_getter(_store: &Store, _id: &str) -> Result<Box<dyn FileGetter>> {
    Err(todo("diff_getter"))
}

/// Changes between two plain directory trees (`old` of `None` is the empty tree), comparing
/// type, mode, owner, size, mtime, link target and xattrs.
pub fn compare_trees(
    _old: Option<&std::path::Path>,
    _new: &std::path::Path,
) -> Result<Vec<Change>> {
    Err(todo("compare_trees"))
}

/// Write the given changes of the plain tree `new` as a layer tar (deletions as whiteouts).
pub fn export_changes(
    _new: &std::path::Path,
    _changes: &[Change],
    _out: &mut dyn Write,
) -> Result<()> {
    Err(todo("export_changes"))
}

/// Bytes of the files that `changes` add or modify in the plain tree `new`, hard links once.
pub fn changes_size(_new: &std::path::Path, _changes: &[Change]) -> Result<u64> {
    Err(todo("changes_size"))
}
