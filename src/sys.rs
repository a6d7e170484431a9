//! Thin, safe wrappers over the raw syscalls stratafs needs. All of the crate's `unsafe` for
//! syscalls lives here; callers get `io::Result`s.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

// The write path's wrappers (mkdirat, renameat2, FICLONE, copy_file_range, ...).
mod mutate;
pub use mutate::*;

/// A path or name as a C string; an interior NUL is `EINVAL`.
pub fn cstr(p: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(p.as_ref().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// `openat(dirfd, name, flags | O_CLOEXEC, mode)`.
pub fn openat(dir: BorrowedFd<'_>, name: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: c is a valid NUL-terminated string; the fd returned is owned by us.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
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
    let c = cstr(path)?;
    // SAFETY: valid C string; fd ownership taken below.
    let fd = check(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    })?;
    // SAFETY: fresh fd from open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW)`; an empty name stats `dir` itself.
pub fn fstatat(dir: BorrowedFd<'_>, name: &Path) -> io::Result<libc::stat> {
    let c = cstr(name)?;
    let flags = if name.as_os_str().is_empty() {
        libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    // SAFETY: zeroed stat is a valid value for this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers for the call's duration.
    check(unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), &mut st, flags) })?;
    Ok(st)
}

/// `lstat(path)`.
pub fn lstat(path: &Path) -> io::Result<libc::stat> {
    let c = cstr(path)?;
    // SAFETY: as in fstatat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers.
    check(unsafe { libc::lstat(c.as_ptr(), &mut st) })?;
    Ok(st)
}

fn xattr_buf_loop(
    mut call: impl FnMut(*mut libc::c_void, usize) -> libc::ssize_t,
) -> io::Result<Vec<u8>> {
    let mut size = 256usize;
    loop {
        let mut buf = vec![0u8; size];
        match check_size(call(buf.as_mut_ptr().cast(), buf.len())) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {
                // Ask for the real size, then retry with it (the value may grow in between).
                let need = check_size(call(std::ptr::null_mut(), 0))?;
                size = need.max(size * 2);
            }
            Err(e) => return Err(e),
        }
    }
}

/// `lgetxattr(path, name)`: `Ok(None)` when the attribute is absent or xattrs are unsupported.
pub fn lgetxattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let p = cstr(path)?;
    let n = cstr(name)?;
    // SAFETY: p and n are valid C strings; buffers are valid for the given lengths.
    let res =
        xattr_buf_loop(|buf, len| unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf, len) });
    absent_is_none(res)
}

/// `fgetxattr(fd, name)`: `Ok(None)` when absent or unsupported.
pub fn fgetxattr(fd: BorrowedFd<'_>, name: &str) -> io::Result<Option<Vec<u8>>> {
    let n = cstr(name)?;
    let raw = fd.as_raw_fd();
    // SAFETY: valid fd and C string; buffers valid for their lengths.
    let res = xattr_buf_loop(|buf, len| unsafe { libc::fgetxattr(raw, n.as_ptr(), buf, len) });
    absent_is_none(res)
}

fn absent_is_none(res: io::Result<Vec<u8>>) -> io::Result<Option<Vec<u8>>> {
    match res {
        Ok(v) => Ok(Some(v)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOTSUP)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `llistxattr(path)`: the attribute names (empty when xattrs are unsupported).
pub fn llistxattr(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let p = cstr(path)?;
    // SAFETY: valid C string and buffer.
    let res = xattr_buf_loop(|buf, len| unsafe { libc::llistxattr(p.as_ptr(), buf.cast(), len) });
    match res {
        Ok(raw) => Ok(raw
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| s.to_vec())
            .collect()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// `listxattrat(2)` (Linux >= 6.13): the same number on every architecture that has it.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
const SYS_LISTXATTRAT: libc::c_long = 465;

/// Cleared once the kernel answered `ENOSYS` to `listxattrat`.
static LISTXATTRAT_OK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// The xattr names of `name` inside the open directory `dir` (not following a final symlink),
/// NUL-terminated one after the other as the kernel lists them; empty when there are none or
/// xattrs are unsupported. Relative to `dir`, so no walk of the full path: `listxattrat` where
/// the kernel has it, else `llistxattr` through `/proc/self/fd`.
pub fn listxattrat(dir: BorrowedFd<'_>, name: &Path) -> io::Result<Vec<u8>> {
    let res = listxattrat_raw(dir, name);
    match res {
        Ok(v) => Ok(v),
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn listxattrat_raw(dir: BorrowedFd<'_>, name: &Path) -> io::Result<Vec<u8>> {
    let c = cstr(name)?;
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    ))]
    if LISTXATTRAT_OK.load(std::sync::atomic::Ordering::Relaxed) {
        let raw = dir.as_raw_fd();
        let call = |buf: *mut libc::c_void, len: usize| -> libc::ssize_t {
            // SAFETY: valid fd and C string; buf is valid for len bytes (or null with len 0).
            unsafe {
                libc::syscall(
                    SYS_LISTXATTRAT,
                    raw,
                    c.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                    buf,
                    len,
                ) as libc::ssize_t
            }
        };
        // Almost every file has no xattrs or a few short names: a stack buffer first, so the
        // common answer costs no allocation.
        let mut small = [0u8; 512];
        match check_size(call(small.as_mut_ptr().cast(), small.len())) {
            Ok(n) => return Ok(small[..n].to_vec()),
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => return xattr_buf_loop(call),
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                LISTXATTRAT_OK.store(false, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    let p = cstr(fd_child_path(dir, name))?;
    // SAFETY: valid C string and buffer.
    xattr_buf_loop(|buf, len| unsafe { libc::llistxattr(p.as_ptr(), buf.cast(), len) })
}

/// Limit glibc malloc to `n` arenas. Each thread otherwise gets an arena of its own, and memory
/// freed in one is not reused by the others: the peak grows with the thread count.
pub fn limit_malloc_arenas(n: i32) {
    // SAFETY: mallopt only changes allocator parameters.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, n);
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = n;
}

/// `lsetxattr(path, name, value, 0)`.
pub fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = cstr(path)?;
    let n = cstr(name)?;
    // SAFETY: valid C strings; value valid for its length.
    check(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })?;
    Ok(())
}

/// `lremovexattr(path, name)`.
pub fn lremovexattr(path: &Path, name: &str) -> io::Result<()> {
    let p = cstr(path)?;
    let n = cstr(name)?;
    // SAFETY: valid C strings.
    check(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) })?;
    Ok(())
}

/// `fsetxattr(fd, name, value, 0)`.
pub fn fsetxattr(fd: BorrowedFd<'_>, name: &str, value: &[u8]) -> io::Result<()> {
    let n = cstr(name)?;
    // SAFETY: valid fd, C string and buffer.
    check(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })?;
    Ok(())
}

/// Whether the process runs as root in the initial user namespace-ish sense (euid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid never fails.
    unsafe { libc::geteuid() == 0 }
}

/// The effective uid and gid of this process.
pub fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid/getegid never fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// An advisory whole-file lock (`flock`), shared across processes; released on drop.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Block until an exclusive lock on `path` (created if missing) is held.
    pub fn exclusive(path: &Path) -> io::Result<FileLock> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        loop {
            // SAFETY: valid fd for the file's lifetime.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if r == 0 {
                return Ok(FileLock { file });
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }

    /// Take an exclusive lock on `path` (created if missing) without waiting: `None` when
    /// someone else holds it.
    pub fn try_exclusive(path: &Path) -> io::Result<Option<FileLock>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        loop {
            // SAFETY: valid fd for the file's lifetime.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r == 0 {
                return Ok(Some(FileLock { file }));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => return Ok(None),
                _ => return Err(e),
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: valid fd; unlocking cannot violate memory safety. Closing the file also unlocks.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// `major`/`minor` of a device number.
pub fn dev_major_minor(rdev: u64) -> (u32, u32) {
    (libc::major(rdev), libc::minor(rdev))
}

/// `makedev`.
pub fn makedev(major: u32, minor: u32) -> u64 {
    libc::makedev(major, minor)
}

/// The name of the filesystem holding `path` (from `statfs`'s magic number).
pub fn fs_type_name(path: &Path) -> String {
    let Ok(c) = cstr(path) else {
        return "unknown".into();
    };
    // SAFETY: zeroed statfs is a valid plain C struct.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers for the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut sfs) } != 0 {
        return "unknown".into();
    }
    match sfs.f_type as i64 {
        0xEF53 => "extfs".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x6573_5546 => "fuse".into(),
        0x2FC1_2FC1 => "zfs".into(),
        0x6969 => "nfs".into(),
        0x5346_544E => "ntfs".into(),
        other => format!("0x{other:x}"),
    }
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
    let c = cstr(name)?;
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
                dir.as_raw_fd(),
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

/// `mkdirat(dir, name, mode)`.
pub fn mkdirat<P: AsRef<Path> + ?Sized>(
    dir: BorrowedFd<'_>,
    name: &P,
    mode: u32,
) -> io::Result<()> {
    let name: &Path = name.as_ref();
    let c = cstr(name)?;
    // SAFETY: valid fd and C string.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// `mknodat(dir, name, mode, dev)`.
pub fn mknodat<P: AsRef<Path> + ?Sized>(
    dir: BorrowedFd<'_>,
    name: &P,
    mode: u32,
    dev: u64,
) -> io::Result<()> {
    let name: &Path = name.as_ref();
    let c = cstr(name)?;
    // SAFETY: valid fd and C string.
    check(unsafe {
        libc::mknodat(
            dir.as_raw_fd(),
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
    let c = cstr(name)?;
    // SAFETY: valid C strings and fd.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) }).map(drop)
}

/// `linkat(olddir, oldname, newdir, newname, 0)`: never follows a symlink at `oldname`.
pub fn linkat<A: AsRef<Path> + ?Sized, B: AsRef<Path> + ?Sized>(
    olddir: BorrowedFd<'_>,
    oldname: &A,
    newdir: BorrowedFd<'_>,
    newname: &B,
) -> io::Result<()> {
    let (oldname, newname): (&Path, &Path) = (oldname.as_ref(), newname.as_ref());
    let o = cstr(oldname)?;
    let n = cstr(newname)?;
    // SAFETY: valid C strings and fds.
    check(unsafe {
        libc::linkat(
            olddir.as_raw_fd(),
            o.as_ptr(),
            newdir.as_raw_fd(),
            n.as_ptr(),
            0,
        )
    })
    .map(drop)
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
    let c = cstr(name)?;
    // SAFETY: valid fd and C string.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) }).map(drop)
}

/// `readlinkat(dir, name)`; an empty name reads the symlink `dir` was opened on (O_PATH).
pub fn readlinkat(dir: BorrowedFd<'_>, name: &Path) -> io::Result<std::ffi::OsString> {
    use std::os::unix::ffi::OsStringExt;
    let c = cstr(name)?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: valid fd, C string and buffer of the given length.
        let n = check_size(unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                c.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        })?;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(std::ffi::OsString::from_vec(buf));
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// `fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW)`.
pub fn lchownat<P: AsRef<Path> + ?Sized>(
    dir: BorrowedFd<'_>,
    name: &P,
    uid: u32,
    gid: u32,
) -> io::Result<()> {
    let name: &Path = name.as_ref();
    let c = cstr(name)?;
    let flags = if name.as_os_str().is_empty() {
        libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    // SAFETY: valid fd and C string.
    check(unsafe { libc::fchownat(dir.as_raw_fd(), c.as_ptr(), uid, gid, flags) }).map(drop)
}

/// `fchmodat(dir, name, mode, 0)` (follows nothing because callers never pass symlinks).
pub fn fchmodat<P: AsRef<Path> + ?Sized>(
    dir: BorrowedFd<'_>,
    name: &P,
    mode: u32,
) -> io::Result<()> {
    let name: &Path = name.as_ref();
    let c = cstr(name)?;
    // SAFETY: valid fd and C string.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t, 0) }).map(drop)
}

/// `fchmod(fd, mode)`.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }).map(drop)
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

/// `ioctl(dst, FICLONE, src)`: share the data blocks of `src` (reflink) where the filesystem can.
pub fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: both fds valid; FICLONE takes the source fd as its argument.
    check(unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) }).map(drop)
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

/// Whether two open files live on the same inode.
pub fn same_inode(a: &libc::stat, b: &libc::stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

/// One entry of a directory read with [`read_dir_fd`].
#[derive(Debug, Clone)]
pub struct RawDirEntry {
    pub name: std::ffi::OsString,
    pub ino: u64,
    /// `DT_*` type (may be `DT_UNKNOWN`).
    pub d_type: u8,
}

/// All entries of the open directory `dir` except `.` and `..`, via `getdents64` on a duplicate
/// of the fd (so the caller's offset is untouched).
pub fn read_dir_fd(dir: BorrowedFd<'_>) -> io::Result<Vec<RawDirEntry>> {
    let mut out = Vec::new();
    for_each_dirent(dir, |name, ino, d_type| {
        out.push(RawDirEntry {
            name: name.to_os_string(),
            ino,
            d_type,
        });
        Ok(())
    })?;
    Ok(out)
}

/// Call `f(name, ino, d_type)` for every entry of the open directory `dir` except `.` and
/// `..`, reading with `getdents64` from a duplicate of the fd (the caller's offset is
/// untouched). No allocation per entry; an error from `f` stops the walk.
pub fn for_each_dirent(
    dir: BorrowedFd<'_>,
    f: impl FnMut(&OsStr, u64, u8) -> io::Result<()>,
) -> io::Result<()> {
    let fd = openat(dir, Path::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    read_dirents(fd.as_fd(), f)
}

thread_local! {
    /// The `getdents64` buffer of this thread: a fresh 64 KiB buffer per listing cost a page
    /// fault per page whenever malloc had given the memory back.
    static DIRENT_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`for_each_dirent`] reading `fd` itself from its current offset: for a directory the caller
/// has just opened (one `openat` fewer).
pub fn read_dirents(
    fd: BorrowedFd<'_>,
    mut f: impl FnMut(&OsStr, u64, u8) -> io::Result<()>,
) -> io::Result<()> {
    DIRENT_BUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < DIRENT_BUF_LEN {
                buf.resize(DIRENT_BUF_LEN, 0);
            }
            read_dirents_into(fd, &mut buf, &mut f)
        }
        // Called from inside another listing's callback: a buffer of its own.
        Err(_) => read_dirents_into(fd, &mut vec![0u8; DIRENT_BUF_LEN], &mut f),
    })
}

const DIRENT_BUF_LEN: usize = 64 * 1024;

fn read_dirents_into(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    f: &mut impl FnMut(&OsStr, u64, u8) -> io::Result<()>,
) -> io::Result<()> {
    loop {
        // SAFETY: buf is valid for its length; the kernel writes at most that many bytes.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(());
        }
        let n = n as usize;
        let mut off = 0usize;
        // linux_dirent64: u64 d_ino, i64 d_off, u16 d_reclen, u8 d_type, char d_name[].
        while off + 19 <= n {
            let rec = &buf[off..n];
            let ino = u64::from_ne_bytes(rec[0..8].try_into().unwrap_or([0; 8]));
            let reclen = u16::from_ne_bytes([rec[16], rec[17]]) as usize;
            if reclen == 0 || reclen > rec.len() {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let d_type = rec[18];
            let name_bytes = &rec[19..reclen];
            let len = name_bytes
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(name_bytes.len());
            let name = &name_bytes[..len];
            if name != b"." && name != b".." {
                f(OsStr::from_bytes(name), ino, d_type)?;
            }
            off += reclen;
        }
    }
}

/// `fstatvfs(fd)`.
pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    // SAFETY: zeroed statvfs is a valid plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and pointer.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// `flistxattr(fd)`: the attribute names (empty when xattrs are unsupported).
pub fn flistxattr(fd: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let raw = fd.as_raw_fd();
    // SAFETY: valid fd and buffer.
    let res = xattr_buf_loop(|buf, len| unsafe { libc::flistxattr(raw, buf.cast(), len) });
    match res {
        Ok(raw) => Ok(raw
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| s.to_vec())
            .collect()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Ok(Vec::new()),
        Err(e) => Err(e),
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

/// Result of [`fork`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForkResult {
    Parent { child: i32 },
    Child,
}

/// `fork()`.
///
/// # Safety
/// The process must be single-threaded: the child runs only the calling thread, so any lock
/// held by another thread would stay locked forever.
pub unsafe fn fork() -> io::Result<ForkResult> {
    // SAFETY: the caller guarantees the process is single-threaded.
    let pid = check(unsafe { libc::fork() })?;
    Ok(if pid == 0 {
        ForkResult::Child
    } else {
        ForkResult::Parent { child: pid }
    })
}

/// `setsid()`.
pub fn setsid() -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::setsid() }).map(drop)
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is valid for two ints.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `dup2(from, to)`: make `to` (e.g. 0, 1, 2) refer to `from`.
pub fn dup2(from: BorrowedFd<'_>, to: i32) -> io::Result<()> {
    // SAFETY: plain syscall; `to` is replaced atomically.
    check(unsafe { libc::dup2(from.as_raw_fd(), to) }).map(drop)
}

/// Block SIGTERM, SIGINT and SIGHUP in the calling thread (inherited by threads it starts).
pub fn block_termination_signals() -> io::Result<()> {
    // SAFETY: sigset operations on a local, zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
    }
    Ok(())
}

/// Wait for one of the signals blocked by [`block_termination_signals`]; returns its number.
pub fn wait_termination_signal() -> io::Result<i32> {
    // SAFETY: as above; sigwait writes the signal number into `sig`.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        let mut sig: libc::c_int = 0;
        let r = libc::sigwait(&set, &mut sig);
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(sig)
    }
}

/// Whether a process with this pid exists (`kill(pid, 0)`; EPERM still means it exists).
pub fn process_exists(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether `pid` is a zombie (exited, not yet reaped): such a server is gone.
pub fn process_is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Send `sig` to `pid`.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// `umount2(path, flags)` (root only).
pub fn umount2(path: &Path, flags: i32) -> io::Result<()> {
    let c = cstr(path)?;
    // SAFETY: valid C string.
    check(unsafe { libc::umount2(c.as_ptr(), flags) }).map(drop)
}

/// Whether the FUSE connection behind `dev` (an fd of `/dev/fuse`) still serves a mount: the
/// kernel marks a connection it has ended (unmounted, aborted) with POLLERR.
pub fn fuse_connection_alive(dev: BorrowedFd<'_>) -> bool {
    let mut p = libc::pollfd {
        fd: dev.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd; zero timeout.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        if n >= 0 {
            return n == 0 || p.revents & (libc::POLLERR | libc::POLLNVAL) == 0;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
}

/// The kernel release as (major, minor), from `uname`.
pub fn kernel_version() -> Option<(u32, u32)> {
    // SAFETY: zeroed utsname is a valid plain C struct; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let rel: Vec<u8> = u
        .release
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    let rel = String::from_utf8_lossy(&rel);
    let mut it = rel.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}
