//! Every request that changes the view. `fs.rs` delegates each write method here in one line.
//!
//! This is the read-only version: changes are refused with `EROFS`; `flush`/`fsync` succeed
//! (there is nothing to write back) and `lseek` answers `SEEK_DATA`/`SEEK_HOLE` from the
//! backing file. The write path (copy-up, whiteouts, quota) replaces these bodies.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::SystemTime;

use fuser::{
    BsdFileFlags, CopyFileRangeFlags, Errno, FileHandle, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};

use crate::sys;
use crate::union::fs::{err, UnionFs};

fn erofs() -> Errno {
    Errno::from_i32(libc::EROFS)
}

/// `open` with write access or `O_TRUNC` (read-only opens are served by fs.rs).
pub(crate) fn open_writable(
    _fs: &UnionFs,
    _req: &Request,
    _ino: INodeNo,
    _flags: OpenFlags,
    reply: ReplyOpen,
) {
    reply.error(erofs())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn setattr(
    _fs: &UnionFs,
    _req: &Request,
    _ino: INodeNo,
    _mode: Option<u32>,
    _uid: Option<u32>,
    _gid: Option<u32>,
    _size: Option<u64>,
    _atime: Option<TimeOrNow>,
    _mtime: Option<TimeOrNow>,
    _ctime: Option<SystemTime>,
    _fh: Option<FileHandle>,
    _flags: Option<BsdFileFlags>,
    reply: ReplyAttr,
) {
    reply.error(erofs())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn mknod(
    _fs: &UnionFs,
    _req: &Request,
    _parent: INodeNo,
    _name: &OsStr,
    _mode: u32,
    _umask: u32,
    _rdev: u32,
    reply: ReplyEntry,
) {
    reply.error(erofs())
}

pub(crate) fn mkdir(
    _fs: &UnionFs,
    _req: &Request,
    _parent: INodeNo,
    _name: &OsStr,
    _mode: u32,
    _umask: u32,
    reply: ReplyEntry,
) {
    reply.error(erofs())
}

pub(crate) fn unlink(
    _fs: &UnionFs,
    _req: &Request,
    _parent: INodeNo,
    _name: &OsStr,
    reply: ReplyEmpty,
) {
    reply.error(erofs())
}

pub(crate) fn rmdir(
    _fs: &UnionFs,
    _req: &Request,
    _parent: INodeNo,
    _name: &OsStr,
    reply: ReplyEmpty,
) {
    reply.error(erofs())
}

pub(crate) fn symlink(
    _fs: &UnionFs,
    _req: &Request,
    _parent: INodeNo,
    _link_name: &OsStr,
    _target: &Path,
    reply: ReplyEntry,
) {
    reply.error(erofs())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn rename(
    _fs: &UnionFs,
    _req: &Request,
    _parent: INodeNo,
    _name: &OsStr,
    _newparent: INodeNo,
    _newname: &OsStr,
    _flags: RenameFlags,
    reply: ReplyEmpty,
) {
    reply.error(erofs())
}

pub(crate) fn link(
    _fs: &UnionFs,
    _req: &Request,
    _ino: INodeNo,
    _newparent: INodeNo,
    _newname: &OsStr,
    reply: ReplyEntry,
) {
    reply.error(erofs())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn write(
    _fs: &UnionFs,
    _req: &Request,
    _ino: INodeNo,
    _fh: FileHandle,
    _offset: u64,
    _data: &[u8],
    _write_flags: WriteFlags,
    _flags: OpenFlags,
    _lock_owner: Option<LockOwner>,
    reply: ReplyWrite,
) {
    reply.error(erofs())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn create(
    _fs: &UnionFs,
    _req: &Request,
    _parent: INodeNo,
    _name: &OsStr,
    _mode: u32,
    _umask: u32,
    _flags: i32,
    reply: ReplyCreate,
) {
    reply.error(erofs())
}

pub(crate) fn flush(
    _fs: &UnionFs,
    _req: &Request,
    _ino: INodeNo,
    _fh: FileHandle,
    _lock_owner: LockOwner,
    reply: ReplyEmpty,
) {
    reply.ok()
}

pub(crate) fn fsync(
    _fs: &UnionFs,
    _req: &Request,
    _ino: INodeNo,
    _fh: FileHandle,
    _datasync: bool,
    reply: ReplyEmpty,
) {
    reply.ok()
}

pub(crate) fn fsyncdir(
    _fs: &UnionFs,
    _req: &Request,
    _ino: INodeNo,
    _fh: FileHandle,
    _datasync: bool,
    reply: ReplyEmpty,
) {
    reply.ok()
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn setxattr(
    _fs: &UnionFs,
    _req: &Request,
    _ino: INodeNo,
    _name: &OsStr,
    _value: &[u8],
    _flags: i32,
    _position: u32,
    reply: ReplyEmpty,
) {
    reply.error(erofs())
}

pub(crate) fn removexattr(
    _fs: &UnionFs,
    _req: &Request,
    _ino: INodeNo,
    _name: &OsStr,
    reply: ReplyEmpty,
) {
    reply.error(erofs())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn fallocate(
    _fs: &UnionFs,
    _req: &Request,
    _ino: INodeNo,
    _fh: FileHandle,
    _offset: u64,
    _length: u64,
    _mode: i32,
    reply: ReplyEmpty,
) {
    reply.error(erofs())
}

/// `SEEK_DATA`/`SEEK_HOLE` (and the others) on the backing file of `fh`.
pub(crate) fn lseek(
    fs: &UnionFs,
    _req: &Request,
    _ino: INodeNo,
    fh: FileHandle,
    offset: i64,
    whence: i32,
    reply: ReplyLseek,
) {
    let Some(h) = fs.handle(fh.0) else {
        return reply.error(Errno::EBADF);
    };
    match sys::lseek(h.file.as_fd(), offset, whence) {
        Ok(o) => reply.offset(o),
        Err(e) => reply.error(err(e)),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn copy_file_range(
    _fs: &UnionFs,
    _req: &Request,
    _ino_in: INodeNo,
    _fh_in: FileHandle,
    _offset_in: u64,
    _ino_out: INodeNo,
    _fh_out: FileHandle,
    _offset_out: u64,
    _len: u64,
    _flags: CopyFileRangeFlags,
    reply: ReplyWrite,
) {
    reply.error(erofs())
}
