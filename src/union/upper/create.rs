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

    /// Create the empty regular file `rel` under its own name at once, without staging, where
    /// one `open` gives it all it needs: no lower layer has anything at `rel` (no whiteout to
    /// replace, nothing to hide), its permission bits are plain ones and the file comes out
    /// with `attr`'s owner by itself. Staging exists so that a crash never shows a half-made
    /// entry; a crash here can leave only an empty file under its name, with its owner (as
    /// just after a staged create: this is no copy-up, no data was promised). `None`: not so
    /// here, the caller stages it. It comes back open read-write, with its stat.
    pub fn create_file_direct(
        &self,
        rel: &Path,
        attr: &NewAttr,
    ) -> io::Result<Option<(OwnedFd, libc::stat)>> {
        let perm = attr.mode & 0o7777;
        let plain = perm & 0o7000 == 0 && perm & 0o600 == 0o600;
        if !plain || self.lowers.lower_entry(rel).is_some() {
            return Ok(None);
        }
        let (parent, name) = split(rel)?;
        self.ensure_dir(parent)?;
        let pfd = self.open_upper_dir(parent)?;
        let dfd = pfd.as_fd();
        let pst = sys::fstat(dfd)?;
        let gid = if pst.st_mode & libc::S_ISGID != 0 {
            pst.st_gid
        } else {
            self.own_ids.1
        };
        if (attr.uid, attr.gid) != (self.own_ids.0, gid) {
            return Ok(None); // a chown to follow: staged, so no crash shows the wrong owner
        }
        let flags = libc::O_CREAT | libc::O_EXCL | libc::O_RDWR;
        let fd = match sys::openat(dfd, Path::new(name), flags, perm) {
            // A whiteout device there, or a racing create: the staged path sorts it out.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Ok(None),
            r => r?,
        };
        let finish = || -> io::Result<libc::stat> {
            let mut st = sys::fstat(fd.as_fd())?;
            if st.st_mode & 0o7777 != perm {
                // The server's umask or a default ACL narrowed it.
                sys::fchmod(fd.as_fd(), perm)?;
                st.st_mode = (st.st_mode & !0o7777) | perm;
            }
            // (No lower has the name, so a `.wh.` marker can only be a stale one.)
            self.drop_whiteout(dfd, name)?;
            Ok(st)
        };
        match finish() {
            Ok(st) => Ok(Some((fd, st))),
            Err(e) => {
                let _ = sys::unlink_entry(dfd, name, false);
                Err(e)
            }
        }
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
