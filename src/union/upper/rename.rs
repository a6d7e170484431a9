//! `rename(2)` in the merged view, directories from lower layers included.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use crate::layer::whiteout;
use crate::sys;

use super::layer::{crash_point, errno, is_dir, split, UpperLayer};
use super::remove::Slot;

impl UpperLayer {
    /// Make the merged entry `rel`, about to move to a name where lower layers have `dest_lower`,
    /// self-contained in the upper: non-directories are copied up; a directory with lower
    /// contents is replaced by an opaque full copy; an upper-only directory moving over a lower
    /// name is made opaque.
    fn prepare_move(&self, rel: &Path, dest_lower: bool) -> io::Result<()> {
        let src = self.source_of(rel).ok_or_else(|| errno(libc::ENOENT))?;
        let st = src.lstat()?;
        if !is_dir(&st) {
            self.copy_up(rel)?;
            return Ok(());
        }
        let (parent, name) = split(rel)?;
        if self.merges_lower(rel) {
            let tmp = self.materialize_dir(rel)?;
            self.ensure_dir(parent)?;
            let pfd = self.open_upper_dir(parent)?;
            let flags = if self.upper_stat(rel).is_some() {
                sys::RENAME_EXCHANGE
            } else {
                sys::RENAME_NOREPLACE
            };
            if let Err(e) = sys::renameat2(self.staging_fd.as_fd(), &tmp, pfd.as_fd(), name, flags)
            {
                let _ = self.discard(&tmp);
                return Err(e);
            }
            // After an exchange, the old upper directory sits in staging under `tmp`.
            let (old_size, _) = (quota_of(&self.staging.join(&tmp)), ());
            self.discard(&tmp)?;
            self.quota.release(old_size);
        } else if dest_lower {
            let fd = self.open_upper_dir(rel)?;
            whiteout::write_opaque(fd.as_fd())?;
        }
        Ok(())
    }

    /// `rename(2)` in the merged view, with `RENAME_NOREPLACE` / `RENAME_EXCHANGE` in `flags`.
    /// Directories from lower layers move too (as an opaque full copy; kernel overlayfs says
    /// `EXDEV` there).
    pub fn rename(&self, src: &Path, dst: &Path, flags: u32) -> io::Result<()> {
        if flags & !(sys::RENAME_NOREPLACE | sys::RENAME_EXCHANGE) != 0 {
            return Err(errno(libc::EINVAL));
        }
        if dst.starts_with(src) && dst != src {
            return Err(errno(libc::EINVAL));
        }
        let sst = self
            .source_of(src)
            .ok_or_else(|| errno(libc::ENOENT))
            .and_then(|s| s.lstat())?;
        let dst_src = self.source_of(dst);
        let dst_st = match &dst_src {
            Some(s) => Some(s.lstat()?),
            None => None,
        };
        if src == dst {
            return Ok(());
        }
        let (sparent, sname) = split(src)?;
        let (dparent, dname) = split(dst)?;
        let src_lower = self.lower_of(src).is_some();
        let dst_lower = self.lower_of(dst).is_some();
        // A name whose lower entry was deleted: a directory moved there must hide what lies
        // below it (opaque), as a directory made there does.
        let dst_deleted = !dst_lower && self.whiteout_in(dparent, dname);
        if flags & sys::RENAME_EXCHANGE != 0 {
            if dst_st.is_none() {
                return Err(errno(libc::ENOENT));
            }
            self.prepare_move(src, dst_lower)?;
            self.prepare_move(dst, src_lower)?;
            let sfd = self.open_upper_dir(sparent)?;
            let dfd = self.open_upper_dir(dparent)?;
            return sys::renameat2(sfd.as_fd(), sname, dfd.as_fd(), dname, sys::RENAME_EXCHANGE);
        }
        if let Some(dst_st) = dst_st {
            if flags & sys::RENAME_NOREPLACE != 0 {
                return Err(errno(libc::EEXIST));
            }
            match (is_dir(&sst), is_dir(&dst_st)) {
                (true, false) => return Err(errno(libc::ENOTDIR)),
                (false, true) => return Err(errno(libc::EISDIR)),
                (true, true) if !self.merged_is_empty(dst)? => return Err(errno(libc::ENOTEMPTY)),
                _ => {}
            }
        }
        self.ensure_dir(dparent)?;
        let dfd = self.open_upper_dir(dparent)?;
        let slot = self.free_whiteout_slot(dfd.as_fd(), dname)?;
        // Clear the target: an upper directory being replaced holds only markers.
        if let Some(ust) = self.upper_stat(dst) {
            if is_dir(&ust) {
                let tmp = self.tmp_name();
                sys::renameat2(dfd.as_fd(), dname, self.staging_fd.as_fd(), &tmp, 0)?;
                self.discard(&tmp)?;
            } else if ust.st_mode & libc::S_IFMT == libc::S_IFREG && ust.st_nlink == 1 {
                self.quota.release(ust.st_size as u64);
            }
        }
        // `src` becomes a self-contained upper entry first (a copy-up; a directory with lower
        // contents an opaque full copy, exchanged for its old upper part): the view at `src`
        // is unchanged by it, so a crash here shows the old state.
        self.prepare_move(src, dst_lower || dst_deleted)?;
        crash_point("rename: source self-contained")?;
        let sfd = self.open_upper_dir(sparent)?;
        if slot == Slot::Device {
            // The whiteout device comes to the old name: it stays there as its whiteout when
            // a lower layer has that name, else it goes.
            sys::renameat2(sfd.as_fd(), sname, dfd.as_fd(), dname, sys::RENAME_EXCHANGE)?;
            if !src_lower {
                sys::unlink_entry(sfd.as_fd(), sname, false)?;
            }
            return Ok(());
        }
        if src_lower {
            self.move_hiding_lower(sfd.as_fd(), sname, dfd.as_fd(), dname)?;
        } else {
            sys::renameat2(sfd.as_fd(), sname, dfd.as_fd(), dname, 0)?;
        }
        crash_point("rename: moved")?;
        self.drop_whiteout(dfd.as_fd(), dname)
    }

    /// Move the upper entry `sname` (in `sfd`) over a lower one to `dname` (in `dfd`) and hide
    /// the lower entry at the old name. One step where the filesystem can: a rename that
    /// leaves a whiteout device behind (`RENAME_WHITEOUT`), then turned into the layer's own
    /// `.wh.` spelling. A move followed by a separate whiteout would let a crash between the
    /// two show the entry under both names (the lower one back at the old name).
    fn move_hiding_lower(
        &self,
        sfd: BorrowedFd<'_>,
        sname: &OsStr,
        dfd: BorrowedFd<'_>,
        dname: &OsStr,
    ) -> io::Result<()> {
        match sys::renameat2(sfd, sname, dfd, dname, sys::RENAME_WHITEOUT) {
            Ok(()) => {
                crash_point("rename: moved, device whiteout")?;
                return self.free_whiteout_slot(sfd, sname).map(|_| ());
            }
            // Filesystems without whiteout renames (or callers not allowed to make devices).
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EPERM)) => {
                tracing::debug!(%e, "no RENAME_WHITEOUT: moving, then writing the whiteout");
            }
            Err(e) => return Err(e),
        }
        sys::renameat2(sfd, sname, dfd, dname, 0)?;
        crash_point("rename: moved, no whiteout yet")?;
        self.write_whiteout(sfd, sname)
    }
}

/// Bytes the quota counts for a tree about to be deleted.
fn quota_of(path: &Path) -> u64 {
    match sys::lstat(path) {
        Ok(st) if is_dir(&st) => crate::union::quota::usage_of(path).unwrap_or(0),
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_nlink == 1 => {
            st.st_size as u64
        }
        _ => 0,
    }
}
