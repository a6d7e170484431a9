//! `changes` and `diff_size`: of a layer against its own parent by walking only the layer's
//! directory (looking paths up in the parents), and of two plain trees by naive comparison.

use std::collections::{BTreeSet, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{Change, ChangeKind};
use crate::error::{IoContext, Result};
use crate::layer::tarindex::TarIndex;
use crate::layer::whiteout::{self, NameKind};
use crate::sys;

use super::walk::{self, file_type, is_dir};

fn abs(rel: &Path) -> String {
    format!("/{}", rel.display())
}

/// Whether `name` in `dir` is whited out in that layer (a `.wh.NAME` file or a char 0/0).
fn whited_out(dir: &Path, name: &OsStr) -> bool {
    if whiteout::marker_fits(name) && sys::lstat(&dir.join(whiteout::whiteout_name(name))).is_ok() {
        return true;
    }
    matches!(sys::lstat(&dir.join(name)), Ok(st) if whiteout::is_whiteout_device(&st))
}

/// A lower layer as `changes` reads it: a directory, or the tar index of a lazily mounted
/// image layer (which keeps whiteouts and opaque markers under their names, as a directory).
enum LowerTree {
    Dir(PathBuf),
    Index(TarIndex),
}

impl LowerTree {
    fn open(path: &Path) -> Result<LowerTree> {
        let is_index = path.extension().is_some_and(|e| e == "idx")
            && sys::lstat(path).is_ok_and(|st| !is_dir(&st));
        if !is_index {
            return Ok(LowerTree::Dir(path.to_path_buf()));
        }
        let idx = TarIndex::open(path).ctx(|| format!("reading {}", path.display()))?;
        Ok(LowerTree::Index(idx))
    }
}

fn open_lowers(lowers: &[PathBuf]) -> Result<Vec<LowerTree>> {
    lowers.iter().map(|l| LowerTree::open(l)).collect()
}

/// Stat `rel` in the merged view of the lower layers `lowers` (topmost first): stops at
/// whiteouts, opaque directories and non-directory components.
pub fn lower_lookup(lowers: &[PathBuf], rel: &Path) -> Option<libc::stat> {
    lookup_in(&open_lowers(lowers).ok()?, rel)
}

fn lookup_in(lowers: &[LowerTree], rel: &Path) -> Option<libc::stat> {
    let comps: Vec<&OsStr> = rel.iter().collect();
    if comps.is_empty() {
        return None;
    }
    for layer in lowers {
        let found = match layer {
            LowerTree::Dir(root) => dir_lookup(root, &comps),
            LowerTree::Index(idx) => index_lookup(idx, &comps),
        };
        match found {
            Found::Entry(st) => return Some(st),
            Found::Hidden => return None,
            Found::Absent => {}
        }
    }
    None
}

/// What one layer says of a path.
enum Found {
    Entry(libc::stat),
    /// Whited out, below a non-directory, or below an opaque directory: lower layers do not
    /// count.
    Hidden,
    /// Not in this layer: ask the next.
    Absent,
}

fn dir_lookup(root: &Path, comps: &[&OsStr]) -> Found {
    let mut dir = root.to_path_buf();
    let mut hides_lower = false;
    for (i, c) in comps.iter().enumerate() {
        if whited_out(&dir, c) {
            return Found::Hidden;
        }
        let p = dir.join(c);
        let Ok(st) = sys::lstat(&p) else {
            break;
        };
        if i + 1 == comps.len() {
            return Found::Entry(st);
        }
        if !is_dir(&st) {
            return Found::Hidden;
        }
        if whiteout::is_opaque_dir(&p) {
            hides_lower = true;
        }
        dir = p;
    }
    if hides_lower {
        Found::Hidden
    } else {
        Found::Absent
    }
}

fn index_lookup(idx: &TarIndex, comps: &[&OsStr]) -> Found {
    let mut dir = 0;
    let mut hides_lower = false;
    for (i, c) in comps.iter().enumerate() {
        let marker = whiteout::whiteout_name(c);
        if whiteout::marker_fits(c) && idx.child(dir, marker.as_bytes()).is_some() {
            return Found::Hidden;
        }
        let Some(id) = idx.child(dir, c.as_bytes()) else {
            break;
        };
        let st = idx.stat(id);
        if i + 1 == comps.len() {
            return Found::Entry(st);
        }
        if !is_dir(&st) {
            return Found::Hidden;
        }
        if idx.child(id, whiteout::OPAQUE_MARKER.as_bytes()).is_some() {
            hides_lower = true;
        }
        dir = id;
    }
    if hides_lower {
        Found::Hidden
    } else {
        Found::Absent
    }
}

/// Names visible in the lower view of directory `rel`.
fn lower_children(lowers: &[LowerTree], rel: &Path) -> Result<BTreeSet<OsString>> {
    let mut names = BTreeSet::new();
    for layer in lowers {
        let mut add = |name: &OsStr| {
            if whiteout::classify(name) == NameKind::Plain {
                names.insert(name.to_os_string());
            }
        };
        match layer {
            LowerTree::Dir(root) => {
                let d = root.join(rel);
                // Through a descriptor: a path of any length.
                let Ok(fd) = sys::open_dir(&d) else {
                    continue;
                };
                let entries = sys::read_dir_fd(std::os::fd::AsFd::as_fd(&fd))
                    .ctx(|| format!("reading {}", d.display()))?;
                for e in entries {
                    add(&e.name);
                }
            }
            LowerTree::Index(idx) => {
                let Some(dir) = idx.lookup(rel) else { continue };
                for c in idx.children(dir) {
                    add(idx.name(c));
                }
            }
        }
    }
    Ok(names
        .into_iter()
        .filter(|n| lookup_in(lowers, &rel.join(n)).is_some())
        .collect())
}

/// Changes of the layer directory `upper` against the lower layers `lowers` (directories or
/// tar indexes, topmost first).
pub fn layer_dir_changes(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<Change>> {
    let lowers = open_lowers(lowers)?;
    let mut out = Vec::new();
    walk_upper(upper, Path::new(""), &lowers, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path).then(a.kind.cmp(&b.kind)));
    out.dedup();
    Ok(out)
}

fn walk_upper(upper: &Path, rel: &Path, lowers: &[LowerTree], out: &mut Vec<Change>) -> Result<()> {
    let dir = upper.join(rel);
    let names = walk::sorted_names(&dir)?;
    let mut present = HashSet::new();
    for name in &names {
        match whiteout::classify(name) {
            NameKind::Whiteout(target) => out.push(Change {
                path: abs(&rel.join(target)),
                kind: ChangeKind::Delete,
            }),
            NameKind::Plain => {
                let crel = rel.join(name);
                let st = sys::lstat(&upper.join(&crel))
                    .ctx(|| format!("stat {}", upper.join(&crel).display()))?;
                if whiteout::is_whiteout_device(&st) {
                    out.push(Change {
                        path: abs(&crel),
                        kind: ChangeKind::Delete,
                    });
                    continue;
                }
                present.insert(name.clone());
                let kind = if lookup_in(lowers, &crel).is_some() {
                    ChangeKind::Modify
                } else {
                    ChangeKind::Add
                };
                out.push(Change {
                    path: abs(&crel),
                    kind,
                });
                if is_dir(&st) {
                    walk_upper(upper, &crel, lowers, out)?;
                }
            }
            _ => {}
        }
    }
    if whiteout::is_opaque_dir(&dir) {
        for n in lower_children(lowers, rel)? {
            if !present.contains(&n) {
                out.push(Change {
                    path: abs(&rel.join(&n)),
                    kind: ChangeKind::Delete,
                });
            }
        }
    }
    Ok(())
}

/// Bytes of regular files under `dir`, each inode once (markers are empty files: 0).
pub fn tree_size(dir: &Path) -> Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for name in walk::sorted_names(&d)? {
            let p = d.join(name);
            let st = sys::lstat(&p).ctx(|| format!("stat {}", p.display()))?;
            match file_type(st.st_mode) {
                libc::S_IFDIR => stack.push(p),
                libc::S_IFREG if st.st_nlink <= 1 || seen.insert((st.st_dev, st.st_ino)) => {
                    total += st.st_size as u64;
                }
                _ => {}
            }
        }
    }
    Ok(total)
}

/// The attributes the naive comparison (Docker's) looks at: type and mode, owner, device,
/// xattrs and, for a non-directory, size, mtime and link target. A directory's size and mtime
/// change with its content, so its content is compared instead. Equal: unchanged.
#[derive(Debug, PartialEq, Eq)]
pub struct NodeAttrs {
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    size: i64,
    mtime: (i64, i64),
    link: Option<PathBuf>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl NodeAttrs {
    /// The attributes of `path` as the view shows them (`override_stat` applied).
    pub fn read(path: &Path) -> Result<NodeAttrs> {
        let st = walk::view_stat(path)?;
        let link = if file_type(st.st_mode) == libc::S_IFLNK {
            Some(PathBuf::from(
                sys::readlink(path).ctx(|| format!("reading link {}", path.display()))?,
            ))
        } else {
            None
        };
        let (size, mtime) = if is_dir(&st) {
            (0, (0, 0))
        } else {
            (st.st_size, (st.st_mtime, st.st_mtime_nsec))
        };
        Ok(NodeAttrs {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev,
            size,
            mtime,
            link,
            xattrs: walk::public_xattrs(path)?,
        })
    }

    pub fn is_dir(&self) -> bool {
        file_type(self.mode) == libc::S_IFDIR
    }
}

/// Naive comparison of two plain trees (Docker's fallback), `old` of `None` being empty.
pub fn compare(old: Option<&Path>, new: &Path) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    compare_dir(old, new, Path::new(""), &mut out)?;
    Ok(out)
}

fn compare_dir(old: Option<&Path>, new: &Path, rel: &Path, out: &mut Vec<Change>) -> Result<()> {
    let new_names = walk::sorted_names(&new.join(rel))?;
    let old_names = match old {
        Some(o) => walk::sorted_names(&o.join(rel))?,
        None => Vec::new(),
    };
    let old_set: HashSet<&OsString> = old_names.iter().collect();
    let new_set: HashSet<&OsString> = new_names.iter().collect();
    let mut merged: Vec<&OsString> = new_names
        .iter()
        .chain(old_names.iter().filter(|n| !new_set.contains(n)))
        .collect();
    merged.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in merged {
        let crel = rel.join(name);
        if !new_set.contains(name) {
            out.push(Change {
                path: abs(&crel),
                kind: ChangeKind::Delete,
            });
            continue;
        }
        let n = NodeAttrs::read(&new.join(&crel))?;
        let old_node = match (old, old_set.contains(name)) {
            (Some(o), true) => Some(NodeAttrs::read(&o.join(&crel))?),
            _ => None,
        };
        let Some(o) = old_node else {
            out.push(Change {
                path: abs(&crel),
                kind: ChangeKind::Add,
            });
            if n.is_dir() {
                compare_dir(None, new, &crel, out)?;
            }
            continue;
        };
        let at = out.len();
        let changed = o != n;
        if changed {
            out.push(Change {
                path: abs(&crel),
                kind: ChangeKind::Modify,
            });
        }
        if n.is_dir() {
            let old_sub = if o.is_dir() { old } else { None };
            compare_dir(old_sub, new, &crel, out)?;
            if !changed && out.len() > at {
                out.insert(
                    at,
                    Change {
                        path: abs(&crel),
                        kind: ChangeKind::Modify,
                    },
                );
            }
        }
    }
    Ok(())
}

/// Bytes of regular files that `changes` add or modify in `new`, each inode once.
pub fn size_of_changes(new: &Path, changes: &[Change]) -> Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0;
    for c in changes {
        if c.kind == ChangeKind::Delete {
            continue;
        }
        let p = new.join(c.path.trim_start_matches('/'));
        let st = sys::lstat(&p).ctx(|| format!("stat {}", p.display()))?;
        if walk::is_reg(&st) && (st.st_nlink <= 1 || seen.insert((st.st_dev, st.st_ino))) {
            total += st.st_size as u64;
        }
    }
    Ok(total)
}
