//! SETATTR: mode, owner, size and times, copying the file up first (without its data for a
//! truncate to zero); times of an open file are set through it.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;

use crate::layer::meta;
use crate::sys::{self, TimeSpec};
use crate::union::attr::Attr;
use crate::union::ids::container_to_host;
use crate::union::tree::{Node, ROOT_INO};
use crate::union::upper::{SetAttr, UpperLayer};
use crate::union::view::copy::{copies_much, copy_up_node_open};
use crate::union::view::privs::privs_to_kill;
use crate::union::view::state::{View, TTL};
use crate::union::view::sync::{child_ino, errno};
use crate::union::view::types::{AttrReply, Caller, Reply, SetAttrReq, SetTime};

fn time_spec(t: SetTime) -> TimeSpec {
    match t {
        SetTime::Now => TimeSpec::Now,
        SetTime::At(t) => TimeSpec::At {
            sec: t.sec,
            nsec: i64::from(t.nsec),
        },
    }
}

impl View {
    /// SETATTR of `ino`; when it copies a large file up, `done` is called from a thread of
    /// its own.
    pub fn setattr(
        &self,
        caller: Caller,
        ino: u64,
        req: SetAttrReq,
        done: impl FnOnce(Reply<AttrReply>) + Send + 'static,
    ) {
        let long = req.size != Some(0) && copies_much(self, ino, false);
        self.serve(long, move |fs| {
            done(
                fs.setattr_now(&caller, ino, &req)
                    .map(|attr| AttrReply { attr, ttl: TTL }),
            )
        })
    }

    fn setattr_now(&self, req: &Caller, ino: u64, r: &SetAttrReq) -> Reply<Attr> {
        let fs = self;
        let SetAttrReq {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh,
        } = *r;
        let up = fs.upper()?;
        if !still_named(fs, ino) {
            return setattr_unnamed(fs, up, ino, r);
        }
        let rel = fs.tree.path_of(ino)?;
        // A truncate to zero needs none of the lower data.
        copy_up_node_open(fs, up, ino, &rel, size != Some(0))?;
        let map = |maps, id| container_to_host(maps, id).ok_or_else(|| errno(libc::EINVAL));
        // A truncate by an unprivileged caller drops setuid/setgid, as the kernel would.
        let mode = match (mode, size) {
            (None, Some(_)) if req.uid != 0 => {
                let attr = fs.tree.getattr(ino)?;
                let perm = u32::from(attr.perm);
                Some(perm & !privs_to_kill(perm, attr.gid, Some(req))).filter(|m| *m != perm)
            }
            _ => mode,
        };
        let a = SetAttr {
            mode,
            uid: uid.map(|u| map(&fs.tree.ids.uid_map, u)).transpose()?,
            gid: gid.map(|g| map(&fs.tree.ids.gid_map, g)).transpose()?,
            size: None,
            atime: atime.map(time_spec),
            mtime: mtime.map(time_spec),
        };
        if let Some(size) = size {
            // Through the open file when there is one (it may be unlinked already).
            match fh.and_then(|f| fs.handle(f)).filter(|h| h.writable) {
                Some(h) => up.truncate_fd(h.file.as_fd(), size)?,
                None => drop(up.apply_attr(
                    &rel,
                    &SetAttr {
                        size: Some(size),
                        ..Default::default()
                    },
                )?),
            }
        }
        if !rel.as_os_str().is_empty() {
            let node = fs.tree.node(ino)?;
            let plain = fs.tree.no_xattrs(&node);
            if let Some(attr) = set_attr_open(fs, &node, &a, fh, plain) {
                return Ok(attr?);
            }
            // An owner or mode change may go to override_stat (rootless).
            let may_write_xattr = a.uid.is_some() || a.gid.is_some() || a.mode.is_some();
            if may_write_xattr {
                node.xattrs_changing();
            }
            let epoch = node.xattr_epoch();
            let done = up.apply_attr_known(&rel, &a, plain)?;
            if plain && may_write_xattr && done.over.is_none() {
                node.mark_upper_plain(epoch);
            }
            return Ok(fs.tree.attr_with_override(&node, done.st, done.over));
        } else if a.mode.is_some()
            || a.uid.is_some()
            || a.gid.is_some()
            || a.atime.is_some()
            || a.mtime.is_some()
        {
            set_root_attr(up, &a)?;
        }
        Ok(fs.tree.getattr(ino)?)
    }
}

/// Whether `ino` is still what its name shows: not unlinked, nor renamed over, while the
/// kernel holds it. The kernel changes such inodes too: with the writeback cache it sends the
/// times it kept (an unlink changes the ctime) for an inode whose name is gone.
fn still_named(fs: &View, ino: u64) -> bool {
    if ino == ROOT_INO {
        return true;
    }
    let Ok(node) = fs.tree.node(ino) else {
        return false;
    };
    let (parent, name) = {
        let s = node.state.read();
        (s.parent, s.name.clone())
    };
    child_ino(fs, parent, &name) == Some(ino)
}

/// SETATTR of an inode whose name is gone: through a file open for writing on it, if there is
/// one (an upper file); never by its old name, where a lower file would be copied up again
/// (and come back from the dead beside its whiteout) or a new file of that name be changed.
/// Without such a file a change of times only has nothing left to change.
fn setattr_unnamed(fs: &View, up: &UpperLayer, ino: u64, r: &SetAttrReq) -> Reply<Attr> {
    let h =
        r.fh.and_then(|f| fs.handle(f))
            .filter(|h| h.writable && h.ino == ino)
            .or_else(|| fs.writable_handle(ino));
    let Some(h) = h else {
        let changes_more = r.mode.is_some() || r.uid.is_some() || r.gid.is_some();
        if changes_more || r.size.is_some() {
            return Err(errno(libc::ENOENT).into());
        }
        return Ok(fs.getattr(ino, None)?.attr);
    };
    let fd = h.file.as_fd();
    if let Some(size) = r.size {
        up.truncate_fd(fd, size)?;
    }
    if let Some(m) = r.mode {
        sys::fchmod(fd, m & 0o7777)?;
    }
    if r.uid.is_some() || r.gid.is_some() {
        let map = |maps, id| container_to_host(maps, id).ok_or_else(|| errno(libc::EINVAL));
        let uid = r.uid.map(|u| map(&fs.tree.ids.uid_map, u)).transpose()?;
        let gid = r.gid.map(|g| map(&fs.tree.ids.gid_map, g)).transpose()?;
        sys::lchownat(
            fd,
            OsStr::new(""),
            uid.unwrap_or(u32::MAX),
            gid.unwrap_or(u32::MAX),
        )?;
    }
    if r.atime.is_some() || r.mtime.is_some() {
        let omit = TimeSpec::Omit;
        sys::futimens(
            fd,
            r.atime.map_or(omit, time_spec),
            r.mtime.map_or(omit, time_spec),
        )?;
    }
    let node = fs.tree.node(ino)?;
    let st = sys::fstat(fd)?;
    Ok(fs.tree.attr_with_override(&node, st, meta::fd_override(fd)))
}

/// A change of times, owner or mode (not size) made through a file open for writing on the
/// inode, if there is one: its name is not resolved again (`tar -x` changes the owner, mode and
/// times of each file while it holds it open, and the writeback cache sends the times it kept
/// before each of those). An owner or mode change goes this way only when the file has no
/// xattrs (`plain`: so no override_stat to keep) and the backing filesystem takes the owner
/// itself. `None`: not such a change, or no such file; the caller applies it by name.
fn set_attr_open(
    fs: &View,
    node: &Node,
    a: &SetAttr,
    fh: Option<u64>,
    plain: bool,
) -> Option<io::Result<Attr>> {
    let owner = a.uid.is_some() || a.gid.is_some();
    let owner_or_mode = owner || a.mode.is_some();
    let times = a.atime.is_some() || a.mtime.is_some();
    if a.size.is_some() || !(owner_or_mode || times) || (owner_or_mode && !plain) {
        return None;
    }
    let h = fh
        .and_then(|f| fs.handle(f))
        .filter(|h| h.writable && h.ino == node.ino)
        .or_else(|| fs.writable_handle(node.ino))?;
    let fd = h.file.as_fd();
    if owner {
        let (uid, gid) = (a.uid.unwrap_or(u32::MAX), a.gid.unwrap_or(u32::MAX));
        match sys::lchownat(fd, OsStr::new(""), uid, gid) {
            Ok(()) => {}
            // Refused (unprivileged): it goes to override_stat, by name.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => return None,
            Err(e) => return Some(Err(e)),
        }
    }
    let epoch = owner_or_mode.then(|| {
        node.xattrs_changing();
        node.xattr_epoch()
    });
    let done = (|| {
        if let Some(m) = a.mode {
            sys::fchmod(fd, m & 0o7777)?;
        }
        if times {
            let omit = TimeSpec::Omit;
            sys::futimens(fd, a.atime.unwrap_or(omit), a.mtime.unwrap_or(omit))?;
        }
        let st = sys::fstat(fd)?;
        let over = if plain { None } else { meta::fd_override(fd) };
        Ok(fs.tree.attr_with_override(node, st, over))
    })();
    if let (Some(epoch), Ok(_)) = (epoch, &done) {
        node.mark_upper_plain(epoch);
    }
    Some(done)
}

fn set_root_attr(up: &UpperLayer, a: &SetAttr) -> io::Result<()> {
    let fd = sys::open_dir(up.root())?;
    if let Some(m) = a.mode {
        sys::fchmod(fd.as_fd(), m & 0o7777)?;
    }
    if a.uid.is_some() || a.gid.is_some() {
        sys::lchownat(
            fd.as_fd(),
            OsStr::new(""),
            a.uid.unwrap_or(u32::MAX),
            a.gid.unwrap_or(u32::MAX),
        )?;
    }
    if a.atime.is_some() || a.mtime.is_some() {
        sys::futimens(
            fd.as_fd(),
            a.atime.unwrap_or(TimeSpec::Omit),
            a.mtime.unwrap_or(TimeSpec::Omit),
        )?;
    }
    Ok(())
}
