//! File data of upper files: opening for writing, and writes, truncation and allocation with
//! quota accounting.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use crate::sys;

use super::layer::{errno, split, UpperLayer};

impl UpperLayer {
    /// Open the regular file `rel` of the upper layer for writing (the caller copied it up);
    /// `flags` as in open(2).
    pub fn open_write(&self, rel: &Path, flags: i32) -> io::Result<OwnedFd> {
        split(rel)?;
        let flags = flags & !(libc::O_CREAT | libc::O_EXCL);
        let fd = self.open_in_upper(rel, flags & !libc::O_TRUNC)?;
        if flags & libc::O_TRUNC != 0 {
            if flags & libc::O_ACCMODE == libc::O_RDONLY {
                // Linux truncates for O_RDONLY|O_TRUNC too (the kernel checked that the caller
                // may write); a read-only descriptor cannot, so through a write-only one.
                let w = self.open_in_upper(rel, libc::O_WRONLY)?;
                self.truncate_fd(w.as_fd(), 0)?;
            } else {
                self.truncate_fd(fd.as_fd(), 0)?;
            }
        }
        Ok(fd)
    }

    /// `ftruncate` with quota accounting.
    pub fn truncate_fd(&self, fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
        let old = sys::fstat(fd)?.st_size as u64;
        if size > old {
            self.quota.reserve(size - old)?;
        }
        if let Err(e) = sys::ftruncate(fd, size) {
            if size > old {
                self.quota.release(size - old);
            }
            return Err(e);
        }
        if size < old {
            self.quota.release(old - size);
        }
        Ok(())
    }

    /// `pwrite` with quota: growth beyond the limit is refused with `EDQUOT`; a write that only
    /// partly fits is shortened (what fits is written).
    pub fn write_fd(&self, fd: BorrowedFd<'_>, buf: &[u8], off: i64) -> io::Result<usize> {
        let size = sys::fstat(fd)?.st_size;
        let end = off.saturating_add(buf.len() as i64);
        let growth = (end - size).max(0) as u64;
        let granted =
            self.quota.reserve_up_to(growth).or_else(
                |e| {
                    if growth == 0 {
                        Ok(0)
                    } else {
                        Err(e)
                    }
                },
            )?;
        let len = if granted < growth {
            let allowed_end = size + granted as i64;
            if allowed_end <= off {
                self.quota.release(granted);
                return Err(errno(libc::EDQUOT));
            }
            (allowed_end - off) as usize
        } else {
            buf.len()
        };
        match sys::pwrite(fd, &buf[..len], off) {
            Ok(n) => {
                let used = (off + n as i64 - size).max(0) as u64;
                self.quota.release(granted.saturating_sub(used));
                Ok(n)
            }
            Err(e) => {
                self.quota.release(granted);
                Err(e)
            }
        }
    }

    /// `fallocate` with quota for the growth it causes.
    pub fn fallocate_fd(
        &self,
        fd: BorrowedFd<'_>,
        mode: i32,
        off: i64,
        len: i64,
    ) -> io::Result<()> {
        let size = sys::fstat(fd)?.st_size;
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let growth = if keep {
            0
        } else {
            (off + len - size).max(0) as u64
        };
        self.quota.reserve(growth)?;
        let r = sys::fallocate(fd, mode, off, len);
        let after = sys::fstat(fd).map(|s| s.st_size).unwrap_or(size);
        self.quota.release(growth);
        self.quota.resized(size as u64, after as u64);
        r
    }
}
