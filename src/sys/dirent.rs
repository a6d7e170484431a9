//! Reading directories with `getdents64`, without a `DIR*` or an allocation per entry. Part of
//! `sys`: the crate's `unsafe` stays in `sys`.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::openat;

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
