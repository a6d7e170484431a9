//! Setuid/setgid clearing on writes by unprivileged callers (the kernel leaves it to us with
//! `FUSE_HANDLE_KILLPRIV_V2`), and what that means for passthrough.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;

use crate::layer::meta;
use crate::sys;
use crate::union::upper::{SetAttr, UpperLayer};
use crate::union::view::state::View;
use crate::union::view::types::Caller;

/// The mode bits that a write or truncate by a caller without `CAP_FSETID` removes from a file
/// of permissions `perm` and group `gid`: setuid, and setgid where the group may execute or the
/// caller is not in the file's group (the kernel's rule). The kernel leaves this to us
/// (`FUSE_HANDLE_KILLPRIV_V2`, which spares a GETXATTR round trip per write). Without a
/// caller (deciding on passthrough) any setgid counts.
pub(super) fn privs_to_kill(perm: u32, gid: u32, caller: Option<&Caller>) -> u32 {
    let mut kill = perm & libc::S_ISUID;
    if perm & libc::S_ISGID != 0
        && (perm & libc::S_IXGRP != 0 || !caller.is_some_and(|r| in_group(r, gid)))
    {
        kill |= libc::S_ISGID;
    }
    kill
}

/// Whether the caller of `req` is in group `gid` (primary, else supplementary: read from
/// /proc only in this rare case, setgid files without group execute).
fn in_group(req: &Caller, gid: u32) -> bool {
    if req.gid == gid {
        return true;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", req.pid)).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
}

/// The permissions and group the view shows for the open upper file `fd` (override_stat
/// applied).
pub(super) fn shown_perm(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    let st = sys::fstat(fd)?;
    let over = meta::fd_override(fd);
    Ok(over.map_or((st.st_mode & 0o7777, st.st_gid), |o| {
        (o.mode & 0o7777, o.gid)
    }))
}

/// Drop setuid/setgid of the open file `fd` of `ino` (written by the unprivileged `req`).
pub(super) fn kill_privs(
    fs: &View,
    up: &UpperLayer,
    req: &Caller,
    ino: u64,
    fd: std::os::fd::BorrowedFd<'_>,
) -> io::Result<()> {
    let (perm, gid) = shown_perm(fd)?;
    let kill = privs_to_kill(perm, fs.tree.ids.gid(gid), Some(req));
    if kill == 0 {
        return Ok(());
    }
    let mode = Some(perm & !kill);
    match fs.tree.path_of(ino) {
        Ok(rel) => up
            .apply_attr(
                &rel,
                &SetAttr {
                    mode,
                    ..Default::default()
                },
            )
            .map(drop),
        // Unlinked while open: only the file itself is left to change.
        Err(_) => sys::fchmod(fd, perm & !kill),
    }
}

/// Whether writes to an upper file of permissions `perm` may bypass us (passthrough): not
/// with a quota (we count the bytes), nor for a setuid/setgid file (we clear the bits when an
/// unprivileged caller writes).
pub(super) fn writes_may_bypass(fs: &View, perm: u32) -> bool {
    fs.opts.quota.is_none() && privs_to_kill(perm, 0, None) == 0
}

/// Whether a read-only open of `ino` (backing file `file`) may use passthrough. A file of the
/// upper whose writes we serve ourselves (quota, set-id bits) is read through us as well: the
/// kernel keeps an inode either in passthrough or in served mode and fails (EIO) an open of the
/// other kind while one is open, so a passthrough reader would shut its writers out.
pub(super) fn reads_may_pass(fs: &View, ino: u64, file: &File) -> bool {
    let in_upper = fs
        .tree
        .node(ino)
        .is_ok_and(|n| fs.tree.layers.get(n.state.read().layer).upper);
    if !in_upper {
        return true;
    }
    fs.opts.quota.is_none() && shown_perm(file.as_fd()).is_ok_and(|(p, _)| writes_may_bypass(fs, p))
}
