//! Look-up and attributes: LOOKUP, FORGET, GETATTR, READLINK, ACCESS, STATFS.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use crate::sys;
use crate::union::attr::{Attr, FileKind};
use crate::union::view::state::{View, TTL};
use crate::union::view::types::{AttrReply, Caller, Entry, Errno, Reply, Statfs};

/// An entry of the view with the TTLs it is always given.
pub(super) fn entry(attr: Attr) -> Entry {
    Entry {
        attr,
        attr_ttl: TTL,
        entry_ttl: TTL,
        generation: 0,
    }
}

impl View {
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Reply<Entry> {
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        match self.tree.lookup(parent, name) {
            Ok((_, attr)) => Ok(entry(attr)),
            // Negative entry the kernel may keep: lower layers never change, and every name
            // that appears later is made through us, so the kernel's own create, mkdir, link,
            // symlink and rename replace it (a PATH search or a library probe in a container
            // then costs no round trip the second time).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                Ok(entry(Attr::bare(0, FileKind::RegularFile)))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn forget(&self, ino: u64, nlookup: u64) {
        self.tree.forget(ino, nlookup);
        if self.tree.node(ino).is_err() {
            // The kernel dropped the inode and its cached pages with it.
            self.forget_cache_key(ino);
        }
    }

    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Reply<AttrReply> {
        let attr = match self.tree.getattr(ino) {
            Ok(a) => a,
            // An open file whose name is gone is described by its fd.
            Err(e) => self.getattr_open(ino, fh).ok_or(Errno::from(e))?,
        };
        Ok(AttrReply { attr, ttl: TTL })
    }

    /// Attributes of `ino` from an open handle (its name may be unlinked): `fh`, else any
    /// handle of the inode.
    fn getattr_open(&self, ino: u64, fh: Option<u64>) -> Option<Attr> {
        let h = fh
            .and_then(|f| self.handle(f))
            .or_else(|| self.any_handle(ino))?;
        let st = sys::fstat(h.file.as_fd()).ok()?;
        let node = self.tree.node(ino).ok()?;
        let layer = node.state.read().layer;
        Some(
            self.tree
                .attr_from_stat(&node, layer, Path::new("/nonexistent"), st),
        )
    }

    pub fn readlink(&self, ino: u64) -> Reply<Vec<u8>> {
        let (layer, rel) = self.tree.backing(ino)?;
        if let Some(t) = &self.tree.layers.get(layer).tar {
            return Ok(t.readlink(&rel)?.into_vec());
        }
        let at = self.tree.layers.get(layer).at(&rel)?;
        let target = sys::readlinkat(at.dir(), at.name())?;
        Ok(target.into_vec())
    }

    /// ACCESS with `mask` (`R_OK|W_OK|X_OK`, or `F_OK`).
    pub fn access(&self, caller: &Caller, ino: u64, mask: i32) -> Reply<()> {
        let attr = self.tree.getattr(ino)?;
        if mask & libc::W_OK != 0 && self.read_only() {
            return Err(Errno::EROFS);
        }
        if mask == libc::F_OK {
            return Ok(());
        }
        let perm = attr.perm as i32;
        let granted = if caller.uid == 0 {
            // Root may do anything but execute a file nobody may execute.
            let x_any = perm & 0o111 != 0 || attr.kind == FileKind::Directory;
            libc::R_OK | libc::W_OK | if x_any { libc::X_OK } else { 0 }
        } else if caller.uid == attr.uid {
            (perm >> 6) & 7
        } else if caller.gid == attr.gid {
            (perm >> 3) & 7
        } else {
            perm & 7
        };
        if mask & !granted & 7 == 0 {
            Ok(())
        } else {
            Err(Errno::EACCES)
        }
    }

    pub fn statfs(&self) -> Reply<Statfs> {
        let s = sys::fstatvfs(self.tree.layers.get(0).fd())?;
        Ok(Statfs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: s.f_namemax as u32,
            frsize: s.f_frsize as u32,
        })
    }
}
