//! Deletion: whiteouts (written, dropped, and device whiteouts turned into `.wh.` files so a
//! new entry can take the name) and the removal of merged entries.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::Ordering;

use crate::layer::whiteout;
use crate::sys;
use crate::union::lowers::LowerEntry;

use super::copyup::CopyUp;
use super::layer::{errno, is_dir, split, UpperLayer, WHITEOUT_BASE};

/// What [`UpperLayer::free_whiteout_slot`] left at a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    /// Nothing: place with `RENAME_NOREPLACE` (or link).
    Free,
    /// A whiteout device that stays, because the name is too long for a `.wh.` marker to stand
    /// in for it meanwhile: place with [`UpperLayer::exchange_into`].
    Device,
}

/// The merged entry at a path: its upper stat (if in the upper), the lower entry the view has
/// there (if any), and the stat of the visible one.
#[derive(Debug, Clone)]
pub struct Present {
    pub upper: Option<libc::stat>,
    pub lower: Option<LowerEntry>,
    pub st: libc::stat,
}

impl UpperLayer {
    /// Make the name `name` of the upper directory `pfd` free for a new entry of any type when
    /// a whiteout device (kernel format) holds it: a directory cannot be renamed over a device,
    /// so the deletion is recorded as `.wh.NAME` first and the device removed after (no moment
    /// in between shows the lower entry again). The caller then places its entry with
    /// `RENAME_NOREPLACE` (or links it) and drops the `.wh.NAME`. A name too long for a `.wh.`
    /// marker keeps its device ([`Slot::Device`]), which the new entry is exchanged with.
    pub(super) fn free_whiteout_slot(&self, pfd: BorrowedFd<'_>, name: &OsStr) -> io::Result<Slot> {
        if matches!(sys::fstatat(pfd, Path::new(name)), Ok(st) if whiteout::is_whiteout_device(&st))
        {
            if !whiteout::marker_fits(name) {
                return Ok(Slot::Device);
            }
            self.write_whiteout(pfd, name)?;
            super::layer::crash_point("whiteout device replaced: both")?;
            sys::unlink_entry(pfd, name, false)?;
        }
        Ok(Slot::Free)
    }

    /// Put the staged `tmp` in place of the whiteout device at `pfd/name` in one step (an
    /// exchange), then delete the device, which sits in staging under `tmp` after it.
    pub(super) fn exchange_into(
        &self,
        tmp: &OsStr,
        pfd: BorrowedFd<'_>,
        name: &OsStr,
    ) -> io::Result<()> {
        let sfd = self.staging_fd.as_fd();
        sys::renameat2(sfd, tmp, pfd, name, sys::RENAME_EXCHANGE)?;
        sys::unlink_entry(sfd, tmp, false)
    }

    /// Record that `name` in the upper directory `pfd` is deleted when the name is too long
    /// for a `.wh.` marker: a whiteout device at the name itself, made in staging and
    /// exchanged with the upper entry there (if any) in one step; that entry is then deleted
    /// from staging.
    fn write_whiteout_device(&self, pfd: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        let old = match sys::fstatat(pfd, Path::new(name)) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return whiteout::write_whiteout_device(pfd, name)
            }
            Err(e) => return Err(e),
            Ok(st) if whiteout::is_whiteout_device(&st) => return Ok(()),
            Ok(st) => st,
        };
        let tmp = self.tmp_name();
        let sfd = self.staging_fd.as_fd();
        whiteout::write_whiteout_device(sfd, &tmp)?;
        if let Err(e) = sys::renameat2(sfd, &tmp, pfd, name, sys::RENAME_EXCHANGE) {
            let _ = sys::unlink_entry(sfd, &tmp, false);
            return Err(e);
        }
        let size = if is_dir(&old) {
            crate::union::quota::usage_of(&self.staging.join(&tmp)).unwrap_or(0)
        } else if old.st_mode & libc::S_IFMT == libc::S_IFREG && old.st_nlink == 1 {
            old.st_size as u64
        } else {
            0
        };
        self.discard(&tmp)?;
        self.quota.release(size);
        Ok(())
    }

    /// Record that `name` in the upper directory `pfd` is deleted: a hard link to the shared
    /// whiteout file where the filesystem allows, else a new empty `.wh.NAME`. A name too long
    /// for a marker gets a whiteout device, which replaces the upper entry of that name (see
    /// [`UpperLayer::write_whiteout_device`]).
    pub(super) fn write_whiteout(&self, pfd: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        if !whiteout::marker_fits(name) {
            return self.write_whiteout_device(pfd, name);
        }
        let base = OsStr::new(WHITEOUT_BASE);
        if self.link_whiteouts.load(Ordering::Relaxed) {
            if whiteout::link_whiteout(self.staging_fd.as_fd(), base, pfd, name)? {
                return Ok(());
            }
            // The base is full (EMLINK) or gone: make a new one and try once more.
            let _held = self.base_lock.lock();
            if whiteout::link_whiteout(self.staging_fd.as_fd(), base, pfd, name)? {
                return Ok(());
            }
            let remade = whiteout::make_whiteout_base(self.staging_fd.as_fd(), base);
            if remade.is_ok() && whiteout::link_whiteout(self.staging_fd.as_fd(), base, pfd, name)?
            {
                return Ok(());
            }
            tracing::info!("whiteouts cannot be hard-linked here; writing plain files");
            self.link_whiteouts.store(false, Ordering::Relaxed);
        }
        whiteout::write_whiteout(pfd, name)
    }

    pub(super) fn drop_whiteout(&self, pfd: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        if !whiteout::marker_fits(name) {
            return Ok(()); // no marker can have this name
        }
        match sys::unlink_entry(pfd, &whiteout::whiteout_name(name), false) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
            _ => Ok(()),
        }
    }

    /// Whether the merged directory `rel` shows no entries.
    pub fn merged_is_empty(&self, rel: &Path) -> io::Result<bool> {
        Ok(self.merged_children(rel)?.is_empty())
    }

    /// Remove the merged entry at `rel` (`rmdir` when `dir`): delete the upper entry and write a
    /// whiteout if a lower layer has the name. A directory must show no entries (`ENOTEMPTY`).
    pub fn remove(&self, rel: &Path, dir: bool) -> io::Result<()> {
        let found = self.present(rel, self.lower_of(rel))?;
        self.remove_present(rel, dir, found)
    }

    /// What the view has at `rel`, given the lower entry it shows there (`ENOENT`: nothing).
    pub fn present(&self, rel: &Path, lower: Option<LowerEntry>) -> io::Result<Present> {
        let upper = self.upper_stat(rel);
        let st = match (&upper, &lower) {
            (Some(st), _) => *st,
            (None, Some(e)) => e.lstat()?,
            (None, None) => return Err(errno(libc::ENOENT)),
        };
        Ok(Present { upper, lower, st })
    }

    /// [`UpperLayer::remove`] of what the caller found at `rel` with [`UpperLayer::present`].
    pub fn remove_present(&self, rel: &Path, dir: bool, found: Present) -> io::Result<()> {
        let (parent, name) = split(rel)?;
        let Present { upper, lower, st } = found;
        match (dir, is_dir(&st)) {
            (true, false) => return Err(errno(libc::ENOTDIR)),
            (false, true) => return Err(errno(libc::EISDIR)),
            _ => {}
        }
        if dir && !self.merged_is_empty(rel)? {
            return Err(errno(libc::ENOTEMPTY));
        }
        // Other names of a lower hard-linked file must see the link count drop: copy the
        // group up so the removal happens to a real upper inode.
        let mut upper = upper;
        if let (None, Some(e)) = (&upper, &lower) {
            if !dir && st.st_nlink > 1 && !self.lowers.hardlink_peers(e).is_empty() {
                if let CopyUp::Copied { peers } = self.copy_up(rel)? {
                    if !peers.is_empty() {
                        upper = self.upper_stat(rel);
                    }
                } else {
                    upper = self.upper_stat(rel);
                }
            }
        }
        // A whiteout device takes the upper entry's place itself.
        let replaced = lower.is_some() && !whiteout::marker_fits(name);
        if lower.is_some() {
            self.ensure_dir(parent)?;
            let pfd = self.open_upper_dir(parent)?;
            self.write_whiteout(pfd.as_fd(), name)?;
        }
        if let Some(ust) = upper.filter(|_| !replaced) {
            let pfd = self.open_upper_dir(parent)?;
            if dir {
                // Move it out of sight in one step, then delete its markers at leisure.
                let tmp = self.tmp_name();
                sys::renameat2(pfd.as_fd(), name, self.staging_fd.as_fd(), &tmp, 0)?;
                self.discard(&tmp)?;
            } else {
                sys::unlink_entry(pfd.as_fd(), name, false)?;
                if ust.st_mode & libc::S_IFMT == libc::S_IFREG && ust.st_nlink == 1 {
                    self.quota.release(ust.st_size as u64);
                }
            }
        }
        Ok(())
    }
}
