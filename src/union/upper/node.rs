//! Building one new node in the staging area: its type, then owner, mode and times (in
//! `override_stat` where the backing filesystem refuses them). Copy-up and creation share it.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering;

use crate::layer::meta::{self, OverrideKind, OverrideStat};
use crate::sys::{self, TimeSpec};

use super::layer::{errno, is_dir, UpperLayer};

/// What a copy must look like: taken from a `stat` of the source.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: i64,
    pub atime: TimeSpec,
    pub mtime: TimeSpec,
}

impl Shape {
    pub fn of(st: &libc::stat) -> Shape {
        Shape {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev,
            size: st.st_size,
            atime: TimeSpec::At {
                sec: st.st_atime,
                nsec: st.st_atime_nsec,
            },
            mtime: TimeSpec::At {
                sec: st.st_mtime,
                nsec: st.st_mtime_nsec,
            },
        }
    }

    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
}

/// What [`UpperLayer::make_node`] made.
#[derive(Debug, Default)]
pub(crate) struct Made {
    /// The node's type was refused: a device node became an empty file.
    pub type_refused: bool,
    /// A regular file comes open for writing (its data goes in through this).
    pub file: Option<OwnedFd>,
    /// Owner and permission bits the node has already, where known: `apply_shape` skips a
    /// chown or chmod that would change nothing.
    pub has: Option<(u32, u32, u32)>,
    /// Inode number of a regular file made (0 otherwise).
    pub ino: u64,
    /// The regular file has no name yet (`O_TMPFILE`): it gets `dir/name` once its data is
    /// in and flushed.
    pub unnamed: bool,
}

impl UpperLayer {
    /// Create a node of `shape`'s type at `dir/name` (owner and mode not applied yet, times
    /// now). Device nodes that the backing filesystem refuses become empty files (their type
    /// goes to `override_stat`).
    /// With `unnamed`, a regular file is made without a name where the filesystem can
    /// (`O_TMPFILE`; see [`Made::unnamed`]).
    pub(crate) fn make_node(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        shape: &Shape,
        symlink_target: Option<&Path>,
        unnamed: bool,
    ) -> io::Result<Made> {
        let create_file = |mode: u32| -> io::Result<OwnedFd> {
            // Read-write: the copy may be handed on to a read-write open (see `OpenCopy`).
            let flags = libc::O_CREAT | libc::O_EXCL | libc::O_RDWR;
            sys::openat(dir, Path::new(name), flags, mode)
        };
        match shape.file_type() {
            libc::S_IFDIR => sys::mkdirat(dir, name, 0o700)?,
            libc::S_IFREG => {
                // Created with its final permission bits where they are plain ones and leave
                // the owner read-write (xattrs are still to be copied, which an unprivileged
                // owner needs write access for; set-id bits only after the chown, which clears
                // them): for the usual 0644 and 0755 no chmod is left to do.
                let perm = shape.mode & 0o7777;
                let plain = perm & 0o7000 == 0 && perm & 0o600 == 0o600;
                let mode = if plain { perm } else { 0o600 };
                let unnamed_file = if unnamed && self.unnamed_files.load(Ordering::Relaxed) {
                    match sys::open_unnamed(dir, mode) {
                        Ok(f) => Some(f),
                        Err(e) => {
                            tracing::info!(%e, "no unnamed files (O_TMPFILE) here");
                            self.unnamed_files.store(false, Ordering::Relaxed);
                            None
                        }
                    }
                } else {
                    None
                };
                let is_unnamed = unnamed_file.is_some();
                let f = match unnamed_file {
                    Some(f) => f,
                    None => create_file(mode)?,
                };
                let st = sys::fstat(f.as_fd())?;
                return Ok(Made {
                    type_refused: false,
                    has: Some((st.st_uid, st.st_gid, st.st_mode & 0o7777)),
                    file: Some(f),
                    ino: st.st_ino,
                    unnamed: is_unnamed,
                });
            }
            libc::S_IFLNK => {
                let t = symlink_target.ok_or_else(|| errno(libc::EINVAL))?;
                sys::symlinkat(t.as_os_str(), dir, name)?
            }
            ty @ (libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK) => {
                match sys::mknodat(dir, name, ty | 0o600, shape.rdev) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                        drop(create_file(0o600)?);
                        return Ok(Made {
                            type_refused: true,
                            ..Made::default()
                        });
                    }
                    Err(e) => return Err(e),
                }
            }
            _ => return Err(errno(libc::EINVAL)),
        }
        Ok(Made::default())
    }

    /// Give the node at `dir/name` (full path `path`) the owner, mode and times of `shape`.
    /// Where the backing filesystem refuses the owner (unprivileged) or the type, they go to
    /// `override_stat`. `existing` is an override already copied from the source, which stays.
    pub(crate) fn apply_shape(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        shape: &Shape,
        existing: Option<OverrideStat>,
        made: &Made,
    ) -> io::Result<()> {
        let is_link = shape.file_type() == libc::S_IFLNK;
        let perm = shape.mode & 0o7777;
        let mut need_override = made.type_refused;
        let owned = made
            .has
            .is_some_and(|(uid, gid, _)| (uid, gid) == (shape.uid, shape.gid));
        if existing.is_none() && !owned {
            match sys::lchownat(dir, name, shape.uid, shape.gid) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => need_override = true,
                Err(e) => return Err(e),
            }
        }
        if !is_link {
            // With an override the backing file must stay usable by us; the view shows the
            // override's mode.
            let backing = if need_override || existing.is_some() {
                perm | if shape.file_type() == libc::S_IFDIR {
                    0o700
                } else {
                    0o600
                }
            } else {
                perm
            };
            if made.has.map(|(_, _, mode)| mode) != Some(backing) {
                sys::fchmodat(dir, name, backing)?;
            }
        }
        if need_override && !is_link {
            let o = OverrideStat {
                uid: shape.uid,
                gid: shape.gid,
                mode: perm,
                kind: OverrideKind::from_mode(shape.mode, shape.rdev),
            };
            meta::write_override(path, &o)?;
        }
        if matches!((shape.atime, shape.mtime), (TimeSpec::Now, TimeSpec::Now)) {
            return Ok(()); // a node made just now has these times already
        }
        sys::set_times_at(dir, name, shape.atime, shape.mtime)
    }

    /// Delete a staged entry.
    pub(super) fn discard(&self, tmp: &OsStr) -> io::Result<()> {
        let p = self.staging.join(tmp);
        match sys::lstat(&p) {
            Ok(st) if is_dir(&st) => std::fs::remove_dir_all(&p),
            Ok(_) => std::fs::remove_file(&p),
            Err(_) => Ok(()),
        }
    }
}
