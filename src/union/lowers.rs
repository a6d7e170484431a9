//! What the write path asks about the lower (read-only) layers of a path.
//!
//! The union tree answers these from its in-memory cache; [`LowerStack`] answers them straight
//! from the layer directories (used by unit tests and by anything without a tree at hand).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::layer::whiteout::{self, NameKind};
use crate::sys;

/// A lower entry visible in the merged view: which layer holds it and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LowerEntry {
    /// Root directory of the layer holding the entry.
    pub layer: PathBuf,
    /// The entry's path on disk (`layer/rel`).
    pub path: PathBuf,
}

/// The lower layers as the write path sees them. Lower layers never change while mounted.
pub trait LowerView: Send + Sync {
    /// The topmost lower entry at `rel` (relative to the layer roots; "" is the root),
    /// honouring the lower layers' own whiteouts and opaque directories but not the upper's.
    fn lower_entry(&self, rel: &Path) -> Option<LowerEntry>;

    /// The names the lower layers show in directory `rel` (merged, markers and whited-out names
    /// removed). Empty when `rel` is not a lower directory.
    fn lower_children(&self, rel: &Path) -> Vec<OsString>;

    /// The other paths (relative) of the same layer that are hard links of the lower file
    /// `entry` (which has `st_nlink > 1`).
    fn hardlink_peers(&self, entry: &LowerEntry) -> Vec<PathBuf>;
}

/// (dev, ino) of a multiply-linked file -> its relative paths in one layer.
type LinkMap = HashMap<(u64, u64), Vec<PathBuf>>;

/// The lower layers of a mount, topmost first, read straight from disk.
#[derive(Debug, Default)]
pub struct LowerStack {
    layers: Vec<PathBuf>,
    /// Per layer root: (dev, ino) -> relative paths of files with several links. Built on first
    /// need (one walk of that layer), since hard links in image layers are rare.
    links: Mutex<HashMap<PathBuf, LinkMap>>,
}

impl LowerStack {
    pub fn new(layers: Vec<PathBuf>) -> LowerStack {
        LowerStack {
            layers,
            links: Mutex::default(),
        }
    }

    pub fn layers(&self) -> &[PathBuf] {
        &self.layers
    }

    /// The layers whose directory `rel` contributes to the merged directory `rel`, topmost
    /// first; `None` if the path is not a directory in the merged lower view. The last element
    /// found for a non-directory is returned through `leaf`.
    fn walk(&self, rel: &Path) -> Walk {
        let mut live: Vec<&PathBuf> = self.layers.iter().collect();
        let comps: Vec<_> = rel.components().collect();
        for (i, c) in comps.iter().enumerate() {
            let name = c.as_os_str();
            let last = i + 1 == comps.len();
            let prefix: PathBuf = comps[..=i].iter().collect();
            let parent: PathBuf = comps[..i].iter().collect();
            let mut next = Vec::new();
            for layer in live {
                let pdir = layer.join(&parent);
                if pdir
                    .join(whiteout::whiteout_name(name))
                    .symlink_metadata()
                    .is_ok()
                {
                    break;
                }
                let path = layer.join(&prefix);
                let Ok(st) = sys::lstat(&path) else { continue };
                if whiteout::is_whiteout_device(&st) {
                    break;
                }
                let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                if !is_dir {
                    if next.is_empty() {
                        return if last {
                            Walk::Leaf(LowerEntry {
                                layer: layer.clone(),
                                path,
                            })
                        } else {
                            Walk::Missing
                        };
                    }
                    break;
                }
                next.push(layer);
                if whiteout::is_opaque_dir(&path) {
                    break;
                }
            }
            if next.is_empty() {
                return Walk::Missing;
            }
            live = next;
        }
        Walk::Dir(live.into_iter().cloned().collect())
    }
}

enum Walk {
    Missing,
    Leaf(LowerEntry),
    Dir(Vec<PathBuf>),
}

impl LowerView for LowerStack {
    fn lower_entry(&self, rel: &Path) -> Option<LowerEntry> {
        match self.walk(rel) {
            Walk::Missing => None,
            Walk::Leaf(e) => Some(e),
            Walk::Dir(layers) => layers.into_iter().next().map(|layer| LowerEntry {
                path: layer.join(rel),
                layer,
            }),
        }
    }

    fn lower_children(&self, rel: &Path) -> Vec<OsString> {
        let Walk::Dir(layers) = self.walk(rel) else {
            return Vec::new();
        };
        let mut seen = HashSet::new();
        let mut hidden = HashSet::new();
        let mut out = Vec::new();
        for layer in layers {
            let Ok(rd) = std::fs::read_dir(layer.join(rel)) else {
                continue;
            };
            let mut here_hidden = Vec::new();
            for e in rd.flatten() {
                let name = e.file_name();
                match whiteout::classify(&name) {
                    NameKind::Plain => {}
                    NameKind::Whiteout(t) => {
                        here_hidden.push(t.to_os_string());
                        continue;
                    }
                    _ => continue,
                }
                if let Ok(st) = sys::lstat(&e.path()) {
                    if whiteout::is_whiteout_device(&st) {
                        here_hidden.push(name);
                        continue;
                    }
                }
                if !hidden.contains(&name) && seen.insert(name.clone()) {
                    out.push(name);
                }
            }
            hidden.extend(here_hidden);
        }
        out
    }

    fn hardlink_peers(&self, entry: &LowerEntry) -> Vec<PathBuf> {
        let Ok(md) = entry.path.symlink_metadata() else {
            return Vec::new();
        };
        let mut links = self.links.lock();
        let map = links
            .entry(entry.layer.clone())
            .or_insert_with(|| scan_links(&entry.layer));
        let Ok(me) = entry.path.strip_prefix(&entry.layer) else {
            return Vec::new();
        };
        map.get(&(md.dev(), md.ino()))
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
        let s = LowerStack::new(vec![top.clone(), mid.clone(), bot.clone()]);
        assert!(s.lower_entry(Path::new("d/a")).is_none());
        assert_eq!(
            s.lower_entry(Path::new("d/c")).unwrap().path,
            mid.join("d/c")
        );
        assert_eq!(s.lower_entry(Path::new("d")).unwrap().layer, top);
        let mut names = s.lower_children(Path::new("d"));
        names.sort();
        assert_eq!(names, ["b", "c", "n"]);
        assert!(s.lower_children(Path::new("o")).is_empty());
        assert!(s.lower_entry(Path::new("o/hidden")).is_none());
        assert!(s.lower_entry(Path::new("d/n/x")).is_none());
    }

    #[test]
    fn finds_hard_link_peers() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("x")).unwrap();
        fs::write(t.path().join("f"), "f").unwrap();
        fs::hard_link(t.path().join("f"), t.path().join("x/g")).unwrap();
        let s = LowerStack::new(vec![t.path().to_path_buf()]);
        let e = s.lower_entry(Path::new("f")).unwrap();
        assert_eq!(s.hardlink_peers(&e), [PathBuf::from("x/g")]);
    }
}
