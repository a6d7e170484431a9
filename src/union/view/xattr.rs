//! Extended attributes: GETXATTR, LISTXATTR, SETXATTR, REMOVEXATTR. The layers' internal
//! xattrs (whiteout and override markers) are never shown; files known to have none are
//! answered from memory.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::layer::whiteout;
use crate::sys;
use crate::union::upper::UpperLayer;
use crate::union::view::copy::{copies_much, copy_up_node};
use crate::union::view::state::View;
use crate::union::view::sync::errno;
use crate::union::view::types::{Errno, Reply, Xattr};

impl View {
    /// GETXATTR of `name`, `size` the room the caller has (0: it asks the size).
    pub fn getxattr(&self, ino: u64, name: &OsStr, size: u32) -> Reply<Xattr> {
        if whiteout::is_internal_xattr(name.as_bytes()) {
            return Err(Errno::ENODATA);
        }
        let Some(name) = name.to_str() else {
            return Err(Errno::ENODATA);
        };
        if self.tree.node(ino).is_ok_and(|n| self.tree.no_xattrs(&n)) {
            return Err(Errno::ENODATA);
        }
        let (layer, rel) = self.tree.backing(ino)?;
        if let Some(t) = &self.tree.layers.get(layer).tar {
            return match t.getxattr(&rel, name)? {
                Some(v) => Xattr::fit(v, size),
                None => Err(Errno::ENODATA),
            };
        }
        // `at` holds the directory fd its xattr path goes through: it lives past the call.
        let at = self.tree.layers.get(layer).at(&rel)?;
        match sys::lgetxattr(&at.xattr_path(), name)? {
            Some(v) => Xattr::fit(v, size),
            None => Err(Errno::ENODATA),
        }
    }

    /// LISTXATTR, `size` the room the caller has (0: it asks the size).
    pub fn listxattr(&self, ino: u64, size: u32) -> Reply<Xattr> {
        if self.tree.node(ino).is_ok_and(|n| self.tree.no_xattrs(&n)) {
            return Xattr::fit(Vec::new(), size);
        }
        let (layer, rel) = self.tree.backing(ino)?;
        let names = match &self.tree.layers.get(layer).tar {
            Some(t) => t.listxattr(&rel)?,
            None => sys::llistxattr(&self.tree.layers.get(layer).at(&rel)?.xattr_path())?,
        };
        let mut out = Vec::new();
        for n in names.iter().filter(|n| !whiteout::is_internal_xattr(n)) {
            out.extend_from_slice(n);
            out.push(0);
        }
        Xattr::fit(out, size)
    }

    /// SETXATTR (`flags`: `XATTR_CREATE`, `XATTR_REPLACE`); when it copies a large file up,
    /// `done` is called from a thread of its own.
    pub fn setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        done: impl FnOnce(Reply<()>) + Send + 'static,
    ) {
        let (name, value) = (name.to_owned(), value.to_vec());
        let long = copies_much(self, ino, false);
        self.serve(long, move |fs| {
            done(fs.xattr_change(ino, &name, |up, rel, name| {
                let present = sys::lgetxattr(&up.upath(rel), name)?.is_some();
                if flags & libc::XATTR_CREATE != 0 && present {
                    return Err(errno(libc::EEXIST));
                }
                if flags & libc::XATTR_REPLACE != 0 && !present {
                    return Err(errno(libc::ENODATA));
                }
                up.set_xattr(rel, name, &value)
            }))
        })
    }

    /// REMOVEXATTR; when it copies a large file up, `done` is called from a thread of its own.
    pub fn removexattr(
        &self,
        ino: u64,
        name: &OsStr,
        done: impl FnOnce(Reply<()>) + Send + 'static,
    ) {
        let name = name.to_owned();
        let long = copies_much(self, ino, false);
        self.serve(long, move |fs| {
            done(fs.xattr_change(ino, &name, |up, rel, name| up.remove_xattr(rel, name)))
        })
    }

    fn xattr_change(
        &self,
        ino: u64,
        name: &OsStr,
        change: impl FnOnce(&UpperLayer, &Path, &str) -> io::Result<()>,
    ) -> Reply<()> {
        let up = self.upper()?;
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        let rel = self.tree.path_of(ino)?;
        if rel.as_os_str().is_empty() {
            return Ok(change(up, &rel, name)?);
        }
        copy_up_node(self, up, ino, &rel)?;
        self.tree.node(ino)?.xattrs_changing();
        Ok(change(up, &rel, name)?)
    }
}
