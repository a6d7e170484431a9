//! Every whiteout and opaque-directory format stratafs reads, and the one it writes.
//!
//! Read: `.wh.NAME` files (aufs/OCI/fuse-overlayfs rootless), character devices 0/0 (kernel
//! overlayfs, fuse-overlayfs as root), `.wh..wh..opq` files and the `trusted.overlay.opaque`,
//! `user.overlay.opaque`, `user.fuseoverlayfs.opaque` xattrs (value `y`).
//! Write: `.wh.NAME` and `.wh..wh..opq` empty files, which need no privilege and no xattrs;
//! for a name too long to carry the prefix (over 251 bytes) a character device 0/0 under the
//! name itself (which Linux 5.8 and later let anyone make).
//! This is the only module that knows these spellings.

use std::ffi::OsStr;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::sys;

/// Prefix of a whiteout file name.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the file that marks its directory opaque.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Prefix of aufs-internal names (`.wh..wh.plnk`, `.wh..wh.aufs`), which are never shown.
const META_PREFIX: &str = ".wh..wh.";
/// The xattrs that mark a directory opaque when set to `y`.
pub const OPAQUE_XATTRS: [&str; 3] = [
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
];

/// What a directory entry's name means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind<'a> {
    /// An ordinary name.
    Plain,
    /// `.wh.NAME`: deletes `NAME` of lower layers.
    Whiteout(&'a OsStr),
    /// `.wh..wh..opq`: the directory holding it is opaque.
    OpaqueMarker,
    /// Another aufs-internal `.wh..wh.*` name: hidden, meaningless to us.
    Internal,
    /// A bare `.wh.`: invalid in an archive, hidden in a view.
    Invalid,
}

/// Classify a directory entry name.
pub fn classify(name: &OsStr) -> NameKind<'_> {
    let b = name.as_bytes();
    if !b.starts_with(WHITEOUT_PREFIX.as_bytes()) {
        return NameKind::Plain;
    }
    if b == OPAQUE_MARKER.as_bytes() {
        return NameKind::OpaqueMarker;
    }
    if b.starts_with(META_PREFIX.as_bytes()) {
        return NameKind::Internal;
    }
    let target = &b[WHITEOUT_PREFIX.len()..];
    if target.is_empty() || target == b"." || target == b".." || target.contains(&b'/') {
        return NameKind::Invalid;
    }
    NameKind::Whiteout(OsStr::from_bytes(target))
}

/// The whiteout file name for `name` (`.wh.NAME`).
pub fn whiteout_name(name: &OsStr) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from(WHITEOUT_PREFIX);
    s.push(name);
    s
}

/// Whether `name` leaves room for the `.wh.` prefix within the kernel's 255-byte names: a longer
/// one can only be deleted with a whiteout device.
pub fn marker_fits(name: &OsStr) -> bool {
    name.len() + WHITEOUT_PREFIX.len() <= sys::NAME_LIMIT
}

/// Whether a `stat` result is a kernel-overlay style whiteout (char device 0/0).
pub fn is_whiteout_device(st: &libc::stat) -> bool {
    (st.st_mode & libc::S_IFMT) == libc::S_IFCHR && st.st_rdev == 0
}

/// Whether an xattr value means "opaque".
fn is_yes(v: &[u8]) -> bool {
    v == b"y" || v == b"y\0"
}

/// Whether the directory at `path` carries one of the opaque xattrs.
pub fn has_opaque_xattr(path: &Path) -> bool {
    OPAQUE_XATTRS
        .iter()
        .any(|x| matches!(sys::lgetxattr(path, x), Ok(Some(v)) if is_yes(&v)))
}

/// Whether the open directory `fd` carries one of the opaque xattrs.
pub fn fd_has_opaque_xattr(fd: BorrowedFd<'_>) -> bool {
    let read_each = || {
        OPAQUE_XATTRS
            .iter()
            .any(|x| matches!(sys::fgetxattr(fd, x), Ok(Some(v)) if is_yes(&v)))
    };
    // One flistxattr answers the common case (no xattrs, or none of ours) without a read each.
    match sys::flistxattr(fd) {
        Ok(names) => {
            names
                .iter()
                .any(|n| OPAQUE_XATTRS.iter().any(|x| x.as_bytes() == n.as_slice()))
                && read_each()
        }
        Err(_) => read_each(),
    }
}

/// Whether the open directory `fd` is opaque in any format (xattr or marker file).
pub fn fd_is_opaque_dir(fd: BorrowedFd<'_>) -> bool {
    fd_has_opaque_xattr(fd) || sys::fstatat(fd, Path::new(OPAQUE_MARKER)).is_ok()
}

/// Whether the open directory `dir` records `name` as deleted, in either format.
pub fn fd_has_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    (marker_fits(name) && sys::fstatat(dir, Path::new(&whiteout_name(name))).is_ok())
        || matches!(sys::fstatat(dir, Path::new(name)), Ok(st) if is_whiteout_device(&st))
}

/// Whether the directory at `path` is opaque in any format (xattr or marker file).
pub fn is_opaque_dir(path: &Path) -> bool {
    has_opaque_xattr(path) || sys::lstat(&path.join(OPAQUE_MARKER)).is_ok()
}

/// Record that `name` in `dir` is deleted: create `.wh.NAME` (an empty file, mode 0), or, for
/// a name too long for that, a whiteout device at `name` (which must then be free).
pub fn write_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    if !marker_fits(name) {
        return write_whiteout_device(dir, name);
    }
    let wh = whiteout_name(name);
    match sys::openat(
        dir,
        Path::new(&wh),
        libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW,
        0o000,
    ) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Make the whiteout device (character device 0/0) `name` in `dir`; one already there is fine.
pub fn write_whiteout_device(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match sys::mknodat(dir, name, libc::S_IFCHR, 0) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            match sys::fstatat(dir, Path::new(name)) {
                Ok(st) if is_whiteout_device(&st) => Ok(()),
                _ => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Record that `name` in `dir` is deleted by hard-linking `.wh.NAME` to the empty whiteout file
/// `base_name` in `base_dir` (kernel overlayfs shares one whiteout inode the same way): a link
/// costs the filesystem no inode allocation. `Ok(false)` when the base cannot take another
/// link (`EMLINK`) or the filesystem refuses hard links; the caller then makes a new base or
/// falls back to [`write_whiteout`].
pub fn link_whiteout(
    base_dir: BorrowedFd<'_>,
    base_name: &OsStr,
    dir: BorrowedFd<'_>,
    name: &OsStr,
) -> io::Result<bool> {
    if !marker_fits(name) {
        return Ok(false);
    }
    match sys::linkat(base_dir, base_name, dir, &whiteout_name(name)) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(true),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EMLINK | libc::EPERM | libc::EOPNOTSUPP | libc::ENOENT)
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Create the empty file `name` in `dir` that [`link_whiteout`] links whiteouts to, replacing
/// an older one.
pub fn make_whiteout_base(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let tmp = {
        let mut t = name.to_os_string();
        t.push(".new");
        t
    };
    let _ = sys::unlinkat(dir, Path::new(&tmp), 0);
    drop(sys::openat(
        dir,
        Path::new(&tmp),
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
        0o000,
    )?);
    sys::renameat2(dir, &tmp, dir, name, 0)
}

/// Mark the directory `dir` opaque: create `.wh..wh..opq`.
pub fn write_opaque(dir: BorrowedFd<'_>) -> io::Result<()> {
    sys::openat(
        dir,
        Path::new(OPAQUE_MARKER),
        libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW,
        0o000,
    )
    .map(drop)
}

/// Whether an xattr name is internal to overlay implementations or to stratafs and must not be
/// shown in a view nor exported in a diff.
pub fn is_internal_xattr(name: &[u8]) -> bool {
    const INTERNAL: [&[u8]; 4] = [
        b"trusted.overlay.",
        b"user.overlay.",
        b"user.fuseoverlayfs.",
        b"user.stratafs.",
    ];
    INTERNAL.iter().any(|p| name.starts_with(p))
        || name == crate::layer::meta::OVERRIDE_STAT_XATTR.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_names() {
        assert_eq!(classify(OsStr::new("etc")), NameKind::Plain);
        assert_eq!(classify(OsStr::new(".whx")), NameKind::Plain);
        assert_eq!(
            classify(OsStr::new(".wh.etc")),
            NameKind::Whiteout(OsStr::new("etc"))
        );
        assert_eq!(classify(OsStr::new(".wh..wh..opq")), NameKind::OpaqueMarker);
        assert_eq!(classify(OsStr::new(".wh..wh.plnk")), NameKind::Internal);
        assert_eq!(classify(OsStr::new(".wh.")), NameKind::Invalid);
        assert_eq!(classify(OsStr::new(".wh...")), NameKind::Invalid);
        assert_eq!(whiteout_name(OsStr::new("a b")), ".wh.a b");
    }

    #[test]
    fn writes_markers_and_detects_them() {
        let d = tempfile::tempdir().unwrap();
        let fd = sys::open_dir(d.path()).unwrap();
        use std::os::fd::AsFd;
        write_whiteout(fd.as_fd(), OsStr::new("gone")).unwrap();
        write_whiteout(fd.as_fd(), OsStr::new("gone")).unwrap();
        assert!(d.path().join(".wh.gone").exists());
        assert!(!is_opaque_dir(d.path()));
        write_opaque(fd.as_fd()).unwrap();
        assert!(is_opaque_dir(d.path()));
    }

    #[test]
    fn internal_xattrs() {
        assert!(is_internal_xattr(b"trusted.overlay.opaque"));
        assert!(is_internal_xattr(b"user.containers.override_stat"));
        assert!(is_internal_xattr(b"user.stratafs.origin"));
        assert!(!is_internal_xattr(b"user.mime_type"));
        assert!(!is_internal_xattr(b"security.capability"));
    }
}
