//! `changes` and `diff_size`: of a layer against its own parent by walking only the layer's
//! directory (looking paths up in the parents), and of two plain trees by naive comparison.

use std::collections::{BTreeSet, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{Change, ChangeKind};
use crate::error::{IoContext, Result};
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

/// Stat `rel` in the merged view of the lower layers `lowers` (topmost first): stops at
/// whiteouts, opaque directories and non-directory components.
pub fn lower_lookup(lowers: &[PathBuf], rel: &Path) -> Option<libc::stat> {
    let comps: Vec<&OsStr> = rel.iter().collect();
    if comps.is_empty() {
        return None;
    }
    for layer in lowers {
        let mut dir = layer.clone();
        let mut hides_lower = false;
        for (i, c) in comps.iter().enumerate() {
            if whited_out(&dir, c) {
                return None;
            }
            let p = dir.join(c);
            let Ok(st) = sys::lstat(&p) else {
                break;
            };
            if i + 1 == comps.len() {
                return Some(st);
            }
            if !is_dir(&st) {
                return None;
            }
            if whiteout::is_opaque_dir(&p) {
                hides_lower = true;
            }
            dir = p;
        }
        if hides_lower {
            return None;
        }
    }
    None
}

/// Names visible in the lower view of directory `rel`.
fn lower_children(lowers: &[PathBuf], rel: &Path) -> Result<BTreeSet<OsString>> {
    let mut names = BTreeSet::new();
    for layer in lowers {
        let d = layer.join(rel);
        // Through a descriptor: a path of any length.
        let Ok(fd) = sys::open_dir(&d) else {
            continue;
        };
        let entries = sys::read_dir_fd(std::os::fd::AsFd::as_fd(&fd))
            .ctx(|| format!("reading {}", d.display()))?;
        for e in entries {
            if whiteout::classify(&e.name) == NameKind::Plain {
                names.insert(e.name);
            }
        }
    }
    Ok(names
        .into_iter()
        .filter(|n| lower_lookup(lowers, &rel.join(n)).is_some())
        .collect())
}

/// Changes of the layer directory `upper` against the lower layers `lowers`.
pub fn layer_dir_changes(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    walk_upper(upper, Path::new(""), lowers, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path).then(a.kind.cmp(&b.kind)));
    out.dedup();
    Ok(out)
}

fn walk_upper(upper: &Path, rel: &Path, lowers: &[PathBuf], out: &mut Vec<Change>) -> Result<()> {
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
                let kind = if lower_lookup(lowers, &crel).is_some() {
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
