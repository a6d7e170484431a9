//! The writable (upper) layer of a mount and every mutation of it: copy-up, creation, deletion
//! with whiteouts, rename (including directories that come from lower layers), hard links and
//! attribute changes. Paths are relative to the layer roots ("" is the root).
//!
//! Conventions that make each step crash-safe:
//! - New entries are built in the staging directory and renamed into place.
//! - An entry and its own `.wh.NAME` in the same upper directory: the entry wins. So a
//!   re-created name is placed first and its whiteout removed after; a deletion writes the
//!   whiteout first and removes the upper entry after. A crash in between shows the old state.
//! - A new directory where a whiteout stands (made, or renamed there) is opaque: what the
//!   deleted lower directory held stays hidden.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::layer::meta::{self, OverrideKind, OverrideStat};
use crate::layer::whiteout::{self, NameKind};
use crate::sys::{self, TimeSpec};

use super::copyup::{CopyHow, OpenCopy, Shape};
use super::lowers::{LowerEntry, LowerView};
use super::quota::Quota;

/// Name of our staging directory inside the layer's work directory.
const STAGING: &str = "stratafs-staging";
/// Name of the empty file in the staging directory that whiteouts are hard-linked to (staged
/// entries are named `PID.N`, so it cannot clash).
const WHITEOUT_BASE: &str = "whiteout";

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

fn split(rel: &Path) -> io::Result<(&Path, &OsStr)> {
    match (rel.parent(), rel.file_name()) {
        (Some(p), Some(n)) => Ok((p, n)),
        _ => Err(errno(libc::EINVAL)),
    }
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Owner and mode of a new entry (mode includes the file-type bits).
#[derive(Debug, Clone, Copy)]
pub struct NewAttr {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
}

/// Changes of `setattr`; `None` leaves a field alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSpec>,
    pub mtime: Option<TimeSpec>,
}

/// An upper entry after [`UpperLayer::apply_attr`]: its stat and the override_stat in force.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    pub st: libc::stat,
    pub over: Option<OverrideStat>,
}

/// The merged entry at a path: its upper stat (if in the upper), the lower entry the view has
/// there (if any), and the stat of the visible one.
#[derive(Debug, Clone)]
pub struct Present {
    pub upper: Option<libc::stat>,
    pub lower: Option<LowerEntry>,
    pub st: libc::stat,
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

/// The upper layer of one mount.
pub struct UpperLayer {
    root: PathBuf,
    root_fd: OwnedFd,
    staging: PathBuf,
    staging_fd: OwnedFd,
    /// Cleared once the filesystem refuses to hard-link whiteouts: plain files from then on.
    link_whiteouts: AtomicBool,
    /// Held while the whiteout base is replaced (it ran out of links).
    base_lock: Mutex<()>,
    /// Whether copy-up still tries reflinks (cleared when the filesystem has none).
    pub(crate) reflink: AtomicBool,
    /// Whether a copy's data is flushed to disk before the copy takes its name (off for a
    /// `volatile` mount).
    pub(crate) flush_copies: bool,
    /// Whether copies are made unnamed (`O_TMPFILE`) until flushed (cleared when the
    /// filesystem cannot).
    pub(crate) unnamed_files: AtomicBool,
    seq: AtomicU64,
    /// This process's id, part of staging names (read once: glibc does not cache getpid).
    pid: u32,
    lowers: Arc<dyn LowerView>,
    /// Usage and limit of the layer.
    pub quota: Quota,
}

impl std::fmt::Debug for UpperLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpperLayer")
            .field("root", &self.root)
            .field("staging", &self.staging)
            .field("quota", &self.quota)
            .finish()
    }
}

impl UpperLayer {
    /// Open the upper layer `root` with work directory `work` (same filesystem). Leftovers of a
    /// crashed copy-up in the staging area are deleted, and the quota usage is scanned.
    pub fn open(
        root: &Path,
        work: &Path,
        lowers: Arc<dyn LowerView>,
        quota_limit: Option<u64>,
    ) -> io::Result<UpperLayer> {
        let staging = work.join(STAGING);
        match std::fs::remove_dir_all(&staging) {
            Ok(()) => tracing::info!(path = %staging.display(), "removed staging leftovers"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(&staging)?;
        let staging_fd = sys::open_dir(&staging)?;
        let link_whiteouts =
            whiteout::make_whiteout_base(staging_fd.as_fd(), OsStr::new(WHITEOUT_BASE)).is_ok();
        let quota = Quota::scan(root, quota_limit)?;
        let unnamed = unnamed_files_work(staging_fd.as_fd());
        Ok(UpperLayer {
            root: root.to_path_buf(),
            root_fd: sys::open_dir(root)?,
            staging,
            staging_fd,
            link_whiteouts: AtomicBool::new(link_whiteouts),
            base_lock: Mutex::new(()),
            reflink: AtomicBool::new(true),
            flush_copies: true,
            unnamed_files: AtomicBool::new(unnamed),
            seq: AtomicU64::new(0),
            pid: std::process::id(),
            lowers,
            quota,
        })
    }

    /// For a `volatile` mount: copies are not flushed before they take their names (a
    /// machine crash may then leave a copied-up file empty; the layer is thrown away anyway).
    pub fn volatile(mut self) -> UpperLayer {
        self.flush_copies = false;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn lowers(&self) -> &Arc<dyn LowerView> {
        &self.lowers
    }

    pub(crate) fn staging_path(&self) -> &Path {
        &self.staging
    }

    /// A fresh name in the staging directory.
    pub(crate) fn tmp_name(&self) -> OsString {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        OsString::from(format!("{}.{n}", self.pid))
    }

    /// The on-disk path of `rel` in the upper layer.
    pub fn upath(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    /// `lstat` of the upper entry at `rel`; `None` when absent or a whiteout device.
    pub fn upper_stat(&self, rel: &Path) -> Option<libc::stat> {
        let st = sys::lstat(&self.upath(rel)).ok()?;
        (!whiteout::is_whiteout_device(&st)).then_some(st)
    }

    /// Open `rel` of the upper layer, confined to it: no symlink on the way is followed.
    fn open_in_upper(&self, rel: &Path, flags: i32) -> io::Result<OwnedFd> {
        sys::open_beneath(self.root_fd.as_fd(), rel, flags)
    }

    fn open_upper_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.open_in_upper(rel, libc::O_RDONLY | libc::O_DIRECTORY)
    }

    /// Whether the upper directory `dir` records `name` as deleted (either format).
    fn whiteout_in(&self, dir: &Path, name: &OsStr) -> bool {
        self.open_upper_dir(dir)
            .is_ok_and(|fd| whiteout::fd_has_whiteout(fd.as_fd(), name))
    }

    /// The lower entry at `rel` that the upper layer does not hide: whiteouts, opaque
    /// directories and non-directories of the upper hide what is below them. The upper's own
    /// entry at `rel` is not considered (a lower entry there needs a whiteout when deleted).
    pub fn lower_of(&self, rel: &Path) -> Option<LowerEntry> {
        // The cached lower view first: most paths the write path asks about (new files in new
        // directories) have no lower entry, and then the upper need not be looked at.
        let entry = self.lowers.lower_entry(rel)?;
        let names: Vec<&OsStr> = rel.components().map(|c| c.as_os_str()).collect();
        let mut dir: Option<OwnedFd> = None;
        for (i, name) in names.iter().enumerate() {
            let dfd = dir.as_ref().map_or(self.root_fd.as_fd(), |d| d.as_fd());
            if whiteout::fd_has_whiteout(dfd, name) || whiteout::fd_is_opaque_dir(dfd) {
                return None;
            }
            if i + 1 == names.len() {
                break;
            }
            let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
            match sys::openat(dfd, Path::new(name), flags, 0) {
                Ok(fd) => dir = Some(fd),
                // A non-directory in the upper hides everything below it.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) => {
                    return None
                }
                // Nothing more in the upper on this path: the rest is a lower question.
                Err(_) => break,
            }
        }
        Some(entry)
    }

    /// Whether the merged directory `rel` shows contents of lower layers (a lower directory
    /// under it that the upper does not make opaque).
    fn merges_lower(&self, rel: &Path) -> bool {
        match self.lower_of(rel) {
            Some(e) if matches!(sys::lstat(&e.path), Ok(st) if is_dir(&st)) => {
                !matches!(self.upper_stat(rel), Some(st) if !is_dir(&st) || whiteout::is_opaque_dir(&self.upath(rel)))
            }
            _ => false,
        }
    }

    /// Where the merged view's entry at `rel` lives: the upper entry, else the visible lower one.
    pub fn source_of(&self, rel: &Path) -> Option<PathBuf> {
        if self.upper_stat(rel).is_some() {
            return Some(self.upath(rel));
        }
        self.lower_of(rel).map(|e| e.path)
    }

    /// Where to copy the merged entry `rel` from: the upper entry, named through its directory
    /// opened beneath the upper root (the returned fd keeps that name valid), else the visible
    /// lower one.
    pub(crate) fn copy_source(&self, rel: &Path) -> io::Result<(PathBuf, Option<OwnedFd>)> {
        if self.upper_stat(rel).is_some() {
            let (parent, name) = split(rel)?;
            let pfd = self.open_upper_dir(parent)?;
            return Ok((sys::fd_child_path(pfd.as_fd(), Path::new(name)), Some(pfd)));
        }
        let e = self.lower_of(rel).ok_or_else(|| errno(libc::ENOENT))?;
        Ok((e.path, None))
    }

    /// The names the merged directory `rel` shows.
    pub fn merged_children(&self, rel: &Path) -> io::Result<Vec<OsString>> {
        let mut names = Vec::new();
        let mut hidden = std::collections::HashSet::new();
        let mut opaque = false;
        // Read through a directory opened beneath the upper root (a symlink swapped in on the
        // way is refused, not followed).
        if let Some(dfd) = sys::open_dir_if_present(self.root_fd.as_fd(), rel)? {
            opaque = whiteout::fd_has_opaque_xattr(dfd.as_fd());
            for e in sys::read_dir_fd(dfd.as_fd())? {
                let name = e.name;
                match whiteout::classify(&name) {
                    NameKind::Plain => {
                        let st = sys::fstatat(dfd.as_fd(), Path::new(&name));
                        if matches!(st, Ok(st) if whiteout::is_whiteout_device(&st)) {
                            hidden.insert(name);
                        } else {
                            names.push(name);
                        }
                    }
                    NameKind::Whiteout(t) => {
                        hidden.insert(t.to_os_string());
                    }
                    NameKind::OpaqueMarker => opaque = true,
                    _ => {}
                }
            }
        }
        if !opaque && self.merges_lower(rel) {
            for n in self.lowers.lower_children(rel) {
                if !hidden.contains(&n) && !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        Ok(names)
    }

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
        let st = sys::lstat(&entry.path)?;
        if !is_dir(&st) {
            return Err(errno(libc::ENOTDIR));
        }
        match self.place_copy(rel, &entry.path, &st, false).map(drop) {
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
        src: &Path,
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

    /// Delete a staged entry.
    fn discard(&self, tmp: &OsStr) -> io::Result<()> {
        let p = self.staging.join(tmp);
        match sys::lstat(&p) {
            Ok(st) if is_dir(&st) => std::fs::remove_dir_all(&p),
            Ok(_) => std::fs::remove_file(&p),
            Err(_) => Ok(()),
        }
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
        let mut st = sys::lstat(&entry.path)?;
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
        let copy = match self.place_copy(rel, &entry.path, &st, known.no_xattrs) {
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
        let pst = sys::lstat(&e.path)?;
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

    /// Build a new node in staging with `build`, give it `attr`'s owner and mode, and rename it
    /// to `rel`, which must not exist in the merged view (`EEXIST` if it does in the upper).
    /// A whiteout at `rel` is replaced; a directory placed over one is made opaque. A regular
    /// file comes back open read-write.
    fn create_node(
        &self,
        rel: &Path,
        attr: &NewAttr,
        symlink_target: Option<&Path>,
    ) -> io::Result<Option<OwnedFd>> {
        let (parent, name) = split(rel)?;
        self.ensure_dir(parent)?;
        // Only a directory cares whether it replaces a deleted name (it must then be opaque);
        // `place` replaces a whiteout of either format by itself.
        let had_whiteout =
            attr.mode & libc::S_IFMT == libc::S_IFDIR && self.whiteout_in(parent, name);
        let tmp = self.tmp_name();
        let sfd = self.staging_fd.as_fd();
        let shape = Shape {
            mode: attr.mode,
            uid: attr.uid,
            gid: attr.gid,
            rdev: attr.rdev,
            size: 0,
            atime: TimeSpec::Now,
            mtime: TimeSpec::Now,
        };
        let built = (|| {
            let made = self.make_node(sfd, &tmp, &shape, symlink_target, false)?;
            let path = self.staging.join(&tmp);
            if shape.file_type() == libc::S_IFDIR && had_whiteout {
                let fd = sys::open_dir(&path)?;
                whiteout::write_opaque(fd.as_fd())?;
            }
            self.apply_shape(sfd, &tmp, &path, &shape, None, &made)?;
            Ok(made.file)
        })();
        match built {
            Ok(file) => self.place(&tmp, parent, name).map(|()| file),
            Err(e) => {
                let _ = self.discard(&tmp);
                Err(e)
            }
        }
    }

    /// Rename the staged `tmp` to `parent/name`, replacing only a whiteout, then drop a
    /// `.wh.NAME` marker if there is one.
    fn place(&self, tmp: &OsStr, parent: &Path, name: &OsStr) -> io::Result<()> {
        let pfd = self.open_upper_dir(parent)?;
        let (sfd, dfd) = (self.staging_fd.as_fd(), pfd.as_fd());
        let placed = self
            .free_whiteout_slot(dfd, name)
            .and_then(|()| sys::renameat2(sfd, tmp, dfd, name, sys::RENAME_NOREPLACE));
        if let Err(e) = placed {
            let _ = self.discard(tmp);
            return Err(e);
        }
        self.drop_whiteout(dfd, name)
    }

    /// Make the name `name` of the upper directory `pfd` free for a new entry of any type when
    /// a whiteout device (kernel format) holds it: a directory cannot be renamed over a device,
    /// so the deletion is recorded as `.wh.NAME` first and the device removed after (no moment
    /// in between shows the lower entry again). The caller then places its entry with
    /// `RENAME_NOREPLACE` (or links it) and drops the `.wh.NAME`.
    fn free_whiteout_slot(&self, pfd: std::os::fd::BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        if matches!(sys::fstatat(pfd, Path::new(name)), Ok(st) if whiteout::is_whiteout_device(&st))
        {
            self.write_whiteout(pfd, name)?;
            sys::unlink_entry(pfd, name, false)?;
        }
        Ok(())
    }

    /// Record that `name` in the upper directory `pfd` is deleted: a hard link to the shared
    /// whiteout file where the filesystem allows, else a new empty `.wh.NAME`.
    fn write_whiteout(&self, pfd: std::os::fd::BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
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

    fn drop_whiteout(&self, pfd: std::os::fd::BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        match sys::unlink_entry(pfd, &whiteout::whiteout_name(name), false) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
            _ => Ok(()),
        }
    }

    /// Create an empty regular file at `rel`; it comes back open read-write.
    pub fn create_file(&self, rel: &Path, attr: &NewAttr) -> io::Result<OwnedFd> {
        let attr = NewAttr {
            mode: libc::S_IFREG | (attr.mode & 0o7777),
            ..*attr
        };
        self.create_node(rel, &attr, None)?
            .ok_or_else(|| errno(libc::EIO))
    }

    /// Create a directory at `rel` (opaque when it replaces a deleted name).
    pub fn mkdir(&self, rel: &Path, attr: &NewAttr) -> io::Result<()> {
        let attr = NewAttr {
            mode: libc::S_IFDIR | (attr.mode & 0o7777),
            ..*attr
        };
        self.create_node(rel, &attr, None).map(drop)
    }

    /// Create a fifo, socket or device node at `rel` (`attr.mode` carries the type). Without
    /// the privilege for a device it becomes an empty file described by `override_stat`.
    pub fn mknod(&self, rel: &Path, attr: &NewAttr) -> io::Result<()> {
        match attr.mode & libc::S_IFMT {
            libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK => {
                self.create_node(rel, attr, None).map(drop)
            }
            libc::S_IFREG | 0 => self.create_file(rel, attr).map(drop),
            _ => Err(errno(libc::EINVAL)),
        }
    }

    /// Create a symlink at `rel` pointing to `target`.
    pub fn symlink(&self, rel: &Path, target: &Path, uid: u32, gid: u32) -> io::Result<()> {
        let attr = NewAttr {
            mode: libc::S_IFLNK | 0o777,
            uid,
            gid,
            rdev: 0,
        };
        self.create_node(rel, &attr, Some(target)).map(drop)
    }

    /// Hard-link the merged entry `src` as `dst` (copying `src` up first).
    pub fn link(&self, src: &Path, dst: &Path) -> io::Result<CopyUp> {
        let up = self.copy_up(src)?;
        let (sparent, sname) = split(src)?;
        let (dparent, dname) = split(dst)?;
        self.ensure_dir(dparent)?;
        let sfd = self.open_upper_dir(sparent)?;
        let dfd = self.open_upper_dir(dparent)?;
        self.free_whiteout_slot(dfd.as_fd(), dname)?;
        sys::linkat(sfd.as_fd(), sname, dfd.as_fd(), dname)?;
        self.drop_whiteout(dfd.as_fd(), dname)?;
        Ok(up)
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
            (None, Some(e)) => sys::lstat(&e.path)?,
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
        if lower.is_some() {
            self.ensure_dir(parent)?;
            let pfd = self.open_upper_dir(parent)?;
            self.write_whiteout(pfd.as_fd(), name)?;
        }
        if let Some(ust) = upper {
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

    /// Make the merged entry `rel`, about to move to a name where lower layers have `dest_lower`,
    /// self-contained in the upper: non-directories are copied up; a directory with lower
    /// contents is replaced by an opaque full copy; an upper-only directory moving over a lower
    /// name is made opaque.
    fn prepare_move(&self, rel: &Path, dest_lower: bool) -> io::Result<()> {
        let src = self.source_of(rel).ok_or_else(|| errno(libc::ENOENT))?;
        let st = sys::lstat(&src)?;
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
            .and_then(|p| sys::lstat(&p))?;
        let dst_src = self.source_of(dst);
        let dst_st = match &dst_src {
            Some(p) => Some(sys::lstat(p)?),
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
        self.free_whiteout_slot(dfd.as_fd(), dname)?;
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
        if is_dir(&sst) && self.merges_lower(src) {
            let tmp = self.materialize_dir(src)?;
            if let Err(e) = sys::renameat2(self.staging_fd.as_fd(), &tmp, dfd.as_fd(), dname, 0) {
                let _ = self.discard(&tmp);
                return Err(e);
            }
            self.drop_whiteout(dfd.as_fd(), dname)?;
            // The old name: hide the lower directory, then drop the old upper part.
            self.ensure_dir(sparent)?;
            let sfd = self.open_upper_dir(sparent)?;
            self.write_whiteout(sfd.as_fd(), sname)?;
            if self.upper_stat(src).is_some() {
                let old = self.tmp_name();
                sys::renameat2(sfd.as_fd(), sname, self.staging_fd.as_fd(), &old, 0)?;
                let size = quota_of(&self.staging.join(&old));
                self.discard(&old)?;
                self.quota.release(size);
            }
            return Ok(());
        }
        self.prepare_move(src, dst_lower || dst_deleted)?;
        let sfd = self.open_upper_dir(sparent)?;
        sys::renameat2(sfd.as_fd(), sname, dfd.as_fd(), dname, 0)?;
        self.drop_whiteout(dfd.as_fd(), dname)?;
        if src_lower {
            self.write_whiteout(sfd.as_fd(), sname)?;
        }
        Ok(())
    }

    /// Apply `setattr` changes to the merged entry `rel` (copying it up first).
    pub fn set_attr(&self, rel: &Path, a: &SetAttr) -> io::Result<()> {
        self.copy_up(rel)?;
        self.apply_attr(rel, a).map(drop)
    }

    /// [`UpperLayer::set_attr`] of an entry already in the upper layer; returns what the entry
    /// is afterwards (for the reply, without a second look-up).
    pub fn apply_attr(&self, rel: &Path, a: &SetAttr) -> io::Result<Applied> {
        self.apply_attr_known(rel, a, false)
    }

    /// [`UpperLayer::apply_attr`]; `plain`: the caller knows the entry has no xattrs, so there
    /// is no override_stat to read.
    pub fn apply_attr_known(&self, rel: &Path, a: &SetAttr, plain: bool) -> io::Result<Applied> {
        let (parent, name) = split(rel)?;
        let pfd = self.open_upper_dir(parent)?;
        // The xattr calls name the entry through the directory opened above (confined).
        let path = sys::fd_child_path(pfd.as_fd(), Path::new(name));
        let read_override = |st: &libc::stat| {
            if plain || st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                Ok(None)
            } else {
                meta::read_override(&path)
            }
        };
        // Owner and mode changes depend on the entry as it is (and its override); a size or
        // times change does not, so `touch` looks at the entry only afterwards.
        let owner_or_mode = a.uid.is_some() || a.gid.is_some() || a.mode.is_some();
        let mut over = None;
        if owner_or_mode {
            let st = sys::fstatat(pfd.as_fd(), Path::new(name))?;
            over = read_override(&st)?;
            change_owner_mode(pfd.as_fd(), name, &path, &st, a, &mut over)?;
        }
        if let Some(size) = a.size {
            let f = sys::openat(
                pfd.as_fd(),
                Path::new(name),
                libc::O_WRONLY | libc::O_NOFOLLOW,
                0,
            )?;
            self.truncate_fd(f.as_fd(), size)?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            sys::set_times_at(
                pfd.as_fd(),
                name,
                a.atime.unwrap_or(TimeSpec::Omit),
                a.mtime.unwrap_or(TimeSpec::Omit),
            )?;
        }
        let st = sys::fstatat(pfd.as_fd(), Path::new(name))?;
        if !owner_or_mode {
            over = read_override(&st)?;
        }
        Ok(Applied { st, over })
    }

    /// `ftruncate` with quota accounting.
    pub fn truncate_fd(&self, fd: std::os::fd::BorrowedFd<'_>, size: u64) -> io::Result<()> {
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
    pub fn write_fd(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        buf: &[u8],
        off: i64,
    ) -> io::Result<usize> {
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
        fd: std::os::fd::BorrowedFd<'_>,
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

    /// Set an xattr on the merged entry `rel` (copying it up). Internal names are refused.
    pub fn set_xattr(&self, rel: &Path, name: &str, value: &[u8]) -> io::Result<()> {
        if whiteout::is_internal_xattr(name.as_bytes()) {
            return Err(errno(libc::EPERM));
        }
        self.copy_up(rel)?;
        let (parent, leaf) = split(rel)?;
        let pfd = self.open_upper_dir(parent)?;
        sys::lsetxattr(
            &sys::fd_child_path(pfd.as_fd(), Path::new(leaf)),
            name,
            value,
        )
    }

    /// Remove an xattr of the merged entry `rel` (copying it up).
    pub fn remove_xattr(&self, rel: &Path, name: &str) -> io::Result<()> {
        if whiteout::is_internal_xattr(name.as_bytes()) {
            return Err(errno(libc::EPERM));
        }
        if self
            .source_of(rel)
            .and_then(|p| sys::lgetxattr(&p, name).ok().flatten())
            .is_none()
        {
            return Err(errno(libc::ENODATA));
        }
        self.copy_up(rel)?;
        let (parent, leaf) = split(rel)?;
        let pfd = self.open_upper_dir(parent)?;
        sys::lremovexattr(&sys::fd_child_path(pfd.as_fd(), Path::new(leaf)), name)
    }

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
}

/// The owner and mode part of a setattr on `dir/name` (full path `path`, stat `st`, override
/// `over`): natively where the backing filesystem lets us, else in override_stat.
fn change_owner_mode(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &OsStr,
    path: &Path,
    st: &libc::stat,
    a: &SetAttr,
    over: &mut Option<OverrideStat>,
) -> io::Result<()> {
    let is_link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
    if a.uid.is_some() || a.gid.is_some() {
        let uid = a.uid.unwrap_or(over.map_or(st.st_uid, |o| o.uid));
        let gid = a.gid.unwrap_or(over.map_or(st.st_gid, |o| o.gid));
        let native = if over.is_none() {
            match sys::lchownat(dir, name, uid, gid) {
                Ok(()) => true,
                Err(e) if e.raw_os_error() == Some(libc::EPERM) && !is_link => false,
                Err(e) => return Err(e),
            }
        } else {
            false
        };
        if !native {
            let mut mode = over.map_or(st.st_mode & 0o7777, |o| o.mode & 0o7777);
            if st.st_mode & libc::S_IFMT == libc::S_IFREG {
                // As chown(2) does for an unprivileged caller.
                mode &= !(libc::S_ISUID | libc::S_ISGID);
            }
            let o = OverrideStat {
                uid,
                gid,
                mode,
                kind: over
                    .and_then(|o| o.kind)
                    .or_else(|| OverrideKind::from_mode(st.st_mode, st.st_rdev)),
            };
            meta::write_override(path, &o)?;
            *over = Some(o);
        }
    }
    if let Some(mode) = a.mode {
        if let Some(o) = over.as_mut() {
            o.mode = mode & 0o7777;
            meta::write_override(path, o)?;
        } else if !is_link {
            sys::fchmodat(dir, name, mode & 0o7777)?;
        }
    }
    Ok(())
}

/// Bytes the quota counts for a tree about to be deleted.
/// Whether unnamed files can be made in the directory `dir` and then named (`O_TMPFILE`, and
/// `/proc` to name them): tried once with a file that is deleted again.
fn unnamed_files_work(dir: std::os::fd::BorrowedFd<'_>) -> bool {
    let probe = OsStr::new(".unnamed-probe");
    let named =
        sys::open_unnamed(dir, 0o600).and_then(|f| sys::link_unnamed(f.as_fd(), dir, probe));
    let _ = sys::unlink_entry(dir, probe, false);
    if let Err(e) = &named {
        tracing::info!(%e, "copies are made under a staging name (no unnamed files here)");
    }
    named.is_ok()
}

fn quota_of(path: &Path) -> u64 {
    match sys::lstat(path) {
        Ok(st) if is_dir(&st) => super::quota::usage_of(path).unwrap_or(0),
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_nlink == 1 => {
            st.st_size as u64
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests;
