//! A layer tar served without unpacking it: an index of its members (names, metadata, xattrs,
//! link targets and the offset of each file's data in the uncompressed tar), made in one
//! streaming pass ([`build`]) and read back here.
//!
//! The tree is kept as one entry table plus one byte arena, with no allocation per entry:
//! entries are in breadth-first order, the children of a directory are one contiguous range of
//! the table sorted by name, so a look-up is a binary search per path component. Whiteouts and
//! opaque markers are kept under their own names (`.wh.NAME`, `.wh..wh..opq`), exactly as an
//! unpacked layer directory keeps them, so the union view merges both kinds one way.
//!
//! ```text
//! header   32 bytes: magic "SFSTIDX1", entries u32, xattrs u32, arena bytes u64, tar bytes u64
//! entries  64 bytes each (little endian): first_child u32, child_count u32, name_off u32,
//!          name_len u16, xattr_count u16, mode u32, uid u32, gid u32, nlink u32, mtime i64,
//!          size u64, data u64 (file: data offset in the tar; symlink: target in the arena;
//!          device: rdev), ino u32 (hard links share it), xattr_first u32
//! xattrs   16 bytes each: name_off u32, name_len u32, value_off u32, value_len u32
//! arena    names, link targets, xattr names and values
//! ```

pub mod build;

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

pub use build::{build, Built};

use crate::sys;

const MAGIC: &[u8; 8] = b"SFSTIDX1";
const HEADER: usize = 32;
const ENTRY: usize = 64;
const XATTR: usize = 16;

/// Index of an entry in the table (the root is 0).
pub type EntryId = u32;

fn bad(reason: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("tar index: {reason}"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// One entry's metadata, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: i64,
    pub size: u64,
    /// File: data offset in the tar; symlink: target offset in the arena; device: rdev.
    pub data: u64,
    /// Number shared by the names of one hard-linked file (1-based).
    pub ino: u64,
}

impl Meta {
    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
}

/// The bytes of an index: built in memory, or a mapped index file.
#[derive(Debug)]
enum Bytes {
    Owned(Vec<u8>),
    Mapped(sys::MappedFile),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped(m) => m.bytes(),
        }
    }
}

/// A tar index, in memory or mapped (validated when opened: no offset points outside it, so
/// the accessors below never index out of bounds).
#[derive(Debug)]
pub struct TarIndex {
    buf: Bytes,
    count: u32,
    xattrs_at: usize,
    arena_at: usize,
    tar_len: u64,
}

impl TarIndex {
    /// Parse and check an index.
    pub fn from_bytes(buf: Vec<u8>) -> io::Result<TarIndex> {
        TarIndex::parse(Bytes::Owned(buf))
    }

    fn parse(buf: Bytes) -> io::Result<TarIndex> {
        if buf.len() < HEADER || &buf[..8] != MAGIC {
            return Err(bad("not a stratafs tar index"));
        }
        let count = u32_at(&buf, 8);
        let xcount = u32_at(&buf, 12) as usize;
        let arena_len = u64_at(&buf, 16) as usize;
        let tar_len = u64_at(&buf, 24);
        let xattrs_at = HEADER + count as usize * ENTRY;
        let arena_at = xattrs_at + xcount * XATTR;
        if count == 0 || buf.len() != arena_at.saturating_add(arena_len) {
            return Err(bad("truncated"));
        }
        let idx = TarIndex {
            buf,
            count,
            xattrs_at,
            arena_at,
            tar_len,
        };
        idx.validate(xcount, arena_len as u64)?;
        Ok(idx)
    }

    fn validate(&self, xcount: usize, arena_len: u64) -> io::Result<()> {
        let in_arena = |off: u64, len: u64| off.checked_add(len).is_some_and(|e| e <= arena_len);
        for id in 0..self.count {
            let e = self.rec(id);
            let (first, n) = (u32_at(e, 0) as u64, u32_at(e, 4) as u64);
            if n > 0 && (first <= id as u64 || first + n > self.count as u64) {
                return Err(bad("child range out of order"));
            }
            if !in_arena(u32_at(e, 8) as u64, u16_at(e, 12) as u64) {
                return Err(bad("name outside the arena"));
            }
            let (xf, xn) = (u32_at(e, 60) as usize, u16_at(e, 14) as usize);
            if xf + xn > xcount {
                return Err(bad("xattr range outside the table"));
            }
            let m = self.meta(id);
            match m.file_type() {
                libc::S_IFLNK if !in_arena(m.data, m.size) => {
                    return Err(bad("link target outside the arena"))
                }
                libc::S_IFREG
                    if m.data
                        .checked_add(m.size)
                        .map_or(true, |e| e > self.tar_len) =>
                {
                    return Err(bad("file data past the end of the tar"))
                }
                _ => {}
            }
        }
        for x in 0..xcount {
            let r = &self.buf[self.xattrs_at + x * XATTR..];
            if !in_arena(u32_at(r, 0) as u64, u32_at(r, 4) as u64)
                || !in_arena(u32_at(r, 8) as u64, u32_at(r, 12) as u64)
            {
                return Err(bad("xattr outside the arena"));
            }
        }
        Ok(())
    }

    /// Map and check the index file at `path`. It is mapped rather than read: after the
    /// check, which reads it all, its pages are let go, and only those a mount touches are
    /// resident again (a 1M-entry layer's index is 80 MiB).
    pub fn open(path: &Path) -> io::Result<TarIndex> {
        let file = std::fs::File::open(path)?;
        let map = sys::MappedFile::map(&file)?;
        let idx = TarIndex::parse(Bytes::Mapped(map))?;
        if let Bytes::Mapped(m) = &idx.buf {
            m.release_pages();
        }
        Ok(idx)
    }

    /// Bytes of the uncompressed tar the index describes.
    pub fn tar_len(&self) -> u64 {
        self.tar_len
    }

    /// Number of entries (the root included).
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    fn rec(&self, id: EntryId) -> &[u8] {
        let at = HEADER + id as usize * ENTRY;
        &self.buf[at..at + ENTRY]
    }

    fn arena(&self, off: u64, len: u64) -> &[u8] {
        let at = self.arena_at + off as usize;
        &self.buf[at..at + len as usize]
    }

    pub fn meta(&self, id: EntryId) -> Meta {
        let e = self.rec(id);
        Meta {
            mode: u32_at(e, 16),
            uid: u32_at(e, 20),
            gid: u32_at(e, 24),
            nlink: u32_at(e, 28),
            mtime: u64_at(e, 32) as i64,
            size: u64_at(e, 40),
            data: u64_at(e, 48),
            ino: u32_at(e, 56) as u64 + 1,
        }
    }

    pub fn name(&self, id: EntryId) -> &OsStr {
        let e = self.rec(id);
        OsStr::from_bytes(self.arena(u32_at(e, 8) as u64, u16_at(e, 12) as u64))
    }

    /// The children of directory `id` (empty for anything else), sorted by name.
    pub fn children(&self, id: EntryId) -> std::ops::Range<EntryId> {
        let e = self.rec(id);
        let first = u32_at(e, 0);
        first..first + u32_at(e, 4)
    }

    /// The child `name` of directory `dir`.
    pub fn child(&self, dir: EntryId, name: &[u8]) -> Option<EntryId> {
        let r = self.children(dir);
        let (mut lo, mut hi) = (r.start, r.end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.name(mid).as_bytes().cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// The entry at `rel` (relative to the layer root; empty: the root).
    pub fn lookup(&self, rel: &Path) -> Option<EntryId> {
        let mut cur = 0;
        for c in rel.components() {
            match c {
                Component::Normal(n) => cur = self.child(cur, n.as_bytes())?,
                Component::CurDir | Component::RootDir => {}
                Component::ParentDir | Component::Prefix(_) => return None,
            }
        }
        Some(cur)
    }

    /// The target of symlink `id`.
    pub fn link_target(&self, id: EntryId) -> Option<&[u8]> {
        let m = self.meta(id);
        (m.file_type() == libc::S_IFLNK).then(|| self.arena(m.data, m.size))
    }

    /// The xattrs of `id`: (name, value) pairs.
    pub fn xattrs(&self, id: EntryId) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let e = self.rec(id);
        let (first, n) = (u32_at(e, 60) as usize, u16_at(e, 14) as usize);
        (first..first + n).map(move |x| {
            let r = &self.buf[self.xattrs_at + x * XATTR..];
            (
                self.arena(u32_at(r, 0) as u64, u32_at(r, 4) as u64),
                self.arena(u32_at(r, 8) as u64, u32_at(r, 12) as u64),
            )
        })
    }

    /// A `stat` of entry `id` as an unpacked layer would give it (`dev`: the device to show).
    pub fn stat(&self, id: EntryId) -> libc::stat {
        let m = self.meta(id);
        let mut st = crate::sys::empty_stat();
        st.st_mode = m.mode;
        st.st_uid = m.uid;
        st.st_gid = m.gid;
        st.st_nlink = m.nlink as _;
        st.st_ino = m.ino;
        st.st_size = match m.file_type() {
            libc::S_IFREG | libc::S_IFLNK => m.size as i64,
            libc::S_IFDIR => 4096,
            _ => 0,
        };
        if matches!(m.file_type(), libc::S_IFCHR | libc::S_IFBLK) {
            st.st_rdev = m.data;
        }
        st.st_blksize = 4096;
        st.st_blocks = (st.st_size + 511) / 512;
        st.st_mtime = m.mtime;
        st.st_atime = m.mtime;
        st.st_ctime = m.mtime;
        st
    }
}

/// The bytes of the tar that the index file at `path` describes (read from its header only).
pub fn tar_len_of(path: &Path) -> io::Result<u64> {
    use std::io::Read;
    let mut head = [0u8; HEADER];
    std::fs::File::open(path)?.read_exact(&mut head)?;
    if &head[..8] != MAGIC {
        return Err(bad("not a stratafs tar index"));
    }
    Ok(u64_at(&head, 24))
}

/// Where the bytes of an indexed tar are: a file (an image archive, or the decompressed copy
/// kept beside the index) and the tar's first byte in it. Kept beside the index as
/// `<name>.src` (JSON); `dev`, `ino`, `len` and `mtime` tell whether the file is still the
/// one that was indexed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataSource {
    pub path: std::path::PathBuf,
    pub offset: u64,
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime: i64,
}

impl DataSource {
    /// Describe `path` as it is now, the tar starting at `offset`.
    pub fn of(path: &Path, offset: u64) -> io::Result<DataSource> {
        use std::os::unix::fs::MetadataExt;
        let path = std::fs::canonicalize(path)?;
        let md = std::fs::metadata(&path)?;
        Ok(DataSource {
            path,
            offset,
            dev: md.dev(),
            ino: md.ino(),
            len: md.len(),
            mtime: md.mtime(),
        })
    }

    /// Whether the file is still there, unchanged.
    pub fn still_valid(&self) -> bool {
        DataSource::of(&self.path, self.offset).is_ok_and(|now| now == *self)
    }

    /// The sidecar path of index `idx` (`x.idx` -> `x.src`).
    pub fn sidecar(idx: &Path) -> std::path::PathBuf {
        idx.with_extension("src")
    }

    /// Read the sidecar of index `idx`.
    pub fn load(idx: &Path) -> io::Result<DataSource> {
        let raw = std::fs::read(DataSource::sidecar(idx))?;
        serde_json::from_slice(&raw).map_err(|e| bad(&format!("data source: {e}")))
    }
}
