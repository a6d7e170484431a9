//! What the write path asks about the lower (read-only) layers of a path.
//!
//! Lower layers never change while mounted, so [`LowerStack`] merges each lower directory it is
//! asked about once (with [`merge_dir`], the same merge the view uses) and answers every later
//! question about paths below it from memory: a copy-up or deletion deep in the tree costs
//! hash look-ups, not a `stat` per layer and path component.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::union::attr::FileKind;
use dashmap::DashMap;
use parking_lot::Mutex;

use crate::union::layers::{Layer, LayerIdx, Layers};
use crate::union::listing::{merge_dir, Listing};
use crate::union::source::{Source, TarEntry};

/// A lower entry visible in the merged view: which layer holds it and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LowerEntry {
    /// Root directory of the layer holding the entry (a tar layer: its index file).
    pub layer: PathBuf,
    /// The entry's path on disk (`layer/rel`; of a tar layer, only a name).
    pub path: PathBuf,
    /// Set when the layer is a tar index: the entry is read from there.
    pub tar: Option<TarEntry>,
}

impl LowerEntry {
    /// The entry at `rel` of `layer`.
    pub fn of(layer: &Layer, rel: &Path) -> LowerEntry {
        LowerEntry {
            layer: layer.path.clone(),
            path: layer.abs(rel),
            tar: layer.tar.as_ref().map(|t| TarEntry {
                layer: t.clone(),
                rel: rel.to_path_buf(),
            }),
        }
    }

    /// Where a copy of it reads from.
    pub fn source(&self) -> Source {
        match &self.tar {
            Some(t) => Source::Tar {
                entry: t.clone(),
                path: self.path.clone(),
            },
            None => Source::Disk(self.path.clone()),
        }
    }

    pub fn lstat(&self) -> io::Result<libc::stat> {
        match &self.tar {
            Some(t) => t.layer.lstat(&t.rel),
            None => crate::sys::lstat(&self.path),
        }
    }
}

/// The lower layers as the write path sees them. Lower layers never change while mounted.
pub trait LowerView: Send + Sync {
    /// The topmost lower entry at `rel` (relative to the layer roots; "" is the root),
    /// honouring the lower layers' own whiteouts and opaque directories but not the upper's.
    fn lower_entry(&self, rel: &Path) -> Option<LowerEntry>;

    /// The names the lower layers show in directory `rel` (merged, markers and whited-out names
    /// removed). Empty when `rel` is not a lower directory; an error when one of its layers'
    /// directories cannot be read (EACCES for a rootless server): treating it as empty would
    /// let a rename or rmdir of it lose what it holds.
    fn lower_children(&self, rel: &Path) -> io::Result<Vec<OsString>>;

    /// The other paths (relative) of the same layer that are hard links of the lower file
    /// `entry` (which has `st_nlink > 1`).
    fn hardlink_peers(&self, entry: &LowerEntry) -> Vec<PathBuf>;
}

/// (dev, ino) of a multiply-linked file -> its relative paths in one layer.
type LinkMap = HashMap<(u64, u64), Vec<PathBuf>>;

/// The entry the lower layers show at a path: the layer holding it and, for a directory, the
/// layers that make it up (topmost first).
#[derive(Debug, Clone)]
struct Visible {
    layer: LayerIdx,
    is_dir: bool,
    dir_layers: Vec<LayerIdx>,
}

/// The lower layers of a mount, topmost first, with the merged directories asked about so far.
#[derive(Debug)]
pub struct LowerStack {
    layers: Arc<Layers>,
    /// Indices in `layers` of the lower layers, topmost first.
    order: Vec<LayerIdx>,
    /// Merged lower directories by relative path (never invalidated: lower layers are fixed).
    dirs: DashMap<PathBuf, Arc<Listing>>,
    /// Per layer root: (dev, ino) -> relative paths of files with several links. Built on first
    /// need (one walk of that layer), since hard links in image layers are rare.
    links: Mutex<HashMap<PathBuf, LinkMap>>,
}

impl LowerStack {
    /// The lower layers of an open mount (`layers` may include the upper: it is left out).
    pub fn over(layers: Arc<Layers>) -> LowerStack {
        let order = (0..layers.list.len())
            .filter(|i| !layers.get(*i).upper)
            .collect();
        LowerStack {
            layers,
            order,
            dirs: DashMap::new(),
            links: Mutex::default(),
        }
    }

    /// Open the lower layer directories `paths` (topmost first).
    pub fn open(paths: &[PathBuf]) -> io::Result<LowerStack> {
        let layers = Layers::open(None, paths).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(LowerStack::over(Arc::new(layers)))
    }

    /// The merged lower directory `rel`, made of `dir_layers`; merged on first use.
    fn dir(&self, rel: &Path, dir_layers: &[LayerIdx]) -> Option<Arc<Listing>> {
        self.try_dir(rel, dir_layers)
            .map_err(|e| tracing::debug!(rel = %rel.display(), %e, "lower directory unreadable"))
            .ok()
    }

    /// [`Self::dir`], with the reason when a layer's directory cannot be read.
    fn try_dir(&self, rel: &Path, dir_layers: &[LayerIdx]) -> io::Result<Arc<Listing>> {
        if let Some(l) = self.dirs.get(rel) {
            return Ok(l.clone());
        }
        let l = merge_dir(&self.layers, rel, dir_layers)?;
        Ok(self
            .dirs
            .entry(rel.to_path_buf())
            .or_insert_with(|| Arc::new(l))
            .clone())
    }

    /// What the lower layers show at `rel`, walking the cached directories from the root.
    fn visible(&self, rel: &Path) -> Option<Visible> {
        let mut cur = Visible {
            layer: *self.order.first()?,
            is_dir: true,
            dir_layers: self.order.clone(),
        };
        let mut at = PathBuf::new();
        for c in rel.components() {
            if !cur.is_dir {
                return None;
            }
            let name: &OsStr = c.as_os_str();
            let listing = self.dir(&at, &cur.dir_layers)?;
            let e = listing.get(name)?;
            cur = Visible {
                layer: e.layer,
                is_dir: e.kind == FileKind::Directory,
                dir_layers: e.dir_layers.to_vec(),
            };
            at.push(name);
        }
        Some(cur)
    }
}

impl LowerView for LowerStack {
    fn lower_entry(&self, rel: &Path) -> Option<LowerEntry> {
        let v = self.visible(rel)?;
        Some(LowerEntry::of(self.layers.get(v.layer), rel))
    }

    fn lower_children(&self, rel: &Path) -> io::Result<Vec<OsString>> {
        let Some(v) = self.visible(rel).filter(|v| v.is_dir) else {
            return Ok(Vec::new());
        };
        let listing = self.try_dir(rel, &v.dir_layers)?;
        Ok(listing
            .entries()
            .iter()
            .map(|e| e.name.to_os_string())
            .collect())
    }

    fn hardlink_peers(&self, entry: &LowerEntry) -> Vec<PathBuf> {
        let Ok(st) = entry.lstat() else {
            return Vec::new();
        };
        let mut links = self.links.lock();
        let map = links
            .entry(entry.layer.clone())
            .or_insert_with(|| match &entry.tar {
                Some(t) => t
                    .layer
                    .hard_links()
                    .into_iter()
                    .map(|(ino, paths)| ((t.layer.dev, ino), paths))
                    .collect(),
                None => scan_links(&entry.layer),
            });
        let Ok(me) = entry.path.strip_prefix(&entry.layer) else {
            return Vec::new();
        };
        map.get(&(st.st_dev, st.st_ino))
            .map(|v| v.iter().filter(|p| p.as_path() != me).cloned().collect())
            .unwrap_or_default()
    }
}

/// Map (dev, ino) of every multiply-linked regular file under `root` to its relative paths.
fn scan_links(root: &Path) -> LinkMap {
    let mut map = LinkMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(root.join(&rel)) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            let child = rel.join(e.file_name());
            if md.is_dir() {
                stack.push(child);
            } else if md.is_file() && md.nlink() > 1 {
                map.entry((md.dev(), md.ino())).or_default().push(child);
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn resolves_through_whiteouts_and_opaque_dirs() {
        let t = tempfile::tempdir().unwrap();
        let (top, mid, bot) = (
            t.path().join("top"),
            t.path().join("mid"),
            t.path().join("bot"),
        );
        for l in [&top, &mid, &bot] {
            fs::create_dir_all(l.join("d")).unwrap();
        }
        fs::write(bot.join("d/a"), "a").unwrap();
        fs::write(bot.join("d/b"), "b").unwrap();
        fs::write(bot.join("d/c"), "c").unwrap();
        fs::write(mid.join("d/.wh.a"), "").unwrap();
        fs::write(mid.join("d/c"), "c2").unwrap();
        fs::write(top.join("d/n"), "n").unwrap();
        fs::create_dir_all(mid.join("o")).unwrap();
        fs::write(mid.join("o/.wh..wh..opq"), "").unwrap();
        fs::create_dir_all(bot.join("o")).unwrap();
        fs::write(bot.join("o/hidden"), "").unwrap();
        let s = LowerStack::open(&[top.clone(), mid.clone(), bot.clone()]).unwrap();
        assert!(s.lower_entry(Path::new("d/a")).is_none());
        assert_eq!(
            s.lower_entry(Path::new("d/c")).unwrap().path,
            mid.join("d/c")
        );
        assert_eq!(s.lower_entry(Path::new("d")).unwrap().layer, top);
        let mut names = s.lower_children(Path::new("d")).unwrap();
        names.sort();
        assert_eq!(names, ["b", "c", "n"]);
        assert!(s.lower_children(Path::new("o")).unwrap().is_empty());
        assert!(s.lower_entry(Path::new("o/hidden")).is_none());
        assert!(s.lower_entry(Path::new("d/n/x")).is_none());
    }

    #[test]
    fn finds_hard_link_peers() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("x")).unwrap();
        fs::write(t.path().join("f"), "f").unwrap();
        fs::hard_link(t.path().join("f"), t.path().join("x/g")).unwrap();
        let s = LowerStack::open(&[t.path().to_path_buf()]).unwrap();
        let e = s.lower_entry(Path::new("f")).unwrap();
        assert_eq!(s.hardlink_peers(&e), [PathBuf::from("x/g")]);
    }
}
