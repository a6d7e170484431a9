//! Syscall wrappers for the write path (creating, linking, renaming, copying and changing
//! attributes of files in an upper layer). Part of `sys`: the crate's `unsafe` stays in `sys`.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::{check, check_size, cstr};

/// `unlinkat(dir, name, 0)` for non-directories, `AT_REMOVEDIR` when `is_dir`.
pub fn unlink_entry(dir: BorrowedFd<'_>, name: &OsStr, is_dir: bool) -> io::Result<()> {
    super::unlinkat(
        dir,
        Path::new(name),
        if is_dir { libc::AT_REMOVEDIR } else { 0 },
    )
}

/// `renameat2` flag: fail with `EEXIST` when the target exists.
pub const RENAME_NOREPLACE: u32 = libc::RENAME_NOREPLACE;
/// `renameat2` flag: swap the two names atomically.
pub const RENAME_EXCHANGE: u32 = libc::RENAME_EXCHANGE;

/// `renameat2(old_dir, old, new_dir, new, flags)`.
pub fn renameat2(
    old_dir: BorrowedFd<'_>,
    old: &OsStr,
    new_dir: BorrowedFd<'_>,
    new: &OsStr,
    flags: u32,
) -> io::Result<()> {
    let o = cstr(old)?;
    let n = cstr(new)?;
    // SAFETY: valid fds and C strings.
    check(unsafe {
        libc::renameat2(
            old_dir.as_raw_fd(),
            o.as_ptr(),
            new_dir.as_raw_fd(),
            n.as_ptr(),
            flags as libc::c_uint,
        )
    })?;
    Ok(())
}

/// A time for [`utimensat`]: leave alone, set to now, or set to a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSpec {
    Omit,
    Now,
    At { sec: i64, nsec: i64 },
}

impl TimeSpec {
    fn raw(self) -> libc::timespec {
        match self {
            TimeSpec::Omit => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            TimeSpec::Now => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            TimeSpec::At { sec, nsec } => libc::timespec {
                tv_sec: sec as libc::time_t,
                tv_nsec: nsec as _,
            },
        }
    }
}

/// `utimensat(dir, name, [atime, mtime], AT_SYMLINK_NOFOLLOW)`.
pub fn set_times_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    atime: TimeSpec,
    mtime: TimeSpec,
) -> io::Result<()> {
    let c = cstr(name)?;
    let times = [atime.raw(), mtime.raw()];
    let mut flags = libc::AT_SYMLINK_NOFOLLOW;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    // SAFETY: valid fd, C string and a two-element array.
    check(unsafe { libc::utimensat(dir.as_raw_fd(), c.as_ptr(), times.as_ptr(), flags) })?;
    Ok(())
}

/// `futimens(fd, [atime, mtime])`.
pub fn futimens(fd: BorrowedFd<'_>, atime: TimeSpec, mtime: TimeSpec) -> io::Result<()> {
    let times = [atime.raw(), mtime.raw()];
    // SAFETY: valid fd and array.
    check(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })?;
    Ok(())
}

/// `fstat(fd)`.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is valid; pointer valid for the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// `copy_file_range(src, &off_in, dst, &off_out, len, 0)`: bytes copied (0 at end of file).
pub fn copy_file_range(
    src: BorrowedFd<'_>,
    off_in: &mut i64,
    dst: BorrowedFd<'_>,
    off_out: &mut i64,
    len: usize,
) -> io::Result<usize> {
    // SAFETY: valid fds and offset pointers.
    check_size(unsafe {
        libc::copy_file_range(
            src.as_raw_fd(),
            off_in as *mut i64 as *mut libc::loff_t,
            dst.as_raw_fd(),
            off_out as *mut i64 as *mut libc::loff_t,
            len,
            0,
        )
    } as libc::ssize_t)
}

/// `sendfile(dst, src, &offset, len)`: an in-kernel copy that works across filesystems.
pub fn sendfile(
    dst: BorrowedFd<'_>,
    src: BorrowedFd<'_>,
    off: &mut i64,
    len: usize,
) -> io::Result<usize> {
    let mut o = *off as libc::off_t;
    // SAFETY: valid fds and offset pointer.
    let n = check_size(unsafe { libc::sendfile(dst.as_raw_fd(), src.as_raw_fd(), &mut o, len) })?;
    *off = o as i64;
    Ok(n)
}

/// `ftruncate(fd, len)`.
pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    // SAFETY: valid fd.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) })?;
    Ok(())
}

/// `fallocate(fd, mode, off, len)`.
pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, off: i64, len: i64) -> io::Result<()> {
    // SAFETY: valid fd.
    check(unsafe {
        libc::fallocate(fd.as_raw_fd(), mode, off as libc::off_t, len as libc::off_t)
    })?;
    Ok(())
}

/// `pwrite(fd, buf, off)`.
pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], off: i64) -> io::Result<usize> {
    // SAFETY: valid fd and buffer.
    check_size(unsafe {
        libc::pwrite(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            off as libc::off_t,
        )
    })
}

/// `fsync(fd)` or, with `data_only`, `fdatasync(fd)`.
pub fn fsync(fd: BorrowedFd<'_>, data_only: bool) -> io::Result<()> {
    // SAFETY: valid fd.
    check(unsafe {
        if data_only {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })?;
    Ok(())
}

/// `syncfs(fd)`: everything written to the filesystem of `fd` is on disk afterwards.
pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: valid fd.
    check(unsafe { libc::syncfs(fd.as_raw_fd()) })?;
    Ok(())
}

/// `lremovexattr`, with "absent" (`ENODATA`) reported as `Ok(false)`.
pub fn lremovexattr_if_present(path: &Path, name: &str) -> io::Result<bool> {
    match super::lremovexattr(path, name) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `open(path, O_PATH | O_NOFOLLOW)`: a handle on any file type, including symlinks.
pub fn open_path(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: valid C string; fd ownership taken below.
    let fd = check(unsafe {
        libc::open(
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
