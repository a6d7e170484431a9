//! What crosses the seam between the view's core and a transport: typed requests and replies,
//! and what the kernel connection does for the core. No transport's types appear here; the
//! fuser adapter (`union::fs`) and a ring transport each convert their wire form to these.

use std::any::Any;
use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

use crate::union::attr::{Attr, Timestamp};

/// An error number to answer a request with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const ESTALE: Errno = Errno(libc::ESTALE);

    /// The positive error number.
    pub fn code(self) -> i32 {
        self.0
    }
}

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Errno {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<Errno> for io::Error {
    fn from(e: Errno) -> io::Error {
        io::Error::from_raw_os_error(e.0)
    }
}

/// What a handler answers: a value or an error number.
pub type Reply<T> = Result<T, Errno>;

/// Who made a request (from the request header), small enough to go to another thread with
/// the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// A found (or made) entry: its attributes and how long the kernel may keep them.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub attr: Attr,
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
    pub generation: u64,
}

/// Attributes with how long the kernel may keep them (GETATTR, SETATTR).
#[derive(Debug, Clone, Copy)]
pub struct AttrReply {
    pub attr: Attr,
    pub ttl: Duration,
}

/// A time to set: the caller's clock now, or a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Now,
    At(Timestamp),
}

/// What a SETATTR asks to change (`None`: leave it).
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttrReq {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// The open file the change came through (`ftruncate`, `futimens`).
    pub fh: Option<u64>,
}

/// Flags of an open reply (the kernel's `FOPEN_*` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenFlags(pub u32);

impl OpenFlags {
    pub const NONE: OpenFlags = OpenFlags(0);
    pub const DIRECT_IO: OpenFlags = OpenFlags(1 << 0);
    /// The kernel may keep the file's (or directory's) cached pages across opens.
    pub const KEEP_CACHE: OpenFlags = OpenFlags(1 << 1);
    /// The kernel may cache the directory's listing.
    pub const CACHE_DIR: OpenFlags = OpenFlags(1 << 3);

    pub fn contains(self, other: OpenFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for OpenFlags {
    type Output = OpenFlags;
    fn bitor(self, o: OpenFlags) -> OpenFlags {
        OpenFlags(self.0 | o.0)
    }
}

/// A passthrough backing file registered with the kernel connection; dropping the last
/// reference closes it. Each transport has its own kind and gets it back with `as_any`.
pub trait Backing: Send + Sync + fmt::Debug {
    fn as_any(&self) -> &dyn Any;
}

/// Registers passthrough backing files: the kernel connection's part of an open.
pub trait Registrar {
    /// Register `fd` as a backing file (`FUSE_DEV_IOC_BACKING_OPEN`).
    fn open_backing(&self, fd: BorrowedFd<'_>) -> io::Result<Arc<dyn Backing>>;
}

/// The answer to an open (OPEN, OPENDIR).
#[derive(Debug, Clone)]
pub struct Opened {
    pub fh: u64,
    pub flags: OpenFlags,
    /// Reads and writes go straight to this backing file in the kernel.
    pub backing: Option<Arc<dyn Backing>>,
}

/// The answer to a CREATE: the new entry and its open file.
#[derive(Debug, Clone)]
pub struct Created {
    pub entry: Entry,
    pub open: Opened,
}

/// Where the answer to an OPEN goes: it may be sent from a thread of its own (a large
/// copy-up), so it carries the registration of a backing file with it.
pub trait OpenReply: Registrar + Send + 'static {
    fn reply(self, r: Reply<Opened>);
}

/// The answer to GETXATTR and LISTXATTR: the size alone (the caller asked with size 0) or the
/// data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Xattr {
    Size(u32),
    Data(Vec<u8>),
}

impl Xattr {
    /// The answer for a value `v` to a request that allows `size` bytes (0: asks the size).
    pub fn fit(v: Vec<u8>, size: u32) -> Reply<Xattr> {
        if size == 0 {
            Ok(Xattr::Size(v.len() as u32))
        } else if v.len() > size as usize {
            Err(Errno::ERANGE)
        } else {
            Ok(Xattr::Data(v))
        }
    }
}

/// The answer to STATFS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// Sends the kernel notifications (the connection's notify channel).
pub trait Notify: Send + 'static {
    /// Drop the kernel's cached entry `name` in directory `parent` (`FUSE_NOTIFY_INVAL_ENTRY`).
    fn inval_entry(&self, parent: u64, name: &std::ffi::OsStr) -> io::Result<()>;
}
