//! Quota of a writable layer (`size=N` / `-o quota=N`): the bytes the upper layer holds.
//!
//! Usage is the apparent size of the upper's regular files, a hard-linked inode counted once
//! (the same measure as `diff_size`). It is scanned once at mount and then kept up to date by
//! the write path with atomics: every operation that may grow the layer first reserves its growth
//! and fails with `EDQUOT` when the reservation does not fit, so nothing already written is lost.

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Usage and limit of one upper layer. Without a limit it still counts (for `status`).
#[derive(Debug)]
pub struct Quota {
    limit: Option<u64>,
    used: AtomicU64,
}

impl Quota {
    /// A quota with `used` bytes already held.
    pub fn new(limit: Option<u64>, used: u64) -> Quota {
        Quota {
            limit,
            used: AtomicU64::new(used),
        }
    }

    /// Scan the upper directory `root` for its current usage.
    pub fn scan(root: &Path, limit: Option<u64>) -> io::Result<Quota> {
        Ok(Quota::new(limit, usage_of(root)?))
    }

    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Reserve `bytes` of growth, or fail with `EDQUOT` (and reserve nothing).
    pub fn reserve(&self, bytes: u64) -> io::Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let limit = self.limit;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let new = used.checked_add(bytes)?;
                match limit {
                    Some(l) if new > l => None,
                    _ => Some(new),
                }
            })
            .map(drop)
            .map_err(|_| io::Error::from_raw_os_error(libc::EDQUOT))
    }

    /// Reserve as much of `bytes` as fits (for a write that may be shortened): the bytes granted,
    /// or `EDQUOT` when none fits.
    pub fn reserve_up_to(&self, bytes: u64) -> io::Result<u64> {
        if bytes == 0 {
            return Ok(0);
        }
        let limit = self.limit;
        let mut granted = 0;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let room = match limit {
                    Some(l) => l.saturating_sub(used),
                    None => u64::MAX - used,
                };
                granted = bytes.min(room);
                (granted > 0).then_some(used + granted)
            })
            .map_err(|_| io::Error::from_raw_os_error(libc::EDQUOT))?;
        Ok(granted)
    }

    /// Give back `bytes` (a file shrank or was deleted, or a reservation went unused).
    pub fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    /// Account a size change of a file from `old` to `new` bytes that already happened.
    pub fn resized(&self, old: u64, new: u64) {
        if new > old {
            self.used.fetch_add(new - old, Ordering::AcqRel);
        } else {
            self.release(old - new);
        }
    }
}

/// The apparent size of the regular files under `root`, each inode once. Walked through
/// directory descriptors (one open per level), since an upper layer may hold paths longer than
/// one call takes.
pub fn usage_of(root: &Path) -> io::Result<u64> {
    let mut seen = HashSet::new();
    let dir = crate::sys::open_dir(root)?;
    usage_below(std::os::fd::AsFd::as_fd(&dir), &mut seen)
}

fn usage_below(
    dir: std::os::fd::BorrowedFd<'_>,
    seen: &mut HashSet<(u64, u64)>,
) -> io::Result<u64> {
    let mut total = 0u64;
    for e in crate::sys::read_dir_fd(dir)? {
        let name = Path::new(&e.name);
        let st = match crate::sys::fstatat(dir, name) {
            Ok(st) => st,
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(err) => return Err(err),
        };
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
                let sub = crate::sys::openat(dir, name, flags, 0)?;
                total += usage_below(std::os::fd::AsFd::as_fd(&sub), seen)?;
            }
            libc::S_IFREG if st.st_nlink == 1 || seen.insert((st.st_dev, st.st_ino)) => {
                total += st.st_size as u64;
            }
            _ => {}
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_within_limit_only() {
        let q = Quota::new(Some(100), 0);
        q.reserve(60).unwrap();
        let e = q.reserve(41).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EDQUOT));
        assert_eq!(q.used(), 60);
        assert_eq!(q.reserve_up_to(50).unwrap(), 40);
        assert_eq!(q.used(), 100);
        assert_eq!(
            q.reserve_up_to(1).unwrap_err().raw_os_error(),
            Some(libc::EDQUOT)
        );
        q.release(30);
        q.reserve(30).unwrap();
        q.resized(10, 0);
        assert_eq!(q.used(), 90);
    }

    #[test]
    fn unlimited_counts() {
        let q = Quota::new(None, 5);
        q.reserve(u64::MAX / 2).unwrap();
        assert_eq!(q.used(), 5 + u64::MAX / 2);
    }

    #[test]
    fn scan_counts_hard_links_once() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), vec![0u8; 1000]).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/b"), vec![0u8; 24]).unwrap();
        std::fs::hard_link(d.path().join("a"), d.path().join("sub/a2")).unwrap();
        std::os::unix::fs::symlink("a", d.path().join("l")).unwrap();
        assert_eq!(usage_of(d.path()).unwrap(), 1024);
    }
}
