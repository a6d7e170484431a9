//! Attribute changes: owner, mode, size and times (`setattr`), and xattrs.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use crate::layer::meta::{self, OverrideKind, OverrideStat};
use crate::layer::whiteout;
use crate::sys::{self, TimeSpec};

use super::layer::{errno, split, UpperLayer};

/// Changes of `setattr`; `None` leaves a field alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSpec>,
    pub mtime: Option<TimeSpec>,
}

/// An upper entry after [`UpperLayer::apply_attr`]: its stat and the override_stat in force.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    pub st: libc::stat,
    pub over: Option<OverrideStat>,
}

impl UpperLayer {
    /// Apply `setattr` changes to the merged entry `rel` (copying it up first).
    pub fn set_attr(&self, rel: &Path, a: &SetAttr) -> io::Result<()> {
        self.copy_up(rel)?;
        self.apply_attr(rel, a).map(drop)
    }

    /// [`UpperLayer::set_attr`] of an entry already in the upper layer; returns what the entry
    /// is afterwards (for the reply, without a second look-up).
    pub fn apply_attr(&self, rel: &Path, a: &SetAttr) -> io::Result<Applied> {
        self.apply_attr_known(rel, a, false)
    }

    /// [`UpperLayer::apply_attr`]; `plain`: the caller knows the entry has no xattrs, so there
    /// is no override_stat to read.
    pub fn apply_attr_known(&self, rel: &Path, a: &SetAttr, plain: bool) -> io::Result<Applied> {
        let (parent, name) = split(rel)?;
        let pfd = self.open_upper_dir(parent)?;
        // The xattr calls name the entry through the directory opened above (confined).
        let path = sys::fd_child_path(pfd.as_fd(), Path::new(name));
        let read_override = |st: &libc::stat| {
            if plain || st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                Ok(None)
            } else {
                meta::read_override(&path)
            }
        };
        // Owner and mode changes depend on the entry as it is (and its override); a size or
        // times change does not, so `touch` looks at the entry only afterwards.
        let owner_or_mode = a.uid.is_some() || a.gid.is_some() || a.mode.is_some();
        let mut over = None;
        if owner_or_mode {
            let st = sys::fstatat(pfd.as_fd(), Path::new(name))?;
            over = read_override(&st)?;
            change_owner_mode(pfd.as_fd(), name, &path, &st, a, &mut over)?;
        }
        if let Some(size) = a.size {
            let f = sys::openat(
                pfd.as_fd(),
                Path::new(name),
                libc::O_WRONLY | libc::O_NOFOLLOW,
                0,
            )?;
            self.truncate_fd(f.as_fd(), size)?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            sys::set_times_at(
                pfd.as_fd(),
                name,
                a.atime.unwrap_or(TimeSpec::Omit),
                a.mtime.unwrap_or(TimeSpec::Omit),
            )?;
        }
        let st = sys::fstatat(pfd.as_fd(), Path::new(name))?;
        if !owner_or_mode {
            over = read_override(&st)?;
        }
        Ok(Applied { st, over })
    }

    /// Set an xattr on the merged entry `rel` (copying it up). Internal names are refused.
    pub fn set_xattr(&self, rel: &Path, name: &str, value: &[u8]) -> io::Result<()> {
        if whiteout::is_internal_xattr(name.as_bytes()) {
            return Err(errno(libc::EPERM));
        }
        self.copy_up(rel)?;
        let (parent, leaf) = split(rel)?;
        let pfd = self.open_upper_dir(parent)?;
        sys::lsetxattr(
            &sys::fd_child_path(pfd.as_fd(), Path::new(leaf)),
            name,
            value,
        )
    }

    /// Remove an xattr of the merged entry `rel` (copying it up).
    pub fn remove_xattr(&self, rel: &Path, name: &str) -> io::Result<()> {
        if whiteout::is_internal_xattr(name.as_bytes()) {
            return Err(errno(libc::EPERM));
        }
        if self
            .source_of(rel)
            .and_then(|s| s.getxattr(name).ok().flatten())
            .is_none()
        {
            return Err(errno(libc::ENODATA));
        }
        self.copy_up(rel)?;
        let (parent, leaf) = split(rel)?;
        let pfd = self.open_upper_dir(parent)?;
        sys::lremovexattr(&sys::fd_child_path(pfd.as_fd(), Path::new(leaf)), name)
    }
}

/// The owner and mode part of a setattr on `dir/name` (full path `path`, stat `st`, override
/// `over`): natively where the backing filesystem lets us, else in override_stat.
fn change_owner_mode(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    path: &Path,
    st: &libc::stat,
    a: &SetAttr,
    over: &mut Option<OverrideStat>,
) -> io::Result<()> {
    let is_link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
    if a.uid.is_some() || a.gid.is_some() {
        let uid = a.uid.unwrap_or(over.map_or(st.st_uid, |o| o.uid));
        let gid = a.gid.unwrap_or(over.map_or(st.st_gid, |o| o.gid));
        let native = if over.is_none() {
            match sys::lchownat(dir, name, uid, gid) {
                Ok(()) => true,
                Err(e) if e.raw_os_error() == Some(libc::EPERM) && !is_link => false,
                Err(e) => return Err(e),
            }
        } else {
            false
        };
        if !native {
            let mut mode = over.map_or(st.st_mode & 0o7777, |o| o.mode & 0o7777);
            if st.st_mode & libc::S_IFMT == libc::S_IFREG {
                // As chown(2) does for an unprivileged caller.
                mode &= !(libc::S_ISUID | libc::S_ISGID);
            }
            let o = OverrideStat {
                uid,
                gid,
                mode,
                kind: over
                    .and_then(|o| o.kind)
                    .or_else(|| OverrideKind::from_mode(st.st_mode, st.st_rdev)),
            };
            meta::write_override(path, &o)?;
            *over = Some(o);
        }
    }
    if let Some(mode) = a.mode {
        if let Some(o) = over.as_mut() {
            o.mode = mode & 0o7777;
            meta::write_override(path, o)?;
        } else if !is_link {
            sys::fchmodat(dir, name, mode & 0o7777)?;
        }
    }
    Ok(())
}
