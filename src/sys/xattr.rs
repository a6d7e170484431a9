//! Extended attributes: get, list, set and remove, by path, by fd and relative to a directory.
//! Part of `sys`: the crate's `unsafe` stays in `sys`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use super::{check, check_size, cstr, fd_child_path};

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
    let r = super::long::path(path)?;
    let p = cstr(r.name())?;
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

/// A list of xattr names on a filesystem without xattrs: none.
fn unsupported_is_empty(res: io::Result<Vec<u8>>) -> io::Result<Vec<u8>> {
    match res {
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Ok(Vec::new()),
        other => other,
    }
}

/// The names of a list as the kernel gives it (each NUL-terminated).
fn split_names(raw: &[u8]) -> Vec<Vec<u8>> {
    raw.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| s.to_vec())
        .collect()
}

/// `llistxattr(path)`: the attribute names (empty when xattrs are unsupported).
pub fn llistxattr(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let r = super::long::path(path)?;
    let p = cstr(r.name())?;
    // SAFETY: valid C string and buffer.
    let res = xattr_buf_loop(|buf, len| unsafe { libc::llistxattr(p.as_ptr(), buf.cast(), len) });
    Ok(split_names(&unsupported_is_empty(res)?))
}

/// `flistxattr(fd)`: the attribute names (empty when xattrs are unsupported).
pub fn flistxattr(fd: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let raw = fd.as_raw_fd();
    // SAFETY: valid fd and buffer.
    let res = xattr_buf_loop(|buf, len| unsafe { libc::flistxattr(raw, buf.cast(), len) });
    Ok(split_names(&unsupported_is_empty(res)?))
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
    unsupported_is_empty(listxattrat_raw(dir, name))
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

/// `lsetxattr(path, name, value, 0)`.
pub fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let r = super::long::path(path)?;
    let p = cstr(r.name())?;
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

/// `lremovexattr(path, name)`.
pub fn lremovexattr(path: &Path, name: &str) -> io::Result<()> {
    let r = super::long::path(path)?;
    let p = cstr(r.name())?;
    let n = cstr(name)?;
    // SAFETY: valid C strings.
    check(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) })?;
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
