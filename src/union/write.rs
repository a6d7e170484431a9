//! Every request that changes the view. `fs.rs` delegates each write method here in one line;
//! this module translates inode numbers to paths, runs the change on the upper layer
//! ([`UpperLayer`]) and then brings the in-memory tree (node states, cached listings, inode
//! aliases) and the kernel's caches in line with it.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashSet;
use fuser::{
    BsdFileFlags, CopyFileRangeFlags, Errno, FileHandle, FopenFlags, Generation, INodeNo,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::layer::meta;
use crate::sys::{self, TimeSpec};
use crate::union::attr::{Attr, FileKind};
use crate::union::background::LONG_COPY_BYTES;
use crate::union::copyup::OpenCopy;
use crate::union::fs::{err, fattr, Handle, UnionFs};
use crate::union::ids::container_to_host;
use crate::union::listing::DirEntry;
use crate::union::lowers::{LowerEntry, LowerStack};
use crate::union::tree::{Node, NodeState, ROOT_INO};
use crate::union::upper::{CopyUp, Known, NewAttr, SetAttr, UpperLayer};

/// Who made a request: what the write path needs of fuser's `Request`, in a form that can go
/// to another thread with the reply.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller {
    uid: u32,
    gid: u32,
    pid: u32,
}

impl Caller {
    pub(crate) fn uid(&self) -> u32 {
        self.uid
    }
    pub(crate) fn gid(&self) -> u32 {
        self.gid
    }
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }
}

impl From<&Request> for Caller {
    fn from(r: &Request) -> Caller {
        Caller {
            uid: r.uid(),
            gid: r.gid(),
            pid: r.pid(),
        }
    }
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

fn erofs() -> Errno {
    Errno::from_i32(libc::EROFS)
}

/// Write-path state of a mount, made on first use.
#[derive(Debug, Default)]
pub struct Writer {
    upper: OnceLock<Result<UpperLayer, i32>>,
    /// Inodes copied up while a passthrough open of their lower file was alive: their later
    /// opens must not be handed to the kernel with another backing file.
    no_passthrough: DashSet<u64>,
}

impl Writer {
    /// Whether opens of `ino` must be served without passthrough.
    pub fn blocks_passthrough(&self, ino: u64) -> bool {
        !self.no_passthrough.is_empty() && self.no_passthrough.contains(&ino)
    }
}

/// The upper layer of `fs`, or the errno to answer (`EROFS` for a read-only view).
fn upper(fs: &UnionFs) -> Result<&UpperLayer, Errno> {
    if fs.read_only() {
        return Err(erofs());
    }
    let res = fs.writer.upper.get_or_init(|| {
        let (Some(up), Some(work)) = (&fs.opts.upperdir, &fs.opts.workdir) else {
            return Err(libc::EROFS);
        };
        let lowers = Arc::new(LowerStack::over(fs.tree.layers.clone()));
        let opened = UpperLayer::open(up, work, lowers, fs.opts.quota);
        let opened = opened.map(|u| if fs.opts.volatile { u.volatile() } else { u });
        opened.map_err(|e| {
            tracing::error!(%e, "cannot open the upper layer");
            e.raw_os_error().unwrap_or(libc::EIO)
        })
    });
    res.as_ref().map_err(|e| Errno::from_i32(*e))
}

/// Open the upper layer at mount time, so staging leftovers of a crash are cleaned and the
/// quota is scanned before the first request.
pub(crate) fn prepare(fs: &UnionFs) {
    if !fs.read_only() {
        let _ = upper(fs);
    }
}

fn time_spec(t: TimeOrNow) -> TimeSpec {
    match t {
        TimeOrNow::Now => TimeSpec::Now,
        TimeOrNow::SpecificTime(st) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => TimeSpec::At {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos() as i64,
            },
            Err(e) => {
                let d = e.duration();
                TimeSpec::At {
                    sec: -(d.as_secs() as i64) - i64::from(d.subsec_nanos() > 0),
                    nsec: if d.subsec_nanos() > 0 {
                        1_000_000_000 - d.subsec_nanos() as i64
                    } else {
                        0
                    },
                }
            }
        },
    }
}

/// Host ids for a new entry made by `req` in `parent` (setgid directories pass on their group).
fn owner_for(fs: &UnionFs, req: &Caller, parent: u64) -> io::Result<(u32, u32, bool)> {
    let uid =
        container_to_host(&fs.tree.ids.uid_map, req.uid()).ok_or_else(|| errno(libc::EOVERFLOW))?;
    let mut gid =
        container_to_host(&fs.tree.ids.gid_map, req.gid()).ok_or_else(|| errno(libc::EOVERFLOW))?;
    let (layer, rel) = fs.tree.backing(parent)?;
    let pst = sys::lstat(&fs.tree.layers.get(layer).abs(&rel))?;
    let setgid = pst.st_mode & libc::S_ISGID != 0;
    if setgid {
        gid = pst.st_gid;
    }
    Ok((uid, gid, setgid))
}

/// After a change at `rel` (the entry of node `ino`, if the kernel knows it): every node from
/// it up to the root that now lives in the upper layer is pointed there. The walk stops at the
/// first node already in the upper: its ancestors are too (an upper entry's parents always are).
fn refresh(fs: &UnionFs, up: &UpperLayer, ino: Option<u64>, rel: &Path) {
    refresh_known(fs, up, ino, rel, None, false)
}

/// [`refresh`] where the caller may know the upper inode number of `rel` (it just made it).
/// `copied_path`: the change was a copy-up of `rel`, so the only new upper entries are the
/// ones on that path, which this walk records in their parents' listings: the cached listing
/// of a directory that just got its upper copy stays right and is kept (merging it again
/// from every layer cost a copy-up storm ~10% of its time).
fn refresh_known(
    fs: &UnionFs,
    up: &UpperLayer,
    ino: Option<u64>,
    rel: &Path,
    mut upper_ino: Option<u64>,
    copied_path: bool,
) {
    let mut cur = ino;
    let mut path = rel.to_path_buf();
    while let Some(i) = cur {
        let Ok(node) = fs.tree.node(i) else { break };
        if node_in_upper(&node.state.read()) {
            break;
        }
        let known = upper_ino.take();
        if let Some(st_ino) = known.or_else(|| up.upper_stat(&path).map(|st| st.st_ino)) {
            let (parent, name) = {
                let mut s = node.state.write();
                if s.layer != 0 && i != ROOT_INO {
                    // A copied-up entry keeps its number.
                    fs.tree.layers.alias_ino(0, st_ino, i);
                }
                s.layer = 0;
                if let Some(d) = s.dir.as_mut() {
                    if d.layers.first() != Some(&0) {
                        d.layers.insert(0, 0);
                        if !copied_path {
                            d.listing = None;
                        }
                    }
                }
                (s.parent, s.name.clone())
            };
            // The parent's cached listing must say so too: a node the kernel forgets (memory
            // pressure, drop_caches) is made again from it at the next lookup.
            if i != ROOT_INO {
                fs.tree.update_listing(parent, |l| l.move_to_upper(&name));
            }
        }
        if path.as_os_str().is_empty() {
            break;
        }
        path.pop();
        cur = Some(node.state.read().parent);
    }
}

/// Whether a change of `ino` starts by copying much data up: a lower regular file of at
/// least [`LONG_COPY_BYTES`], or (`with_tree`, for a rename) a directory with lower contents,
/// which a rename copies up whole. Such requests are served off the reader threads.
pub(crate) fn copies_much(fs: &UnionFs, ino: u64, with_tree: bool) -> bool {
    let Ok(node) = fs.tree.node(ino) else {
        return false;
    };
    let (kind, copied) = {
        let s = node.state.read();
        let all_upper = s.layer == 0 && !s.dir.as_ref().is_some_and(|d| d.layers != [0]);
        (s.kind, all_upper)
    };
    if copied || fs.read_only() {
        return false;
    }
    match kind {
        // The size alone: a stat, not the attributes (which may read xattrs).
        FileKind::RegularFile => fs.tree.backing(ino).is_ok_and(|(layer, rel)| {
            let size = |at: crate::union::layers::At<'_>| sys::fstatat(at.dir(), at.name());
            fs.tree
                .layers
                .get(layer)
                .at(&rel)
                .and_then(size)
                .is_ok_and(|st| st.st_size as u64 >= LONG_COPY_BYTES)
        }),
        FileKind::Directory => with_tree,
        _ => false,
    }
}

/// [`copies_much`] for a rename: of what moves (both names for an exchange).
pub(crate) fn rename_copies_much(
    fs: &UnionFs,
    parent: u64,
    name: &OsStr,
    newparent: u64,
    newname: &OsStr,
    flags: RenameFlags,
) -> bool {
    let much = |p, n| child_ino(fs, p, n).is_some_and(|ino| copies_much(fs, ino, true));
    much(parent, name) || (flags.bits() & sys::RENAME_EXCHANGE != 0 && much(newparent, newname))
}

/// Whether a node's entry (and, for a directory, its merged contents) already include the upper.
fn node_in_upper(s: &NodeState) -> bool {
    s.layer == 0 && !s.dir.as_ref().is_some_and(|d| d.layers.first() != Some(&0))
}

/// Put the upper entry just made at `rel` (`name` in directory `parent`) into the cached
/// listing of `parent`, so the next lookup does not merge the directory again.
fn add_to_listing(fs: &UnionFs, up: &UpperLayer, parent: u64, name: &OsStr, rel: &Path) {
    match up.upper_stat(rel) {
        Some(st) => add_stat_to_listing(fs, parent, name, &st),
        None => fs.tree.invalidate_listing(parent),
    }
}

/// [`add_to_listing`] of an entry whose stat the caller has.
fn add_stat_to_listing(fs: &UnionFs, parent: u64, name: &OsStr, st: &libc::stat) {
    let kind = FileKind::of_mode(st.st_mode);
    let ino = fs.tree.layers.ino_for(0, st.st_ino);
    // A node the kernel still holds under this number (a deleted file whose inode number the
    // filesystem gave the new entry) knows nothing about the new entry's xattrs.
    if let Ok(n) = fs.tree.node(ino) {
        n.xattrs_changing();
    }
    let entry = DirEntry {
        name: name.into(),
        ino,
        kind,
        layer: 0,
        // New (or re-created over a whiteout, hence opaque): nothing below shows through.
        dir_layers: if kind == FileKind::Directory {
            Box::new([0])
        } else {
            Box::new([])
        },
    };
    fs.tree.update_listing(parent, |l| l.insert(entry));
}

/// The node number the listing of `parent` shows for `name`.
fn child_ino(fs: &UnionFs, parent: u64, name: &OsStr) -> Option<u64> {
    fs.tree.listing(parent).ok()?.get(name).map(|e| e.ino)
}

/// Forget the cached listing of `parent` and tell the kernel `name` changed there.
fn changed_entry(fs: &UnionFs, parent: u64, name: &OsStr) {
    fs.tree.invalidate_listing(parent);
    if let Some(inval) = fs.invalidator.get() {
        inval.entry(parent, name);
    }
}

fn reply_new_entry(fs: &UnionFs, parent: u64, name: &OsStr, reply: ReplyEntry) {
    match fs.tree.lookup(parent, name) {
        Ok((_, attr)) => reply.entry_with_ttls(&fs.ttl(), &fs.ttl(), &fattr(&attr), Generation(0)),
        Err(e) => reply.error(err(e)),
    }
}

/// Make sure `parent` is a directory and `name` a valid new name in it.
fn new_name(fs: &UnionFs, parent: u64, name: &OsStr) -> io::Result<PathBuf> {
    if name.len() > 255 {
        return Err(errno(libc::ENAMETOOLONG));
    }
    if name.as_bytes().starts_with(b".wh.") {
        // Our whiteout spelling cannot be a real name in the view.
        return Err(errno(libc::EINVAL));
    }
    let listing = fs.tree.listing(parent)?;
    if listing.get(name).is_some() {
        return Err(errno(libc::EEXIST));
    }
    Ok(fs.tree.path_of(parent)?.join(name))
}

/// The mode bits that a write or truncate by a caller without `CAP_FSETID` removes from a file
/// of permissions `perm` and group `gid`: setuid, and setgid where the group may execute or the
/// caller is not in the file's group (the kernel's rule). The kernel leaves this to us
/// (`FUSE_HANDLE_KILLPRIV_V2`, which spares a GETXATTR round trip per write). Without a
/// caller (deciding on passthrough) any setgid counts.
fn privs_to_kill(perm: u32, gid: u32, caller: Option<&Caller>) -> u32 {
    let mut kill = perm & libc::S_ISUID;
    if perm & libc::S_ISGID != 0
        && (perm & libc::S_IXGRP != 0 || !caller.is_some_and(|r| in_group(r, gid)))
    {
        kill |= libc::S_ISGID;
    }
    kill
}

/// Whether the caller of `req` is in group `gid` (primary, else supplementary: read from
/// /proc only in this rare case, setgid files without group execute).
fn in_group(req: &Caller, gid: u32) -> bool {
    if req.gid() == gid {
        return true;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", req.pid())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
}

/// The permissions and group the view shows for the open upper file `fd` (override_stat
/// applied).
fn shown_perm(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    let st = sys::fstat(fd)?;
    let over = meta::fd_override(fd);
    Ok(over.map_or((st.st_mode & 0o7777, st.st_gid), |o| {
        (o.mode & 0o7777, o.gid)
    }))
}

/// Drop setuid/setgid of the open file `fd` of `ino` (written by the unprivileged `req`).
fn kill_privs(
    fs: &UnionFs,
    up: &UpperLayer,
    req: &Caller,
    ino: u64,
    fd: std::os::fd::BorrowedFd<'_>,
) -> io::Result<()> {
    let (perm, gid) = shown_perm(fd)?;
    let kill = privs_to_kill(perm, fs.tree.ids.gid(gid), Some(req));
    if kill == 0 {
        return Ok(());
    }
    let mode = Some(perm & !kill);
    match fs.tree.path_of(ino) {
        Ok(rel) => up
            .apply_attr(
                &rel,
                &SetAttr {
                    mode,
                    ..Default::default()
                },
            )
            .map(drop),
        // Unlinked while open: only the file itself is left to change.
        Err(_) => sys::fchmod(fd, perm & !kill),
    }
}

/// Whether writes to an upper file of permissions `perm` may bypass us (passthrough): not
/// with a quota (we count the bytes), nor for a setuid/setgid file (we clear the bits when an
/// unprivileged caller writes).
fn writes_may_bypass(fs: &UnionFs, perm: u32) -> bool {
    fs.opts.quota.is_none() && privs_to_kill(perm, 0, None) == 0
}

/// Whether a read-only open of `ino` (backing file `file`) may use passthrough. A file of the
/// upper whose writes we serve ourselves (quota, set-id bits) is read through us as well: the
/// kernel keeps an inode either in passthrough or in served mode and fails (EIO) an open of the
/// other kind while one is open, so a passthrough reader would shut its writers out.
pub(crate) fn reads_may_pass(fs: &UnionFs, ino: u64, file: &File) -> bool {
    let in_upper = fs
        .tree
        .node(ino)
        .is_ok_and(|n| fs.tree.layers.get(n.state.read().layer).upper);
    if !in_upper {
        return true;
    }
    fs.opts.quota.is_none() && shown_perm(file.as_fd()).is_ok_and(|(p, _)| writes_may_bypass(fs, p))
}

/// Register an open upper file and answer the kernel (passthrough only when no other backing
/// file is in use for the inode).
fn reply_open_upper(fs: &UnionFs, ino: u64, file: File, perm: Option<u32>, reply: ReplyOpen) {
    let perm = perm.or_else(|| shown_perm(file.as_fd()).ok().map(|(p, _)| p));
    let bypass = perm.is_some_and(|p| writes_may_bypass(fs, p));
    if !bypass || fs.writer.blocks_passthrough(ino) {
        let fh = fs.add_handle(Handle {
            ino,
            file,
            writable: true,
            passthrough: false,
        });
        return reply.opened(FileHandle(fh), FopenFlags::empty());
    }
    fs.reply_opened(ino, file, true, true, reply)
}

/// The lower entry backing `node` (at `rel`), as the tree resolved it; `None` when the node
/// is in the upper.
fn lower_backing(fs: &UnionFs, node: &Node, rel: &Path) -> Option<LowerEntry> {
    let layer = fs.tree.layers.get(node.state.read().layer);
    (!layer.upper).then(|| LowerEntry {
        layer: layer.path.clone(),
        path: layer.abs(rel),
    })
}

/// The lower entry the view has at `rel` in the merged directory `parent`: none when that
/// directory merges no lower layer (upper only, or opaque), else what the lower layers show.
/// The tree knows what the upper hides, which spares a walk of the upper along `rel`.
fn lower_in_view(fs: &UnionFs, up: &UpperLayer, parent: u64, rel: &Path) -> Option<LowerEntry> {
    let Ok(node) = fs.tree.node(parent) else {
        return up.lower_of(rel);
    };
    let merges_lower = node
        .state
        .read()
        .dir
        .as_ref()
        .is_some_and(|d| d.layers.iter().any(|&l| !fs.tree.layers.get(l).upper));
    merges_lower.then(|| up.lowers().lower_entry(rel)).flatten()
}

/// Copy `ino` (at `rel`) up; afterwards the tree and the passthrough bookkeeping know.
fn copy_up_node(fs: &UnionFs, up: &UpperLayer, ino: u64, rel: &Path) -> io::Result<()> {
    copy_up_node_open(fs, up, ino, rel, true).map(drop)
}

/// [`copy_up_node`], handing back the regular file it copied still open read-write; without
/// `with_data` a regular lower file is copied empty (the caller truncates it).
fn copy_up_node_open(
    fs: &UnionFs,
    up: &UpperLayer,
    ino: u64,
    rel: &Path,
    with_data: bool,
) -> io::Result<Option<OpenCopy>> {
    let node = fs.tree.node(ino)?;
    if node_in_upper(&node.state.read()) {
        return Ok(None);
    }
    let epoch = node.xattr_epoch();
    let parent = node.state.read().parent;
    let known = Known {
        parent_in_upper: ino != ROOT_INO
            && fs
                .tree
                .node(parent)
                .is_ok_and(|p| node_in_upper(&p.state.read())),
        no_xattrs: fs.tree.no_xattrs(&node),
    };
    let (r, copy) = match lower_backing(fs, &node, rel) {
        Some(entry) => up.copy_up_entry_open(rel, &entry, with_data, known)?,
        None => (up.copy_up(rel)?, None),
    };
    let moved = match &r {
        CopyUp::Copied { .. } => true,
        // In the upper already while the node still points below: another name of the same
        // file (a hard link) was copied up.
        CopyUp::Already => fs
            .tree
            .node(ino)
            .is_ok_and(|n| !node_in_upper(&n.state.read())),
    };
    if moved {
        if fs.has_passthrough(ino) {
            fs.writer.no_passthrough.insert(ino);
        }
        refresh_known(fs, up, Some(ino), rel, copy.as_ref().map(|c| c.ino), true);
        if copy.as_ref().is_some_and(|c| c.plain) {
            node.mark_upper_plain(epoch);
        }
    }
    if matches!(&r, CopyUp::Copied { peers } if !peers.is_empty()) {
        // Other names of the inode now live in the upper; their directories' listings may be
        // cached anywhere.
        fs.tree.invalidate_all_listings();
    }
    Ok(copy)
}

/// A lower file that a passthrough reader holds open is that inode's backing file in the
/// kernel, which allows no other one while the reader lives: an open for writing cannot be
/// given the copy on the same inode (the kernel fails it, EIO). So the file is copied up under
/// a new node number, its name points there, and the open gets ESTALE: the kernel looks the
/// name up again (LOOKUP_REVAL) and opens the copy as a new inode, while the reader goes on
/// reading the lower file, as with kernel overlayfs. Returns whether that was done.
fn copy_up_beside_readers(
    fs: &UnionFs,
    up: &UpperLayer,
    ino: u64,
    rel: &Path,
    with_data: bool,
) -> io::Result<bool> {
    let node = fs.tree.node(ino)?;
    if node_in_upper(&node.state.read()) {
        // Copied up already: perhaps by a chmod, truncate or xattr change made while readers
        // of the lower file were open.
        return reopen_beside_readers(fs, ino);
    }
    if !fs.has_passthrough(ino) || !is_named_file(fs, &node) {
        return Ok(false);
    }
    // The copy-up as usual (it also keeps every later open of the old inode from passing
    // through: the kernel would still use the lower file), then the copy gets its own number.
    copy_up_node_open(fs, up, ino, rel, with_data)?;
    renumber_copy(fs, up, &node, rel)?;
    Ok(true)
}

/// For an open of `ino`, which is in the upper: if it was copied up while passthrough
/// readers had the lower file open, the kernel still has that file as the inode's backing file
/// and fails (EIO) any other open of the inode; the copy then gets a node number of its own and
/// the caller answers ESTALE (see [`copy_up_beside_readers`]). Returns whether that was done.
pub(crate) fn reopen_beside_readers(fs: &UnionFs, ino: u64) -> io::Result<bool> {
    if !fs.writer.blocks_passthrough(ino) || !fs.has_passthrough(ino) {
        return Ok(false);
    }
    let node = fs.tree.node(ino)?;
    if !is_named_file(fs, &node) || !node_in_upper(&node.state.read()) {
        return Ok(false);
    }
    let up = upper(fs).map_err(|e| errno(e.code()))?;
    let rel = fs.tree.path_of(ino)?;
    renumber_copy(fs, up, &node, &rel)?;
    Ok(true)
}

/// A regular file (not the root) that its name in its directory still shows: only then can
/// the name be pointed at a new node.
fn is_named_file(fs: &UnionFs, node: &Node) -> bool {
    let (parent, name, kind) = {
        let s = node.state.read();
        (s.parent, s.name.clone(), s.kind)
    };
    node.ino != ROOT_INO
        && kind == FileKind::RegularFile
        && child_ino(fs, parent, &name) == Some(node.ino)
}

/// Give the upper file of `node` (at `rel`) a node number of its own and point its name there;
/// the old node stays for the files open on it.
fn renumber_copy(fs: &UnionFs, up: &UpperLayer, node: &Node, rel: &Path) -> io::Result<()> {
    let (parent, name) = {
        let s = node.state.read();
        (s.parent, s.name.clone())
    };
    let st = up.upper_stat(rel).ok_or_else(|| errno(libc::EIO))?;
    fs.tree.layers.unalias_ino(0, st.st_ino);
    let new_ino = fs.tree.layers.ino_for(0, st.st_ino);
    if new_ino == node.ino {
        return Err(errno(libc::EIO));
    }
    fs.tree.update_listing(parent, |l| {
        l.insert(DirEntry {
            name: name.clone(),
            ino: new_ino,
            kind: FileKind::RegularFile,
            layer: 0,
            dir_layers: Box::new([]),
        })
    });
    // The old node stays for its open files (pointed at the copy by the copy-up, so nothing
    // copies it up again); what it knew of the copy's xattrs is the new node's to learn.
    node.xattrs_changing();
    if let Some(inval) = fs.invalidator.get() {
        inval.entry(parent, &name);
    }
    tracing::debug!(rel = %rel.display(), old = node.ino, new = new_ino, "copy renumbered beside open readers");
    Ok(())
}

/// Whether a file opened read-write at creation can serve an open with `flags` as it is:
/// the synchronous and direct modes are fixed at open (and O_SYNC cannot be set later).
fn reusable_for(flags: i32) -> bool {
    flags & (libc::O_SYNC | libc::O_DSYNC | libc::O_DIRECT) == 0
}

/// Attributes of `ino` from an open handle (its name may be unlinked): `fh`, else any handle
/// of the inode.
pub(crate) fn getattr_open(fs: &UnionFs, ino: u64, fh: Option<u64>) -> Option<Attr> {
    let h = fh
        .and_then(|f| fs.handle(f))
        .or_else(|| fs.any_handle(ino))?;
    let st = sys::fstat(h.file.as_fd()).ok()?;
    let node = fs.tree.node(ino).ok()?;
    let layer = node.state.read().layer;
    Some(
        fs.tree
            .attr_from_stat(&node, layer, Path::new("/nonexistent"), st),
    )
}

/// Point every live node below `dir` (a directory just materialised in the upper) at the upper.
fn repoint_subtree(fs: &UnionFs, up: &UpperLayer, dir: &Path) {
    for node in fs.tree.all_nodes() {
        let Ok(rel) = fs.tree.path_of(node.ino) else {
            continue;
        };
        if !rel.starts_with(dir) || rel == dir {
            continue;
        }
        if let Some(st) = up.upper_stat(&rel) {
            fs.tree.layers.alias_ino(0, st.st_ino, node.ino);
            node.xattrs_changing();
            let mut s = node.state.write();
            s.layer = 0;
            if let Some(d) = s.dir.as_mut() {
                d.layers = vec![0];
                d.listing = None;
            }
        }
    }
}

/// `open` with write access or `O_TRUNC` (read-only opens are served by fs.rs).
pub(crate) fn open_writable(
    fs: &UnionFs,
    req: &Caller,
    ino: INodeNo,
    flags: OpenFlags,
    reply: ReplyOpen,
) {
    let up = match upper(fs) {
        Ok(u) => u,
        Err(e) => return reply.error(e),
    };
    let res = (|| {
        let rel = fs.tree.path_of(ino.0)?;
        // O_TRUNC: the lower data would be thrown away at once, so it is not copied.
        let truncating = flags.0 & libc::O_TRUNC != 0;
        if copy_up_beside_readers(fs, up, ino.0, &rel, !truncating)? {
            return Err(errno(libc::ESTALE));
        }
        // The copy just made is the file to open (no second open by name, no second look at
        // its mode).
        let copy =
            copy_up_node_open(fs, up, ino.0, &rel, !truncating)?.filter(|_| reusable_for(flags.0));
        let (fd, perm) = match copy {
            Some(c) => {
                if truncating {
                    up.truncate_fd(c.file.as_fd(), 0)?;
                }
                (c.file, Some(c.perm))
            }
            None => (up.open_write(&rel, flags.0 & !libc::O_APPEND)?, None),
        };
        if truncating && req.uid() != 0 {
            kill_privs(fs, up, req, ino.0, fd.as_fd())?;
        }
        Ok::<_, io::Error>((File::from(fd), perm))
    })();
    match res {
        Ok((file, perm)) => reply_open_upper(fs, ino.0, file, perm, reply),
        Err(e) => reply.error(err(e)),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn setattr(
    fs: &UnionFs,
    req: &Caller,
    ino: INodeNo,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
    _ctime: Option<SystemTime>,
    fh: Option<FileHandle>,
    _flags: Option<BsdFileFlags>,
    reply: ReplyAttr,
) {
    let up = match upper(fs) {
        Ok(u) => u,
        Err(e) => return reply.error(e),
    };
    let res = (|| {
        let rel = fs.tree.path_of(ino.0)?;
        // A truncate to zero needs none of the lower data.
        copy_up_node_open(fs, up, ino.0, &rel, size != Some(0))?;
        let map = |maps, id| container_to_host(maps, id).ok_or_else(|| errno(libc::EINVAL));
        // A truncate by an unprivileged caller drops setuid/setgid, as the kernel would.
        let mode = match (mode, size) {
            (None, Some(_)) if req.uid() != 0 => {
                let attr = fs.tree.getattr(ino.0)?;
                let perm = u32::from(attr.perm);
                Some(perm & !privs_to_kill(perm, attr.gid, Some(req))).filter(|m| *m != perm)
            }
            _ => mode,
        };
        let a = SetAttr {
            mode,
            uid: uid.map(|u| map(&fs.tree.ids.uid_map, u)).transpose()?,
            gid: gid.map(|g| map(&fs.tree.ids.gid_map, g)).transpose()?,
            size: None,
            atime: atime.map(time_spec),
            mtime: mtime.map(time_spec),
        };
        if let Some(size) = size {
            // Through the open file when there is one (it may be unlinked already).
            match fh.and_then(|f| fs.handle(f.0)).filter(|h| h.writable) {
                Some(h) => up.truncate_fd(h.file.as_fd(), size)?,
                None => drop(up.apply_attr(
                    &rel,
                    &SetAttr {
                        size: Some(size),
                        ..Default::default()
                    },
                )?),
            }
        }
        if !rel.as_os_str().is_empty() {
            let node = fs.tree.node(ino.0)?;
            let plain = fs.tree.no_xattrs(&node);
            if let Some(attr) = set_times_open(fs, &node, &a, fh, plain) {
                return attr;
            }
            // An owner or mode change may go to override_stat (rootless).
            let may_write_xattr = a.uid.is_some() || a.gid.is_some() || a.mode.is_some();
            if may_write_xattr {
                node.xattrs_changing();
            }
            let epoch = node.xattr_epoch();
            let done = up.apply_attr_known(&rel, &a, plain)?;
            if plain && may_write_xattr && done.over.is_none() {
                node.mark_upper_plain(epoch);
            }
            return Ok(fs.tree.attr_with_override(&node, done.st, done.over));
        } else if a.mode.is_some()
            || a.uid.is_some()
            || a.gid.is_some()
            || a.atime.is_some()
            || a.mtime.is_some()
        {
            set_root_attr(up, &a)?;
        }
        fs.tree.getattr(ino.0)
    })();
    match res {
        Ok(attr) => reply.attr(&fs.ttl(), &fattr(&attr)),
        Err(e) => reply.error(err(e)),
    }
}

/// A change of times only (`touch` of an open file, `futimens`) made through a file open for
/// writing on the inode, if there is one: its name is not resolved again. `None`: not such a
/// change, or no such file.
fn set_times_open(
    fs: &UnionFs,
    node: &Node,
    a: &SetAttr,
    fh: Option<FileHandle>,
    plain: bool,
) -> Option<io::Result<Attr>> {
    let times_only = a.mode.is_none() && a.uid.is_none() && a.gid.is_none() && a.size.is_none();
    if !times_only || (a.atime.is_none() && a.mtime.is_none()) {
        return None;
    }
    let h = fh
        .and_then(|f| fs.handle(f.0))
        .filter(|h| h.writable && h.ino == node.ino)
        .or_else(|| fs.writable_handle(node.ino))?;
    let fd = h.file.as_fd();
    let done = (|| {
        let omit = TimeSpec::Omit;
        sys::futimens(fd, a.atime.unwrap_or(omit), a.mtime.unwrap_or(omit))?;
        let st = sys::fstat(fd)?;
        let over = if plain { None } else { meta::fd_override(fd) };
        Ok(fs.tree.attr_with_override(node, st, over))
    })();
    Some(done)
}

fn set_root_attr(up: &UpperLayer, a: &SetAttr) -> io::Result<()> {
    let fd = sys::open_dir(up.root())?;
    if let Some(m) = a.mode {
        sys::fchmod(fd.as_fd(), m & 0o7777)?;
    }
    if a.uid.is_some() || a.gid.is_some() {
        sys::lchownat(
            fd.as_fd(),
            OsStr::new(""),
            a.uid.unwrap_or(u32::MAX),
            a.gid.unwrap_or(u32::MAX),
        )?;
    }
    if a.atime.is_some() || a.mtime.is_some() {
        sys::futimens(
            fd.as_fd(),
            a.atime.unwrap_or(TimeSpec::Omit),
            a.mtime.unwrap_or(TimeSpec::Omit),
        )?;
    }
    Ok(())
}

/// Run `make` to create `name` in `parent`, then answer with the new entry.
fn create_entry(
    fs: &UnionFs,
    req: &Caller,
    parent: INodeNo,
    name: &OsStr,
    reply: ReplyEntry,
    make: impl FnOnce(&UpperLayer, &Path, u32, u32, bool) -> io::Result<()>,
) {
    let up = match upper(fs) {
        Ok(u) => u,
        Err(e) => return reply.error(e),
    };
    let res = (|| {
        let rel = new_name(fs, parent.0, name)?;
        let (uid, gid, setgid) = owner_for(fs, req, parent.0)?;
        make(up, &rel, uid, gid, setgid)?;
        refresh(
            fs,
            up,
            Some(parent.0),
            rel.parent().unwrap_or(Path::new("")),
        );
        add_to_listing(fs, up, parent.0, name, &rel);
        Ok::<_, io::Error>(())
    })();
    match res {
        Ok(()) => reply_new_entry(fs, parent.0, name, reply),
        Err(e) => reply.error(err(e)),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn mknod(
    fs: &UnionFs,
    req: &Caller,
    parent: INodeNo,
    name: &OsStr,
    mode: u32,
    umask: u32,
    rdev: u32,
    reply: ReplyEntry,
) {
    if fs.opts.flags.iter().any(|f| f == "nodev")
        && matches!(mode & libc::S_IFMT, libc::S_IFCHR | libc::S_IFBLK)
    {
        return reply.error(Errno::from_i32(libc::EPERM));
    }
    create_entry(fs, req, parent, name, reply, |up, rel, uid, gid, _| {
        up.mknod(
            rel,
            &NewAttr {
                mode: (mode & libc::S_IFMT) | (mode & 0o7777 & !umask),
                uid,
                gid,
                rdev: rdev as u64,
            },
        )
    })
}

pub(crate) fn mkdir(
    fs: &UnionFs,
    req: &Caller,
    parent: INodeNo,
    name: &OsStr,
    mode: u32,
    umask: u32,
    reply: ReplyEntry,
) {
    create_entry(fs, req, parent, name, reply, |up, rel, uid, gid, setgid| {
        let sgid = if setgid { libc::S_ISGID } else { 0 };
        up.mkdir(
            rel,
            &NewAttr {
                mode: (mode & 0o7777 & !umask) | sgid,
                uid,
                gid,
                rdev: 0,
            },
        )
    })
}

fn remove(fs: &UnionFs, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
    let up = match upper(fs) {
        Ok(u) => u,
        Err(e) => return reply.error(e),
    };
    let res = (|| {
        let rel = fs.tree.path_of(parent.0)?.join(name);
        let found = up.present(&rel, lower_in_view(fs, up, parent.0, &rel))?;
        // One name of a hard-linked file: its node (looked up only then) needs another name.
        let linked = !dir && found.st.st_nlink > 1;
        let gone = linked
            .then(|| child_ino(fs, parent.0, name))
            .flatten()
            .and_then(|i| fs.tree.node(i).ok());
        up.remove_present(&rel, dir, found)?;
        if let Some(node) = gone {
            // A hard link loses one name: the node answers to another from now on, and the
            // removal copied a lower link group up, so it points at the upper too.
            fs.tree.unlinked(&node, parent.0, name);
            if let Ok(now) = fs.tree.path_of(node.ino) {
                refresh(fs, up, Some(node.ino), &now);
            }
        }
        refresh(
            fs,
            up,
            Some(parent.0),
            rel.parent().unwrap_or(Path::new("")),
        );
        fs.tree.update_listing(parent.0, |l| {
            l.remove(name);
        });
        if linked {
            // The other names of a hard-linked file may have moved to the upper.
            fs.tree.invalidate_all_listings();
        }
        Ok::<_, io::Error>(())
    })();
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(err(e)),
    }
}

pub(crate) fn unlink(
    fs: &UnionFs,
    _req: &Caller,
    parent: INodeNo,
    name: &OsStr,
    reply: ReplyEmpty,
) {
    remove(fs, parent, name, false, reply)
}

pub(crate) fn rmdir(fs: &UnionFs, _req: &Caller, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
    remove(fs, parent, name, true, reply)
}

pub(crate) fn symlink(
    fs: &UnionFs,
    req: &Caller,
    parent: INodeNo,
    link_name: &OsStr,
    target: &Path,
    reply: ReplyEntry,
) {
    create_entry(fs, req, parent, link_name, reply, |up, rel, uid, gid, _| {
        up.symlink(rel, target, uid, gid)
    })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn rename(
    fs: &UnionFs,
    _req: &Caller,
    parent: INodeNo,
    name: &OsStr,
    newparent: INodeNo,
    newname: &OsStr,
    flags: RenameFlags,
    reply: ReplyEmpty,
) {
    let up = match upper(fs) {
        Ok(u) => u,
        Err(e) => return reply.error(e),
    };
    let res = (|| {
        if newname.as_bytes().starts_with(b".wh.") {
            return Err(errno(libc::EINVAL));
        }
        let src = fs.tree.path_of(parent.0)?.join(name);
        let dst = fs.tree.path_of(newparent.0)?.join(newname);
        let moved = child_ino(fs, parent.0, name);
        let other = child_ino(fs, newparent.0, newname);
        up.rename(&src, &dst, flags.bits())?;
        // Point the moved nodes at their new names.
        let exchange = flags.bits() & sys::RENAME_EXCHANGE != 0;
        let set = |ino: Option<u64>, p: u64, n: &OsStr| {
            if let Some(node) = ino.and_then(|i| fs.tree.node(i).ok()) {
                fs.tree.reparent(&node, p, n.into());
                let mut s = node.state.write();
                s.layer = 0;
                if let Some(d) = s.dir.as_mut() {
                    d.layers = vec![0];
                    d.listing = None;
                }
            }
        };
        set(moved, newparent.0, newname);
        if exchange {
            set(other, parent.0, name);
        }
        for (p, n) in [(parent.0, name), (newparent.0, newname)] {
            changed_entry(fs, p, n);
        }
        refresh(
            fs,
            up,
            Some(parent.0),
            src.parent().unwrap_or(Path::new("")),
        );
        refresh(
            fs,
            up,
            Some(newparent.0),
            dst.parent().unwrap_or(Path::new("")),
        );
        repoint_subtree(fs, up, &dst);
        if exchange {
            repoint_subtree(fs, up, &src);
        }
        if let (Some(m), Some(st)) = (moved, up.upper_stat(&dst)) {
            fs.tree.layers.alias_ino(0, st.st_ino, m);
        }
        if let (true, Some(o), Some(st)) = (exchange, other, up.upper_stat(&src)) {
            fs.tree.layers.alias_ino(0, st.st_ino, o);
        }
        Ok(())
    })();
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(err(e)),
    }
}

pub(crate) fn link(
    fs: &UnionFs,
    _req: &Caller,
    ino: INodeNo,
    newparent: INodeNo,
    newname: &OsStr,
    reply: ReplyEntry,
) {
    let up = match upper(fs) {
        Ok(u) => u,
        Err(e) => return reply.error(e),
    };
    let res = (|| {
        let src = fs.tree.path_of(ino.0)?;
        let dst = new_name(fs, newparent.0, newname)?;
        copy_up_node(fs, up, ino.0, &src)?;
        up.link(&src, &dst)?;
        refresh(
            fs,
            up,
            Some(newparent.0),
            dst.parent().unwrap_or(Path::new("")),
        );
        add_to_listing(fs, up, newparent.0, newname, &dst);
        Ok::<_, io::Error>(())
    })();
    match res {
        Ok(()) => reply_new_entry(fs, newparent.0, newname, reply),
        Err(e) => reply.error(err(e)),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn write(
    fs: &UnionFs,
    req: &Caller,
    _ino: INodeNo,
    fh: FileHandle,
    offset: u64,
    data: &[u8],
    write_flags: WriteFlags,
    _flags: OpenFlags,
    _lock_owner: Option<LockOwner>,
    reply: ReplyWrite,
) {
    let up = match upper(fs) {
        Ok(u) => u,
        Err(e) => return reply.error(e),
    };
    let Some(h) = fs.handle(fh.0).filter(|h| h.writable) else {
        return reply.error(Errno::EBADF);
    };
    if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
        if let Err(e) = kill_privs(fs, up, req, h.ino, h.file.as_fd()) {
            return reply.error(err(e));
        }
    }
    match up.write_fd(h.file.as_fd(), data, offset as i64) {
        Ok(n) => reply.written(n as u32),
        Err(e) => reply.error(err(e)),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn create(
    fs: &UnionFs,
    req: &Caller,
    parent: INodeNo,
    name: &OsStr,
    mode: u32,
    umask: u32,
    flags: i32,
    reply: ReplyCreate,
) {
    let up = match upper(fs) {
        Ok(u) => u,
        Err(e) => return reply.error(e),
    };
    let res = (|| {
        let (rel, made) = match new_name(fs, parent.0, name) {
            Ok(r) => {
                let (uid, gid, _) = owner_for(fs, req, parent.0)?;
                let fd = up.create_file(
                    &r,
                    &NewAttr {
                        mode: libc::S_IFREG | (mode & 0o7777 & !umask),
                        uid,
                        gid,
                        rdev: 0,
                    },
                )?;
                refresh(fs, up, Some(parent.0), r.parent().unwrap_or(Path::new("")));
                let st = sys::fstat(fd.as_fd())?;
                add_stat_to_listing(fs, parent.0, name, &st);
                (r, Some((fd, st)))
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL == 0 => {
                (fs.tree.path_of(parent.0)?.join(name), None)
            }
            Err(e) => return Err(e),
        };
        match made.filter(|_| reusable_for(flags)) {
            // The file just made, still open: its stat and override (none unless the owner
            // had to go to override_stat) are what the view shows.
            Some((fd, st)) => {
                let node = fs.tree.lookup_node(parent.0, name)?;
                let epoch = node.xattr_epoch();
                // New files usually have no xattrs at all (else: ACLs inherited, security
                // labels, or the owner kept in override_stat); knowing it spares reading
                // them at every later setattr and getxattr.
                let names = sys::flistxattr(fd.as_fd())?;
                let over = if names.is_empty() {
                    node.mark_upper_plain(epoch);
                    None
                } else {
                    meta::fd_override(fd.as_fd())
                };
                let attr = fs.tree.attr_with_override(&node, st, over);
                Ok::<_, io::Error>((node.ino, File::from(fd), attr))
            }
            None => {
                let (node, _) = fs.tree.lookup(parent.0, name)?;
                copy_up_node(fs, up, node.ino, &rel)?;
                let fd = up.open_write(
                    &rel,
                    (flags & !(libc::O_APPEND | libc::O_ACCMODE)) | libc::O_RDWR,
                )?;
                let attr = fs.tree.getattr(node.ino)?;
                Ok((node.ino, File::from(fd), attr))
            }
        }
    })();
    match res {
        Ok((ino, file, attr)) => {
            let id = if writes_may_bypass(fs, mode & 0o7777) {
                fs.backing_id(ino, || reply.open_backing(file.as_fd()))
            } else {
                None
            };
            let fh = FileHandle(fs.add_handle(Handle {
                ino,
                file,
                writable: true,
                passthrough: id.is_some(),
            }));
            let (ttl, gen, flags) = (fs.ttl(), Generation(0), FopenFlags::empty());
            match id {
                Some(id) => reply.created_passthrough(&ttl, &fattr(&attr), gen, fh, flags, &id),
                None => reply.created(&ttl, &fattr(&attr), gen, fh, flags),
            }
        }
        Err(e) => reply.error(err(e)),
    }
}

/// FLUSH (sent at every close) has nothing to do here: data goes to the backing file at each
/// write, and locks stay in the kernel (no FUSE_POSIX_LOCKS). ENOSYS tells the kernel so; it
/// then stops sending FLUSH, and `close` no longer waits for a round trip.
pub(crate) fn flush(
    _fs: &UnionFs,
    _req: &Caller,
    _ino: INodeNo,
    _fh: FileHandle,
    _lock_owner: LockOwner,
    reply: ReplyEmpty,
) {
    reply.error(Errno::ENOSYS)
}

pub(crate) fn fsync(
    fs: &UnionFs,
    _req: &Caller,
    _ino: INodeNo,
    fh: FileHandle,
    datasync: bool,
    reply: ReplyEmpty,
) {
    if fs.opts.volatile {
        return reply.ok();
    }
    let Some(h) = fs.handle(fh.0) else {
        return reply.error(Errno::EBADF);
    };
    match sys::fsync(h.file.as_fd(), datasync) {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(err(e)),
    }
}

pub(crate) fn fsyncdir(
    fs: &UnionFs,
    _req: &Caller,
    ino: INodeNo,
    _fh: FileHandle,
    datasync: bool,
    reply: ReplyEmpty,
) {
    if fs.opts.volatile || fs.read_only() {
        return reply.ok();
    }
    let res = fs.tree.backing(ino.0).and_then(|(layer, rel)| {
        let fd = sys::open_dir(&fs.tree.layers.get(layer).abs(&rel))?;
        sys::fsync(fd.as_fd(), datasync)
    });
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(err(e)),
    }
}

fn xattr_change(
    fs: &UnionFs,
    ino: INodeNo,
    name: &OsStr,
    reply: ReplyEmpty,
    change: impl FnOnce(&UpperLayer, &Path, &str) -> io::Result<()>,
) {
    let up = match upper(fs) {
        Ok(u) => u,
        Err(e) => return reply.error(e),
    };
    let Some(name) = name.to_str() else {
        return reply.error(Errno::from_i32(libc::EINVAL));
    };
    let res = (|| {
        let rel = fs.tree.path_of(ino.0)?;
        if rel.as_os_str().is_empty() {
            return change(up, &rel, name);
        }
        copy_up_node(fs, up, ino.0, &rel)?;
        fs.tree.node(ino.0)?.xattrs_changing();
        change(up, &rel, name)
    })();
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(err(e)),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn setxattr(
    fs: &UnionFs,
    _req: &Caller,
    ino: INodeNo,
    name: &OsStr,
    value: &[u8],
    flags: i32,
    _position: u32,
    reply: ReplyEmpty,
) {
    xattr_change(fs, ino, name, reply, |up, rel, name| {
        let present = sys::lgetxattr(&up.upath(rel), name)?.is_some();
        if flags & libc::XATTR_CREATE != 0 && present {
            return Err(errno(libc::EEXIST));
        }
        if flags & libc::XATTR_REPLACE != 0 && !present {
            return Err(errno(libc::ENODATA));
        }
        up.set_xattr(rel, name, value)
    })
}

pub(crate) fn removexattr(
    fs: &UnionFs,
    _req: &Caller,
    ino: INodeNo,
    name: &OsStr,
    reply: ReplyEmpty,
) {
    xattr_change(fs, ino, name, reply, |up, rel, name| {
        up.remove_xattr(rel, name)
    })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn fallocate(
    fs: &UnionFs,
    _req: &Caller,
    _ino: INodeNo,
    fh: FileHandle,
    offset: u64,
    length: u64,
    mode: i32,
    reply: ReplyEmpty,
) {
    let up = match upper(fs) {
        Ok(u) => u,
        Err(e) => return reply.error(e),
    };
    let Some(h) = fs.handle(fh.0).filter(|h| h.writable) else {
        return reply.error(Errno::EBADF);
    };
    match up.fallocate_fd(h.file.as_fd(), mode, offset as i64, length as i64) {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(err(e)),
    }
}

/// `SEEK_DATA`/`SEEK_HOLE` (and the others) on the backing file of `fh`.
pub(crate) fn lseek(
    fs: &UnionFs,
    _req: &Caller,
    _ino: INodeNo,
    fh: FileHandle,
    offset: i64,
    whence: i32,
    reply: ReplyLseek,
) {
    let Some(h) = fs.handle(fh.0) else {
        return reply.error(Errno::EBADF);
    };
    match sys::lseek(h.file.as_fd(), offset, whence) {
        Ok(o) => reply.offset(o),
        Err(e) => reply.error(err(e)),
    }
}

/// In-kernel copy between two open files of the view (quota charged for the growth).
#[allow(clippy::too_many_arguments)]
pub(crate) fn copy_file_range(
    fs: &UnionFs,
    _req: &Caller,
    _ino_in: INodeNo,
    fh_in: FileHandle,
    offset_in: u64,
    _ino_out: INodeNo,
    fh_out: FileHandle,
    offset_out: u64,
    len: u64,
    _flags: CopyFileRangeFlags,
    reply: ReplyWrite,
) {
    let up = match upper(fs) {
        Ok(u) => u,
        Err(e) => return reply.error(e),
    };
    let (Some(hi), Some(ho)) = (
        fs.handle(fh_in.0),
        fs.handle(fh_out.0).filter(|h| h.writable),
    ) else {
        return reply.error(Errno::EBADF);
    };
    let res = (|| {
        let size = sys::fstat(ho.file.as_fd())?.st_size as u64;
        let len = len.min(u32::MAX as u64 / 2);
        let growth = (offset_out + len).saturating_sub(size);
        up.quota.reserve(growth)?;
        let (mut oi, mut oo) = (offset_in as i64, offset_out as i64);
        let r = sys::copy_file_range(
            hi.file.as_fd(),
            &mut oi,
            ho.file.as_fd(),
            &mut oo,
            len as usize,
        );
        let after = sys::fstat(ho.file.as_fd())
            .map(|s| s.st_size as u64)
            .unwrap_or(size);
        up.quota.release(growth);
        up.quota.resized(size, after);
        r
    })();
    match res {
        Ok(n) => reply.written(n as u32),
        Err(e) => reply.error(err(e)),
    }
}
