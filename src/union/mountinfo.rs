//! What the kernel's mount tables say about a FUSE view: whether one is mounted at a path, and
//! whether it is still mounted anywhere (in any mount namespace) after it was unmounted here.
//!
//! The second question decides whether an unmount should wait for the server to exit: a view
//! also mounted in a running container's namespace keeps its connection, and its server, for
//! as long as that namespace lasts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

const FUSECTL_DIR: &str = "/sys/fs/fuse/connections";

/// The device (`major:minor`, as mountinfo gives it) of a FUSE mount at `path`, if any.
pub fn fuse_mount_device(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.as_os_str().as_encoded_bytes();
    info.lines().find_map(|line| {
        let m = Line::parse(line)?;
        (m.is_fuse() && m.mountpoint == want).then(|| m.dev.to_string())
    })
}

/// Whether the FUSE view of device `dev` is still mounted somewhere: fusectl's connection
/// directory when fusectl is mounted (it also counts lazily detached mounts with open files),
/// otherwise every mount namespace this process can see, one mountinfo read per namespace.
pub fn still_mounted_anywhere(dev: &str) -> bool {
    if fusectl_mounted() {
        return connection_dir(dev).is_some_and(|d| d.exists());
    }
    mounted_in_some_namespace(dev)
}

/// fusectl's directory for the connection of device `dev`, named in the kernel's encoding.
fn connection_dir(dev: &str) -> Option<PathBuf> {
    let (major, minor) = dev.split_once(':')?;
    let (major, minor): (u32, u32) = (major.parse().ok()?, minor.parse().ok()?);
    Some(Path::new(FUSECTL_DIR).join(((major << 20) | minor).to_string()))
}

fn fusectl_mounted() -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines()
        .filter_map(Line::parse)
        .any(|m| m.fstype == "fusectl" && m.mountpoint == FUSECTL_DIR.as_bytes())
}

/// Scan the mount table of each distinct mount namespace (through one of its processes) for a
/// FUSE mount of device `dev`. Namespaces whose processes this user cannot inspect are not
/// seen; for a rootless user those hold no mount of theirs anyway.
pub fn mounted_in_some_namespace(dev: &str) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    let mut seen = HashSet::new();
    for p in procs.flatten() {
        let name = p.file_name();
        if !name.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let Ok(ns) = std::fs::read_link(p.path().join("ns/mnt")) else {
            continue;
        };
        if !seen.insert(ns) {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(p.path().join("mountinfo")) else {
            continue;
        };
        if info
            .lines()
            .filter_map(Line::parse)
            .any(|m| m.is_fuse() && m.dev == dev)
        {
            return true;
        }
    }
    false
}

/// The fields of one mountinfo line this module reads.
struct Line<'a> {
    dev: &'a str,
    mountpoint: Vec<u8>,
    fstype: &'a str,
}

impl<'a> Line<'a> {
    fn parse(line: &'a str) -> Option<Line<'a>> {
        let (pre, post) = line.split_once(" - ")?;
        let mut fields = pre.split(' ');
        let dev = fields.nth(2)?;
        let mountpoint = fields.nth(1).map(unescape)?;
        let fstype = post.split(' ').next().unwrap_or("");
        Some(Line {
            dev,
            mountpoint,
            fstype,
        })
    }

    fn is_fuse(&self) -> bool {
        self.fstype == "fuse" || self.fstype.starts_with("fuse.")
    }
}

/// Undo mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b"), b"/a b");
        assert_eq!(unescape(r"/plain"), b"/plain");
        assert_eq!(unescape(r"/x\"), b"/x\\");
    }

    #[test]
    fn a_line_is_parsed() {
        let l = "36 35 0:52 / /mnt/m\\040x rw,nosuid - fuse.stratafs stratafs rw,user_id=0";
        let m = Line::parse(l).unwrap();
        assert_eq!((m.dev, m.fstype), ("0:52", "fuse.stratafs"));
        assert_eq!(m.mountpoint, b"/mnt/m x");
        assert!(m.is_fuse());
        assert_eq!(
            connection_dir("0:52"),
            Some(PathBuf::from("/sys/fs/fuse/connections/52"))
        );
    }

    #[test]
    fn a_device_no_namespace_mounts_is_not_found() {
        assert!(!mounted_in_some_namespace("0:999999"));
    }
}
