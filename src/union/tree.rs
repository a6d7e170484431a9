//! The in-memory merged view: the inode table (nodes, their names and layers) and the
//! attributes it shows; merged listings are in [`crate::union::listing`].
//!
//! Nodes exist while the kernel holds a lookup on them (or on one of their children); a
//! directory node caches its merged listing for as long as it lives. Lower layers never change
//! while mounted, so a listing is computed once; the write path updates or invalidates the
//! listings and node states it changes, each behind the node's own lock.

use std::ffi::OsStr;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::layer::meta;
use crate::sys;
use crate::union::attr::{Attr, FileKind, Timestamp};
use crate::union::ids::IdView;
use crate::union::layers::{LayerIdx, Layers};
use crate::union::listing::{merge_dir, DirEntry, Listing};
use crate::union::tarlayer::TarLayer;

/// FUSE inode number of the root directory.
pub const ROOT_INO: u64 = 1;

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}
/// Directory-only state of a node.
#[derive(Debug, Clone, Default)]
pub struct DirState {
    /// Layers contributing to this directory, topmost first.
    pub layers: Vec<LayerIdx>,
    /// The merged listing, once computed.
    pub listing: Option<Arc<Listing>>,
}

/// Another name of a node: (parent directory's number, name in it).
pub type Alias = (u64, Arc<OsStr>);

/// The mutable part of a node (the write path changes it on copy-up, rename, ...).
#[derive(Debug, Clone)]
pub struct NodeState {
    pub parent: u64,
    pub name: Arc<OsStr>,
    pub kind: FileKind,
    /// Layer holding the visible entry.
    pub layer: LayerIdx,
    /// Boxed: one pointer for the many nodes that are not directories.
    pub dir: Option<Box<DirState>>,
    /// Other names (parent, name) the kernel found this file under (hard links); one takes
    /// over when `name` is unlinked. Boxed: almost every node has none.
    pub aliases: Option<Box<Vec<Alias>>>,
    /// The name went (unlinked, removed, renamed over) and no other name is known: the node
    /// resolves to no path, so a new file at the old name is never taken for it.
    pub gone: bool,
}

/// An inode known to the kernel.
#[derive(Debug)]
pub struct Node {
    pub ino: u64,
    lookups: AtomicU64,
    /// Child nodes alive (they keep the parent so their path can be computed).
    kids: AtomicU32,
    /// Set once the backing file was seen with no xattrs at all; trusted only while the node
    /// is backed by a lower layer (those never change; a copy-up moves the node to the upper).
    no_xattrs: AtomicBool,
    /// The same knowledge for a regular file of the upper, which can change: bit 0 says "no
    /// xattrs", the bits above count changes of its xattrs. A change counts up (clearing bit
    /// 0) before it is made; a look that found none sets bit 0 only if no change came in
    /// between, so the bit never outlives a change it raced with.
    upper_plain: AtomicU64,
    pub state: RwLock<NodeState>,
}

impl Node {
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// The count of xattr changes so far: take it before looking at the upper file's xattrs.
    pub fn xattr_epoch(&self) -> u64 {
        self.upper_plain.load(Ordering::Acquire) >> 1
    }

    /// The upper file had no xattrs when looked at after [`Node::xattr_epoch`] gave `epoch`.
    pub fn mark_upper_plain(&self, epoch: u64) {
        let _ = self.upper_plain.compare_exchange(
            epoch << 1,
            (epoch << 1) | 1,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// The upper file's xattrs (override_stat included) may change now.
    pub fn xattrs_changing(&self) {
        let _ = self
            .upper_plain
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
                Some(((v >> 1) + 1) << 1)
            });
    }
}
/// The merged view of one mount.
#[derive(Debug)]
pub struct Tree {
    /// Shared with the write path's view of the lower layers.
    pub layers: Arc<Layers>,
    nodes: DashMap<u64, Arc<Node>>,
    /// Held while nodes come, go or change parent: the child counts that keep parents alive
    /// change with them (a FORGET reading a node's parent while a rename moved it, or a child
    /// made under a parent being dropped, left a live node without its parent: ESTALE).
    links: Mutex<()>,
    /// Read by a look-up or a stat of a node by its path, written by a rename from its first
    /// change of the upper until the tree has the new names: no reader sees half a rename (a
    /// path the tree still gives that the disk no longer has: ENOENT, which a LOOKUP would
    /// answer with a negative entry the kernel keeps).
    names: RwLock<()>,
    pub ids: IdView,
}

/// The directory state of a new node for listing entry `e` (none for a non-directory).
fn dir_state(e: &DirEntry) -> Option<Box<DirState>> {
    (e.kind == FileKind::Directory).then(|| {
        Box::new(DirState {
            layers: e.dir_layers.to_vec(),
            listing: None,
        })
    })
}

impl Tree {
    /// A tree whose root merges the roots of all `layers`.
    pub fn new(layers: Layers, ids: IdView) -> io::Result<Tree> {
        if layers.list.is_empty() {
            return Err(errno(libc::EINVAL));
        }
        let root = Node {
            ino: ROOT_INO,
            lookups: AtomicU64::new(1),
            kids: AtomicU32::new(0),
            no_xattrs: AtomicBool::new(false),
            upper_plain: AtomicU64::new(0),
            state: RwLock::new(NodeState {
                parent: ROOT_INO,
                name: OsStr::new("").into(),
                kind: FileKind::Directory,
                layer: 0,
                dir: Some(Box::new(DirState {
                    layers: (0..layers.list.len()).collect(),
                    listing: None,
                })),
                aliases: None,
                gone: false,
            }),
        };
        let nodes = DashMap::new();
        nodes.insert(ROOT_INO, Arc::new(root));
        Ok(Tree {
            layers: Arc::new(layers),
            nodes,
            links: Mutex::new(()),
            names: RwLock::new(()),
            ids,
        })
    }

    /// The node of `ino`, if the kernel knows it.
    pub fn node(&self, ino: u64) -> io::Result<Arc<Node>> {
        self.nodes
            .get(&ino)
            .map(|n| n.clone())
            .ok_or_else(|| errno(libc::ESTALE))
    }

    /// Number of live nodes (for diagnostics and tests of `forget`).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Path of `ino` relative to the layer roots (empty for the root).
    pub fn path_of(&self, ino: u64) -> io::Result<PathBuf> {
        let mut names: Vec<Arc<OsStr>> = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INO {
            let n = self.node(cur)?;
            let st = n.state.read();
            if st.gone {
                return Err(errno(libc::ENOENT));
            }
            names.push(st.name.clone());
            cur = st.parent;
            if names.len() > 4096 {
                return Err(errno(libc::ELOOP));
            }
        }
        let mut p = PathBuf::new();
        for n in names.iter().rev() {
            p.push(&**n);
        }
        Ok(p)
    }

    /// `ino`'s layer and relative path (what to open or stat).
    pub fn backing(&self, ino: u64) -> io::Result<(LayerIdx, PathBuf)> {
        let layer = self.node(ino)?.state.read().layer;
        Ok((layer, self.path_of(ino)?))
    }

    /// The merged listing of directory `ino`, computed on first use.
    pub fn listing(&self, ino: u64) -> io::Result<Arc<Listing>> {
        let node = self.node(ino)?;
        let layers = {
            let st = node.state.read();
            let dir = st.dir.as_ref().ok_or_else(|| errno(libc::ENOTDIR))?;
            if let Some(l) = &dir.listing {
                return Ok(l.clone());
            }
            dir.layers.clone()
        };
        let rel = self.path_of(ino)?;
        let built = Arc::new(merge_dir(&self.layers, &rel, &layers)?);
        let mut st = node.state.write();
        let dir = st.dir.as_mut().ok_or_else(|| errno(libc::ENOTDIR))?;
        // Another thread may have won the race; keep theirs so every reader sees one listing.
        Ok(dir.listing.get_or_insert(built).clone())
    }

    /// Drop the cached listing of `ino` (write path, after changing the directory).
    pub fn invalidate_listing(&self, ino: u64) {
        if let Some(n) = self.nodes.get(&ino) {
            if let Some(d) = n.state.write().dir.as_mut() {
                d.listing = None;
            }
        }
    }

    /// Every live node (write path: re-point the nodes under a directory that moved).
    pub fn all_nodes(&self) -> Vec<Arc<Node>> {
        self.nodes.iter().map(|n| n.clone()).collect()
    }

    /// Drop every cached listing (write path: a change whose effects reach directories it
    /// cannot name, e.g. the other names of a hard-linked file moving to the upper).
    pub fn invalidate_all_listings(&self) {
        for n in self.nodes.iter() {
            if let Some(d) = n.state.write().dir.as_mut() {
                d.listing = None;
            }
        }
    }

    /// Change the cached listing of `ino` in place, if there is one (write path). Open
    /// directory handles keep the snapshot they started with.
    pub fn update_listing(&self, ino: u64, f: impl FnOnce(&mut Listing)) {
        if let Some(n) = self.nodes.get(&ino) {
            if let Some(l) = n
                .state
                .write()
                .dir
                .as_mut()
                .and_then(|d| d.listing.as_mut())
            {
                f(Arc::make_mut(l));
            }
        }
    }

    /// Hold off renames while paths of nodes are used (see `names`).
    pub fn names_read(&self) -> RwLockReadGuard<'_, ()> {
        self.names.read()
    }

    /// Hold off path users while a rename changes the upper and the tree (see `names`).
    pub fn names_write(&self) -> RwLockWriteGuard<'_, ()> {
        self.names.write()
    }

    /// Look `name` up in directory `parent`; on success the node's lookup count is raised by
    /// one (the kernel now holds a reference).
    pub fn lookup(&self, parent: u64, name: &OsStr) -> io::Result<(Arc<Node>, Attr)> {
        let _names = self.names.read();
        let mut again = true;
        loop {
            let listing = match self.listing(parent) {
                Ok(l) => l,
                // Searchable but not listable: ask the layers for this one name.
                Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                    return self.lookup_unlisted(parent, name)
                }
                Err(e) => return Err(e),
            };
            let e = listing.get(name).ok_or_else(|| errno(libc::ENOENT))?;
            let rel = self.path_of(parent)?.join(name);
            if let Some(t) = &self.layers.get(e.layer).tar {
                let st = t.stat(&rel)?;
                let node = self.get_or_insert(parent, e)?;
                let attr = self.tar_attr(&node, t, &rel, st);
                return Ok((node, attr));
            }
            let at = self.layers.get(e.layer).at(&rel)?;
            let st = match sys::fstatat(at.dir(), at.name()) {
                Ok(st) if FileKind::of_mode(st.st_mode) == e.kind => st,
                // The cached listing is not what the layer has (the entry is gone, or another
                // kind of file): answering from it would give the kernel a negative entry it
                // keeps, or a number whose inode is of another kind (made bad: EIO). The
                // directory is merged again, once.
                Ok(_) | Err(_) if again => {
                    tracing::debug!(rel = %rel.display(), "listing entry not on disk as listed: merging again");
                    again = false;
                    self.invalidate_listing(parent);
                    continue;
                }
                Ok(_) => return Err(errno(libc::ESTALE)),
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                    return Err(errno(libc::ESTALE))
                }
                Err(err) => return Err(err),
            };
            let node = self.get_or_insert(parent, e)?;
            let attr = self.attr_from_stat_at(&node, e.layer, at.dir(), at.name(), st);
            return Ok((node, attr));
        }
    }

    /// [`Tree::lookup`] without the attributes (the caller has a stat of the entry already).
    pub fn lookup_node(&self, parent: u64, name: &OsStr) -> io::Result<Arc<Node>> {
        let listing = self.listing(parent)?;
        let e = listing.get(name).ok_or_else(|| errno(libc::ENOENT))?;
        self.get_or_insert(parent, e)
    }

    /// The node of a listing entry of `parent`, created if needed, with one more lookup.
    pub fn get_or_insert(&self, parent: u64, e: &DirEntry) -> io::Result<Arc<Node>> {
        if let Some(n) = self.hit(e.ino) {
            return Ok(self.met_again(n, parent, e));
        }
        let links = self.links.lock();
        let parent_node = self.node(parent)?;
        let n = match self.nodes.entry(e.ino) {
            dashmap::Entry::Occupied(o) => {
                let n = o.get().clone();
                n.lookups.fetch_add(1, Ordering::Relaxed);
                drop(o);
                n
            }
            dashmap::Entry::Vacant(v) => {
                parent_node.kids.fetch_add(1, Ordering::Relaxed);
                let n = Arc::new(Node {
                    ino: e.ino,
                    lookups: AtomicU64::new(1),
                    kids: AtomicU32::new(0),
                    no_xattrs: AtomicBool::new(false),
                    upper_plain: AtomicU64::new(0),
                    state: RwLock::new(NodeState {
                        parent,
                        name: e.name.clone(),
                        kind: e.kind,
                        layer: e.layer,
                        dir: dir_state(e),
                        aliases: None,
                        gone: false,
                    }),
                });
                v.insert(n.clone());
                return Ok(n);
            }
        };
        drop(links);
        Ok(self.met_again(n, parent, e))
    }

    /// The node of `ino` with one more lookup, if there is one (taken under the map's lock,
    /// which a FORGET dropping it holds too).
    fn hit(&self, ino: u64) -> Option<Arc<Node>> {
        let n = self.nodes.get(&ino)?;
        n.lookups.fetch_add(1, Ordering::Relaxed);
        Some(n.clone())
    }

    /// Node `n` met again as listing entry `e` of `parent`.
    fn met_again(&self, n: Arc<Node>, parent: u64, e: &DirEntry) -> Arc<Node> {
        let (same, gone) = {
            let s = n.state.read();
            (s.parent == parent && s.name == e.name, s.gone)
        };
        if same {
            let mut s = n.state.write();
            // The listing shows the number at that name again: it is alive there.
            s.gone = false;
            if s.kind != e.kind {
                // Another kind of file under the number at the same name: the node is that
                // file now (else every request on it would stat a file of another kind).
                s.kind = e.kind;
                s.layer = e.layer;
                s.dir = dir_state(e);
                n.no_xattrs.store(false, Ordering::Relaxed);
            }
        } else if !same && self.still_there(&n) {
            // Another name of a hard-linked file: remembered for when this one goes.
            let mut s = n.state.write();
            let known = s.aliases.get_or_insert_with(Box::default);
            if !known.iter().any(|(p, m)| *p == parent && *m == e.name) {
                known.push((parent, e.name.clone()));
            }
        } else if !same {
            // The number under another name whose old name is gone: a number the upper's
            // filesystem gave a new file before the kernel forgot the deleted one (another
            // name of a hard link keeps its node as it is). The old name, unless known gone,
            // stays a candidate for when this one goes (the kernel may still use it).
            let old = {
                let s = n.state.read();
                (!gone).then(|| (s.parent, s.name.clone()))
            };
            self.reparent(&n, parent, e.name.clone());
            if let Some(old) = old {
                let mut s = n.state.write();
                let known = s.aliases.get_or_insert_with(Box::default);
                if !known.contains(&old) {
                    known.push(old);
                }
            }
            n.xattrs_changing();
            let mut s = n.state.write();
            if s.kind != e.kind || s.layer != e.layer {
                s.kind = e.kind;
                s.layer = e.layer;
                s.dir = dir_state(e);
                n.no_xattrs.store(false, Ordering::Relaxed);
            }
        }
        n
    }

    /// After the name `name` in `parent` was unlinked: if `node` went by it, it takes another
    /// name it is known under that still exists (a hard link), so requests keep finding it.
    pub fn unlinked(&self, node: &Node, parent: u64, name: &OsStr) {
        let (by_it, aliases) = {
            let mut s = node.state.write();
            if let Some(a) = s.aliases.as_mut() {
                a.retain(|(p, m)| !(*p == parent && **m == *name));
            }
            (s.parent == parent && *s.name == *name, s.aliases.clone())
        };
        if !by_it {
            return;
        }
        for (p, m) in aliases.map(|a| *a).unwrap_or_default() {
            let Ok(rel) = self.path_of(p).map(|d| d.join(&*m)) else {
                continue;
            };
            let layer = node.state.read().layer;
            // Still a name of the file: on disk where the node is, or listed with its number
            // (the node's layer may lag behind a copy-up of the link group).
            let listed =
                || self.listing(p).ok().and_then(|l| l.get(&m).map(|e| e.ino)) == Some(node.ino);
            if self.stat_in(layer, &rel).is_ok() || listed() {
                self.reparent(node, p, m.clone());
                if let Some(a) = node.state.write().aliases.as_mut() {
                    a.retain(|(q, n)| !(*q == p && *n == m));
                }
                return;
            }
        }
        node.state.write().gone = true;
    }

    /// The name `from` of `node` moved to `name` in `parent` (a rename). A name of a hard
    /// link other than the one the node goes by moves among its other names; the node keeps
    /// its own (else the name it went by would be lost while the kernel still uses it).
    pub fn renamed(&self, node: &Node, from: (u64, &OsStr), parent: u64, name: Arc<OsStr>) {
        {
            let mut s = node.state.write();
            let own = s.parent == from.0 && *s.name == *from.1;
            if !own && !s.gone && s.kind != FileKind::Directory {
                let known = s.aliases.get_or_insert_with(Box::default);
                known.retain(|(p, m)| !(*p == from.0 && **m == *from.1));
                if !known.iter().any(|(p, m)| *p == parent && *m == name) {
                    known.push((parent, name));
                }
                return;
            }
            if let Some(a) = s.aliases.as_mut() {
                a.retain(|(p, m)| !(*p == parent && *m == name));
            }
        }
        self.reparent(node, parent, name);
    }

    /// The name `name` in `parent` of `node` was removed and the file has no other name the
    /// view knows of: from now on it has no path (its open files are served by their fds).
    pub fn name_gone(&self, node: &Node, parent: u64, name: &OsStr) {
        let mut s = node.state.write();
        if s.parent == parent
            && *s.name == *name
            && !s.aliases.as_ref().is_some_and(|a| !a.is_empty())
        {
            s.gone = true;
        }
    }

    /// Whether `node`'s own name still leads to its file in its layer.
    fn still_there(&self, node: &Node) -> bool {
        let layer = node.state.read().layer;
        // The same file: a name that another file took since (a rename over it) is not a
        // hard link of this one.
        self.path_of(node.ino).is_ok_and(|rel| {
            self.stat_in(layer, &rel)
                .is_ok_and(|st| self.layers.shows_as(layer, st.st_ino, node.ino))
        })
    }

    /// Give `node` the name `name` in directory `parent` (rename; a number met again under
    /// another name), keeping right the child counts that hold parents alive for `path_of`.
    pub fn reparent(&self, node: &Node, parent: u64, name: Arc<OsStr>) {
        let _links = self.links.lock();
        let old = {
            let mut s = node.state.write();
            let old = s.parent;
            s.parent = parent;
            s.name = name;
            s.gone = false;
            old
        };
        // A node already dropped from the table was taken off its parent's count then.
        let live = self
            .nodes
            .get(&node.ino)
            .is_some_and(|n| std::ptr::eq(&**n, node));
        if old == parent || !live {
            return;
        }
        if let Some(p) = self.nodes.get(&parent) {
            p.kids.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(p) = self.nodes.get(&old) {
            let _ = p
                .kids
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(1))
                });
        }
        // The old parent may have been kept only by this child.
        self.forget_locked(old, 0);
    }

    /// Drop `n` lookups of `ino`; nodes without lookups and children go away (and may release
    /// their parent in turn).
    pub fn forget(&self, ino: u64, n: u64) {
        let _links = self.links.lock();
        self.forget_locked(ino, n);
    }

    /// [`Tree::forget`] with the lock of parent links held.
    fn forget_locked(&self, ino: u64, n: u64) {
        let mut cur = ino;
        let mut dec = n;
        while cur != ROOT_INO {
            let removed = self.nodes.remove_if(&cur, |_, node| {
                if dec > 0 {
                    let _ = node
                        .lookups
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                            Some(v.saturating_sub(dec))
                        });
                }
                node.lookups.load(Ordering::Relaxed) == 0 && node.kids.load(Ordering::Relaxed) == 0
            });
            let Some((_, node)) = removed else { break };
            self.layers.forget_retired(cur);
            let parent = node.state.read().parent;
            match self.nodes.get(&parent) {
                Some(p) => {
                    let _ = p
                        .kids
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                            Some(v.saturating_sub(1))
                        });
                }
                None => break,
            }
            cur = parent;
            dec = 0;
        }
    }

    /// Add a node made by the write path (mkdir, create, ...) under `parent` with one lookup.
    pub fn insert_new(&self, parent: u64, e: &DirEntry) -> io::Result<Arc<Node>> {
        self.get_or_insert(parent, e)
    }

    /// Current attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> io::Result<Attr> {
        let _names = self.names.read();
        let node = self.node(ino)?;
        let layer = node.state.read().layer;
        let rel = self.path_of(ino)?;
        if let Some(t) = &self.layers.get(layer).tar {
            return Ok(self.tar_attr(&node, t, &rel, t.stat(&rel)?));
        }
        let at = self.layers.get(layer).at(&rel)?;
        let st = sys::fstatat(at.dir(), at.name())?;
        if FileKind::of_mode(st.st_mode) != node.state.read().kind {
            // The node's path leads to another kind of file: not this node's. Its attributes
            // would make the kernel's inode bad (EIO for every request on it); ESTALE makes a
            // request by path look the name up again.
            tracing::debug!(ino, rel = %rel.display(), "path of a node shows another kind of file");
            return Err(errno(libc::ESTALE));
        }
        Ok(self.attr_from_stat_at(&node, layer, at.dir(), at.name(), st))
    }

    /// Whether `node` is known to have no xattrs (override_stat included).
    pub fn no_xattrs(&self, node: &Node) -> bool {
        if self.layers.get(node.state.read().layer).upper {
            node.upper_plain.load(Ordering::Acquire) & 1 == 1
        } else {
            node.no_xattrs.load(Ordering::Relaxed)
        }
    }

    /// Attributes to show for `node` given a stat of its backing file `rel` in `layer`:
    /// override_stat applied, owners mapped, the number being the node's.
    pub fn attr_from_stat(&self, node: &Node, layer: LayerIdx, rel: &Path, st: libc::stat) -> Attr {
        if let Some(t) = &self.layers.get(layer).tar {
            return self.tar_attr(node, t, rel, st);
        }
        match self.layers.get(layer).at(rel) {
            Ok(at) => self.attr_from_stat_at(node, layer, at.dir(), at.name(), st),
            // No longer reachable by that path (unlinked, or refused): no xattrs to apply.
            Err(_) => self.file_attr(node, st),
        }
    }

    /// [`Tree::attr_from_stat`] for a backing file named by `name` relative to `dir` (the
    /// layer root or one of its directories): xattrs are read without walking the full path.
    pub fn attr_from_stat_at(
        &self,
        node: &Node,
        layer: LayerIdx,
        dir: BorrowedFd<'_>,
        name: &Path,
        mut st: libc::stat,
    ) -> Attr {
        let kind_bits = st.st_mode & libc::S_IFMT;
        // Symlinks cannot carry user.* xattrs; others are rare and cheap to skip.
        if (kind_bits == libc::S_IFREG || kind_bits == libc::S_IFDIR) && !self.no_xattrs(node) {
            let epoch = node.xattr_epoch();
            // One listxattr answers both "is there an override" and "are there any xattrs"
            // (the latter lets getxattr of security.*/ACL names from `ls -l` skip the disk).
            match sys::listxattrat(dir, name) {
                Ok(names) if names.is_empty() => {
                    if node.state.read().layer == layer {
                        if !self.layers.get(layer).upper {
                            node.no_xattrs.store(true, Ordering::Relaxed);
                        } else if kind_bits == libc::S_IFREG {
                            node.mark_upper_plain(epoch);
                        }
                    }
                }
                Ok(names)
                    if !names
                        .split(|b| *b == 0)
                        .any(|n| n == meta::OVERRIDE_STAT_XATTR.as_bytes()) => {}
                _ => {
                    if let Ok(Some(o)) = meta::read_override(&sys::fd_child_path(dir, name)) {
                        o.apply(&mut st);
                    }
                }
            }
        }
        self.file_attr(node, st)
    }

    /// A stat of `rel` in `layer`, whichever kind of layer it is.
    fn stat_in(&self, layer: LayerIdx, rel: &Path) -> io::Result<libc::stat> {
        let l = self.layers.get(layer);
        if let Some(t) = &l.tar {
            return t.stat(rel);
        }
        let at = l.at(rel)?;
        sys::fstatat(at.dir(), at.name())
    }

    /// Attributes of `node` backed by `rel` of a tar-index layer (which holds no
    /// override_stat: the tar's owners are the ones shown).
    pub fn tar_attr(&self, node: &Node, t: &TarLayer, rel: &Path, st: libc::stat) -> Attr {
        if t.no_xattrs(rel) {
            node.no_xattrs.store(true, Ordering::Relaxed);
        }
        self.file_attr(node, st)
    }

    /// The attributes of `node` from a stat of its backing file and the override_stat in force
    /// on it (known to the caller, which just read or wrote it).
    pub fn attr_with_override(
        &self,
        node: &Node,
        mut st: libc::stat,
        over: Option<meta::OverrideStat>,
    ) -> Attr {
        if let Some(o) = over {
            o.apply(&mut st);
        }
        self.file_attr(node, st)
    }

    /// The attributes of `node` as `st` gives them (override_stat already applied).
    fn file_attr(&self, node: &Node, st: libc::stat) -> Attr {
        let kind = FileKind::of_mode(st.st_mode);
        let merged_dir = kind == FileKind::Directory
            && node
                .state
                .read()
                .dir
                .as_ref()
                .is_some_and(|d| d.layers.len() > 1);
        Attr {
            ino: node.ino,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: Timestamp::new(st.st_atime, st.st_atime_nsec),
            mtime: Timestamp::new(st.st_mtime, st.st_mtime_nsec),
            ctime: Timestamp::new(st.st_ctime, st.st_ctime_nsec),
            kind,
            perm: (st.st_mode & 0o7777) as u16,
            // A merged directory's link count is unknown: 1 tells tools not to rely on it.
            nlink: if merged_dir { 1 } else { st.st_nlink as u32 },
            uid: self.ids.uid(st.st_uid),
            gid: self.ids.gid(st.st_gid),
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
        }
    }
}

#[cfg(test)]
#[path = "tree_tests.rs"]
mod tests;
