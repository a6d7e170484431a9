//! Opening, inspecting and reading files: `openat`/`openat2` (confined below a directory),
//! stat calls, `lseek`, symlink targets. Part of `sys`: the crate's `unsafe` stays in `sys`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::{check, check_size, cstr, nofollow_flags};

/// `openat(dirfd, name, flags | O_CLOEXEC, mode)`.
pub fn openat(dir: BorrowedFd<'_>, name: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let r = super::long::at(dir.as_raw_fd(), name)?;
    let c = cstr(r.name())?;
    // SAFETY: c is a valid NUL-terminated string; the fd returned is owned by us.
    let fd = check(unsafe {
        libc::openat(
            r.dir(),
            c.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: fd was just returned by openat and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Open a directory (`O_DIRECTORY | O_RDONLY`), following no final symlink.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let r = super::long::at(libc::AT_FDCWD, path)?;
    let c = cstr(r.name())?;
    // SAFETY: valid C string; fd ownership taken below.
    let fd = check(unsafe {
        libc::openat(
            r.dir(),
            c.as_ptr(),
            libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    })?;
    // SAFETY: fresh fd from open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat2(dir, name, {flags | O_CLOEXEC, mode, resolve})`: path resolution confined by the
/// kernel (`RESOLVE_BENEATH` refuses `..`, absolute symlinks and anything leading out of `dir`).
pub fn openat2(
    dir: BorrowedFd<'_>,
    name: &Path,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let r = super::long::at(dir.as_raw_fd(), name)?;
    let c = cstr(r.name())?;
    // SAFETY: zeroed open_how is valid (all-integer struct); fields set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        mode as u64
    } else {
        0
    };
    how.resolve = resolve;
    loop {
        // SAFETY: valid fd, C string and open_how pointer with its exact size.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                r.dir(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r >= 0 {
            // SAFETY: fresh fd returned by the kernel.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as i32) });
        }
        let e = io::Error::last_os_error();
        // EAGAIN: a concurrent rename raced the lookup; the kernel asks us to retry.
        if e.raw_os_error() != Some(libc::EAGAIN) && e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Open `rel` below the directory `dir` (`.` when empty) following no symlink on the way and
/// never leaving `dir` (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): a path computed
/// from the merged tree stays inside its layer even when a directory on it was swapped for a
/// symlink meanwhile (another request may do that between our look-up and the open). Before
/// Linux 5.6 (no openat2): plain `openat`, the last component still not followed.
pub fn open_beneath(dir: BorrowedFd<'_>, rel: &Path, flags: i32) -> io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let flags = flags | libc::O_NOFOLLOW;
    match openat2(
        dir,
        rel,
        flags,
        0,
        RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS,
    ) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => openat(dir, rel, flags, 0),
        other => other,
    }
}

/// The directory `rel` below `dir`, opened as [`open_beneath`] does; `None` when there is no
/// directory there (absent, a non-directory, or a symlink on the way).
pub fn open_dir_if_present(dir: BorrowedFd<'_>, rel: &Path) -> io::Result<Option<OwnedFd>> {
    match open_beneath(dir, rel, libc::O_RDONLY | libc::O_DIRECTORY) {
        Ok(fd) => Ok(Some(fd)),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`: stay under the starting directory.
pub const RESOLVE_BENEATH: u64 = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;

/// `open(path, O_PATH | O_NOFOLLOW)`: a handle on any file type, including symlinks.
pub fn open_path(path: &Path) -> io::Result<OwnedFd> {
    let r = super::long::at(libc::AT_FDCWD, path)?;
    let c = cstr(r.name())?;
    // SAFETY: valid C string; fd ownership taken below.
    let fd = check(unsafe {
        libc::openat(
            r.dir(),
            c.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Duplicate a file descriptor.
pub fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

/// The path under `/proc/self/fd` naming `name` inside the open directory `dir`, for the
/// `l*xattr` calls that have no `*at` form. Safe against symlinks because `name` is a single
/// component and `l*` calls do not follow a final symlink.
pub fn fd_child_path(dir: BorrowedFd<'_>, name: &Path) -> std::path::PathBuf {
    let base = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    if name.as_os_str().is_empty() {
        base
    } else {
        base.join(name)
    }
}

/// A `stat` with every field zero, to be filled in by the kernel (or by hand, in tests).
pub fn empty_stat() -> libc::stat {
    // SAFETY: `libc::stat` is a plain C struct of integers: all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// `fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW)`; an empty name stats `dir` itself.
pub fn fstatat(dir: BorrowedFd<'_>, name: &Path) -> io::Result<libc::stat> {
    let r = super::long::at(dir.as_raw_fd(), name)?;
    let c = cstr(r.name())?;
    let flags = nofollow_flags(name.as_os_str());
    let mut st = empty_stat();
    // SAFETY: c is a valid C string and st a valid stat for the call's duration.
    check(unsafe { libc::fstatat(r.dir(), c.as_ptr(), &mut st, flags) })?;
    Ok(st)
}

/// `lstat(path)`.
pub fn lstat(path: &Path) -> io::Result<libc::stat> {
    let r = super::long::at(libc::AT_FDCWD, path)?;
    let c = cstr(r.name())?;
    let mut st = empty_stat();
    // SAFETY: valid pointers.
    check(unsafe { libc::fstatat(r.dir(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

/// `fstat(fd)`.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = empty_stat();
    // SAFETY: st is a valid stat for the call's duration.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// `fstatvfs(fd)`.
pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    // SAFETY: zeroed statvfs is a valid plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and pointer.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// Whether two open files live on the same inode.
pub fn same_inode(a: &libc::stat, b: &libc::stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

/// `major`/`minor` of a device number.
pub fn dev_major_minor(rdev: u64) -> (u32, u32) {
    (libc::major(rdev), libc::minor(rdev))
}

/// `makedev`.
pub fn makedev(major: u32, minor: u32) -> u64 {
    libc::makedev(major, minor)
}

/// `readlinkat(dir, name)`; an empty name reads the symlink `dir` was opened on (O_PATH).
pub fn readlinkat(dir: BorrowedFd<'_>, name: &Path) -> io::Result<std::ffi::OsString> {
    use std::os::unix::ffi::OsStringExt;
    let r = super::long::at(dir.as_raw_fd(), name)?;
    let c = cstr(r.name())?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: valid fd, C string and buffer of the given length.
        let n = check_size(unsafe {
            libc::readlinkat(r.dir(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        })?;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(std::ffi::OsString::from_vec(buf));
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// `lseek(fd, offset, whence)`.
pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: plain syscall on a valid fd.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `open(path, flags | O_CLOEXEC)`, for a path of any length (see `long`).
pub fn open_file(path: &Path, flags: i32) -> io::Result<OwnedFd> {
    let r = super::long::at(libc::AT_FDCWD, path)?;
    let c = cstr(r.name())?;
    // SAFETY: valid C string; fd ownership taken below.
    let fd = check(unsafe { libc::openat(r.dir(), c.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `readlink(path)`, for a path of any length.
pub fn readlink(path: &Path) -> io::Result<std::ffi::OsString> {
    let r = super::long::at(libc::AT_FDCWD, path)?;
    // SAFETY: the fd stays open (held by `r`) for this call.
    let dir = unsafe { BorrowedFd::borrow_raw(r.dir()) };
    readlinkat(dir, r.name())
}
