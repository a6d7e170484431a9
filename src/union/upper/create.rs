//! New entries: files, directories, device nodes, fifos, sockets, symlinks and hard links.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use crate::layer::whiteout;
use crate::sys::{self, TimeSpec};

use super::copyup::CopyUp;
use super::layer::{errno, split, UpperLayer};
use super::node::Shape;
use super::remove::Slot;

/// Owner and mode of a new entry (mode includes the file-type bits).
#[derive(Debug, Clone, Copy)]
pub struct NewAttr {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
}

impl UpperLayer {
    /// Build a new node in staging with `build`, give it `attr`'s owner and mode, and rename it
    /// to `rel`, which must not exist in the merged view (`EEXIST` if it does in the upper).
    /// A whiteout at `rel` is replaced; a directory placed over one is made opaque. A regular
    /// file comes back open read-write.
    fn create_node(
        &self,
        rel: &Path,
        attr: &NewAttr,
        symlink_target: Option<&Path>,
    ) -> io::Result<Option<OwnedFd>> {
        let (parent, name) = split(rel)?;
        self.ensure_dir(parent)?;
        // Only a directory cares whether it replaces a deleted name (it must then be opaque);
        // `place` replaces a whiteout of either format by itself.
        let had_whiteout =
            attr.mode & libc::S_IFMT == libc::S_IFDIR && self.whiteout_in(parent, name);
        let tmp = self.tmp_name();
        let sfd = self.staging_fd.as_fd();
        let shape = Shape {
            mode: attr.mode,
            uid: attr.uid,
            gid: attr.gid,
            rdev: attr.rdev,
            size: 0,
            atime: TimeSpec::Now,
            mtime: TimeSpec::Now,
        };
        let built = (|| {
            let made = self.make_node(sfd, &tmp, &shape, symlink_target, false)?;
            let path = self.staging.join(&tmp);
            if shape.file_type() == libc::S_IFDIR && had_whiteout {
                let fd = sys::open_dir(&path)?;
                whiteout::write_opaque(fd.as_fd())?;
            }
            self.apply_shape(sfd, &tmp, &path, &shape, None, &made)?;
            Ok(made.file)
        })();
        match built {
            Ok(file) => self.place(&tmp, parent, name).map(|()| file),
            Err(e) => {
                let _ = self.discard(&tmp);
                Err(e)
            }
        }
    }

    /// Rename the staged `tmp` to `parent/name`, replacing only a whiteout, then drop a
    /// `.wh.NAME` marker if there is one.
    fn place(&self, tmp: &OsStr, parent: &Path, name: &OsStr) -> io::Result<()> {
        let pfd = self.open_upper_dir(parent)?;
        let (sfd, dfd) = (self.staging_fd.as_fd(), pfd.as_fd());
        let placed = self
            .free_whiteout_slot(dfd, name)
            .and_then(|slot| match slot {
                Slot::Free => sys::renameat2(sfd, tmp, dfd, name, sys::RENAME_NOREPLACE),
                Slot::Device => self.exchange_into(tmp, dfd, name),
            });
        if let Err(e) = placed {
            let _ = self.discard(tmp);
            return Err(e);
        }
        self.drop_whiteout(dfd, name)
    }

    /// Create an empty regular file at `rel`; it comes back open read-write.
    pub fn create_file(&self, rel: &Path, attr: &NewAttr) -> io::Result<OwnedFd> {
        let attr = NewAttr {
            mode: libc::S_IFREG | (attr.mode & 0o7777),
            ..*attr
        };
        self.create_node(rel, &attr, None)?
            .ok_or_else(|| errno(libc::EIO))
    }

    /// Create a directory at `rel` (opaque when it replaces a deleted name).
    pub fn mkdir(&self, rel: &Path, attr: &NewAttr) -> io::Result<()> {
        let attr = NewAttr {
            mode: libc::S_IFDIR | (attr.mode & 0o7777),
            ..*attr
        };
        self.create_node(rel, &attr, None).map(drop)
    }

    /// Create a fifo, socket or device node at `rel` (`attr.mode` carries the type). Without
    /// the privilege for a device it becomes an empty file described by `override_stat`.
    pub fn mknod(&self, rel: &Path, attr: &NewAttr) -> io::Result<()> {
        match attr.mode & libc::S_IFMT {
            libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK => {
                self.create_node(rel, attr, None).map(drop)
            }
            libc::S_IFREG | 0 => self.create_file(rel, attr).map(drop),
            _ => Err(errno(libc::EINVAL)),
        }
    }

    /// Create a symlink at `rel` pointing to `target`.
    pub fn symlink(&self, rel: &Path, target: &Path, uid: u32, gid: u32) -> io::Result<()> {
        let attr = NewAttr {
            mode: libc::S_IFLNK | 0o777,
            uid,
            gid,
            rdev: 0,
        };
        self.create_node(rel, &attr, Some(target)).map(drop)
    }

    /// Hard-link the merged entry `src` as `dst` (copying `src` up first).
    pub fn link(&self, src: &Path, dst: &Path) -> io::Result<CopyUp> {
        let up = self.copy_up(src)?;
        let (sparent, sname) = split(src)?;
        let (dparent, dname) = split(dst)?;
        self.ensure_dir(dparent)?;
        let sfd = self.open_upper_dir(sparent)?;
        let dfd = self.open_upper_dir(dparent)?;
        match self.free_whiteout_slot(dfd.as_fd(), dname)? {
            Slot::Free => sys::linkat(sfd.as_fd(), sname, dfd.as_fd(), dname)?,
            Slot::Device => {
                let tmp = self.tmp_name();
                sys::linkat(sfd.as_fd(), sname, self.staging_fd.as_fd(), &tmp)?;
                if let Err(e) = self.exchange_into(&tmp, dfd.as_fd(), dname) {
                    let _ = sys::unlink_entry(self.staging_fd.as_fd(), &tmp, false);
                    return Err(e);
                }
            }
        }
        self.drop_whiteout(dfd.as_fd(), dname)?;
        Ok(up)
    }
}
