//! Copy-up as the view drives it: deciding which requests copy much (and so run off the
//! reader threads), copying a node up and pointing the tree at the copy, and the special
//! case of a lower file that passthrough readers hold open.

use std::io;
use std::path::Path;

use crate::sys;
use crate::union::attr::FileKind;
use crate::union::background::LONG_COPY_BYTES;
use crate::union::listing::DirEntry;
use crate::union::lowers::LowerEntry;
use crate::union::tree::{Node, ROOT_INO};
use crate::union::upper::copyup::OpenCopy;
use crate::union::upper::{CopyUp, Known, UpperLayer};
use crate::union::view::state::View;
use crate::union::view::sync::{child_ino, errno, node_in_upper, refresh_known};

/// Whether a change of `ino` starts by copying much data up: a lower regular file of at
/// least [`LONG_COPY_BYTES`], or (`with_tree`, for a rename) a directory with lower contents,
/// which a rename copies up whole. Such requests are served off the reader threads.
pub(super) fn copies_much(fs: &View, ino: u64, with_tree: bool) -> bool {
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
            let l = fs.tree.layers.get(layer);
            match &l.tar {
                Some(t) => t.stat(&rel),
                None => l.at(&rel).and_then(size),
            }
            .is_ok_and(|st| st.st_size as u64 >= LONG_COPY_BYTES)
        }),
        FileKind::Directory => with_tree,
        _ => false,
    }
}

/// The lower entry backing `node` (at `rel`), as the tree resolved it; `None` when the node
/// is in the upper.
fn lower_backing(fs: &View, node: &Node, rel: &Path) -> Option<LowerEntry> {
    let layer = fs.tree.layers.get(node.state.read().layer);
    (!layer.upper).then(|| LowerEntry::of(layer, rel))
}

/// Copy `ino` (at `rel`) up; afterwards the tree and the passthrough bookkeeping know.
pub(super) fn copy_up_node(fs: &View, up: &UpperLayer, ino: u64, rel: &Path) -> io::Result<()> {
    copy_up_node_open(fs, up, ino, rel, true).map(drop)
}

/// [`copy_up_node`], handing back the regular file it copied still open read-write; without
/// `with_data` a regular lower file is copied empty (the caller truncates it).
pub(super) fn copy_up_node_open(
    fs: &View,
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
pub(super) fn copy_up_beside_readers(
    fs: &View,
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
pub(super) fn reopen_beside_readers(fs: &View, ino: u64) -> io::Result<bool> {
    if !fs.writer.blocks_passthrough(ino) || !fs.has_passthrough(ino) {
        return Ok(false);
    }
    let node = fs.tree.node(ino)?;
    if !is_named_file(fs, &node) || !node_in_upper(&node.state.read()) {
        return Ok(false);
    }
    let up = fs.upper()?;
    let rel = fs.tree.path_of(ino)?;
    renumber_copy(fs, up, &node, &rel)?;
    Ok(true)
}

/// A regular file (not the root) that its name in its directory still shows: only then can
/// the name be pointed at a new node.
fn is_named_file(fs: &View, node: &Node) -> bool {
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
fn renumber_copy(fs: &View, up: &UpperLayer, node: &Node, rel: &Path) -> io::Result<()> {
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
    fs.invalidate_entry(parent, &name);
    tracing::debug!(rel = %rel.display(), old = node.ino, new = new_ino, "copy renumbered beside open readers");
    Ok(())
}
