//! Removal: UNLINK and RMDIR (whiteouts where a lower layer shows the name).

use std::ffi::OsStr;
use std::path::Path;

use crate::union::lowers::LowerEntry;
use crate::union::upper::UpperLayer;
use crate::union::view::state::View;
use crate::union::view::sync::{child_ino, refresh};
use crate::union::view::types::Reply;

/// The lower entry the view has at `rel` in the merged directory `parent`: none when that
/// directory merges no lower layer (upper only, or opaque), else what the lower layers show.
/// The tree knows what the upper hides, which spares a walk of the upper along `rel`.
fn lower_in_view(fs: &View, up: &UpperLayer, parent: u64, rel: &Path) -> Option<LowerEntry> {
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

impl View {
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Reply<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Reply<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Reply<()> {
        let fs = self;
        let up = fs.upper()?;
        let rel = fs.tree.path_of(parent)?.join(name);
        let found = up.present(&rel, lower_in_view(fs, up, parent, &rel))?;
        // One name of a hard-linked file: its node (looked up only then) needs another name.
        let linked = !dir && found.st.st_nlink > 1;
        let gone = linked
            .then(|| child_ino(fs, parent, name))
            .flatten()
            .and_then(|i| fs.tree.node(i).ok());
        // The last name of an upper inode: the filesystem may give the inode to a new file.
        let last = found
            .upper
            .filter(|st| dir || st.st_nlink <= 1)
            .map(|st| st.st_ino);
        let victim = last.and_then(|_| child_ino(fs, parent, name));
        up.remove_present(&rel, dir, found)?;
        if let Some(st_ino) = last {
            fs.tree.layers.retire_upper_ino(st_ino, victim);
        }
        if let Some(node) = gone {
            // A hard link loses one name: the node answers to another from now on, and the
            // removal copied a lower link group up, so it points at the upper too.
            fs.tree.unlinked(&node, parent, name);
            if let Ok(now) = fs.tree.path_of(node.ino) {
                refresh(fs, up, Some(node.ino), &now);
            }
        }
        refresh(fs, up, Some(parent), rel.parent().unwrap_or(Path::new("")));
        fs.tree.update_listing(parent, |l| {
            l.remove(name);
        });
        if linked {
            // The other names of a hard-linked file may have moved to the upper.
            fs.tree.invalidate_all_listings();
        }
        Ok(())
    }
}
