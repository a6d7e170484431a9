//! The machine around the process: file locks, filesystem types, unmounting, the FUSE
//! connection, the kernel version. Part of `sys`: the crate's `unsafe` stays in `sys`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use super::{check, cstr};

/// An advisory whole-file lock (`flock`), shared across processes; released on drop.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Block until an exclusive lock on `path` (created if missing) is held.
    pub fn exclusive(path: &Path) -> io::Result<FileLock> {
        // Without LOCK_NB, flock waits instead of answering EWOULDBLOCK.
        Self::lock(path, libc::LOCK_EX)?
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EWOULDBLOCK))
    }

    /// Take an exclusive lock on `path` (created if missing) without waiting: `None` when
    /// someone else holds it.
    pub fn try_exclusive(path: &Path) -> io::Result<Option<FileLock>> {
        Self::lock(path, libc::LOCK_EX | libc::LOCK_NB)
    }

    /// `flock(op)` on `path` (created if missing, never truncated); `None` for EWOULDBLOCK.
    fn lock(path: &Path, op: libc::c_int) -> io::Result<Option<FileLock>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        loop {
            // SAFETY: valid fd for the file's lifetime.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
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
