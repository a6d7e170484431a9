//! Paths longer than the kernel takes in one call (`PATH_MAX`, 4096 bytes with the NUL).
//!
//! A merged path may be as long as the kernel lets a caller name it (4095 bytes below the mount
//! point, more through a working directory deep inside), and the same entry in a layer is that
//! plus the layer's own path. Every wrapper in `sys` that takes a path or a name relative to a
//! directory passes it through [`at`] or [`path`]: a short one goes to the kernel as it is; a
//! long one has its parent opened piece by piece (each piece shorter than `PATH_MAX`, the
//! pieces after the first resolved beneath the one before and following no symlink, as
//! [`super::open_beneath`] does) and only its last component is handed to the call. Part of
//! `sys`: the crate's `unsafe` stays in `sys`.

use std::borrow::Cow;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use super::{check, cstr};

/// The longest path (in bytes, without the NUL) one syscall accepts.
pub const PATH_LIMIT: usize = libc::PATH_MAX as usize - 1;

/// The longest name of one directory entry (in bytes).
pub const NAME_LIMIT: usize = 255;

/// A path ready for one call: the directory to resolve it from and what to pass. Holds the
/// parent directory it opened (if any) for as long as the call needs it.
#[derive(Debug)]
pub struct Resolved<'a> {
    held: Option<OwnedFd>,
    dir: RawFd,
    name: Cow<'a, Path>,
}

impl Resolved<'_> {
    /// The directory fd the call resolves [`Resolved::name`] from.
    pub fn dir(&self) -> RawFd {
        self.held.as_ref().map_or(self.dir, |d| d.as_raw_fd())
    }

    pub fn name(&self) -> &Path {
        &self.name
    }
}

/// Whether `name` is too long for one call.
pub fn is_long(name: &Path) -> bool {
    name.as_os_str().len() > PATH_LIMIT
}

/// `name` relative to `dir` (`AT_FDCWD` for an absolute or cwd-relative path) as a directory
/// and a name the kernel accepts: unchanged when short, else the parent opened piecewise and the
/// last component.
pub fn at(dir: RawFd, name: &Path) -> io::Result<Resolved<'_>> {
    if !is_long(name) {
        return Ok(Resolved {
            held: None,
            dir,
            name: Cow::Borrowed(name),
        });
    }
    let (parent, last) = match (name.parent(), name.file_name()) {
        (Some(p), Some(l)) => (p, l),
        _ => return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG)),
    };
    let held = open_parent(dir, parent)?;
    Ok(Resolved {
        held: Some(held),
        dir,
        name: Cow::Owned(PathBuf::from(last)),
    })
}

/// `path` as a path the kernel accepts for the path-only calls (`l*xattr`): unchanged when
/// short, else `/proc/self/fd/N/LAST` with `N` its parent, opened piecewise and held.
pub fn path(path: &Path) -> io::Result<Resolved<'_>> {
    let Resolved { held, dir, name } = at(libc::AT_FDCWD, path)?;
    let Some(held) = held else {
        return Ok(Resolved {
            held: None,
            dir,
            name,
        });
    };
    let via = super::fd_child_path(held.as_fd(), &name);
    Ok(Resolved {
        held: Some(held),
        dir,
        name: Cow::Owned(via),
    })
}

/// Open the directory `rel` (relative to `dir`, or absolute) as `O_PATH` in pieces shorter
/// than `PATH_MAX`. The first piece of an absolute path resolves as usual (it holds the layer's
/// own path); every other piece stays beneath the directory before it and follows no symlink.
fn open_parent(dir: RawFd, rel: &Path) -> io::Result<OwnedFd> {
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    let mut cur: Option<OwnedFd> = None;
    let mut first = true;
    for piece in pieces(rel)? {
        let from = cur.as_ref().map_or(dir, |d| d.as_raw_fd());
        let fd = if first && piece.as_bytes().first() == Some(&b'/') {
            plain_open(from, &piece, flags)?
        } else {
            beneath_open(from, &piece, flags)?
        };
        first = false;
        cur = Some(fd);
    }
    match cur {
        Some(fd) => Ok(fd),
        None => plain_open(dir, &OsString::from("."), flags),
    }
}

/// `rel` cut at component boundaries into pieces of at most [`PATH_LIMIT`] bytes.
fn pieces(rel: &Path) -> io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    for c in rel.components() {
        let part: &[u8] = match c {
            Component::RootDir => {
                cur.push(b'/');
                continue;
            }
            Component::CurDir => continue,
            other => other.as_os_str().as_bytes(),
        };
        if part.len() > NAME_LIMIT {
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        let sep = usize::from(!cur.is_empty() && cur != b"/");
        if cur.len() + sep + part.len() > PATH_LIMIT {
            out.push(OsString::from_vec(std::mem::take(&mut cur)));
        }
        if !cur.is_empty() && cur != b"/" {
            cur.push(b'/');
        }
        cur.extend_from_slice(part);
    }
    if !cur.is_empty() {
        out.push(OsString::from_vec(cur));
    }
    Ok(out)
}

fn plain_open(dir: RawFd, name: &OsString, flags: i32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: valid C string; the fd returned is owned by us.
    let fd = check(unsafe { libc::openat(dir, c.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: fresh fd from openat.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn beneath_open(dir: RawFd, name: &OsString, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: a raw fd the caller keeps open for this call.
    let bdir = unsafe { std::os::fd::BorrowedFd::borrow_raw(dir) };
    if dir == libc::AT_FDCWD {
        return plain_open(dir, name, flags);
    }
    super::open_beneath(bdir, Path::new(name), flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_components() {
        let a = "a".repeat(255);
        let mut p = PathBuf::from("/");
        for _ in 0..40 {
            p.push(&a);
        }
        let ps = pieces(&p).unwrap();
        assert!(ps.len() >= 3);
        assert!(ps.iter().all(|x| x.len() <= PATH_LIMIT));
        assert_eq!(ps[0].as_bytes()[0], b'/');
        let total: usize = ps.iter().map(|x| x.len()).sum::<usize>() + ps.len() - 1;
        assert_eq!(total, p.as_os_str().len());
    }

    #[test]
    fn resolves_long_paths() {
        let d = tempfile::tempdir().unwrap();
        let a = "d".repeat(250);
        let mut p = d.path().to_path_buf();
        let dir = super::super::open_dir(d.path()).unwrap();
        let mut rel = PathBuf::new();
        for _ in 0..20 {
            rel.push(&a);
            super::super::mkdirat(std::os::fd::AsFd::as_fd(&dir), &rel, 0o755).unwrap();
            p.push(&a);
        }
        assert!(is_long(&p));
        let st = super::super::lstat(&p).unwrap();
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFDIR);
        let r = path(&p).unwrap();
        assert!(!is_long(r.name()));
    }
}
