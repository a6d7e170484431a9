//! The state of a served view: the merged tree, open files and directories, passthrough
//! backing files, the write path's upper layer, and where long requests run.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dashmap::{DashMap, DashSet};

use crate::sys;
use crate::union::background::Background;
use crate::union::layers::LayerIdx;
use crate::union::listing::Listing;
use crate::union::lowers::LowerStack;
use crate::union::options::MountOptions;
use crate::union::prefetch::{Front, Prefetcher};
use crate::union::tarlayer::Window;
use crate::union::tree::Tree;
use crate::union::upper::UpperLayer;
use crate::union::view::types::{Backing, Errno, Notify, Registrar};

/// How long the kernel may cache entries and attributes: every change goes through us, and
/// lower layers never change while mounted.
pub const TTL: Duration = Duration::from_secs(24 * 3600);

/// An open regular file.
#[derive(Debug)]
pub struct Handle {
    pub ino: u64,
    pub file: File,
    /// Opened for writing (by the write path).
    pub writable: bool,
    /// Holds a reference on the inode's passthrough backing file.
    pub passthrough: bool,
    /// A file of a tar-index layer: `file` is the tar's file and this the file's bytes in it.
    pub window: Option<Window>,
    /// A map of `file` that large reads reply from, made at the first one (`None` inside:
    /// the file could not be mapped; reads pread).
    pub read_map: OnceLock<Option<sys::ReadMap>>,
}

/// The identity, size and modification time of a backing file: when they are as they were,
/// nothing changed it behind the view's back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CacheKey {
    dev: u64,
    ino: u64,
    size: i64,
    mtime: (i64, i64),
}

impl CacheKey {
    fn of(fd: BorrowedFd<'_>) -> Option<CacheKey> {
        let st = sys::fstat(fd).ok()?;
        Some(CacheKey {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec),
        })
    }
}

/// An open directory.
#[derive(Debug)]
pub struct DirHandle {
    /// The listing as of opendir: readdir offsets index it.
    pub listing: Arc<Listing>,
    /// The directory opened in each layer READDIRPLUS stats in (`None`: not there), kept
    /// across the requests of one listing instead of reopened by path for each.
    pub dirs: parking_lot::Mutex<HashMap<LayerIdx, Option<OwnedFd>>>,
    /// How far READDIRPLUS got (for the stat-ahead thread).
    pub front: Front,
}

/// The core of the union view, shared by every transport thread: a handle on its state,
/// cloned for requests that finish on a thread of their own (see [`crate::union::background`]).
#[derive(Debug, Clone)]
pub struct View(Arc<ViewState>);

impl std::ops::Deref for View {
    type Target = ViewState;
    fn deref(&self) -> &ViewState {
        &self.0
    }
}

/// What the served view knows: the merged tree, open files, the write path's state.
#[derive(Debug)]
pub struct ViewState {
    pub tree: Tree,
    pub opts: MountOptions,
    /// Whether the kernel accepted FUSE passthrough (set at INIT).
    pub passthrough: AtomicBool,
    /// Whether the kernel's writeback cache is on (set at INIT): it then owns the size and
    /// mtime of cached regular files and may read through a handle opened for writing only.
    pub writeback: AtomicBool,
    /// What each upper file's backing file looked like when the view last saw it unchanged
    /// (at an open, or at the release of a writer): an open that finds it so again lets the
    /// kernel keep the inode's cached pages.
    cache_keys: DashMap<u64, CacheKey>,
    handles: DashMap<u64, Arc<Handle>>,
    /// A writable handle of each inode that has one (inode -> handle number): a times change
    /// goes through it instead of resolving the path again.
    writers: DashMap<u64, u64>,
    pub(super) dir_handles: DashMap<u64, Arc<DirHandle>>,
    /// The stat-ahead thread, started on first need (`None`: it could not be started).
    pub(super) stat_ahead: OnceLock<Option<Prefetcher>>,
    next_fh: AtomicU64,
    /// Per-inode passthrough backing files: all opens of one inode must share one.
    backing: DashMap<u64, (Arc<dyn Backing>, usize)>,
    /// Set once the connection can take notifications.
    invalidator: OnceLock<Invalidator>,
    /// State of the write path (upper layer, quota).
    pub(super) writer: Writer,
    /// Requests served off the reader threads.
    pub(super) background: Background,
}

/// Kernel cache invalidations, sent from a worker thread: the kernel may need locks that the
/// request being served holds (a rename holds both directories' locks until we reply), so
/// notifying from inside the handler can deadlock.
#[derive(Debug)]
struct Invalidator {
    tx: Sender<(u64, OsString)>,
}

/// Write-path state of a mount, made on first use.
#[derive(Debug, Default)]
pub struct Writer {
    upper: OnceLock<Result<UpperLayer, i32>>,
    /// Inodes copied up while a passthrough open of their lower file was alive: their later
    /// opens must not be handed to the kernel with another backing file.
    pub(super) no_passthrough: DashSet<u64>,
}

impl Writer {
    /// Whether opens of `ino` must be served without passthrough.
    pub fn blocks_passthrough(&self, ino: u64) -> bool {
        !self.no_passthrough.is_empty() && self.no_passthrough.contains(&ino)
    }
}

impl View {
    pub fn new(tree: Tree, opts: MountOptions) -> View {
        View(Arc::new(ViewState {
            tree,
            opts,
            passthrough: AtomicBool::new(false),
            writeback: AtomicBool::new(false),
            cache_keys: DashMap::new(),
            handles: DashMap::new(),
            writers: DashMap::new(),
            dir_handles: DashMap::new(),
            stat_ahead: OnceLock::new(),
            next_fh: AtomicU64::new(1),
            backing: DashMap::new(),
            invalidator: OnceLock::new(),
            writer: Writer::default(),
            background: Background::default(),
        }))
    }

    /// Serve `job` on a thread of its own when it may take `long` (a large copy-up: see
    /// [`crate::union::background`]), else on this thread.
    pub(super) fn serve(&self, long: bool, job: impl FnOnce(&View) + Send + 'static) {
        if long {
            let fs = self.clone();
            self.background.run(move || job(&fs));
        } else {
            job(self)
        }
    }
}

impl ViewState {
    /// Start the worker that forwards entry invalidations to the kernel through `notify`
    /// (once the connection exists; before, none are sent).
    pub fn start_invalidations(&self, notify: impl Notify) -> io::Result<()> {
        let (tx, rx) = std::sync::mpsc::channel::<(u64, OsString)>();
        std::thread::Builder::new()
            .name("stratafs-inval".into())
            .spawn(move || {
                for (parent, name) in rx {
                    if let Err(e) = notify.inval_entry(parent, &name) {
                        tracing::debug!(parent, ?name, %e, "entry invalidation not delivered");
                    }
                }
            })?;
        let _ = self.invalidator.set(Invalidator { tx });
        Ok(())
    }

    /// Ask the kernel to drop its cached entry `name` in directory `parent`, after the reply.
    pub fn invalidate_entry(&self, parent: u64, name: &OsStr) {
        if let Some(inval) = self.invalidator.get() {
            let _ = inval.tx.send((parent, name.to_owned()));
        }
    }

    /// Whether the view refuses changes.
    pub fn read_only(&self) -> bool {
        self.opts.read_only()
    }

    /// The upper layer, or the errno to answer (`EROFS` for a read-only view).
    pub(super) fn upper(&self) -> Result<&UpperLayer, Errno> {
        if self.read_only() {
            return Err(Errno::EROFS);
        }
        let res = self.writer.upper.get_or_init(|| {
            let (Some(up), Some(work)) = (&self.opts.upperdir, &self.opts.workdir) else {
                return Err(libc::EROFS);
            };
            let lowers = Arc::new(LowerStack::over(self.tree.layers.clone()));
            let opened = UpperLayer::open(up, work, lowers, self.opts.quota);
            let opened = opened.map(|u| if self.opts.volatile { u.volatile() } else { u });
            opened.map_err(|e| {
                tracing::error!(%e, "cannot open the upper layer");
                e.raw_os_error().unwrap_or(libc::EIO)
            })
        });
        res.as_ref().map_err(|e| Errno(*e))
    }

    /// A new handle number (files and directories share the space).
    pub(super) fn next_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// Register an open file; returns its handle number.
    pub fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh();
        if h.writable {
            self.writers.insert(h.ino, fh);
        }
        self.handles.insert(fh, Arc::new(h));
        fh
    }

    /// Some handle open for writing on `ino` (its file is the inode's upper file).
    pub fn writable_handle(&self, ino: u64) -> Option<Arc<Handle>> {
        let fh = *self.writers.get(&ino)?;
        self.handle(fh).filter(|h| h.writable && h.ino == ino)
    }

    /// An open file by handle number.
    pub fn handle(&self, fh: u64) -> Option<Arc<Handle>> {
        self.handles.get(&fh).map(|h| h.clone())
    }

    /// Some open handle of `ino` (attributes of an unlinked open file).
    pub fn any_handle(&self, ino: u64) -> Option<Arc<Handle>> {
        self.handles
            .iter()
            .find(|h| h.ino == ino)
            .map(|h| h.clone())
    }

    /// Whether some open of `ino` uses a passthrough backing file.
    pub fn has_passthrough(&self, ino: u64) -> bool {
        self.backing.contains_key(&ino)
    }

    /// Drop a handle (and its passthrough reference).
    pub fn remove_handle(&self, fh: u64) -> Option<Arc<Handle>> {
        let (_, h) = self.handles.remove(&fh)?;
        if h.writable {
            self.writers.remove_if(&h.ino, |_, f| *f == fh);
            // What it wrote went through the kernel's cache of the inode: the file as it is
            // now is what that cache holds.
            if let Some(k) = CacheKey::of(h.file.as_fd()) {
                self.cache_keys.insert(h.ino, k);
            }
        }
        if h.passthrough {
            self.backing.remove_if_mut(&h.ino, |_, (_, n)| {
                *n -= 1;
                *n == 0
            });
        }
        Some(h)
    }

    /// Whether an open of the upper file `file` of `ino` may keep the kernel's cached pages of
    /// the inode (`FOPEN_KEEP_CACHE`): only when the file is as the view last saw it, which also
    /// becomes what it knows of it now.
    pub(super) fn upper_unchanged(&self, ino: u64, file: &File) -> bool {
        let Some(now) = CacheKey::of(file.as_fd()) else {
            return false;
        };
        self.cache_keys.insert(ino, now) == Some(now)
    }

    /// Forget what the view knew of `ino`'s backing file (the node is gone).
    pub fn forget_cache_key(&self, ino: u64) {
        self.cache_keys.remove(&ino);
    }

    /// The data of `ino` when it is a file of a tar-index layer: the tar's file and where the
    /// file's bytes are in it (`None`: a file of a layer directory).
    pub fn open_tar_file(&self, ino: u64) -> io::Result<Option<(File, Window)>> {
        let (layer, rel) = self.tree.backing(ino)?;
        match &self.tree.layers.get(layer).tar {
            Some(t) => Ok(Some((t.reopen()?, t.window(&rel)?))),
            None => Ok(None),
        }
    }

    /// Open `ino`'s backing file in its visible layer with `flags`.
    pub fn open_backing_file(&self, ino: u64, flags: i32) -> io::Result<File> {
        let (layer, rel) = self.tree.backing(ino)?;
        let fd = sys::open_beneath(self.tree.layers.get(layer).fd(), &rel, flags)?;
        Ok(File::from(fd))
    }

    /// The passthrough backing file of `ino` (open file `fd`), shared by all its opens (the
    /// kernel requires one backing file per inode); `reg` registers it on first use. `None`:
    /// serve I/O ourselves.
    pub(super) fn backing_id(
        &self,
        ino: u64,
        fd: BorrowedFd<'_>,
        reg: &dyn Registrar,
    ) -> Option<Arc<dyn Backing>> {
        if !self.passthrough.load(Ordering::Relaxed) || self.writer.blocks_passthrough(ino) {
            return None;
        }
        match self.backing.entry(ino) {
            dashmap::Entry::Occupied(mut o) => {
                o.get_mut().1 += 1;
                Some(o.get().0.clone())
            }
            dashmap::Entry::Vacant(v) => match reg.open_backing(fd) {
                Ok(id) => {
                    v.insert((id.clone(), 1));
                    Some(id)
                }
                Err(e) => {
                    tracing::debug!(ino, %e, "passthrough refused, serving I/O ourselves");
                    None
                }
            },
        }
    }
}
