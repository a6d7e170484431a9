//! Where the write path reads an entry it copies: a file on disk (an upper entry or a file of
//! a lower layer directory) or a member of a tar-index lower layer, which has no path of its
//! own (its metadata and xattrs are in the index, its bytes a range of the tar's file).

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sys;
use crate::union::tarlayer::TarLayer;

/// A member of a tar-index lower layer.
#[derive(Debug, Clone)]
pub struct TarEntry {
    pub layer: Arc<TarLayer>,
    /// Its path relative to the layer root.
    pub rel: PathBuf,
}

impl PartialEq for TarEntry {
    fn eq(&self, other: &TarEntry) -> bool {
        Arc::ptr_eq(&self.layer, &other.layer) && self.rel == other.rel
    }
}

impl Eq for TarEntry {}

/// An entry to copy from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// On disk at this path (not following a final symlink).
    Disk(PathBuf),
    /// In a tar index; `path` is only a name for logs (`<index>/<rel>`, not on disk).
    Tar { entry: TarEntry, path: PathBuf },
}

impl AsRef<Path> for Source {
    fn as_ref(&self) -> &Path {
        match self {
            Source::Disk(p) => p,
            Source::Tar { path, .. } => path,
        }
    }
}

impl Source {
    pub fn lstat(&self) -> io::Result<libc::stat> {
        match self {
            Source::Disk(p) => sys::lstat(p),
            Source::Tar { entry, .. } => entry.layer.lstat(&entry.rel),
        }
    }

    pub fn readlink(&self) -> io::Result<OsString> {
        match self {
            Source::Disk(p) => sys::readlink(p),
            Source::Tar { entry, .. } => entry.layer.readlink(&entry.rel),
        }
    }

    /// The names of its xattrs.
    pub fn xattr_names(&self) -> io::Result<Vec<Vec<u8>>> {
        match self {
            Source::Disk(p) => sys::llistxattr(p),
            Source::Tar { entry, .. } => entry.layer.listxattr(&entry.rel),
        }
    }

    /// The value of its xattr `name` (`None`: it has none of that name).
    pub fn getxattr(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match self {
            Source::Disk(p) => sys::lgetxattr(p, name),
            Source::Tar { entry, .. } => entry.layer.getxattr(&entry.rel, name),
        }
    }
}
