//! A comparable picture of a directory tree, to check that nothing outside a target's own
//! directory changed and that a failed operation left a directory as it was.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// What is compared of one entry. Directory mtimes are left out where asked (a directory the
/// code may legitimately create inside changes its parent's mtime).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub kind: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub mtime: Option<(i64, i64)>,
    pub size: u64,
    /// sha256 of a file's content, a symlink's target, or a device number.
    pub content: Vec<u8>,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Every entry under `root` (relative paths, `""` for the root itself), except the relative
/// paths in `skip` and what is below them.
pub(crate) fn picture(root: &Path, skip: &[&Path], dir_mtimes: bool) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), skip, dir_mtimes, &mut out);
    out
}

fn walk(
    root: &Path,
    rel: &Path,
    skip: &[&Path],
    dir_mtimes: bool,
    out: &mut BTreeMap<PathBuf, Node>,
) {
    if skip.contains(&rel) {
        return;
    }
    let path = root.join(rel);
    let Ok(md) = std::fs::symlink_metadata(&path) else {
        return;
    };
    let kind = md.mode() & libc::S_IFMT;
    let content = if md.is_file() {
        match std::fs::read(&path) {
            Ok(data) => Sha256::digest(&data).to_vec(),
            Err(e) => format!("unreadable: {e}").into_bytes(),
        }
    } else if md.file_type().is_symlink() {
        std::fs::read_link(&path)
            .map(|t| t.into_os_string().into_encoded_bytes())
            .unwrap_or_default()
    } else if kind == libc::S_IFCHR || kind == libc::S_IFBLK {
        md.rdev().to_le_bytes().to_vec()
    } else {
        Vec::new()
    };
    let is_dir = md.is_dir();
    out.insert(
        rel.to_path_buf(),
        Node {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            nlink: if is_dir { 0 } else { md.nlink() },
            mtime: (!is_dir || dir_mtimes).then(|| (md.mtime(), md.mtime_nsec())),
            size: if is_dir { 0 } else { md.size() },
            content,
            xattrs: xattrs(&path),
        },
    );
    if is_dir {
        let Ok(rd) = std::fs::read_dir(&path) else {
            return;
        };
        let mut names: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
        names.sort();
        for n in names {
            walk(root, &rel.join(n), skip, dir_mtimes, out);
        }
    }
}

fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(names) = crate::sys::llistxattr(path) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = names
        .into_iter()
        .map(|n| {
            let n = String::from_utf8_lossy(&n).into_owned();
            let v = crate::sys::lgetxattr(path, &n)
                .ok()
                .flatten()
                .unwrap_or_default();
            (n, v)
        })
        .collect();
    out.sort();
    out
}

/// Panic naming the first difference between two pictures.
pub(crate) fn assert_same(
    what: &str,
    before: &BTreeMap<PathBuf, Node>,
    after: &BTreeMap<PathBuf, Node>,
) {
    if before == after {
        return;
    }
    for (p, n) in before {
        match after.get(p) {
            None => panic!("{what}: {} disappeared", p.display()),
            Some(m) if m != n => panic!("{what}: {} changed: {n:?} -> {m:?}", p.display()),
            _ => {}
        }
    }
    for p in after.keys() {
        if !before.contains_key(p) {
            panic!("{what}: {} appeared", p.display());
        }
    }
}
