//! Copying a layer tree with everything a layer holds: modes, owners, xattrs (internal ones
//! too: they are layer metadata), times, hard links, symlinks and special files. File data is
//! reflinked where the filesystem can, else copied in the kernel (`copy_file_range`).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::sys;

/// Copy everything inside `src` into the existing directory `dst`, then give `dst` the
/// attributes of `src`.
pub fn copy_tree_contents(src: &Path, dst: &Path) -> Result<()> {
    let mut links = HashMap::new();
    copy_dir_children(src, dst, &mut links)?;
    copy_attrs(
        src,
        dst,
        &sys::lstat(src).ctx(|| format!("stat {}", src.display()))?,
    )
}

fn copy_dir_children(
    src: &Path,
    dst: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    for e in std::fs::read_dir(src).ctx(|| format!("reading {}", src.display()))? {
        let e = e.ctx(|| format!("reading {}", src.display()))?;
        let (s, d) = (e.path(), dst.join(e.file_name()));
        copy_one(&s, &d, links)?;
    }
    Ok(())
}

fn copy_one(s: &Path, d: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> Result<()> {
    let st = sys::lstat(s).ctx(|| format!("stat {}", s.display()))?;
    let ty = st.st_mode & libc::S_IFMT;
    if ty != libc::S_IFDIR && st.st_nlink > 1 {
        let key = (st.st_dev, st.st_ino);
        if let Some(first) = links.get(&key) {
            return std::fs::hard_link(first, d).ctx(|| format!("linking {}", d.display()));
        }
        links.insert(key, d.to_path_buf());
    }
    match ty {
        libc::S_IFDIR => {
            std::fs::create_dir(d).ctx(|| format!("creating {}", d.display()))?;
            copy_dir_children(s, d, links)?;
        }
        libc::S_IFREG => {
            copy_data(s, d).ctx(|| format!("copying {} to {}", s.display(), d.display()))?
        }
        libc::S_IFLNK => {
            let target = std::fs::read_link(s).ctx(|| format!("reading link {}", s.display()))?;
            std::os::unix::fs::symlink(&target, d).ctx(|| format!("creating {}", d.display()))?;
        }
        _ => {
            let parent = d.parent().unwrap_or(Path::new("/"));
            let pfd = sys::open_dir(parent).ctx(|| format!("opening {}", parent.display()))?;
            let name = Path::new(d.file_name().unwrap_or_default());
            sys::mknodat(pfd.as_fd(), name, st.st_mode, st.st_rdev)
                .ctx(|| format!("creating {}", d.display()))?;
        }
    }
    copy_attrs(s, d, &st)
}

fn copy_data(s: &Path, d: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut src = File::open(s)?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(d)?;
    if sys::ficlone(dst.as_fd(), src.as_fd()).is_ok() {
        return Ok(());
    }
    // std's File-to-File copy uses copy_file_range on Linux, which a signal can interrupt
    // (EINTR); both files' offsets stand where it stopped, so go on from there. Found by the
    // tar_apply fuzz target: an interrupted copy stopped a rollback half way.
    loop {
        match io::copy(&mut src, &mut dst) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map(drop),
        }
    }
}

/// Owner, xattrs, mode and times of `s` onto `d` (in that order: chown clears set-id bits).
fn copy_attrs(s: &Path, d: &Path, st: &libc::stat) -> Result<()> {
    let parent = d.parent().unwrap_or(Path::new("/"));
    let (dirfd, name) = match d.file_name() {
        Some(n) => (sys::open_dir(parent), PathBuf::from(n)),
        None => (sys::open_dir(d), PathBuf::new()),
    };
    let dirfd = dirfd.ctx(|| format!("opening {}", parent.display()))?;
    let dirfd = dirfd.as_fd();
    if let Err(e) = sys::lchownat(dirfd, &name, st.st_uid, st.st_gid) {
        if sys::is_root() {
            return Err(crate::error::Error::io(format!("chown {}", d.display()), e));
        }
        tracing::debug!(path = %d.display(), %e, "chown refused; the override_stat xattr carries the owner");
    }
    for x in sys::llistxattr(s).ctx(|| format!("listing xattrs of {}", s.display()))? {
        let Ok(n) = std::str::from_utf8(&x) else {
            continue;
        };
        if let Some(v) =
            sys::lgetxattr(s, n).ctx(|| format!("reading xattr {n} of {}", s.display()))?
        {
            if let Err(e) = sys::lsetxattr(d, n, &v) {
                tracing::warn!(path = %d.display(), xattr = n, %e, "cannot copy xattr");
            }
        }
    }
    let ty = st.st_mode & libc::S_IFMT;
    if ty != libc::S_IFLNK {
        sys::fchmodat(dirfd, &name, st.st_mode & 0o7777)
            .ctx(|| format!("chmod {}", d.display()))?;
    }
    sys::lutimensat(
        dirfd,
        &name,
        (st.st_atime, st.st_atime_nsec),
        (st.st_mtime, st.st_mtime_nsec),
    )
    .ctx(|| format!("setting times of {}", d.display()))
}
