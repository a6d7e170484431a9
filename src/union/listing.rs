//! Merged directory listings: one name per entry, in readdir order, with a name index, and
//! [`merge_dir`], the one definition of how layers merge into a directory.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use crate::layer::whiteout;
use crate::sys;
use crate::union::attr::FileKind;
use crate::union::layers::{LayerIdx, Layers};

/// One name in a merged directory. Kept small: every directory listed so far keeps one per
/// name (most of the memory of a tree walk).
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// Shared with the node of the entry (one copy of the name, not two).
    pub name: Arc<OsStr>,
    pub ino: u64,
    /// Type of the visible entry as the directory reports it (`d_type`).
    pub kind: FileKind,
    /// Layer holding the visible entry.
    pub layer: LayerIdx,
    /// For directories: the layers contributing to it, topmost first (before opaque checks of
    /// the child itself). Empty for anything else.
    pub dir_layers: Box<[LayerIdx]>,
}

impl DirEntry {
    /// The entry `name` as one layer holds it: a directory made up of that layer only so far
    /// (the merge adds the layers below it).
    pub fn of_layer(name: Arc<OsStr>, ino: u64, kind: FileKind, layer: LayerIdx) -> DirEntry {
        let dir_layers: Box<[LayerIdx]> = if kind == FileKind::Directory {
            Box::new([layer])
        } else {
            Box::default()
        };
        DirEntry {
            name,
            ino,
            kind,
            layer,
            dir_layers,
        }
    }
}

/// A merged directory: entries in readdir order plus their positions sorted by name (a
/// name index that does not store every name a second time: listings are most of the memory).
#[derive(Debug, Clone, Default)]
pub struct Listing {
    entries: Vec<DirEntry>,
    by_name: Vec<u32>,
}

impl Listing {
    #[cfg(test)]
    fn new(entries: Vec<DirEntry>) -> Listing {
        let mut by_name: Vec<u32> = (0..entries.len() as u32).collect();
        sort_by_name(&entries, &mut by_name);
        Listing { entries, by_name }
    }

    /// Position in `by_name` of `name` (`Err`: where it would go).
    fn find(&self, name: &OsStr) -> Result<usize, usize> {
        self.by_name
            .binary_search_by(|i| self.entries[*i as usize].name.as_ref().cmp(name))
    }

    pub fn entries(&self) -> &[DirEntry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, name: &OsStr) -> Option<&DirEntry> {
        let pos = self.find(name).ok()?;
        Some(&self.entries[self.by_name[pos] as usize])
    }

    /// Add or replace an entry (write path).
    pub fn insert(&mut self, e: DirEntry) {
        match self.find(&e.name) {
            Ok(pos) => self.entries[self.by_name[pos] as usize] = e,
            Err(pos) => {
                self.by_name.insert(pos, self.entries.len() as u32);
                self.entries.push(e);
            }
        }
    }

    /// Record that the entry `name` now lives in the upper layer (index 0) after a copy-up;
    /// its number stays (write path).
    pub fn move_to_upper(&mut self, name: &OsStr) {
        let Ok(pos) = self.find(name) else { return };
        let e = &mut self.entries[self.by_name[pos] as usize];
        e.layer = 0;
        if e.kind == FileKind::Directory && e.dir_layers.first() != Some(&0) {
            e.dir_layers = std::iter::once(0)
                .chain(e.dir_layers.iter().copied())
                .collect();
        }
    }

    /// Remove an entry (write path); the last entry takes its place, so `rm -rf` of a huge
    /// directory costs no shifting of every later entry per name (readdir order is only
    /// promised per open handle, and each handle keeps the snapshot it started with).
    pub fn remove(&mut self, name: &OsStr) -> Option<DirEntry> {
        let pos = self.find(name).ok()?;
        let i = self.by_name.remove(pos) as usize;
        let last = self.entries.len() - 1;
        if i != last {
            if let Ok(moved) = self.find(&self.entries[last].name) {
                self.by_name[moved] = i as u32;
            }
        }
        Some(self.entries.swap_remove(i))
    }
}

/// Sort `idx` (positions in `entries`) by name.
fn sort_by_name(entries: &[DirEntry], idx: &mut [u32]) {
    // Stable sort: it finds the runs already in order (the layers merged before) and merges.
    idx.sort_by(|a, b| entries[*a as usize].name.cmp(&entries[*b as usize].name));
}

/// Merge directory `rel` of `layers` (indices into `all`, topmost first), honouring whiteouts
/// and opaque markers in every format. The one definition of a merged directory: the view and
/// the write path's lower-layer cache both use it.
pub fn merge_dir(all: &Layers, rel: &Path, layers: &[LayerIdx]) -> io::Result<Listing> {
    let mut entries: Vec<DirEntry> = Vec::new();
    // Per entry: whether lower layers may still add to it (a directory nothing has ended yet).
    let mut open: Vec<bool> = Vec::new();
    // Positions in `entries` sorted by name, over the layers merged so far: the lookup for the
    // layers below and then the listing's own index (no second copy of every name).
    let mut by_name: Vec<u32> = Vec::new();
    // Names whited out with nothing above them: hidden in every layer below (sorted).
    let mut hidden: Vec<Box<OsStr>> = Vec::new();
    let find = |entries: &[DirEntry], by_name: &[u32], name: &OsStr| {
        by_name
            .binary_search_by(|i| entries[*i as usize].name.as_ref().cmp(name))
            .ok()
            .map(|p| by_name[p] as usize)
    };
    for (pos, &li) in layers.iter().enumerate() {
        let layer = all.get(li);
        let mut opaque = false;
        let mut whiteouts: Vec<Box<OsStr>> = Vec::new();
        let above = entries.len();
        // One entry of this layer's directory as readdir gives it; `stat_child` answers for
        // the types readdir leaves open.
        let mut visit = |name: &OsStr,
                         d_ino: u64,
                         d_type: u8,
                         stat_child: &dyn Fn(&OsStr) -> io::Result<libc::stat>|
         -> io::Result<()> {
            let kind = match whiteout::classify(name) {
                whiteout::NameKind::OpaqueMarker => {
                    opaque = true;
                    return Ok(());
                }
                whiteout::NameKind::Internal | whiteout::NameKind::Invalid => return Ok(()),
                whiteout::NameKind::Whiteout(t) => {
                    whiteouts.push(t.into());
                    return Ok(());
                }
                whiteout::NameKind::Plain => match FileKind::of_dtype(d_type) {
                    Some(k) => k,
                    None => {
                        // DT_CHR may be a 0/0 whiteout; DT_UNKNOWN needs a stat anyway.
                        let st = match stat_child(name) {
                            Ok(st) => st,
                            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                            Err(err) => return Err(err),
                        };
                        if whiteout::is_whiteout_device(&st) {
                            whiteouts.push(name.into());
                            return Ok(());
                        }
                        FileKind::of_mode(st.st_mode)
                    }
                },
            };
            let is_dir = kind == FileKind::Directory;
            if above > 0 || !hidden.is_empty() {
                if let Some(i) = find(&entries, &by_name, name) {
                    // A directory above: a lower directory merges in, anything else ends it.
                    if open[i] {
                        if is_dir {
                            let mut v = std::mem::take(&mut entries[i].dir_layers).into_vec();
                            v.push(li);
                            entries[i].dir_layers = v.into_boxed_slice();
                        } else {
                            open[i] = false;
                        }
                    }
                    return Ok(());
                }
                if hidden.binary_search_by(|h| h.as_ref().cmp(name)).is_ok() {
                    return Ok(());
                }
            }
            entries.push(DirEntry::of_layer(
                name.into(),
                all.ino_for(li, d_ino),
                kind,
                li,
            ));
            open.push(is_dir);
            Ok(())
        };
        let dfd = match &layer.tar {
            Some(t) => {
                let Some(dir) = t.dir(rel) else { continue };
                let stat_child = |name: &OsStr| t.stat(&rel.join(name));
                t.each_child(dir, |name, ino, dt| visit(name, ino, dt, &stat_child))?;
                None
            }
            None => {
                // Gone from this layer (only the upper can change under us): skip it.
                let Some(dfd) = sys::open_dir_if_present(layer.fd(), rel)? else {
                    continue;
                };
                let stat_child = |name: &OsStr| sys::fstatat(dfd.as_fd(), Path::new(name));
                // dfd was just opened: read it directly (its offset is not needed after this).
                sys::read_dirents(dfd.as_fd(), |name, d_ino, d_type| {
                    visit(name, d_ino, d_type, &stat_child)
                })?;
                Some(dfd)
            }
        };
        by_name.extend(above as u32..entries.len() as u32);
        sort_by_name(&entries, &mut by_name);
        // A whiteout ends its name for the layers below (a same-layer entry stays visible).
        for w in whiteouts {
            match find(&entries, &by_name, &w) {
                Some(i) => open[i] = false,
                None => hidden.push(w),
            }
        }
        hidden.sort_unstable();
        if opaque || pos + 1 == layers.len() {
            break;
        }
        if dfd.is_some_and(|d| whiteout::fd_has_opaque_xattr(d.as_fd())) {
            break;
        }
    }
    entries.shrink_to_fit();
    Ok(Listing { entries, by_name })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_index_follows_changes() {
        let e = |n: &str, ino| DirEntry {
            name: OsStr::new(n).into(),
            ino,
            kind: FileKind::RegularFile,
            layer: 0,
            dir_layers: Box::default(),
        };
        let mut l = Listing::new(vec![e("c", 1), e("a", 2), e("b", 3)]);
        assert_eq!(l.get(OsStr::new("a")).map(|e| e.ino), Some(2));
        assert_eq!(l.remove(OsStr::new("c")).map(|e| e.ino), Some(1));
        assert!(l.get(OsStr::new("c")).is_none());
        l.insert(e("aa", 4));
        l.insert(e("b", 5));
        let got: Vec<_> = ["a", "aa", "b"]
            .iter()
            .map(|n| l.get(OsStr::new(n)).map(|e| e.ino))
            .collect();
        assert_eq!(got, [Some(2), Some(4), Some(5)]);
        // Removing c moved the last entry (b) into its place.
        let order: Vec<_> = l.entries().iter().map(|e| e.ino).collect();
        assert_eq!(order, [5, 2, 4]);
        // Many removals in a scattered order: every other name is still found, with its entry.
        let names: Vec<String> = (0..300)
            .map(|i| format!("n{}", (i * 7919) % 1000))
            .collect();
        let mut big = Listing::new(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| e(n, i as u64))
                .collect(),
        );
        for (i, n) in names.iter().enumerate().filter(|(i, _)| i % 3 != 1) {
            assert_eq!(big.remove(OsStr::new(n)).map(|e| e.ino), Some(i as u64));
        }
        assert_eq!(big.len(), 100);
        for (i, n) in names.iter().enumerate() {
            let want = (i % 3 == 1).then_some(i as u64);
            assert_eq!(big.get(OsStr::new(n)).map(|e| e.ino), want, "{n}");
        }
    }
}
