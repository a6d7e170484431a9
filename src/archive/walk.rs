//! Helpers shared by the tree walks of export, changes and the naive comparison.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::layer::{meta, whiteout};
use crate::sys;

/// Names in `dir`, sorted bytewise (the deterministic order of every walk).
pub fn sorted_names(dir: &Path) -> Result<Vec<OsString>> {
    // Through a descriptor: a path of any length (see `sys::open_dir`).
    let fd = sys::open_dir(dir).ctx(|| format!("reading {}", dir.display()))?;
    let mut names: Vec<OsString> = sys::read_dir_fd(std::os::fd::AsFd::as_fd(&fd))
        .ctx(|| format!("reading {}", dir.display()))?
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// `lstat` with the layer's `override_stat` applied: the owner, mode and type the view shows.
pub fn view_stat(path: &Path) -> Result<libc::stat> {
    let mut st = sys::lstat(path).ctx(|| format!("stat {}", path.display()))?;
    if let Some(o) =
        meta::read_override(path).ctx(|| format!("reading override of {}", path.display()))?
    {
        o.apply(&mut st);
    }
    Ok(st)
}

/// The non-internal xattrs of `path`, sorted by name.
pub fn public_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let names = sys::llistxattr(path).ctx(|| format!("listing xattrs of {}", path.display()))?;
    for name in names {
        if whiteout::is_internal_xattr(&name) {
            continue;
        }
        let Ok(n) = std::str::from_utf8(&name) else {
            tracing::warn!(path = %path.display(), "skipping an xattr whose name is not UTF-8");
            continue;
        };
        if let Some(v) =
            sys::lgetxattr(path, n).ctx(|| format!("reading xattr {n} of {}", path.display()))?
        {
            out.push((name, v));
        }
    }
    out.sort();
    Ok(out)
}

/// The file type bits of a mode.
pub fn file_type(mode: u32) -> u32 {
    mode & libc::S_IFMT
}

pub fn is_dir(st: &libc::stat) -> bool {
    file_type(st.st_mode) == libc::S_IFDIR
}

pub fn is_reg(st: &libc::stat) -> bool {
    file_type(st.st_mode) == libc::S_IFREG
}
