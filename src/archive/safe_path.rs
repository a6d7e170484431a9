//! The one path-safety check of archives: entry names are normalised here and every directory
//! an entry touches is resolved by the kernel beneath the layer root (`openat2` with
//! `RESOLVE_BENEATH`), so no symlink or `..` can lead a write outside the layer.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::sys;

/// Split an archive path into its components: leading `/` and `.` components are dropped (as
/// tar does), `..` anywhere is refused. An empty result names the layer root.
pub fn normalize(raw: &[u8]) -> std::result::Result<Vec<OsString>, &'static str> {
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains a '..' component"),
            _ if c.contains(&0) => return Err("path contains a NUL byte"),
            _ => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

/// Join components into a relative path.
pub fn join(comps: &[OsString]) -> PathBuf {
    comps.iter().collect()
}

/// Make an [`Error::UnsafeEntry`] for `entry`.
pub fn unsafe_entry(entry: &str, reason: impl Into<String>) -> Error {
    Error::UnsafeEntry {
        entry: entry.to_string(),
        reason: reason.into(),
    }
}

/// Translate a failed confined lookup into the error it means.
fn lookup_error(entry: &str, what: &Path, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::EXDEV) | Some(libc::ELOOP) => {
            unsafe_entry(entry, format!("{} leads outside the layer", what.display()))
        }
        Some(libc::ENOTDIR) => unsafe_entry(
            entry,
            format!("a component of {} is not a directory", what.display()),
        ),
        _ => Error::io(
            format!("resolving {} for entry {entry:?}", what.display()),
            e,
        ),
    }
}

/// An open layer root and a one-entry cache of the last parent directory resolved.
pub struct LayerRoot {
    path: PathBuf,
    fd: OwnedFd,
    cache: Option<(PathBuf, OwnedFd)>,
}

impl LayerRoot {
    /// Open the root directory of a layer (never through a symlink).
    pub fn open(path: &Path) -> Result<LayerRoot> {
        let fd = sys::open_dir(path).ctx(|| format!("opening {}", path.display()))?;
        Ok(LayerRoot {
            path: path.to_path_buf(),
            fd,
            cache: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Forget the cached parent: call after anything is removed or replaced.
    pub fn invalidate(&mut self) {
        self.cache = None;
    }

    /// Open the directory `rel` beneath the root (`O_PATH`, usable as a `*at` base).
    pub fn open_beneath(&self, rel: &Path, flags: i32) -> io::Result<OwnedFd> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        sys::openat2(self.fd(), rel, flags, 0, sys::RESOLVE_BENEATH)
    }

    /// The directory holding an entry whose parent components are `parent`, resolved beneath
    /// the root. Missing directories are created (mode 0755, owned by `owner`) when `create`
    /// is given, as tar does for archives that omit them.
    pub fn parent(
        &mut self,
        entry: &str,
        parent: &[OsString],
        create: Option<(u32, u32)>,
    ) -> Result<BorrowedFd<'_>> {
        let rel = join(parent);
        let hit = matches!(&self.cache, Some((p, _)) if *p == rel);
        if !hit {
            let fd = match self.open_beneath(&rel, libc::O_PATH | libc::O_DIRECTORY) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create.is_some() => {
                    self.create_dirs(entry, parent, create.unwrap_or((0, 0)))?
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    return Err(unsafe_entry(
                        entry,
                        format!("{} is not in the layer", rel.display()),
                    ))
                }
                Err(e) => return Err(lookup_error(entry, &rel, e)),
            };
            self.cache = Some((rel, fd));
        }
        match &self.cache {
            Some((_, fd)) => Ok(fd.as_fd()),
            None => Err(Error::io("parent cache", io::ErrorKind::Other.into())),
        }
    }

    /// Walk `parent` one component at a time, creating what is missing.
    fn create_dirs(&self, entry: &str, parent: &[OsString], owner: (u32, u32)) -> Result<OwnedFd> {
        let mut cur = self
            .open_beneath(Path::new(""), libc::O_PATH | libc::O_DIRECTORY)
            .ctx(|| format!("opening {}", self.path.display()))?;
        for (i, c) in parent.iter().enumerate() {
            let name = Path::new(c);
            let flags = libc::O_PATH | libc::O_DIRECTORY;
            let next = match sys::openat2(cur.as_fd(), name, flags, 0, sys::RESOLVE_BENEATH) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    sys::mkdirat(cur.as_fd(), name, 0o755)
                        .or_else(|e| {
                            if e.raw_os_error() == Some(libc::EEXIST) {
                                Ok(())
                            } else {
                                Err(e)
                            }
                        })
                        .ctx(|| {
                            format!(
                                "creating {} for entry {entry:?}",
                                join(&parent[..=i]).display()
                            )
                        })?;
                    if let Err(e) = sys::lchownat(cur.as_fd(), name, owner.0, owner.1) {
                        tracing::debug!(%e, "could not give an implied directory to the layer root owner");
                    }
                    sys::openat2(cur.as_fd(), name, flags, 0, sys::RESOLVE_BENEATH)
                        .map_err(|e| lookup_error(entry, &join(&parent[..=i]), e))?
                }
                Err(e) => return Err(lookup_error(entry, &join(&parent[..=i]), e)),
            };
            cur = next;
        }
        Ok(cur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_tar_and_refuses_dotdot() {
        let n = |s: &str| normalize(s.as_bytes());
        assert_eq!(n("./a//b/./c/").unwrap(), vec!["a", "b", "c"]);
        assert_eq!(n("/etc/passwd").unwrap(), vec!["etc", "passwd"]);
        assert!(n("./").unwrap().is_empty());
        assert!(n("a/../b").is_err());
        assert!(n("..").is_err());
        assert!(n("/../etc").is_err());
    }

    #[test]
    fn refuses_symlink_escapes() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink("/tmp", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../..", root.join("up")).unwrap();
        std::fs::create_dir(root.join("inside")).unwrap();
        std::os::unix::fs::symlink("inside", root.join("rel")).unwrap();
        let mut r = LayerRoot::open(&root).unwrap();
        for bad in ["abs", "up"] {
            let err = r
                .parent("e", &[bad.into()], Some((0, 0)))
                .map(drop)
                .unwrap_err();
            assert!(matches!(err, Error::UnsafeEntry { .. }), "{bad}: {err}");
        }
        r.parent("e", &["rel".into()], None).unwrap();
        r.parent("e", &["new".into(), "deep".into()], Some((0, 0)))
            .unwrap();
        assert!(root.join("new/deep").is_dir());
    }
}
