//! `image diff`: the changes between two images, computed from their layer chains without
//! mounting. Each image's merged tree is indexed by walking its layer directories topmost first
//! (honouring whiteouts and opaque directories, whatever their format), recording for every
//! visible path which layer provides it. A path provided by the same layer in both images is
//! unchanged without looking at it; only the others are compared, on the attributes the
//! archive module's tree comparison uses (type, mode, owner, device, xattrs; for non-directories
//! also size, mtime and link target), with the same reporting rules as `docker diff`: an added
//! directory lists its contents, a deleted one only itself, an unchanged directory holding a
//! change is reported changed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::archive::{Change, ChangeKind, NodeAttrs};
use crate::error::{IoContext, Result};
use crate::layer::whiteout::{self, NameKind};
use crate::sys;

/// What the merged tree shows at a path, while the index is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Provided by layer `layer` (index into the chain, topmost first).
    Present {
        layer: usize,
        dir: bool,
        opaque: bool,
    },
    /// Deleted by a whiteout: lower layers do not show here.
    Deleted,
}

/// The merged tree of a chain of layer directories (topmost first): path -> (layer, is_dir).
pub fn merged_index(layers: &[PathBuf]) -> Result<BTreeMap<PathBuf, (usize, bool)>> {
    let mut map: BTreeMap<PathBuf, Slot> = BTreeMap::new();
    for (i, root) in layers.iter().enumerate() {
        walk(root, Path::new(""), i, &mut map)?;
    }
    Ok(map
        .into_iter()
        .filter_map(|(p, s)| match s {
            Slot::Present { layer, dir, .. } => Some((p, (layer, dir))),
            Slot::Deleted => None,
        })
        .collect())
}

fn walk(root: &Path, rel: &Path, layer: usize, map: &mut BTreeMap<PathBuf, Slot>) -> Result<()> {
    let dir = root.join(rel);
    let rd = std::fs::read_dir(&dir).ctx(|| format!("reading {}", dir.display()))?;
    for e in rd {
        let name = e.ctx(|| format!("reading {}", dir.display()))?.file_name();
        match whiteout::classify(&name) {
            NameKind::Whiteout(target) => {
                map.entry(rel.join(target)).or_insert(Slot::Deleted);
            }
            NameKind::Plain => {
                let p = rel.join(&name);
                let st = sys::lstat(&root.join(&p))
                    .ctx(|| format!("stat {}", root.join(&p).display()))?;
                if whiteout::is_whiteout_device(&st) {
                    map.entry(p).or_insert(Slot::Deleted);
                    continue;
                }
                let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                match map.get(&p) {
                    None => {
                        map.insert(
                            p.clone(),
                            Slot::Present {
                                layer,
                                dir: is_dir,
                                opaque: false,
                            },
                        );
                        if is_dir {
                            walk(root, &p, layer, map)?;
                        }
                    }
                    // A directory over a directory merges with it, unless it was opaque above.
                    Some(Slot::Present {
                        dir: true,
                        opaque: false,
                        ..
                    }) if is_dir => walk(root, &p, layer, map)?,
                    _ => {}
                }
            }
            NameKind::OpaqueMarker | NameKind::Internal | NameKind::Invalid => {}
        }
    }
    if !rel.as_os_str().is_empty() && whiteout::is_opaque_dir(&dir) {
        if let Some(Slot::Present { opaque, .. }) = map.get_mut(rel) {
            *opaque = true;
        }
    }
    Ok(())
}

/// One image as a chain for comparison: layer dirs and their diff_ids, topmost first.
pub struct Chain<'a> {
    pub dirs: &'a [PathBuf],
    pub diff_ids: &'a [String],
}

fn abs(rel: &Path) -> String {
    format!("/{}", rel.display())
}

/// Changes from image `old` to image `new`, sorted by path.
pub fn compare_chains(old: &Chain<'_>, new: &Chain<'_>) -> Result<Vec<Change>> {
    let a = merged_index(old.dirs)?;
    let b = merged_index(new.dirs)?;
    let mut changes: BTreeMap<PathBuf, ChangeKind> = BTreeMap::new();
    for (p, &(lb, dir_b)) in &b {
        match a.get(p) {
            None => {
                changes.insert(p.clone(), ChangeKind::Add);
            }
            Some(&(la, _)) => {
                if old.diff_ids[la] == new.diff_ids[lb] {
                    continue;
                }
                let na = NodeAttrs::read(&old.dirs[la].join(p))?;
                let nb = NodeAttrs::read(&new.dirs[lb].join(p))?;
                if na != nb {
                    changes.insert(p.clone(), ChangeKind::Modify);
                }
                let _ = dir_b;
            }
        }
    }
    for p in a.keys() {
        if b.contains_key(p) {
            continue;
        }
        // Only the top of a deleted subtree is reported, and nothing under a path that is
        // no longer a directory.
        let parent_is_dir = match p.parent() {
            Some(pp) if !pp.as_os_str().is_empty() => matches!(b.get(pp), Some(&(_, true))),
            _ => true,
        };
        if parent_is_dir {
            changes.insert(p.clone(), ChangeKind::Delete);
        }
    }
    // Unchanged directories that hold a change are reported changed.
    let mut parents = BTreeSet::new();
    for p in changes.keys() {
        let mut cur = p.parent();
        while let Some(pp) = cur {
            if pp.as_os_str().is_empty() {
                break;
            }
            parents.insert(pp.to_path_buf());
            cur = pp.parent();
        }
    }
    for pp in parents {
        changes.entry(pp).or_insert(ChangeKind::Modify);
    }
    Ok(changes
        .into_iter()
        .map(|(p, kind)| Change {
            path: abs(&p),
            kind,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn layer(root: &Path, files: &[&str]) -> PathBuf {
        fs::create_dir_all(root).unwrap();
        for f in files {
            let p = root.join(f);
            if let Some(stripped) = f.strip_suffix('/') {
                fs::create_dir_all(root.join(stripped)).unwrap();
            } else {
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(&p, f.as_bytes()).unwrap();
            }
        }
        root.to_path_buf()
    }

    fn show(c: &[Change]) -> Vec<String> {
        c.iter()
            .map(|c| {
                let k = match c.kind {
                    ChangeKind::Add => "A",
                    ChangeKind::Modify => "C",
                    ChangeKind::Delete => "D",
                };
                format!("{k} {}", c.path)
            })
            .collect()
    }

    #[test]
    fn merged_index_honours_whiteouts_and_opaque_dirs() {
        let d = tempfile::tempdir().unwrap();
        let base = layer(
            &d.path().join("0"),
            &["etc/a", "etc/b", "opt/x/1", "opt/x/2", "f/"],
        );
        let top = layer(
            &d.path().join("1"),
            &["etc/.wh.a", "etc/c", "opt/x/.wh..wh..opq", "opt/x/3", "f"],
        );
        // `f` was a directory below; a file above replaces it.
        fs::remove_dir_all(base.join("f")).unwrap();
        fs::create_dir_all(base.join("f/inner")).unwrap();
        let idx = merged_index(&[top, base]).unwrap();
        let names: Vec<String> = idx.keys().map(|p| p.display().to_string()).collect();
        assert_eq!(
            names,
            ["etc", "etc/b", "etc/c", "f", "opt", "opt/x", "opt/x/3"]
        );
        assert_eq!(idx[Path::new("etc/b")].0, 1);
        assert_eq!(idx[Path::new("etc/c")].0, 0);
        assert!(!idx[Path::new("f")].1);
    }

    #[test]
    fn compares_only_what_differs_between_chains() {
        let d = tempfile::tempdir().unwrap();
        let base = layer(
            &d.path().join("base"),
            &["etc/a", "etc/b", "usr/bin/sh", "var/lib/x/1"],
        );
        let a_top = layer(&d.path().join("a"), &["etc/a", "tmp/"]);
        let b_top = layer(
            &d.path().join("b"),
            &["etc/c", "var/lib/.wh.x", "new/dir/f"],
        );
        fs::write(b_top.join("etc/c"), "c").unwrap();
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a_dirs = vec![a_top, base.clone()];
        let b_dirs = vec![b_top, base];
        let a_ids = ids(&["sha256:a", "sha256:base"]);
        let b_ids = ids(&["sha256:b", "sha256:base"]);
        let a = Chain {
            dirs: &a_dirs,
            diff_ids: &a_ids,
        };
        let b = Chain {
            dirs: &b_dirs,
            diff_ids: &b_ids,
        };
        let c = compare_chains(&a, &b).unwrap();
        // etc/a: a's own copy has the same content and (probably) another mtime; allow both.
        let got: Vec<String> = show(&c).into_iter().filter(|l| l != "C /etc/a").collect();
        assert_eq!(
            got,
            [
                "C /etc",
                "A /etc/c",
                "A /new",
                "A /new/dir",
                "A /new/dir/f",
                "D /tmp",
                "C /var",
                "C /var/lib",
                "D /var/lib/x",
            ]
        );
        // Same image: nothing.
        assert!(compare_chains(&a, &a).unwrap().is_empty());
    }
}
