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
use parking_lot::RwLock;

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
            }),
        };
        let nodes = DashMap::new();
        nodes.insert(ROOT_INO, Arc::new(root));
        Ok(Tree {
            layers: Arc::new(layers),
            nodes,
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

    /// Look `name` up in directory `parent`; on success the node's lookup count is raised by
    /// one (the kernel now holds a reference).
    pub fn lookup(&self, parent: u64, name: &OsStr) -> io::Result<(Arc<Node>, Attr)> {
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
        let st = sys::fstatat(at.dir(), at.name())?;
        let node = self.get_or_insert(parent, e)?;
        let attr = self.attr_from_stat_at(&node, e.layer, at.dir(), at.name(), st);
        Ok((node, attr))
    }

    /// [`Tree::lookup`] without the attributes (the caller has a stat of the entry already).
    pub fn lookup_node(&self, parent: u64, name: &OsStr) -> io::Result<Arc<Node>> {
        let listing = self.listing(parent)?;
        let e = listing.get(name).ok_or_else(|| errno(libc::ENOENT))?;
        self.get_or_insert(parent, e)
    }

    /// The node of a listing entry of `parent`, created if needed, with one more lookup.
    pub fn get_or_insert(&self, parent: u64, e: &DirEntry) -> io::Result<Arc<Node>> {
        let parent_node = self.node(parent)?;
        let node = match self.nodes.entry(e.ino) {
            dashmap::Entry::Occupied(o) => {
                let n = o.get().clone();
                n.lookups.fetch_add(1, Ordering::Relaxed);
                // Let go of the map's shard before other nodes are looked at.
                drop(o);
                let same = {
                    let s = n.state.read();
                    s.parent == parent && s.name == e.name
                };
                if !same && self.still_there(&n) {
                    // Another name of a hard-linked file: remembered for when this one goes.
                    let mut s = n.state.write();
                    let known = s.aliases.get_or_insert_with(Box::default);
                    if !known.iter().any(|(p, m)| *p == parent && *m == e.name) {
                        known.push((parent, e.name.clone()));
                    }
                } else if !same {
                    // The number under another name whose old name is gone: a number the
                    // upper's filesystem gave a new file before the kernel forgot the deleted
                    // one (another name of a hard link keeps its node as it is).
                    self.reparent(&n, parent, e.name.clone());
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
                    }),
                });
                v.insert(n.clone());
                n
            }
        };
        Ok(node)
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
            if self.stat_in(layer, &rel).is_ok() {
                self.reparent(node, p, m.clone());
                if let Some(a) = node.state.write().aliases.as_mut() {
                    a.retain(|(q, n)| !(*q == p && *n == m));
                }
                return;
            }
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
        let old = {
            let mut s = node.state.write();
            let old = s.parent;
            s.parent = parent;
            s.name = name;
            old
        };
        if old == parent {
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
        self.forget(old, 0);
    }

    /// Drop `n` lookups of `ino`; nodes without lookups and children go away (and may release
    /// their parent in turn).
    pub fn forget(&self, ino: u64, n: u64) {
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
        let node = self.node(ino)?;
        let layer = node.state.read().layer;
        let rel = self.path_of(ino)?;
        if let Some(t) = &self.layers.get(layer).tar {
            return Ok(self.tar_attr(&node, t, &rel, t.stat(&rel)?));
        }
        let at = self.layers.get(layer).at(&rel)?;
        let st = sys::fstatat(at.dir(), at.name())?;
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
mod tests {
    use super::*;
    use std::fs;

    fn tree(lowers: &[&Path]) -> Tree {
        let l: Vec<PathBuf> = lowers.iter().map(|p| p.to_path_buf()).collect();
        Tree::new(Layers::open(None, &l).unwrap(), IdView::default()).unwrap()
    }

    fn names(t: &Tree, ino: u64) -> Vec<String> {
        let mut v: Vec<String> = t
            .listing(ino)
            .unwrap()
            .entries()
            .iter()
            .map(|e| e.name.to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn merges_and_whiteouts() {
        let top = tempfile::tempdir().unwrap();
        let low = tempfile::tempdir().unwrap();
        fs::write(low.path().join("a"), "low").unwrap();
        fs::write(low.path().join("gone"), "x").unwrap();
        fs::create_dir_all(low.path().join("d/sub")).unwrap();
        fs::write(low.path().join("d/old"), "x").unwrap();
        fs::create_dir_all(low.path().join("o")).unwrap();
        fs::write(low.path().join("o/hidden"), "x").unwrap();
        fs::write(top.path().join("a"), "top").unwrap();
        fs::write(top.path().join(".wh.gone"), "").unwrap();
        fs::create_dir_all(top.path().join("d")).unwrap();
        fs::write(top.path().join("d/new"), "x").unwrap();
        fs::create_dir_all(top.path().join("o")).unwrap();
        fs::write(top.path().join("o/.wh..wh..opq"), "").unwrap();
        fs::write(top.path().join("o/mine"), "x").unwrap();
        let t = tree(&[top.path(), low.path()]);
        assert_eq!(names(&t, ROOT_INO), ["a", "d", "o"]);
        let (a, attr) = t.lookup(ROOT_INO, OsStr::new("a")).unwrap();
        assert_eq!(attr.size, 3);
        assert_eq!(a.state.read().layer, 0);
        let (d, _) = t.lookup(ROOT_INO, OsStr::new("d")).unwrap();
        assert_eq!(names(&t, d.ino), ["new", "old", "sub"]);
        let (o, _) = t.lookup(ROOT_INO, OsStr::new("o")).unwrap();
        assert_eq!(names(&t, o.ino), ["mine"]);
        assert!(t.lookup(ROOT_INO, OsStr::new("gone")).is_err());
        // forget drops nodes; the number comes back the same
        let n = t.node_count();
        let ino_a = a.ino;
        drop(a);
        t.forget(ino_a, 1);
        assert_eq!(t.node_count(), n - 1);
        let (a2, _) = t.lookup(ROOT_INO, OsStr::new("a")).unwrap();
        assert_eq!(a2.ino, ino_a);
    }

    #[test]
    fn three_layers_end_hide_and_merge() {
        let (top, mid, low) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        fs::create_dir_all(top.path().join("d")).unwrap();
        fs::write(top.path().join("d/t"), "").unwrap();
        fs::write(top.path().join(".wh.w"), "").unwrap();
        fs::write(top.path().join("x"), "top").unwrap();
        fs::write(top.path().join(".wh.x"), "").unwrap();
        // A file under the directory ends it: the directory below it does not merge in.
        fs::write(mid.path().join("d"), "").unwrap();
        fs::write(mid.path().join("w"), "").unwrap();
        fs::create_dir_all(mid.path().join("e/m")).unwrap();
        fs::write(mid.path().join("x"), "mid").unwrap();
        fs::create_dir_all(low.path().join("d/under")).unwrap();
        fs::write(low.path().join("w"), "").unwrap();
        fs::create_dir_all(low.path().join("e/l")).unwrap();
        fs::write(low.path().join("only_low"), "").unwrap();
        let t = tree(&[top.path(), mid.path(), low.path()]);
        assert_eq!(names(&t, ROOT_INO), ["d", "e", "only_low", "x"]);
        let root = t.listing(ROOT_INO).unwrap();
        assert_eq!(root.get(OsStr::new("e")).unwrap().dir_layers[..], [1, 2]);
        assert_eq!(root.get(OsStr::new("d")).unwrap().dir_layers[..], [0]);
        assert_eq!(root.get(OsStr::new("only_low")).unwrap().layer, 2);
        let (x, attr) = t.lookup(ROOT_INO, OsStr::new("x")).unwrap();
        assert_eq!((x.state.read().layer, attr.size), (0, 3));
        let (d, _) = t.lookup(ROOT_INO, OsStr::new("d")).unwrap();
        assert_eq!(names(&t, d.ino), ["t"]);
        let (e, _) = t.lookup(ROOT_INO, OsStr::new("e")).unwrap();
        assert_eq!(names(&t, e.ino), ["l", "m"]);
    }

    #[test]
    fn no_xattrs_cache_and_override() {
        let low = tempfile::tempdir().unwrap();
        fs::write(low.path().join("plain"), "x").unwrap();
        fs::write(low.path().join("forced"), "x").unwrap();
        let o = meta::OverrideStat::parse(b"7:8:600:file").unwrap();
        if meta::write_override(&low.path().join("forced"), &o).is_err() {
            return; // no user xattrs on this filesystem: nothing to check
        }
        let t = tree(&[low.path()]);
        let (plain, _) = t.lookup(ROOT_INO, OsStr::new("plain")).unwrap();
        assert!(t.no_xattrs(&plain));
        let (forced, attr) = t.lookup(ROOT_INO, OsStr::new("forced")).unwrap();
        assert!(!t.no_xattrs(&forced));
        assert_eq!((attr.uid, attr.gid, attr.perm), (7, 8, 0o600));
    }

    #[test]
    fn a_number_met_under_another_name_takes_that_name() {
        // A deleted file's backing inode number given to a new file before the kernel forgot
        // the old node: the node must answer for the new name (and parent) from then on.
        let low = tempfile::tempdir().unwrap();
        fs::create_dir_all(low.path().join("d1")).unwrap();
        fs::create_dir_all(low.path().join("d2")).unwrap();
        let t = tree(&[low.path()]);
        let (d1, _) = t.lookup(ROOT_INO, OsStr::new("d1")).unwrap();
        let (d2, _) = t.lookup(ROOT_INO, OsStr::new("d2")).unwrap();
        let entry = |name: &str, kind| DirEntry {
            name: OsStr::new(name).into(),
            ino: 77,
            kind,
            layer: 0,
            dir_layers: Box::default(),
        };
        let old = t
            .get_or_insert(d1.ino, &entry("b", FileKind::RegularFile))
            .unwrap();
        assert_eq!(t.path_of(old.ino).unwrap(), Path::new("d1/b"));
        let new = t
            .get_or_insert(d2.ino, &entry("c", FileKind::Symlink))
            .unwrap();
        assert!(Arc::ptr_eq(&old, &new));
        assert_eq!(t.path_of(new.ino).unwrap(), Path::new("d2/c"));
        assert_eq!(new.state.read().kind, FileKind::Symlink);
        // The child count moved with it: d1 can go, d2 cannot while its child lives.
        t.forget(d1.ino, 1);
        assert!(
            t.node(d1.ino).is_err(),
            "d1 kept alive by a child it no longer has"
        );
        t.forget(d2.ino, 1);
        assert!(t.node(d2.ino).is_ok(), "d2 dropped while its child lives");
        t.forget(new.ino, 2);
        assert!(t.node(d2.ino).is_err());
    }

    #[test]
    fn a_number_met_again_whose_old_name_holds_another_file_takes_the_new_name() {
        // useradd's pattern: `passwd+` renamed over `passwd`, then a new `shadow-` gets the
        // freed backing number of the old `passwd` before the kernel forgot its node. The old
        // name still exists but is another file: the node is not a hard link to it, and a
        // chmod of `shadow-` must not reach `passwd`.
        let low = tempfile::tempdir().unwrap();
        fs::write(low.path().join("passwd"), "old").unwrap();
        fs::write(low.path().join("passwd+"), "new").unwrap();
        let t = tree(&[low.path()]);
        let (old, _) = t.lookup(ROOT_INO, OsStr::new("passwd")).unwrap();
        fs::rename(low.path().join("passwd+"), low.path().join("passwd")).unwrap();
        let entry = DirEntry {
            name: OsStr::new("shadow-").into(),
            ino: old.ino,
            kind: FileKind::RegularFile,
            layer: 0,
            dir_layers: Box::default(),
        };
        let new = t.get_or_insert(ROOT_INO, &entry).unwrap();
        assert!(Arc::ptr_eq(&old, &new));
        assert_eq!(t.path_of(new.ino).unwrap(), Path::new("shadow-"));
    }
}
