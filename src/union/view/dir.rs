//! Directories: OPENDIR, READDIR, READDIRPLUS (with the stat-ahead thread), RELEASEDIR,
//! FSYNCDIR.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::sys;
use crate::union::attr::{Attr, FileKind};
use crate::union::layers::LayerIdx;
use crate::union::prefetch::Prefetcher;
use crate::union::tree::Node;
use crate::union::view::lookup::entry;
use crate::union::view::state::{DirHandle, View};
use crate::union::view::types::{Entry, Errno, OpenFlags, Opened, Reply};

/// Directories with fewer entries are stat-ed by the request alone (handing them to the
/// stat-ahead thread costs more than it saves).
const STAT_AHEAD_MIN: usize = 16;

/// Takes one READDIR entry: (number, offset of the next entry, kind, name); returns true
/// when the reply buffer is full (the entry was not added).
pub type DirSink<'a> = dyn FnMut(u64, u64, FileKind, &OsStr) -> bool + 'a;

/// Takes one READDIRPLUS entry: (name, offset of the next entry, entry); returns true when
/// the reply buffer is full (the entry was not added).
pub type DirPlusSink<'a> = dyn FnMut(&OsStr, u64, &Entry) -> bool + 'a;

impl View {
    pub fn opendir(&self, ino: u64) -> Reply<Opened> {
        let listing = self.tree.listing(ino)?;
        let fh = self.next_fh();
        self.dir_handles.insert(
            fh,
            Arc::new(DirHandle {
                listing,
                dirs: parking_lot::Mutex::new(HashMap::new()),
                front: Arc::new(AtomicUsize::new(0)),
            }),
        );
        // The kernel may keep the listing: every change to a directory goes through us.
        Ok(Opened {
            fh,
            flags: OpenFlags::CACHE_DIR | OpenFlags::KEEP_CACHE,
            backing: None,
        })
    }

    /// READDIR of `ino` from `offset`, entries to `add` until it is full.
    pub fn readdir(&self, ino: u64, fh: u64, offset: u64, add: &mut DirSink<'_>) -> Reply<()> {
        let Some(listing) = self.dir_handles.get(&fh).map(|h| h.listing.clone()) else {
            return Err(Errno::EBADF);
        };
        let parent = self.tree.node(ino)?.state.read().parent;
        let mut off = offset;
        while off < 2 {
            let (n, i) = if off == 0 { (".", ino) } else { ("..", parent) };
            if add(i, off + 1, FileKind::Directory, OsStr::new(n)) {
                return Ok(());
            }
            off += 1;
        }
        for (i, e) in listing
            .entries()
            .iter()
            .enumerate()
            .skip((off - 2) as usize)
        {
            if add(e.ino, i as u64 + 3, e.kind, &e.name) {
                break;
            }
        }
        Ok(())
    }

    /// READDIRPLUS of `ino` from `offset`: entries with attributes to `add` until it is full;
    /// each entry added holds a lookup.
    pub fn readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        add: &mut DirPlusSink<'_>,
    ) -> Reply<()> {
        let Some(h) = self.dir_handles.get(&fh).map(|h| h.clone()) else {
            return Err(Errno::EBADF);
        };
        let listing = &h.listing;
        let rel = self.tree.path_of(ino)?;
        let mut off = offset;
        while off < 2 {
            let target = if off == 0 {
                ino
            } else {
                self.tree.node(ino)?.state.read().parent
            };
            // The kernel ignores the attributes of "." and ".." in READDIRPLUS (it only shows
            // their numbers): no stat for them.
            let e = entry(Attr::bare(target, FileKind::Directory));
            let name = if off == 0 { "." } else { ".." };
            if add(OsStr::new(name), off + 1, &e) {
                return Ok(());
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
                    ino,
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
            let node = self.tree.get_or_insert(ino, e)?;
            let layer = node.state.read().layer;
            let Ok(attr) = self.child_attr(&mut dirs, &rel, &node, layer, &e.name) else {
                // Vanished (upper changed under us): skip it.
                self.tree.forget(node.ino, 1);
                continue;
            };
            if add(&e.name, i as u64 + 3, &entry(attr)) {
                // Not sent: the kernel holds no lookup for it.
                self.tree.forget(node.ino, 1);
                break;
            }
        }
        Ok(())
    }

    pub fn releasedir(&self, fh: u64) {
        if let Some((_, h)) = self.dir_handles.remove(&fh) {
            h.front.store(usize::MAX, Ordering::Relaxed);
        }
    }

    pub fn fsyncdir(&self, ino: u64, datasync: bool) -> Reply<()> {
        if self.opts.volatile || self.read_only() {
            return Ok(());
        }
        let (layer, rel) = self.tree.backing(ino)?;
        if self.tree.layers.get(layer).tar.is_some() {
            // A directory of a tar layer never changes: nothing to flush.
            return Ok(());
        }
        let fd = sys::open_dir(&self.tree.layers.get(layer).abs(&rel))?;
        Ok(sys::fsync(fd.as_fd(), datasync)?)
    }

    /// Attributes of a child of a directory being listed, using per-layer directory fds.
    fn child_attr(
        &self,
        dirs: &mut HashMap<LayerIdx, Option<OwnedFd>>,
        rel: &Path,
        node: &Node,
        layer: LayerIdx,
        name: &OsStr,
    ) -> io::Result<Attr> {
        let l = self.tree.layers.get(layer);
        if let Some(t) = &l.tar {
            let path = rel.join(name);
            return Ok(self.tree.tar_attr(node, t, &path, t.stat(&path)?));
        }
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
