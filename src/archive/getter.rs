//! `diff_getter`: file contents of one layer by path, confined to the layer directory.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use super::FileGetter;
use crate::error::{Error, IoContext, Result};
use crate::sys;

use super::safe_path::{self, unsafe_entry};

/// Reads files beneath one directory; escapes (`..`, symlinks leading out) are refused.
pub struct DirGetter {
    root: Option<OwnedFd>,
    name: String,
}

impl DirGetter {
    pub fn open(dir: &Path) -> Result<Self> {
        let root = sys::open_dir(dir).ctx(|| format!("opening {}", dir.display()))?;
        Ok(DirGetter {
            root: Some(root),
            name: dir.display().to_string(),
        })
    }
}

impl FileGetter for DirGetter {
    fn get(&self, path: &str) -> Result<Box<dyn Read + Send>> {
        let root = self.root.as_ref().ok_or_else(|| {
            Error::io(
                format!("getter of {} is closed", self.name),
                std::io::ErrorKind::Other.into(),
            )
        })?;
        let comps = safe_path::normalize(path.as_bytes()).map_err(|r| unsafe_entry(path, r))?;
        if comps.is_empty() {
            return Err(unsafe_entry(path, "not a file"));
        }
        let rel = safe_path::join(&comps);
        let fd = sys::openat2(root.as_fd(), &rel, libc::O_RDONLY, 0, sys::RESOLVE_BENEATH)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EXDEV) | Some(libc::ELOOP) => {
                    unsafe_entry(path, "leads outside the layer")
                }
                _ => Error::io(format!("opening {path:?} in {}", self.name), e),
            })?;
        Ok(Box::new(std::fs::File::from(fd)))
    }

    fn close(&mut self) -> Result<()> {
        self.root = None;
        Ok(())
    }
}
