//! What the view shows of a file, in its own terms (no transport's types): the kind of an
//! entry and its attributes. The tree makes these; each transport (the fuser adapter, a ring
//! transport) converts them to its wire form in place.

/// The type of a file, as `d_type` and `st_mode` give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    NamedPipe,
    CharDevice,
    BlockDevice,
    Directory,
    RegularFile,
    Symlink,
    Socket,
}

impl FileKind {
    /// The kind an `st_mode` names (anything unknown counts as a regular file).
    pub fn of_mode(mode: u32) -> FileKind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => FileKind::Directory,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            libc::S_IFIFO => FileKind::NamedPipe,
            libc::S_IFSOCK => FileKind::Socket,
            _ => FileKind::RegularFile,
        }
    }

    /// The kind a `d_type` names (`None`: `DT_UNKNOWN`, or `DT_CHR`, which may be a whiteout).
    pub fn of_dtype(dt: u8) -> Option<FileKind> {
        Some(match dt {
            libc::DT_DIR => FileKind::Directory,
            libc::DT_REG => FileKind::RegularFile,
            libc::DT_LNK => FileKind::Symlink,
            libc::DT_BLK => FileKind::BlockDevice,
            libc::DT_FIFO => FileKind::NamedPipe,
            libc::DT_SOCK => FileKind::Socket,
            _ => return None,
        })
    }
}

/// A point in time as the kernel passes it: seconds since the epoch (negative before it) and
/// nanoseconds within the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

impl Timestamp {
    /// From a stat's seconds and nanoseconds (nanoseconds clamped into range).
    pub fn new(sec: i64, nsec: i64) -> Timestamp {
        Timestamp {
            sec,
            nsec: nsec.clamp(0, 999_999_999) as u32,
        }
    }
}

/// The attributes of a file as the view shows them (override_stat applied, owners mapped, the
/// number being the view's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub kind: FileKind,
    /// Permission bits with setuid/setgid/sticky (`mode & 0o7777`).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

impl Attr {
    /// Attributes with nothing known but the number and kind (`.` and `..` in a listing, a
    /// negative entry).
    pub fn bare(ino: u64, kind: FileKind) -> Attr {
        Attr {
            ino,
            size: 0,
            blocks: 0,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            kind,
            perm: 0,
            nlink: 0,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
        }
    }
}
