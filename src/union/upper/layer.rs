//! The upper layer itself: opening it (staging area, whiteout base, quota scan), the paths
//! and file descriptors of its entries, and what the merged view shows at a path (which lower
//! entry the upper leaves visible, merged listings).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::layer::whiteout::{self, NameKind};
use crate::sys;
use crate::union::lowers::{LowerEntry, LowerView};
use crate::union::quota::Quota;
use crate::union::source::Source;

/// Name of our staging directory inside the layer's work directory.
pub(super) const STAGING: &str = "stratafs-staging";

/// Name of the empty file in the staging directory that whiteouts are hard-linked to (staged
/// entries are named `PID.N`, so it cannot clash).
pub(super) const WHITEOUT_BASE: &str = "whiteout";

pub(super) fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

pub(super) fn split(rel: &Path) -> io::Result<(&Path, &OsStr)> {
    match (rel.parent(), rel.file_name()) {
        (Some(p), Some(n)) => Ok((p, n)),
        _ => Err(errno(libc::EINVAL)),
    }
}

pub(super) fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// The upper layer of one mount.
pub struct UpperLayer {
    root: PathBuf,
    root_fd: OwnedFd,
    pub(super) staging: PathBuf,
    pub(super) staging_fd: OwnedFd,
    /// Cleared once the filesystem refuses to hard-link whiteouts: plain files from then on.
    pub(super) link_whiteouts: AtomicBool,
    /// Held while the whiteout base is replaced (it ran out of links).
    pub(super) base_lock: Mutex<()>,
    /// Whether copy-up still tries reflinks (cleared when the filesystem has none).
    pub(crate) reflink: AtomicBool,
    /// Whether a copy's data is flushed to disk before the copy takes its name (off for a
    /// `volatile` mount).
    pub(crate) flush_copies: bool,
    /// Whether copies are made unnamed (`O_TMPFILE`) until flushed (cleared when the
    /// filesystem cannot).
    pub(crate) unnamed_files: AtomicBool,
    seq: AtomicU64,
    /// This process's effective uid and gid: the owner a file gets from a plain create.
    pub(super) own_ids: (u32, u32),
    /// This process's id, part of staging names (read once: glibc does not cache getpid).
    pid: u32,
    pub(super) lowers: Arc<dyn LowerView>,
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
            own_ids: sys::effective_ids(),
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
    pub(super) fn open_in_upper(&self, rel: &Path, flags: i32) -> io::Result<OwnedFd> {
        sys::open_beneath(self.root_fd.as_fd(), rel, flags)
    }

    pub(super) fn open_upper_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.open_in_upper(rel, libc::O_RDONLY | libc::O_DIRECTORY)
    }

    /// Whether the upper directory `dir` records `name` as deleted (either format).
    pub(super) fn whiteout_in(&self, dir: &Path, name: &OsStr) -> bool {
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
    pub(super) fn merges_lower(&self, rel: &Path) -> bool {
        match self.lower_of(rel) {
            Some(e) if matches!(e.lstat(), Ok(st) if is_dir(&st)) => {
                !matches!(self.upper_stat(rel), Some(st) if !is_dir(&st) || whiteout::is_opaque_dir(&self.upath(rel)))
            }
            _ => false,
        }
    }

    /// Where the merged view's entry at `rel` lives: the upper entry, else the visible lower one.
    pub fn source_of(&self, rel: &Path) -> Option<Source> {
        if self.upper_stat(rel).is_some() {
            return Some(Source::Disk(self.upath(rel)));
        }
        self.lower_of(rel).map(|e| e.source())
    }

    /// Where to copy the merged entry `rel` from: the upper entry, named through its directory
    /// opened beneath the upper root (the returned fd keeps that name valid), else the visible
    /// lower one.
    pub(crate) fn copy_source(&self, rel: &Path) -> io::Result<(Source, Option<OwnedFd>)> {
        if self.upper_stat(rel).is_some() {
            let (parent, name) = split(rel)?;
            let pfd = self.open_upper_dir(parent)?;
            let path = sys::fd_child_path(pfd.as_fd(), Path::new(name));
            return Ok((Source::Disk(path), Some(pfd)));
        }
        let e = self.lower_of(rel).ok_or_else(|| errno(libc::ENOENT))?;
        Ok((e.source(), None))
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
            for n in self.lowers.lower_children(rel)? {
                if !hidden.contains(&n) && !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        Ok(names)
    }
}

/// Whether unnamed files can be made in the directory `dir` and then named (`O_TMPFILE`, and
/// `/proc` to name them): tried once with a file that is deleted again.
fn unnamed_files_work(dir: BorrowedFd<'_>) -> bool {
    let probe = OsStr::new(".unnamed-probe");
    let named =
        sys::open_unnamed(dir, 0o600).and_then(|f| sys::link_unnamed(f.as_fd(), dir, probe));
    let _ = sys::unlink_entry(dir, probe, false);
    if let Err(e) = &named {
        tracing::info!(%e, "copies are made under a staging name (no unnamed files here)");
    }
    named.is_ok()
}

/// A point between two steps of a change where a crash (of the machine or of the server) may
/// stop it. In test builds, [`crash_after`] makes the n-th point met on this thread fail as if
/// the process had died there, so a test can check what a fresh mount then shows; elsewhere it
/// does nothing.
#[inline]
pub(super) fn crash_point(_what: &'static str) -> io::Result<()> {
    #[cfg(test)]
    {
        let hit = CRASH_AFTER.with(|c| match c.get() {
            Some(1) => {
                c.set(None);
                true
            }
            Some(n) => {
                c.set(Some(n - 1));
                false
            }
            None => false,
        });
        if hit {
            return Err(io::Error::other(format!("simulated crash at {_what}")));
        }
    }
    Ok(())
}

#[cfg(test)]
thread_local! {
    static CRASH_AFTER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Test builds: the `n`-th [`crash_point`] met on this thread from now fails (`None`: none).
/// Returns whether the previous setting was used up (a crash was simulated).
#[cfg(test)]
pub(super) fn crash_after(n: Option<usize>) -> bool {
    CRASH_AFTER.with(|c| c.replace(n)).is_none()
}
