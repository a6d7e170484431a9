//! Renames: RENAME and RENAME2 (`RENAME_NOREPLACE`, `RENAME_EXCHANGE`, `RENAME_WHITEOUT` as
//! the upper layer implements them). A rename that copies a lower directory up whole answers
//! from a thread of its own.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::sys;
use crate::union::view::copy::copies_much;
use crate::union::view::state::View;
use crate::union::view::sync::{changed_entry, child_ino, refresh, repoint_subtree};
use crate::union::view::types::{Errno, Reply};

/// [`copies_much`] for a rename: of what moves (both names for an exchange).
fn rename_copies_much(
    fs: &View,
    parent: u64,
    name: &OsStr,
    newparent: u64,
    newname: &OsStr,
    flags: u32,
) -> bool {
    let much = |p, n| child_ino(fs, p, n).is_some_and(|ino| copies_much(fs, ino, true));
    much(parent, name) || (flags & sys::RENAME_EXCHANGE != 0 && much(newparent, newname))
}

impl View {
    /// RENAME of `name` in `parent` to `newname` in `newparent` with renameat2(2) `flags`.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        done: impl FnOnce(Reply<()>) + Send + 'static,
    ) {
        let (name, newname) = (name.to_owned(), newname.to_owned());
        let long = rename_copies_much(self, parent, &name, newparent, &newname, flags);
        self.serve(long, move |fs| {
            done(fs.rename_now(parent, &name, newparent, &newname, flags))
        })
    }

    fn rename_now(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Reply<()> {
        let fs = self;
        let up = fs.upper()?;
        if newname.as_bytes().starts_with(b".wh.") {
            return Err(Errno::EINVAL);
        }
        let src = fs.tree.path_of(parent)?.join(name);
        let dst = fs.tree.path_of(newparent)?.join(newname);
        let moved = child_ino(fs, parent, name);
        let other = child_ino(fs, newparent, newname);
        let exchange = flags & sys::RENAME_EXCHANGE != 0;
        // A replaced upper inode with no other name: the filesystem may reuse it.
        let replaced = other
            .filter(|o| !exchange && Some(*o) != moved)
            .and_then(|_| up.upper_stat(&dst))
            .filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR || st.st_nlink <= 1)
            .map(|st| st.st_ino);
        up.rename(&src, &dst, flags)?;
        if let Some(st_ino) = replaced {
            fs.tree.layers.retire_upper_ino(st_ino, other);
        }
        // Point the moved nodes at their new names.
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
        set(moved, newparent, newname);
        if exchange {
            set(other, parent, name);
        }
        for (p, n) in [(parent, name), (newparent, newname)] {
            changed_entry(fs, p, n);
        }
        refresh(fs, up, Some(parent), src.parent().unwrap_or(Path::new("")));
        refresh(
            fs,
            up,
            Some(newparent),
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
    }
}
