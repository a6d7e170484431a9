//! Syscall wrappers for the write path (creating, linking, renaming, copying and changing
//! attributes of files in an upper layer). Part of `sys`: the crate's `unsafe` stays in `sys`.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use super::{check, check_size, cstr, nofollow_flags, openat};

/// `unlinkat(dir, name, 0)` for non-directories, `AT_REMOVEDIR` when `is_dir`.
pub fn unlink_entry(dir: BorrowedFd<'_>, name: &OsStr, is_dir: bool) -> io::Result<()> {
    super::unlinkat(
        dir,
        Path::new(name),
        if is_dir { libc::AT_REMOVEDIR } else { 0 },
    )
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdirat<P: AsRef<Path> + ?Sized>(
    dir: BorrowedFd<'_>,
    name: &P,
    mode: u32,
) -> io::Result<()> {
    let name: &Path = name.as_ref();
    let r = super::long::at(dir.as_raw_fd(), name)?;
    let c = cstr(r.name())?;
    // SAFETY: valid fd and C string.
    check(unsafe { libc::mkdirat(r.dir(), c.as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// `mknodat(dir, name, mode, dev)`.
pub fn mknodat<P: AsRef<Path> + ?Sized>(
    dir: BorrowedFd<'_>,
    name: &P,
    mode: u32,
    dev: u64,
) -> io::Result<()> {
    let name: &Path = name.as_ref();
    let r = super::long::at(dir.as_raw_fd(), name)?;
    let c = cstr(r.name())?;
    // SAFETY: valid fd and C string.
    check(unsafe {
        libc::mknodat(
            r.dir(),
            c.as_ptr(),
            mode as libc::mode_t,
            dev as libc::dev_t,
        )
    })
    .map(drop)
}

/// `symlinkat(target, dir, name)`.
pub fn symlinkat<P: AsRef<Path> + ?Sized>(
    target: &OsStr,
    dir: BorrowedFd<'_>,
    name: &P,
) -> io::Result<()> {
    let name: &Path = name.as_ref();
    let t = cstr(target)?;
    let r = super::long::at(dir.as_raw_fd(), name)?;
    let c = cstr(r.name())?;
    // SAFETY: valid C strings and fd.
    check(unsafe { libc::symlinkat(t.as_ptr(), r.dir(), c.as_ptr()) }).map(drop)
}

/// `linkat(olddir, oldname, newdir, newname, 0)`: never follows a symlink at `oldname`.
pub fn linkat<A: AsRef<Path> + ?Sized, B: AsRef<Path> + ?Sized>(
    olddir: BorrowedFd<'_>,
    oldname: &A,
    newdir: BorrowedFd<'_>,
    newname: &B,
) -> io::Result<()> {
    let (oldname, newname): (&Path, &Path) = (oldname.as_ref(), newname.as_ref());
    let (ro, rn) = (
        super::long::at(olddir.as_raw_fd(), oldname)?,
        super::long::at(newdir.as_raw_fd(), newname)?,
    );
    let o = cstr(ro.name())?;
    let n = cstr(rn.name())?;
    // SAFETY: valid C strings and fds.
    check(unsafe { libc::linkat(ro.dir(), o.as_ptr(), rn.dir(), n.as_ptr(), 0) }).map(drop)
}

/// An unnamed regular file in directory `dir` (`O_TMPFILE`, read-write), with mode `mode`.
pub fn open_unnamed(dir: BorrowedFd<'_>, mode: u32) -> io::Result<OwnedFd> {
    openat(dir, Path::new("."), libc::O_TMPFILE | libc::O_RDWR, mode)
}

/// Give the unnamed file `fd` (from [`open_unnamed`]) the name `dir/name` (fails with
/// `EEXIST` if taken). Through `/proc/self/fd`: `AT_EMPTY_PATH` needs a capability.
pub fn link_unnamed(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let o = cstr(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    let n = cstr(name)?;
    // SAFETY: valid C strings and fds.
    check(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            o.as_ptr(),
            dir.as_raw_fd(),
            n.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

/// `unlinkat(dir, name, flags)` (`libc::AT_REMOVEDIR` for directories).
pub fn unlinkat(dir: BorrowedFd<'_>, name: &Path, flags: i32) -> io::Result<()> {
    let r = super::long::at(dir.as_raw_fd(), name)?;
    let c = cstr(r.name())?;
    // SAFETY: valid fd and C string.
    check(unsafe { libc::unlinkat(r.dir(), c.as_ptr(), flags) }).map(drop)
}

/// `renameat2` flag: fail with `EEXIST` when the target exists.
pub const RENAME_NOREPLACE: u32 = libc::RENAME_NOREPLACE;
/// `renameat2` flag: swap the two names atomically.
pub const RENAME_EXCHANGE: u32 = libc::RENAME_EXCHANGE;
/// `renameat2` flag: leave a 0/0 character device (an overlay whiteout) at the old name, in
/// the same atomic step as the move.
pub const RENAME_WHITEOUT: u32 = libc::RENAME_WHITEOUT;

/// `renameat2(old_dir, old, new_dir, new, flags)`.
pub fn renameat2(
    old_dir: BorrowedFd<'_>,
    old: &OsStr,
    new_dir: BorrowedFd<'_>,
    new: &OsStr,
    flags: u32,
) -> io::Result<()> {
    let (ro, rn) = (
        super::long::at(old_dir.as_raw_fd(), Path::new(old))?,
        super::long::at(new_dir.as_raw_fd(), Path::new(new))?,
    );
    let o = cstr(ro.name())?;
    let n = cstr(rn.name())?;
    // SAFETY: valid fds and C strings.
    check(unsafe {
        libc::renameat2(
            ro.dir(),
            o.as_ptr(),
            rn.dir(),
            n.as_ptr(),
            flags as libc::c_uint,
        )
    })?;
    Ok(())
}

/// A time for [`set_times_at`] and [`futimens`]: leave alone, set to now, or set to a value.
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
    let r = super::long::at(dir.as_raw_fd(), Path::new(name))?;
    let c = cstr(r.name())?;
    let times = [atime.raw(), mtime.raw()];
    let flags = nofollow_flags(name);
    // SAFETY: valid fd, C string and a two-element array.
    check(unsafe { libc::utimensat(r.dir(), c.as_ptr(), times.as_ptr(), flags) })?;
    Ok(())
}

/// `futimens(fd, [atime, mtime])`.
pub fn futimens(fd: BorrowedFd<'_>, atime: TimeSpec, mtime: TimeSpec) -> io::Result<()> {
    let times = [atime.raw(), mtime.raw()];
    // SAFETY: valid fd and array.
    check(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })?;
    Ok(())
}

/// Set atime and mtime (seconds, nanoseconds) of `name` in `dir`, not following a final symlink.
pub fn lutimensat(
    dir: BorrowedFd<'_>,
    name: &Path,
    atime: (i64, i64),
    mtime: (i64, i64),
) -> io::Result<()> {
    let at = |(sec, nsec): (i64, i64)| TimeSpec::At { sec, nsec };
    set_times_at(dir, name.as_os_str(), at(atime), at(mtime))
}

/// `fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW)`.
pub fn lchownat<P: AsRef<Path> + ?Sized>(
    dir: BorrowedFd<'_>,
    name: &P,
    uid: u32,
    gid: u32,
) -> io::Result<()> {
    let name: &Path = name.as_ref();
    let r = super::long::at(dir.as_raw_fd(), name)?;
    let c = cstr(r.name())?;
    let flags = nofollow_flags(name.as_os_str());
    // SAFETY: valid fd and C string.
    check(unsafe { libc::fchownat(r.dir(), c.as_ptr(), uid, gid, flags) }).map(drop)
}

/// `fchmodat(dir, name, mode, 0)` (follows nothing because callers never pass symlinks).
pub fn fchmodat<P: AsRef<Path> + ?Sized>(
    dir: BorrowedFd<'_>,
    name: &P,
    mode: u32,
) -> io::Result<()> {
    let name: &Path = name.as_ref();
    let r = super::long::at(dir.as_raw_fd(), name)?;
    let c = cstr(r.name())?;
    // SAFETY: valid fd and C string.
    check(unsafe { libc::fchmodat(r.dir(), c.as_ptr(), mode as libc::mode_t, 0) }).map(drop)
}

/// `fchmod(fd, mode)`.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }).map(drop)
}

/// `ioctl(dst, FICLONE, src)`: share the data blocks of `src` (reflink) where the filesystem can.
pub fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: both fds valid; FICLONE takes the source fd as its argument.
    check(unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) }).map(drop)
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

/// `link(old, new)` (not following a symlink at `old`), for paths of any length.
pub fn hard_link(old: &Path, new: &Path) -> io::Result<()> {
    let (ro, rn) = (
        super::long::at(libc::AT_FDCWD, old)?,
        super::long::at(libc::AT_FDCWD, new)?,
    );
    let o = cstr(ro.name())?;
    let n = cstr(rn.name())?;
    // SAFETY: valid C strings and fds.
    check(unsafe { libc::linkat(ro.dir(), o.as_ptr(), rn.dir(), n.as_ptr(), 0) }).map(drop)
}
