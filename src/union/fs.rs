//! The `fuser::Filesystem` implementation: thin translation of requests to [`Tree`] calls.
//! Every method that changes anything is a one-line delegation to [`super::write`].

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use fuser::{
    AccessFlags, BackingId, BsdFileFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, Notifier, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};

use crate::layer::whiteout;
use crate::sys;
use crate::union::attr::{Attr, FileKind};
use crate::union::background::Background;
use crate::union::layers::LayerIdx;
use crate::union::listing::Listing;
use crate::union::options::MountOptions;
use crate::union::prefetch::{Front, Prefetcher};
use crate::union::tree::Tree;
use crate::union::write::{self, Caller};

/// How long the kernel may cache entries and attributes: every change goes through us, and
/// lower layers never change while mounted.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// An open regular file.
#[derive(Debug)]
pub struct Handle {
    pub ino: u64,
    pub file: File,
    /// Opened for writing (by the write path).
    pub writable: bool,
    /// Holds a reference on the inode's passthrough backing id.
    pub passthrough: bool,
}

/// Directories with fewer entries are stat-ed by the request alone (handing them to the
/// stat-ahead thread costs more than it saves).
const STAT_AHEAD_MIN: usize = 16;

/// An open directory.
#[derive(Debug)]
struct DirHandle {
    /// The listing as of opendir: readdir offsets index it.
    listing: Arc<Listing>,
    /// The directory opened in each layer READDIRPLUS stats in (`None`: not there), kept
    /// across the requests of one listing instead of reopened by path for each.
    dirs: parking_lot::Mutex<HashMap<LayerIdx, Option<OwnedFd>>>,
    /// How far READDIRPLUS got (for the stat-ahead thread).
    front: Front,
}

/// The union filesystem served over FUSE: a handle on its shared state, cloned for requests
/// that finish on a thread of their own (see [`crate::union::background`]).
#[derive(Debug, Clone)]
pub struct UnionFs(Arc<ViewState>);

impl std::ops::Deref for UnionFs {
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
    /// Whether the kernel accepted FUSE passthrough (set in `init`).
    pub passthrough: AtomicBool,
    handles: DashMap<u64, Arc<Handle>>,
    /// A writable handle of each inode that has one (inode -> handle number): a times change
    /// goes through it instead of resolving the path again.
    writers: DashMap<u64, u64>,
    dir_handles: DashMap<u64, Arc<DirHandle>>,
    /// The stat-ahead thread, started on first need (`None`: it could not be started).
    stat_ahead: OnceLock<Option<Prefetcher>>,
    next_fh: AtomicU64,
    /// Per-inode passthrough backing ids: all opens of one inode must share one.
    backing: DashMap<u64, (Arc<BackingId>, usize)>,
    /// Set once the session exists; the write path uses it to invalidate kernel caches.
    pub invalidator: Arc<OnceLock<Invalidator>>,
    /// State of the write path (upper layer, quota).
    pub(crate) writer: write::Writer,
    /// Set by the mount program once mounted: what to do when the session ends.
    pub session_end: Arc<OnceLock<crate::union::server::SessionEnd>>,
    /// Requests served off the reader threads.
    pub(crate) background: Background,
}

/// Kernel cache invalidations, sent from a worker thread: the kernel may need locks that the
/// request being served holds (a rename holds both directories' locks until we reply), so
/// notifying from inside the handler can deadlock.
#[derive(Debug)]
pub struct Invalidator {
    tx: std::sync::mpsc::Sender<(u64, std::ffi::OsString)>,
}

impl Invalidator {
    /// Start the worker that forwards invalidations to the kernel through `notifier`.
    pub fn start(notifier: Notifier) -> io::Result<Invalidator> {
        let (tx, rx) = std::sync::mpsc::channel::<(u64, std::ffi::OsString)>();
        std::thread::Builder::new()
            .name("stratafs-inval".into())
            .spawn(move || {
                for (parent, name) in rx {
                    if let Err(e) = notifier.inval_entry(INodeNo(parent), &name) {
                        tracing::debug!(parent, ?name, %e, "entry invalidation not delivered");
                    }
                }
            })?;
        Ok(Invalidator { tx })
    }

    /// Ask the kernel to drop its cached entry `name` in directory `parent`, after the reply.
    pub fn entry(&self, parent: u64, name: &std::ffi::OsStr) {
        let _ = self.tx.send((parent, name.to_owned()));
    }
}

pub(crate) fn err(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

impl UnionFs {
    pub fn new(tree: Tree, opts: MountOptions) -> UnionFs {
        UnionFs(Arc::new(ViewState {
            tree,
            opts,
            passthrough: AtomicBool::new(false),
            handles: DashMap::new(),
            writers: DashMap::new(),
            dir_handles: DashMap::new(),
            stat_ahead: OnceLock::new(),
            next_fh: AtomicU64::new(1),
            backing: DashMap::new(),
            invalidator: Arc::new(OnceLock::new()),
            writer: write::Writer::default(),
            session_end: Arc::new(OnceLock::new()),
            background: Background::default(),
        }))
    }

    /// Serve `job` on a thread of its own when it may take `long` (a large copy-up: see
    /// [`crate::union::background`]), else on this reader thread.
    fn serve(&self, long: bool, job: impl FnOnce(&UnionFs) + Send + 'static) {
        if long {
            let fs = self.clone();
            self.background.run(move || job(&fs));
        } else {
            job(self)
        }
    }

    /// Whether the view refuses changes.
    pub fn read_only(&self) -> bool {
        self.opts.read_only()
    }

    /// The entry/attribute TTL the view uses.
    pub fn ttl(&self) -> Duration {
        TTL
    }

    /// Register an open file; returns its handle number.
    pub fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
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

    /// Open `ino`'s backing file in its visible layer with `flags`.
    pub fn open_backing_file(&self, ino: u64, flags: i32) -> io::Result<File> {
        let (layer, rel) = self.tree.backing(ino)?;
        let fd = sys::open_beneath(self.tree.layers.get(layer).fd(), &rel, flags)?;
        Ok(File::from(fd))
    }

    /// The passthrough backing id of `ino`, shared by all its opens (the kernel requires one
    /// backing file per inode); `register` makes it on first use. `None`: serve I/O ourselves.
    pub fn backing_id(
        &self,
        ino: u64,
        register: impl FnOnce() -> io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        if !self.passthrough.load(Ordering::Relaxed) || self.writer.blocks_passthrough(ino) {
            return None;
        }
        match self.backing.entry(ino) {
            dashmap::Entry::Occupied(mut o) => {
                o.get_mut().1 += 1;
                Some(o.get().0.clone())
            }
            dashmap::Entry::Vacant(v) => match register() {
                Ok(id) => {
                    let id = Arc::new(id);
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

    /// Reply to an open of `file` for `ino`, through passthrough when `passthrough_ok` and the
    /// kernel allows it.
    pub fn reply_opened(
        &self,
        ino: u64,
        file: File,
        writable: bool,
        passthrough_ok: bool,
        reply: ReplyOpen,
    ) {
        let id = passthrough_ok
            .then(|| self.backing_id(ino, || reply.open_backing(file.as_fd())))
            .flatten();
        let fh = self.add_handle(Handle {
            ino,
            file,
            writable,
            passthrough: id.is_some(),
        });
        match id {
            // The kernel refuses page-cache flags (KEEP_CACHE) on passthrough opens.
            Some(id) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id),
            None if writable => reply.opened(FileHandle(fh), FopenFlags::empty()),
            None => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
        }
    }

    /// Some open handle of `ino` (write path hook: attributes of an unlinked open file).
    pub fn any_handle(&self, ino: u64) -> Option<Arc<Handle>> {
        self.handles
            .iter()
            .find(|h| h.ino == ino)
            .map(|h| h.clone())
    }

    /// Whether some open of `ino` uses a passthrough backing file (write path hook).
    pub fn has_passthrough(&self, ino: u64) -> bool {
        self.backing.contains_key(&ino)
    }

    /// Drop a handle (and its passthrough reference).
    pub fn remove_handle(&self, fh: u64) -> Option<Arc<Handle>> {
        let (_, h) = self.handles.remove(&fh)?;
        if h.writable {
            self.writers.remove_if(&h.ino, |_, f| *f == fh);
        }
        if h.passthrough {
            self.backing.remove_if_mut(&h.ino, |_, (_, n)| {
                *n -= 1;
                *n == 0
            });
        }
        Some(h)
    }

    fn reply_entry(&self, reply: ReplyEntry, attr: &Attr) {
        reply.entry_with_ttls(&TTL, &TTL, &fattr(attr), Generation(0));
    }

    /// Attributes of a child of a directory being listed, using per-layer directory fds.
    fn child_attr(
        &self,
        dirs: &mut HashMap<LayerIdx, Option<OwnedFd>>,
        rel: &Path,
        node: &crate::union::tree::Node,
        layer: LayerIdx,
        name: &OsStr,
    ) -> io::Result<Attr> {
        let l = self.tree.layers.get(layer);
        let dfd = dirs.entry(layer).or_insert_with(|| {
            sys::open_beneath(l.fd(), rel, libc::O_RDONLY | libc::O_DIRECTORY).ok()
        });
        match dfd {
            Some(fd) => {
                let st = sys::fstatat(fd.as_fd(), Path::new(name))?;
                Ok(self
                    .tree
                    .attr_from_stat_at(node, layer, fd.as_fd(), Path::new(name), st))
            }
            None => {
                let path = rel.join(name);
                let at = l.at(&path)?;
                let st = sys::fstatat(at.dir(), at.name())?;
                Ok(self
                    .tree
                    .attr_from_stat_at(node, layer, at.dir(), at.name(), st))
            }
        }
    }
}

/// Ask for one optional capability; the kernel may lack it.
fn want(config: &mut KernelConfig, flag: InitFlags) -> bool {
    config.add_capabilities(flag).is_ok()
}

impl Filesystem for UnionFs {
    fn destroy(&mut self) {
        if let Some(end) = self.session_end.get() {
            end.finish();
        }
    }

    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        for f in [
            // Always READDIRPLUS, never the "auto" mode: in auto the kernel asks for attributes
            // only in the first chunk of a listing and then sends one LOOKUP per remaining
            // entry (50,000 round trips for `find`/`ls -l` of a 50,000-entry directory).
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_MAX_PAGES,
            InitFlags::FUSE_BIG_WRITES,
            InitFlags::FUSE_ASYNC_READ,
            // We clear setuid/setgid on writes ourselves (write.rs): without this the kernel
            // asks for security.capability before every write and chown.
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
            // O_TRUNC comes with OPEN (write.rs truncates): no SETATTR round trip after it,
            // and a lower file opened to be overwritten is copied up without its old data.
            InitFlags::FUSE_ATOMIC_O_TRUNC,
        ] {
            want(config, f);
        }
        let kernel_ok = sys::kernel_version().is_some_and(|v| v >= (6, 9));
        if sys::is_root()
            && kernel_ok
            && !self.opts.no_passthrough
            && want(config, InitFlags::FUSE_PASSTHROUGH)
        {
            // Backing files on a stacked filesystem (overlayfs) need depth 2.
            let stacked = self
                .tree
                .layers
                .list
                .iter()
                .any(|l| matches!(sys::fs_type_name(&l.path).as_str(), "overlayfs" | "fuse"));
            let _ = config.set_max_stack_depth(if stacked { 2 } else { 1 });
            self.passthrough.store(true, Ordering::Relaxed);
        }
        let _ = config.set_max_readahead(1 << 20);
        write::prepare(self);
        tracing::info!(
            passthrough = self.passthrough.load(Ordering::Relaxed),
            "FUSE session initialised"
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if name.len() > 255 {
            return reply.error(Errno::from_i32(libc::ENAMETOOLONG));
        }
        match self.tree.lookup(parent.0, name) {
            Ok((_, attr)) => self.reply_entry(reply, &attr),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                // Negative entry the kernel may keep: lower layers never change, and every
                // name that appears later is made through us, so the kernel's own create,
                // mkdir, link, symlink and rename replace it (a PATH search or a library
                // probe in a container then costs no round trip the second time).
                let attr = Attr::bare(0, FileKind::RegularFile);
                reply.entry_with_ttls(&TTL, &TTL, &fattr(&attr), Generation(0));
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.tree.forget(ino.0, nlookup);
    }

    // batch_forget: fuser 0.18 keeps `ForgetOne` private, so its default (one `forget` per
    // node) is what runs.

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.tree.getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &fattr(&attr)),
            // Write path hook: an open file whose name is gone is described by its fd.
            Err(e) => match write::getattr_open(self, ino.0, fh.map(|f| f.0)) {
                Some(attr) => reply.attr(&TTL, &fattr(&attr)),
                None => reply.error(err(e)),
            },
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let res = self.tree.backing(ino.0).and_then(|(layer, rel)| {
            let at = self.tree.layers.get(layer).at(&rel)?;
            sys::readlinkat(at.dir(), at.name())
        });
        match res {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(err(e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let f = flags.0;
        if f & libc::O_ACCMODE != libc::O_RDONLY || f & libc::O_TRUNC != 0 {
            let caller = Caller::from(req);
            // O_TRUNC: nothing is copied.
            let long = f & libc::O_TRUNC == 0 && write::copies_much(self, ino.0, false);
            return self.serve(long, move |fs| {
                write::open_writable(fs, &caller, ino, flags, reply)
            });
        }
        match write::reopen_beside_readers(self, ino.0) {
            Ok(true) => return reply.error(Errno::ESTALE),
            Ok(false) => {}
            Err(e) => return reply.error(err(e)),
        }
        match self.open_backing_file(ino.0, libc::O_RDONLY) {
            Ok(file) => {
                let pass = write::reads_may_pass(self, ino.0, &file);
                self.reply_opened(ino.0, file, false, pass, reply)
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(h) = self.handle(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let mut buf = vec![0u8; size as usize];
        let mut done = 0usize;
        while done < buf.len() {
            match h.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(err(e)),
            }
        }
        reply.data(&buf[..done]);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.remove_handle(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.tree.listing(ino.0) {
            Ok(listing) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.dir_handles.insert(
                    fh,
                    Arc::new(DirHandle {
                        listing,
                        dirs: parking_lot::Mutex::new(HashMap::new()),
                        front: Arc::new(AtomicUsize::new(0)),
                    }),
                );
                // The kernel may keep the listing: every change to a directory goes through us.
                reply.opened(
                    FileHandle(fh),
                    FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
                );
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(listing) = self.dir_handles.get(&fh.0).map(|h| h.listing.clone()) else {
            return reply.error(Errno::EBADF);
        };
        let parent = match self.tree.node(ino.0) {
            Ok(n) => n.state.read().parent,
            Err(e) => return reply.error(err(e)),
        };
        let mut off = offset;
        while off < 2 {
            let (n, i) = if off == 0 {
                (".", ino.0)
            } else {
                ("..", parent)
            };
            if reply.add(INodeNo(i), off + 1, fuser::FileType::Directory, n) {
                return reply.ok();
            }
            off += 1;
        }
        for (i, e) in listing
            .entries()
            .iter()
            .enumerate()
            .skip((off - 2) as usize)
        {
            if reply.add(INodeNo(e.ino), i as u64 + 3, fkind(e.kind), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(h) = self.dir_handles.get(&fh.0).map(|h| h.clone()) else {
            return reply.error(Errno::EBADF);
        };
        let listing = &h.listing;
        let rel = match self.tree.path_of(ino.0) {
            Ok(r) => r,
            Err(e) => return reply.error(err(e)),
        };
        let mut off = offset;
        while off < 2 {
            let target = if off == 0 {
                Ok(ino.0)
            } else {
                self.tree.node(ino.0).map(|n| n.state.read().parent)
            };
            match target {
                Ok(t) => {
                    // The kernel ignores the attributes of "." and ".." in READDIRPLUS (it
                    // only shows their numbers): no stat for them.
                    let a = fattr(&Attr::bare(t, FileKind::Directory));
                    let name = if off == 0 { "." } else { ".." };
                    if reply.add(a.ino, off + 1, name, &TTL, &a, Generation(0)) {
                        return reply.ok();
                    }
                }
                Err(e) => return reply.error(err(e)),
            }
            off += 1;
        }
        let start = (off - 2) as usize;
        if start == 0 {
            if let Some(p) = self.stat_ahead.get_or_init(|| {
                Prefetcher::start(self.tree.layers.clone())
                    .map_err(|e| tracing::warn!(%e, "no stat-ahead thread"))
                    .ok()
            }) {
                p.listed(
                    ino.0,
                    &rel,
                    listing,
                    &h.front,
                    listing.len() >= STAT_AHEAD_MIN,
                );
            }
        }
        let mut dirs = h.dirs.lock();
        for (i, e) in listing.entries().iter().enumerate().skip(start) {
            h.front.store(i, Ordering::Relaxed);
            let node = match self.tree.get_or_insert(ino.0, e) {
                Ok(n) => n,
                Err(er) => return reply.error(err(er)),
            };
            let layer = node.state.read().layer;
            let attr = match self.child_attr(&mut dirs, &rel, &node, layer, &e.name) {
                Ok(a) => a,
                Err(_) => {
                    // Vanished (upper changed under us): skip it.
                    self.tree.forget(node.ino, 1);
                    continue;
                }
            };
            let attr = fattr(&attr);
            if reply.add(attr.ino, i as u64 + 3, &e.name, &TTL, &attr, Generation(0)) {
                // Not sent: the kernel holds no lookup for it.
                self.tree.forget(node.ino, 1);
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        if let Some((_, h)) = self.dir_handles.remove(&fh.0) {
            h.front.store(usize::MAX, Ordering::Relaxed);
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let l = self.tree.layers.get(0);
        match sys::fstatvfs(l.fd()) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if whiteout::is_internal_xattr(name.as_bytes()) {
            return reply.error(Errno::from_i32(libc::ENODATA));
        }
        let Some(name) = name.to_str() else {
            return reply.error(Errno::from_i32(libc::ENODATA));
        };
        if self.tree.node(ino.0).is_ok_and(|n| self.tree.no_xattrs(&n)) {
            return reply.error(Errno::from_i32(libc::ENODATA));
        }
        let res = self.tree.backing(ino.0).and_then(|(layer, rel)| {
            sys::lgetxattr(&self.tree.layers.get(layer).at(&rel)?.xattr_path(), name)
        });
        match res {
            Ok(Some(v)) => reply_xattr(reply, size, &v),
            Ok(None) => reply.error(Errno::from_i32(libc::ENODATA)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if self.tree.node(ino.0).is_ok_and(|n| self.tree.no_xattrs(&n)) {
            return reply_xattr(reply, size, &[]);
        }
        let res = self.tree.backing(ino.0).and_then(|(layer, rel)| {
            sys::llistxattr(&self.tree.layers.get(layer).at(&rel)?.xattr_path())
        });
        match res {
            Ok(names) => {
                let mut out = Vec::new();
                for n in names.iter().filter(|n| !whiteout::is_internal_xattr(n)) {
                    out.extend_from_slice(n);
                    out.push(0);
                }
                reply_xattr(reply, size, &out);
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let attr = match self.tree.getattr(ino.0) {
            Ok(a) => a,
            Err(e) => return reply.error(err(e)),
        };
        let m = mask.bits();
        if m & libc::W_OK != 0 && self.read_only() {
            return reply.error(Errno::from_i32(libc::EROFS));
        }
        if m == libc::F_OK {
            return reply.ok();
        }
        let perm = attr.perm as i32;
        let granted = if req.uid() == 0 {
            // Root may do anything but execute a file nobody may execute.
            let x_any = perm & 0o111 != 0 || attr.kind == FileKind::Directory;
            libc::R_OK | libc::W_OK | if x_any { libc::X_OK } else { 0 }
        } else if req.uid() == attr.uid {
            (perm >> 6) & 7
        } else if req.gid() == attr.gid {
            (perm >> 3) & 7
        } else {
            perm & 7
        };
        if m & !granted & 7 == 0 {
            reply.ok()
        } else {
            reply.error(Errno::EACCES)
        }
    }

    // ---- everything below changes the view: see write.rs ----

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let caller = Caller::from(req);
        let long = size != Some(0) && write::copies_much(self, ino.0, false);
        self.serve(long, move |fs| {
            write::setattr(
                fs, &caller, ino, mode, uid, gid, size, atime, mtime, ctime, fh, flags, reply,
            )
        })
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        write::mknod(
            self,
            &Caller::from(req),
            parent,
            name,
            mode,
            umask,
            rdev,
            reply,
        )
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        write::mkdir(self, &Caller::from(req), parent, name, mode, umask, reply)
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        write::unlink(self, &Caller::from(req), parent, name, reply)
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        write::rmdir(self, &Caller::from(req), parent, name, reply)
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        write::symlink(self, &Caller::from(req), parent, link_name, target, reply)
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let caller = Caller::from(req);
        let (name, newname) = (name.to_owned(), newname.to_owned());
        let long = write::rename_copies_much(self, parent.0, &name, newparent.0, &newname, flags);
        self.serve(long, move |fs| {
            write::rename(
                fs, &caller, parent, &name, newparent, &newname, flags, reply,
            )
        })
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (caller, newname) = (Caller::from(req), newname.to_owned());
        let long = write::copies_much(self, ino.0, false);
        self.serve(long, move |fs| {
            write::link(fs, &caller, ino, newparent, &newname, reply)
        })
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        write::write(
            self,
            &Caller::from(req),
            ino,
            fh,
            offset,
            data,
            write_flags,
            flags,
            lock_owner,
            reply,
        )
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        write::create(
            self,
            &Caller::from(req),
            parent,
            name,
            mode,
            umask,
            flags,
            reply,
        )
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        write::flush(self, &Caller::from(req), ino, fh, lock_owner, reply)
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        write::fsync(self, &Caller::from(req), ino, fh, datasync, reply)
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        write::fsyncdir(self, &Caller::from(req), ino, fh, datasync, reply)
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        let (caller, name, value) = (Caller::from(req), name.to_owned(), value.to_vec());
        let long = write::copies_much(self, ino.0, false);
        self.serve(long, move |fs| {
            write::setxattr(fs, &caller, ino, &name, &value, flags, position, reply)
        })
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (caller, name) = (Caller::from(req), name.to_owned());
        let long = write::copies_much(self, ino.0, false);
        self.serve(long, move |fs| {
            write::removexattr(fs, &caller, ino, &name, reply)
        })
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        write::fallocate(
            self,
            &Caller::from(req),
            ino,
            fh,
            offset,
            length,
            mode,
            reply,
        )
    }

    fn lseek(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        write::lseek(self, &Caller::from(req), ino, fh, offset, whence, reply)
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        write::copy_file_range(
            self,
            &Caller::from(req),
            ino_in,
            fh_in,
            offset_in,
            ino_out,
            fh_out,
            offset_out,
            len,
            flags,
            reply,
        )
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, v: &[u8]) {
    if size == 0 {
        reply.size(v.len() as u32)
    } else if v.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE))
    } else {
        reply.data(v)
    }
}

/// The fuser form of a kind.
pub(crate) fn fkind(k: FileKind) -> fuser::FileType {
    match k {
        FileKind::NamedPipe => fuser::FileType::NamedPipe,
        FileKind::CharDevice => fuser::FileType::CharDevice,
        FileKind::BlockDevice => fuser::FileType::BlockDevice,
        FileKind::Directory => fuser::FileType::Directory,
        FileKind::RegularFile => fuser::FileType::RegularFile,
        FileKind::Symlink => fuser::FileType::Symlink,
        FileKind::Socket => fuser::FileType::Socket,
    }
}

fn systime(t: crate::union::attr::Timestamp) -> SystemTime {
    if t.sec >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        SystemTime::UNIX_EPOCH - Duration::new(t.sec.unsigned_abs(), 0) + Duration::new(0, t.nsec)
    }
}

/// The fuser form of attributes.
pub(crate) fn fattr(a: &Attr) -> fuser::FileAttr {
    fuser::FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: systime(a.atime),
        mtime: systime(a.mtime),
        ctime: systime(a.ctime),
        crtime: SystemTime::UNIX_EPOCH,
        kind: fkind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}
