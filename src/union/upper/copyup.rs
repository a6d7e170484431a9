//! Copy-up: materialise a lower entry (or a whole merged directory tree) in the upper layer.
//!
//! Everything is built under a private name in the staging directory (inside the layer's work
//! directory, on the upper's filesystem) and then renamed into place, so a crash never leaves a
//! half-copied file under its real name; the staging directory is emptied at every mount.
//! File data moves inside the kernel only: a reflink (`FICLONE`) where the filesystem can, else
//! `copy_file_range` over the data extents (holes found with `SEEK_DATA`/`SEEK_HOLE` stay holes),
//! else `sendfile`. Never a byte loop through userspace.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::layer::meta::{OverrideStat, OVERRIDE_STAT_XATTR};
use crate::layer::whiteout;
use crate::sys;
use crate::union::lowers::LowerEntry;
use crate::union::source::Source;

use super::layer::{errno, is_dir, split, UpperLayer};
// Part of this module's public face before the split (a copy's shape).
pub use super::node::Shape;

/// Chunk of one `copy_file_range`/`sendfile` call.
const CHUNK: usize = 1 << 30;

/// Copy `len` bytes at `start` of `src` to offset `to` of `dst`, in the kernel.
fn copy_range(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    start: i64,
    to: i64,
    len: i64,
) -> io::Result<()> {
    let (mut off_in, mut off_out) = (start, to);
    let end = start + len;
    while off_in < end {
        let want = ((end - off_in) as usize).min(CHUNK);
        match sys::copy_file_range(src, &mut off_in, dst, &mut off_out, want) {
            Ok(0) => return Ok(()), // source shorter than its stat said
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                ) =>
            {
                // Filesystems that cannot copy_file_range between each other: sendfile is still
                // an in-kernel copy. It writes at dst's file position.
                sys::lseek(dst, off_out, libc::SEEK_SET)?;
                while off_in < end {
                    let want = ((end - off_in) as usize).min(CHUNK);
                    if sys::sendfile(dst, src, &mut off_in, want)? == 0 {
                        return Ok(());
                    }
                }
                return Ok(());
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copy the contents of `src` (stat `st`) into the empty file `dst`, keeping holes. `reflink`
/// says whether to try a reflink first; it is cleared when the filesystem cannot do them, so
/// later copies do not pay a failing ioctl each.
pub fn copy_data(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    st: &libc::stat,
    reflink: &AtomicBool,
) -> io::Result<()> {
    let size = st.st_size;
    if size == 0 {
        return Ok(());
    }
    if reflink.load(Ordering::Relaxed) {
        match sys::ficlone(dst, src) {
            Ok(()) => return Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOTTY)) => {
                reflink.store(false, Ordering::Relaxed)
            }
            Err(_) => {}
        }
    }
    // Fully allocated (the common case for small files): no holes to look for.
    if st.st_blocks.saturating_mul(512) >= size {
        return copy_range(src, dst, 0, 0, size);
    }
    let mut off = 0i64;
    while off < size {
        let data = match sys::lseek(src, off, libc::SEEK_DATA) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break, // only a hole remains
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {
                copy_range(src, dst, off, off, size - off)?;
                break;
            }
            Err(e) => return Err(e),
        };
        if data >= size {
            break;
        }
        let hole = sys::lseek(src, data, libc::SEEK_HOLE)
            .unwrap_or(size)
            .min(size);
        copy_range(src, dst, data, data, hole - data)?;
        off = hole;
    }
    // Trailing holes: give the copy its full length.
    sys::ftruncate(dst, size as u64)
}

/// Whether an `io::Error` means "not permitted here" (unprivileged, or unsupported).
fn refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM | libc::ENOTSUP | libc::EACCES | libc::EINVAL)
    )
}

/// Copy the bytes of `src` (stat `st`) into the empty file `dst`: a file of its own with
/// [`copy_data`], a member of a tar as its range of the tar's file (in the kernel too).
fn copy_source_data(
    src: &Source,
    dst: BorrowedFd<'_>,
    st: &libc::stat,
    reflink: &AtomicBool,
) -> io::Result<()> {
    match src {
        Source::Disk(p) => {
            let from = sys::open_file(p, libc::O_RDONLY | libc::O_NOFOLLOW)?;
            copy_data(from.as_fd(), dst, st, reflink)
        }
        Source::Tar { entry, .. } => {
            let w = entry.layer.window(&entry.rel)?;
            let from = entry.layer.reopen()?;
            copy_range(from.as_fd(), dst, w.start as i64, 0, w.len as i64)?;
            // A tar shorter than its index says must not give a short copy silently.
            if sys::fstat(dst)?.st_size as u64 != w.len {
                return Err(errno(libc::EIO));
            }
            Ok(())
        }
    }
}

/// Copy the xattrs of `src` to `dst` (a path, not following symlinks): all but the ones
/// internal to overlay implementations, keeping `override_stat`. Returns the source's override.
fn copy_xattrs(src: &Source, dst: &Path) -> io::Result<Option<OverrideStat>> {
    let mut over = None;
    for name in src.xattr_names()? {
        let Ok(name) = std::str::from_utf8(&name) else {
            continue;
        };
        let is_override = name == OVERRIDE_STAT_XATTR;
        if whiteout::is_internal_xattr(name.as_bytes()) && !is_override {
            continue;
        }
        let Some(value) = src.getxattr(name)? else {
            continue;
        };
        if is_override {
            over = OverrideStat::parse(&value);
        }
        if let Err(e) = sys::lsetxattr(dst, name, &value) {
            if refused(&e) {
                tracing::debug!(path = %dst.display(), name, %e, "xattr not copied");
            } else {
                return Err(e);
            }
        }
    }
    Ok(over)
}

/// What a copy-up did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyUp {
    /// The entry was already in the upper layer.
    Already,
    /// The entry was copied; `peers` are other names of the same lower inode that were linked
    /// to the copy (hard links stay hard links).
    Copied { peers: Vec<PathBuf> },
}

/// What the caller of a copy-up knows already (each spares a look at the disk).
#[derive(Debug, Clone, Copy, Default)]
pub struct Known {
    /// The parent directory is in the upper layer.
    pub parent_in_upper: bool,
    /// The entry to copy has no xattrs.
    pub no_xattrs: bool,
}

/// How [`UpperLayer::copy_node`] copies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CopyHow {
    /// The caller knows the source has no xattrs.
    pub no_xattrs: bool,
    /// Flush the data before the copy is named (unless the mount is volatile); off where the
    /// caller flushes a whole tree at once.
    pub flush: bool,
}

/// A regular file just copied, still open read-write from its creation: an open that asked
/// for the copy-up can use it instead of opening the file again by name.
#[derive(Debug)]
pub struct OpenCopy {
    pub file: OwnedFd,
    /// Permission bits the view shows (override_stat applied).
    pub perm: u32,
    /// Inode number in the upper's filesystem.
    pub ino: u64,
    /// It has no xattrs at all (override_stat included).
    pub plain: bool,
}

impl UpperLayer {
    /// Make `rel` a directory of the upper layer, copying up it and its parents from the lower
    /// layers (with their owner, mode, times and xattrs) where needed.
    pub fn ensure_dir(&self, rel: &Path) -> io::Result<()> {
        if let Some(st) = self.upper_stat(rel) {
            return if is_dir(&st) {
                Ok(())
            } else {
                Err(errno(libc::ENOTDIR))
            };
        }
        let (parent, _) = split(rel)?;
        self.ensure_dir(parent)?;
        let entry = self.lower_of(rel).ok_or_else(|| errno(libc::ENOENT))?;
        let st = entry.lstat()?;
        if !is_dir(&st) {
            return Err(errno(libc::ENOTDIR));
        }
        match self.place_copy(rel, &entry.source(), &st, false).map(drop) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                // Another thread copied it up first.
                match self.upper_stat(rel) {
                    Some(st) if is_dir(&st) => Ok(()),
                    _ => Err(e),
                }
            }
            other => other,
        }
    }

    /// Copy `src` (with stat `st`) into the staging area and rename it to `rel` (which must not
    /// exist in the upper), keeping the parent directory's times as they were. A regular file
    /// comes back open.
    /// `no_xattrs`: the caller knows `src` has none.
    fn place_copy(
        &self,
        rel: &Path,
        src: &Source,
        st: &libc::stat,
        no_xattrs: bool,
    ) -> io::Result<Option<OpenCopy>> {
        let (parent, name) = split(rel)?;
        let tmp = self.tmp_name();
        let sfd = self.staging_fd.as_fd();
        let how = CopyHow {
            no_xattrs,
            flush: true,
        };
        let copy = self.copy_node(src, st, sfd, &self.staging, &tmp, how)?;
        let pfd = self.open_upper_dir(parent)?;
        let pst = sys::fstat(pfd.as_fd())?;
        if let Err(e) = sys::renameat2(
            self.staging_fd.as_fd(),
            &tmp,
            pfd.as_fd(),
            name,
            sys::RENAME_NOREPLACE,
        ) {
            let _ = self.discard(&tmp);
            return Err(e);
        }
        let shape = Shape::of(st);
        if is_dir(st) {
            // Moving a directory to a new parent may touch its own times.
            sys::set_times_at(pfd.as_fd(), name, shape.atime, shape.mtime)?;
        }
        let p = Shape::of(&pst);
        sys::set_times_at(pfd.as_fd(), OsStr::new(""), p.atime, p.mtime)?;
        Ok(copy)
    }

    /// Copy the lower entry at `rel` up (no-op if it is in the upper already). A regular file
    /// with other names in its lower layer gets them linked too, so link counts and inode
    /// identity survive.
    pub fn copy_up(&self, rel: &Path) -> io::Result<CopyUp> {
        if rel.as_os_str().is_empty() || self.upper_stat(rel).is_some() {
            return Ok(CopyUp::Already);
        }
        let entry = self.lower_of(rel).ok_or_else(|| errno(libc::ENOENT))?;
        self.copy_up_entry(rel, &entry)
    }

    /// [`UpperLayer::copy_up`] of `entry`, which the caller knows to be what the view shows at
    /// `rel` (the merged tree resolved it): no walk of the upper for whiteouts on the way.
    pub fn copy_up_entry(&self, rel: &Path, entry: &LowerEntry) -> io::Result<CopyUp> {
        self.copy_up_entry_open(rel, entry, true, Known::default())
            .map(|(c, _)| c)
    }

    /// [`UpperLayer::copy_up_entry`], also handing back a regular file it copied still open
    /// (read-write), so an open that caused the copy-up need not open it again. Without
    /// `with_data` a regular file is copied empty (for an open that truncates it anyway).
    pub fn copy_up_entry_open(
        &self,
        rel: &Path,
        entry: &LowerEntry,
        with_data: bool,
        known: Known,
    ) -> io::Result<(CopyUp, Option<OpenCopy>)> {
        if rel.as_os_str().is_empty() {
            return Ok((CopyUp::Already, None));
        }
        let mut st = entry.lstat()?;
        if !with_data && st.st_mode & libc::S_IFMT == libc::S_IFREG {
            // An empty copy: nothing to read, nothing counted against the quota.
            st.st_size = 0;
            st.st_blocks = 0;
        }
        if is_dir(&st) {
            self.ensure_dir(rel)?;
            return Ok((CopyUp::Copied { peers: Vec::new() }, None));
        }
        // Another name of a hard-linked file may have brought this one up already.
        if st.st_nlink > 1 && self.upper_stat(rel).is_some() {
            return Ok((CopyUp::Already, None));
        }
        let (parent, _) = split(rel)?;
        if !known.parent_in_upper {
            self.ensure_dir(parent)?;
        }
        let is_reg = st.st_mode & libc::S_IFMT == libc::S_IFREG;
        let size = if is_reg { st.st_size as u64 } else { 0 };
        self.quota.reserve(size)?;
        let copy = match self.place_copy(rel, &entry.source(), &st, known.no_xattrs) {
            Ok(copy) => copy,
            Err(e) => {
                self.quota.release(size);
                if e.raw_os_error() == Some(libc::EEXIST) && self.upper_stat(rel).is_some() {
                    return Ok((CopyUp::Already, None));
                }
                return Err(e);
            }
        };
        let mut peers = Vec::new();
        if is_reg && st.st_nlink > 1 {
            for peer in self.lowers.hardlink_peers(entry) {
                match self.link_peer(rel, &peer, &st) {
                    Ok(true) => peers.push(peer),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(peer = %peer.display(), %e, "hard link peer not linked")
                    }
                }
            }
        }
        tracing::debug!(rel = %rel.display(), peers = peers.len(), "copied up");
        Ok((CopyUp::Copied { peers }, copy))
    }

    /// Link the copied-up `rel` as `peer` if `peer` still shows the same lower inode.
    fn link_peer(&self, rel: &Path, peer: &Path, st: &libc::stat) -> io::Result<bool> {
        if self.upper_stat(peer).is_some() {
            return Ok(false);
        }
        let Some(e) = self.lower_of(peer) else {
            return Ok(false);
        };
        let pst = e.lstat()?;
        if (pst.st_dev, pst.st_ino) != (st.st_dev, st.st_ino) {
            return Ok(false);
        }
        let (pparent, pname) = split(peer)?;
        self.ensure_dir(pparent)?;
        let (parent, name) = split(rel)?;
        let sfd = self.open_upper_dir(parent)?;
        let dfd = self.open_upper_dir(pparent)?;
        sys::linkat(sfd.as_fd(), name, dfd.as_fd(), pname)?;
        Ok(true)
    }

    /// Build a copy of the entry at `src` as `dir/name`: contents, owner, mode, times, xattrs.
    /// Directories are copied empty. On error nothing is left at `dir/name`. A regular file
    /// comes back open.
    pub(crate) fn copy_node(
        &self,
        src: &Source,
        st: &libc::stat,
        dir: BorrowedFd<'_>,
        dir_path: &Path,
        name: &OsStr,
        how: CopyHow,
    ) -> io::Result<Option<OpenCopy>> {
        let shape = Shape::of(st);
        let dst = dir_path.join(name);
        let built = (|| {
            let target = if shape.file_type() == libc::S_IFLNK {
                Some(std::path::PathBuf::from(src.readlink()?))
            } else {
                None
            };
            // The data must be on disk before the copy takes its name (the rename into the
            // layer): else a machine crash can leave the name with an empty or partial file
            // (filesystems delay writing data, not the rename) and the lower contents are gone
            // from the view. Kernel overlayfs flushes here too. The file is made unnamed and
            // named once flushed, as kernel overlayfs does: flushing a small file that has a
            // name took 0.41-0.55 ms on ext4 here, an unnamed one 0.27-0.36 ms.
            let flush = self.flush_copies && how.flush && st.st_size > 0;
            let made = self.make_node(dir, name, &shape, target.as_deref(), flush)?;
            if let Some(to) = &made.file {
                copy_source_data(src, to.as_fd(), st, &self.reflink)?;
                if flush {
                    sys::fsync(to.as_fd(), false)?;
                }
                if made.unnamed {
                    sys::link_unnamed(to.as_fd(), dir, name)?;
                }
            }
            let existing = if how.no_xattrs {
                None
            } else {
                copy_xattrs(src, &dst)?
            };
            self.apply_shape(dir, name, &dst, &shape, existing, &made)?;
            let Some(file) = made.file else {
                return Ok(None);
            };
            // Asked of the copy itself: the backing filesystem may have added some (ACLs
            // inherited, security labels).
            let plain = sys::flistxattr(file.as_fd())?.is_empty();
            Ok(Some(OpenCopy {
                file,
                perm: existing.map_or(shape.mode, |o| o.mode) & 0o7777,
                ino: made.ino,
                plain,
            }))
        })();
        if built.is_err() {
            // A directory is copied empty: nothing is below it to delete.
            let _ = sys::unlink_entry(dir, name, shape.file_type() == libc::S_IFDIR);
        }
        built
    }

    /// Copy the merged directory `rel` with everything it shows, from whichever layer each entry
    /// comes from, into a new opaque directory in the staging area; returns its staging name.
    /// Hard links inside the tree stay hard links.
    pub(crate) fn materialize_dir(&self, rel: &Path) -> io::Result<OsString> {
        let tmp = self.tmp_name();
        let mut links = HashMap::new();
        let staging = self.staging_path().to_path_buf();
        let res = self
            .materialize_into(rel, &staging, &tmp, &mut links)
            .and_then(|()| {
                let fd = sys::open_dir(&staging.join(&tmp))?;
                whiteout::write_opaque(fd.as_fd())?;
                // On disk before the caller renames the tree into place (see copy_node): one
                // flush of the filesystem instead of one per file.
                if self.flush_copies {
                    sys::syncfs(fd.as_fd())?;
                }
                Ok(())
            });
        if let Err(e) = res {
            let _ = std::fs::remove_dir_all(staging.join(&tmp));
            return Err(e);
        }
        Ok(tmp)
    }

    fn materialize_into(
        &self,
        rel: &Path,
        dest_dir: &Path,
        name: &OsStr,
        links: &mut HashMap<(u64, u64), std::path::PathBuf>,
    ) -> io::Result<()> {
        let (src, held) = self.copy_source(rel)?;
        let st = src.lstat()?;
        let dfd = sys::open_dir(dest_dir)?;
        let dest = dest_dir.join(name);
        let ty = st.st_mode & libc::S_IFMT;
        if ty == libc::S_IFREG && st.st_nlink > 1 {
            if let Some(first) = links.get(&(st.st_dev, st.st_ino)) {
                return sys::hard_link(first, &dest);
            }
        }
        if ty == libc::S_IFREG {
            // For an upper file linked below too: the release of the old tree counts it.
            self.quota.reserve(st.st_size as u64)?;
        }
        if ty != libc::S_IFDIR && held.is_some() {
            // An upper entry moves with its inode, not as a copy: hard links to it from
            // outside the directory stay links, and its number in the view stays.
            if let Err(e) = sys::hard_link(src.as_ref(), &dest) {
                if ty == libc::S_IFREG {
                    self.quota.release(st.st_size as u64);
                }
                return Err(e);
            }
            if st.st_nlink > 1 {
                links.insert((st.st_dev, st.st_ino), dest);
            }
            return Ok(());
        }
        let how = CopyHow {
            no_xattrs: false,
            flush: false, // materialize_dir flushes the whole tree
        };
        if let Err(e) = self.copy_node(&src, &st, dfd.as_fd(), dest_dir, name, how) {
            if ty == libc::S_IFREG {
                self.quota.release(st.st_size as u64);
            }
            return Err(e);
        }
        if ty == libc::S_IFREG && st.st_nlink > 1 {
            links.insert((st.st_dev, st.st_ino), dest.clone());
        }
        if ty == libc::S_IFDIR {
            for child in self.merged_children(rel)? {
                self.materialize_into(&rel.join(&child), &dest, &child, links)?;
            }
            // Creating the children changed the directory's times.
            let shape = Shape::of(&st);
            sys::set_times_at(dfd.as_fd(), name, shape.atime, shape.mtime)?;
        }
        Ok(())
    }
}
