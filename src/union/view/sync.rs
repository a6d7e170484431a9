//! Bringing the in-memory tree in line after a change of the upper layer: node states,
//! cached listings, inode aliases, and the kernel's cached entries.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::union::attr::FileKind;
use crate::union::listing::DirEntry;
use crate::union::tree::{NodeState, ROOT_INO};
use crate::union::upper::UpperLayer;
use crate::union::view::state::View;

pub(super) fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// After a change at `rel` (the entry of node `ino`, if the kernel knows it): every node from
/// it up to the root that now lives in the upper layer is pointed there. The walk stops at the
/// first node already in the upper: its ancestors are too (an upper entry's parents always are).
pub(super) fn refresh(fs: &View, up: &UpperLayer, ino: Option<u64>, rel: &Path) {
    refresh_known(fs, up, ino, rel, None, false)
}

/// [`refresh`] where the caller may know the upper inode number of `rel` (it just made it).
/// `copied_path`: the change was a copy-up of `rel`, so the only new upper entries are the
/// ones on that path, which this walk records in their parents' listings: the cached listing
/// of a directory that just got its upper copy stays right and is kept (merging it again
/// from every layer cost a copy-up storm ~10% of its time).
pub(super) fn refresh_known(
    fs: &View,
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

/// Whether a node's entry (and, for a directory, its merged contents) already include the upper.
pub(super) fn node_in_upper(s: &NodeState) -> bool {
    s.layer == 0 && !s.dir.as_ref().is_some_and(|d| d.layers.first() != Some(&0))
}

/// Put the upper entry just made at `rel` (`name` in directory `parent`) into the cached
/// listing of `parent`, so the next lookup does not merge the directory again.
pub(super) fn add_to_listing(fs: &View, up: &UpperLayer, parent: u64, name: &OsStr, rel: &Path) {
    match up.upper_stat(rel) {
        Some(st) => add_stat_to_listing(fs, parent, name, &st),
        None => fs.tree.invalidate_listing(parent),
    }
}

/// [`add_to_listing`] of an entry whose stat the caller has.
pub(super) fn add_stat_to_listing(fs: &View, parent: u64, name: &OsStr, st: &libc::stat) {
    let kind = FileKind::of_mode(st.st_mode);
    let ino = fs.tree.layers.ino_for(0, st.st_ino);
    // A node the kernel still holds under this number (a deleted file whose inode number the
    // filesystem gave the new entry) knows nothing about the new entry's xattrs.
    if let Ok(n) = fs.tree.node(ino) {
        n.xattrs_changing();
    }
    // New (or re-created over a whiteout, hence opaque): nothing below shows through.
    let entry = DirEntry::of_layer(name.into(), ino, kind, 0);
    fs.tree.update_listing(parent, |l| l.insert(entry));
}

/// The node number the listing of `parent` shows for `name`.
pub(super) fn child_ino(fs: &View, parent: u64, name: &OsStr) -> Option<u64> {
    fs.tree.listing(parent).ok()?.get(name).map(|e| e.ino)
}

/// Forget the cached listing of `parent` and tell the kernel `name` changed there.
pub(super) fn changed_entry(fs: &View, parent: u64, name: &OsStr) {
    fs.tree.invalidate_listing(parent);
    fs.invalidate_entry(parent, name);
}

/// Make sure `parent` is a directory and `name` a valid new name in it.
pub(super) fn new_name(fs: &View, parent: u64, name: &OsStr) -> io::Result<PathBuf> {
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

/// Point every live node below `dir` (a directory just materialised in the upper) at the upper.
pub(super) fn repoint_subtree(fs: &View, up: &UpperLayer, dir: &Path) {
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
