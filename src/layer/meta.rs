//! `user.containers.override_stat`: ownership, mode and file type that an unprivileged process
//! could not apply to the backing file. Value: ASCII `uid:gid:mode[:type]`, mode in octal (may
//! include file-type bits), type one of `dir`, `file`, `symlink`, `pipe`, `socket`,
//! `block-MAJ-MIN`, `char-MAJ-MIN`. Podman and fuse-overlayfs read and write the same format.

use std::fmt;
use std::io;
use std::path::Path;

use crate::sys;

/// Name of the xattr holding the override.
pub const OVERRIDE_STAT_XATTR: &str = "user.containers.override_stat";

/// The file type recorded in an override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideKind {
    Dir,
    File,
    Symlink,
    Pipe,
    Socket,
    Block(u32, u32),
    Char(u32, u32),
}

impl OverrideKind {
    /// The `S_IFMT` bits of this kind.
    pub fn type_bits(self) -> u32 {
        match self {
            OverrideKind::Dir => libc::S_IFDIR,
            OverrideKind::File => libc::S_IFREG,
            OverrideKind::Symlink => libc::S_IFLNK,
            OverrideKind::Pipe => libc::S_IFIFO,
            OverrideKind::Socket => libc::S_IFSOCK,
            OverrideKind::Block(..) => libc::S_IFBLK,
            OverrideKind::Char(..) => libc::S_IFCHR,
        }
    }

    /// The device number, for block and char devices.
    pub fn rdev(self) -> u64 {
        match self {
            OverrideKind::Block(ma, mi) | OverrideKind::Char(ma, mi) => sys::makedev(ma, mi),
            _ => 0,
        }
    }

    /// The kind for a full `st_mode` and `st_rdev`, if the type is one the format knows.
    pub fn from_mode(mode: u32, rdev: u64) -> Option<Self> {
        let (ma, mi) = sys::dev_major_minor(rdev);
        Some(match mode & libc::S_IFMT {
            libc::S_IFDIR => OverrideKind::Dir,
            libc::S_IFREG => OverrideKind::File,
            libc::S_IFLNK => OverrideKind::Symlink,
            libc::S_IFIFO => OverrideKind::Pipe,
            libc::S_IFSOCK => OverrideKind::Socket,
            libc::S_IFBLK => OverrideKind::Block(ma, mi),
            libc::S_IFCHR => OverrideKind::Char(ma, mi),
            _ => return None,
        })
    }

    fn parse(s: &str) -> Option<Self> {
        let dev = |rest: &str| {
            let (a, b) = rest.split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        };
        Some(match s {
            "dir" => OverrideKind::Dir,
            "file" => OverrideKind::File,
            "symlink" => OverrideKind::Symlink,
            "pipe" => OverrideKind::Pipe,
            "socket" => OverrideKind::Socket,
            _ => {
                if let Some(rest) = s.strip_prefix("block-") {
                    let (a, b) = dev(rest)?;
                    OverrideKind::Block(a, b)
                } else if let Some(rest) = s.strip_prefix("char-") {
                    let (a, b) = dev(rest)?;
                    OverrideKind::Char(a, b)
                } else {
                    return None;
                }
            }
        })
    }
}

impl fmt::Display for OverrideKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OverrideKind::Dir => f.write_str("dir"),
            OverrideKind::File => f.write_str("file"),
            OverrideKind::Symlink => f.write_str("symlink"),
            OverrideKind::Pipe => f.write_str("pipe"),
            OverrideKind::Socket => f.write_str("socket"),
            OverrideKind::Block(a, b) => write!(f, "block-{a}-{b}"),
            OverrideKind::Char(a, b) => write!(f, "char-{a}-{b}"),
        }
    }
}

/// A parsed `override_stat` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverrideStat {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits, possibly with file-type bits as written by other tools.
    pub mode: u32,
    pub kind: Option<OverrideKind>,
}

impl OverrideStat {
    /// Parse a value; `None` for anything malformed (such a value is ignored, not trusted).
    pub fn parse(raw: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(raw).ok()?.trim_end_matches('\0').trim();
        let mut it = s.splitn(4, ':');
        let uid = it.next()?.parse().ok()?;
        let gid = it.next()?.parse().ok()?;
        let mode = u32::from_str_radix(it.next()?, 8).ok()?;
        let kind = match it.next() {
            Some(k) => Some(OverrideKind::parse(k)?),
            None => None,
        };
        Some(OverrideStat {
            uid,
            gid,
            mode,
            kind,
        })
    }

    /// The full `st_mode` to show: the kind's type bits when given, else the mode's own type
    /// bits, else `fallback_type` (the backing file's).
    pub fn st_mode(&self, fallback_type: u32) -> u32 {
        let ty = match self.kind {
            Some(k) => k.type_bits(),
            None if self.mode & libc::S_IFMT != 0 => self.mode & libc::S_IFMT,
            None => fallback_type & libc::S_IFMT,
        };
        ty | (self.mode & 0o7777)
    }

    /// Apply the override to a `stat` of the backing file.
    pub fn apply(&self, st: &mut libc::stat) {
        st.st_uid = self.uid;
        st.st_gid = self.gid;
        st.st_mode = self.st_mode(st.st_mode);
        if let Some(k) = self.kind {
            if matches!(k, OverrideKind::Block(..) | OverrideKind::Char(..)) {
                st.st_rdev = k.rdev();
            }
        }
    }
}

impl fmt::Display for OverrideStat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{:o}", self.uid, self.gid, self.mode & 0o7777)?;
        if let Some(k) = self.kind {
            write!(f, ":{k}")?;
        }
        Ok(())
    }
}

/// Read the override of the file at `path` (not following a final symlink).
pub fn read_override(path: &Path) -> io::Result<Option<OverrideStat>> {
    Ok(sys::lgetxattr(path, OVERRIDE_STAT_XATTR)?.and_then(|v| OverrideStat::parse(&v)))
}

/// The override of the open file `fd`; none when it has none or it cannot be read.
pub fn fd_override(fd: std::os::fd::BorrowedFd<'_>) -> Option<OverrideStat> {
    sys::fgetxattr(fd, OVERRIDE_STAT_XATTR)
        .ok()
        .flatten()
        .and_then(|v| OverrideStat::parse(&v))
}

/// Write the override of the file at `path`.
pub fn write_override(path: &Path, o: &OverrideStat) -> io::Result<()> {
    sys::lsetxattr(path, OVERRIDE_STAT_XATTR, o.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in [
            "0:0:755",
            "1000:1000:644:file",
            "0:0:600:char-1-3",
            "5:6:1777:dir",
            "0:0:644:block-8-0",
        ] {
            let o = OverrideStat::parse(s.as_bytes()).unwrap();
            assert_eq!(o.to_string(), s);
        }
    }

    #[test]
    fn mode_with_type_bits_from_other_tools() {
        let o = OverrideStat::parse(b"0:0:100644").unwrap();
        assert_eq!(o.st_mode(libc::S_IFDIR), libc::S_IFREG | 0o644);
        let o = OverrideStat::parse(b"0:0:755").unwrap();
        assert_eq!(o.st_mode(libc::S_IFDIR | 0o700), libc::S_IFDIR | 0o755);
        let o = OverrideStat::parse(b"0:0:644:char-1-3").unwrap();
        let mut st = sys::empty_stat();
        st.st_mode = libc::S_IFREG | 0o600;
        o.apply(&mut st);
        assert_eq!(st.st_mode, libc::S_IFCHR | 0o644);
        assert_eq!(st.st_rdev, sys::makedev(1, 3));
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "0:0",
            "a:0:755",
            "0:0:999",
            "0:0:755:tape",
            "0:0:755:char-1",
        ] {
            assert!(OverrideStat::parse(s.as_bytes()).is_none(), "{s}");
        }
    }
}
