//! The FUSE wire format as the ring carries it, written from the kernel's UAPI header
//! (`include/uapi/linux/fuse.h`, protocol 7.45): the request header, each opcode's argument
//! struct (in the slot's `op_in` area) and the reply structs. All little-endian on the
//! machines this runs on (the kernel's native order: `to_ne_bytes`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use crate::sys::{HEADERS_SIZE, IN_OUT, OP_IN};
use crate::union::attr::{Attr, FileKind};
use crate::union::view::types::{AttrReply, Entry, Statfs};

/// Opcodes (`enum fuse_opcode`).
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
}

/// `FATTR_*` bits of `fuse_setattr_in.valid`.
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
}

/// `FUSE_GETATTR_FH`: `fuse_getattr_in.fh` is valid.
pub const GETATTR_FH: u32 = 1 << 0;
/// `FUSE_WRITE_KILL_SUIDGID` in `fuse_write_in.write_flags`.
pub const WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// `FUSE_FSYNC_FDATASYNC` in `fuse_fsync_in.fsync_flags`.
pub const FSYNC_FDATASYNC: u32 = 1 << 0;
/// `FOPEN_PASSTHROUGH` in `fuse_open_out.open_flags`.
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

/// Reads native-endian fields in order from a byte slice; a read past its end gives 0 (the
/// kernel's structs always fit the `op_in` area, and a short payload is checked by callers).
pub struct Fields<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    pub fn new(b: &'a [u8]) -> Fields<'a> {
        Fields { b, at: 0 }
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(s) = self.b.get(self.at..self.at + N) {
            out.copy_from_slice(s);
        }
        self.at += N;
        out
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_ne_bytes(self.take())
    }

    pub fn i32(&mut self) -> i32 {
        i32::from_ne_bytes(self.take())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_ne_bytes(self.take())
    }

    pub fn i64(&mut self) -> i64 {
        i64::from_ne_bytes(self.take())
    }

    pub fn skip(&mut self, n: usize) -> &mut Self {
        self.at += n;
        self
    }
}

/// `struct fuse_in_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InHeader {
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// Length of the extensions at the end of the payload, in units of 8 bytes.
    pub total_extlen: u16,
}

impl InHeader {
    pub fn parse(h: &[u8; HEADERS_SIZE]) -> InHeader {
        let mut f = Fields::new(&h[IN_OUT..IN_OUT + 40]);
        let _len = f.u32();
        let opcode = f.u32();
        let unique = f.u64();
        let nodeid = f.u64();
        let (uid, gid, pid) = (f.u32(), f.u32(), f.u32());
        let ext = f.u32();
        InHeader {
            opcode,
            unique,
            nodeid,
            uid,
            gid,
            pid,
            total_extlen: (ext & 0xffff) as u16,
        }
    }
}

/// The opcode's argument struct of a request (`op_in`).
pub fn op_in(h: &[u8; HEADERS_SIZE]) -> &[u8] {
    &h[OP_IN..OP_IN + 128]
}

/// `struct fuse_out_header` for a reply of `body_len` bytes (`error`: 0 or a negative errno).
pub fn out_header(unique: u64, error: i32, body_len: usize) -> [u8; 16] {
    let mut o = [0u8; 16];
    o[0..4].copy_from_slice(&((16 + body_len) as u32).to_ne_bytes());
    o[4..8].copy_from_slice(&error.to_ne_bytes());
    o[8..16].copy_from_slice(&unique.to_ne_bytes());
    o
}

/// The first NUL-terminated name of `b` and what follows it (`None`: no NUL).
pub fn name(b: &[u8]) -> Option<(&OsStr, &[u8])> {
    let n = b.iter().position(|&c| c == 0)?;
    Some((OsStr::from_bytes(&b[..n]), &b[n + 1..]))
}

struct Out(Vec<u8>);

impl Out {
    fn with_capacity(n: usize) -> Out {
        Out(Vec::with_capacity(n))
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
}

fn mode_bits(k: FileKind) -> u32 {
    match k {
        FileKind::NamedPipe => libc::S_IFIFO,
        FileKind::CharDevice => libc::S_IFCHR,
        FileKind::BlockDevice => libc::S_IFBLK,
        FileKind::Directory => libc::S_IFDIR,
        FileKind::RegularFile => libc::S_IFREG,
        FileKind::Symlink => libc::S_IFLNK,
        FileKind::Socket => libc::S_IFSOCK,
    }
}

/// `struct fuse_attr` (88 bytes).
fn attr(o: &mut Out, a: &Attr) {
    o.u64(a.ino).u64(a.size).u64(a.blocks);
    o.u64(a.atime.sec as u64)
        .u64(a.mtime.sec as u64)
        .u64(a.ctime.sec as u64);
    o.u32(a.atime.nsec).u32(a.mtime.nsec).u32(a.ctime.nsec);
    o.u32(mode_bits(a.kind) | u32::from(a.perm));
    o.u32(a.nlink).u32(a.uid).u32(a.gid).u32(a.rdev);
    o.u32(a.blksize).u32(0);
}

/// `struct fuse_entry_out` (128 bytes).
fn entry_into(o: &mut Out, e: &Entry, entry_ttl: Duration, attr_ttl: Duration) {
    o.u64(e.attr.ino).u64(e.generation);
    o.u64(entry_ttl.as_secs()).u64(attr_ttl.as_secs());
    o.u32(entry_ttl.subsec_nanos()).u32(attr_ttl.subsec_nanos());
    attr(o, &e.attr);
}

pub fn entry_out(e: &Entry) -> Vec<u8> {
    let mut o = Out::with_capacity(128);
    entry_into(&mut o, e, e.entry_ttl, e.attr_ttl);
    o.0
}

/// `struct fuse_attr_out` (104 bytes).
pub fn attr_out(a: &AttrReply) -> Vec<u8> {
    let mut o = Out::with_capacity(104);
    o.u64(a.ttl.as_secs()).u32(a.ttl.subsec_nanos()).u32(0);
    attr(&mut o, &a.attr);
    o.0
}

/// `struct fuse_open_out` (16 bytes).
pub fn open_out(fh: u64, flags: u32, backing_id: u32) -> Vec<u8> {
    let mut o = Out::with_capacity(16);
    o.u64(fh).u32(flags).u32(backing_id);
    o.0
}

/// `struct fuse_create_out`: the entry (one TTL for entry and attributes, as the fuser
/// transport answers) and the open.
pub fn create_out(e: &Entry, fh: u64, flags: u32, backing_id: u32) -> Vec<u8> {
    let mut o = Out::with_capacity(144);
    entry_into(&mut o, e, e.entry_ttl, e.entry_ttl);
    o.0.extend_from_slice(&open_out(fh, flags, backing_id));
    o.0
}

/// `struct fuse_write_out` (8 bytes).
pub fn write_out(n: u32) -> Vec<u8> {
    let mut o = Out::with_capacity(8);
    o.u32(n).u32(0);
    o.0
}

/// `struct fuse_getxattr_out` (8 bytes).
pub fn xattr_size_out(n: u32) -> Vec<u8> {
    write_out(n)
}

/// `struct fuse_lseek_out`.
pub fn lseek_out(off: i64) -> Vec<u8> {
    (off as u64).to_ne_bytes().to_vec()
}

/// `struct fuse_statfs_out` (80 bytes).
pub fn statfs_out(s: &Statfs) -> Vec<u8> {
    let mut o = Out::with_capacity(80);
    o.u64(s.blocks)
        .u64(s.bfree)
        .u64(s.bavail)
        .u64(s.files)
        .u64(s.ffree);
    o.u32(s.bsize).u32(s.namelen).u32(s.frsize).u32(0);
    o.0.extend_from_slice(&[0u8; 24]);
    o.0
}

/// A READDIR reply being filled, at most `max` bytes.
pub struct DirBuf {
    pub buf: Vec<u8>,
    max: usize,
}

impl DirBuf {
    pub fn new(max: usize) -> DirBuf {
        DirBuf {
            buf: Vec::with_capacity(max.min(1 << 16)),
            max,
        }
    }

    fn fits(&self, n: usize) -> bool {
        self.buf.len() + n <= self.max
    }

    fn dirent(&mut self, ino: u64, off: u64, typ: u32, name: &[u8]) {
        let mut o = Out(std::mem::take(&mut self.buf));
        o.u64(ino).u64(off).u32(name.len() as u32).u32(typ);
        o.0.extend_from_slice(name);
        let pad = (8 - o.0.len() % 8) % 8;
        let len = o.0.len() + pad;
        o.0.resize(len, 0);
        self.buf = o.0;
    }

    /// Add a `fuse_dirent`; true when it does not fit (nothing added).
    pub fn add(&mut self, ino: u64, off: u64, kind: FileKind, name: &OsStr) -> bool {
        let name = name.as_bytes();
        if !self.fits((24 + name.len()).next_multiple_of(8)) {
            return true;
        }
        self.dirent(ino, off, mode_bits(kind) >> 12, name);
        false
    }

    /// Add a `fuse_direntplus` (entry with one TTL, as the fuser transport answers); true
    /// when it does not fit.
    pub fn add_plus(&mut self, name: &OsStr, off: u64, e: &Entry) -> bool {
        let nb = name.as_bytes();
        if !self.fits(128 + (24 + nb.len()).next_multiple_of(8)) {
            return true;
        }
        let mut o = Out(std::mem::take(&mut self.buf));
        entry_into(&mut o, e, e.entry_ttl, e.entry_ttl);
        self.buf = o.0;
        self.dirent(e.attr.ino, off, mode_bits(e.attr.kind) >> 12, nb);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::union::attr::Timestamp;

    fn sample() -> Attr {
        let t = Timestamp { sec: 5, nsec: 7 };
        Attr {
            ino: 42,
            size: 3,
            blocks: 1,
            atime: t,
            mtime: t,
            ctime: t,
            kind: FileKind::RegularFile,
            perm: 0o644,
            nlink: 1,
            uid: 1,
            gid: 2,
            rdev: 0,
            blksize: 4096,
        }
    }

    #[test]
    fn struct_sizes_match_the_abi() {
        let e = Entry {
            attr: sample(),
            attr_ttl: Duration::from_secs(1),
            entry_ttl: Duration::from_millis(1500),
            generation: 9,
        };
        let eo = entry_out(&e);
        assert_eq!(eo.len(), 128);
        assert_eq!(&eo[0..8], &42u64.to_ne_bytes());
        assert_eq!(&eo[16..24], &1u64.to_ne_bytes());
        assert_eq!(&eo[32..36], &500_000_000u32.to_ne_bytes());
        // mode at 40 + 60
        assert_eq!(&eo[100..104], &(libc::S_IFREG | 0o644).to_ne_bytes());
        let a = AttrReply {
            attr: sample(),
            ttl: Duration::from_secs(2),
        };
        assert_eq!(attr_out(&a).len(), 104);
        assert_eq!(create_out(&e, 1, 2, 3).len(), 144);
        assert_eq!(
            statfs_out(&Statfs {
                blocks: 1,
                bfree: 1,
                bavail: 1,
                files: 1,
                ffree: 1,
                bsize: 1,
                namelen: 255,
                frsize: 1
            })
            .len(),
            80
        );
        let mut d = DirBuf::new(64);
        assert!(!d.add(1, 1, FileKind::Directory, OsStr::new("abc")));
        assert_eq!(d.buf.len(), 32);
        assert_eq!(&d.buf[20..24], &4u32.to_ne_bytes());
        assert!(d.add(2, 2, FileKind::Directory, OsStr::new("0123456789")));
        assert!(d.add_plus(OsStr::new("x"), 3, &e));
    }

    #[test]
    fn header_and_names() {
        let mut h = [0u8; HEADERS_SIZE];
        h[4..8].copy_from_slice(&op::LOOKUP.to_ne_bytes());
        h[8..16].copy_from_slice(&77u64.to_ne_bytes());
        h[16..24].copy_from_slice(&1u64.to_ne_bytes());
        h[24..28].copy_from_slice(&1000u32.to_ne_bytes());
        let ih = InHeader::parse(&h);
        assert_eq!((ih.opcode, ih.unique, ih.nodeid, ih.uid), (1, 77, 1, 1000));
        let (n, rest) = name(b"ab\0cd\0").unwrap();
        assert_eq!(n, OsStr::new("ab"));
        assert_eq!(name(rest).unwrap().0, OsStr::new("cd"));
        assert!(name(b"no-nul").is_none());
        let o = out_header(77, -2, 8);
        assert_eq!(&o[0..4], &24u32.to_ne_bytes());
        assert_eq!(&o[4..8], &(-2i32).to_ne_bytes());
    }
}
