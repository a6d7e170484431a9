//! Reading the files of an image archive: a directory (an OCI layout) or a tar (`docker save`,
//! an OCI archive). A tar is indexed once (member name -> byte range, read with the `tar` crate
//! seeking over the data), then each blob is streamed straight from its range: no spooling, no
//! layer held in memory. A compressed tar (`docker save | gzip`) is first decompressed into a
//! spool file, since members must be read out of order.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use crate::archive::decompress;
use crate::error::{Error, IoContext, Result};

/// Largest JSON document (manifest, index, config) read into memory.
pub const MAX_JSON: u64 = 16 << 20;
/// Symlink/hard-link hops followed inside an archive before giving up.
const MAX_LINK_HOPS: usize = 16;

/// Where a tar member's data lives, or which member it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    Data {
        offset: u64,
        size: u64,
    },
    /// A symlink or hard link: the normalised member name it points to.
    Link(String),
    Dir,
}

/// The files of an image archive, by their normalised path (`blobs/sha256/ab..`).
#[derive(Debug)]
pub enum Source {
    Dir(PathBuf),
    Tar {
        path: PathBuf,
        members: HashMap<String, Member>,
        /// A decompressed copy of the archive, removed on drop.
        _spool: Option<tempfile::TempPath>,
    },
}

impl Source {
    /// Open `path`: a directory as a layout, anything else as a (possibly compressed) tar.
    /// `spool_dir` receives the decompressed copy of a compressed tar.
    pub fn open(path: &Path, spool_dir: &Path) -> Result<Source> {
        let meta = std::fs::metadata(path).ctx(|| format!("opening {}", path.display()))?;
        if meta.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let mut file = File::open(path).ctx(|| format!("opening {}", path.display()))?;
        let mut head = [0u8; 4];
        let n = decompress::read_up_to(&mut file, &mut head)
            .ctx(|| format!("reading {}", path.display()))?;
        let (tar_path, spool) = match decompress::detect(&head[..n]) {
            decompress::Compression::None => (path.to_path_buf(), None),
            _ => {
                std::fs::create_dir_all(spool_dir)
                    .ctx(|| format!("creating {}", spool_dir.display()))?;
                let mut tmp = tempfile::NamedTempFile::new_in(spool_dir)
                    .ctx(|| format!("creating a spool file in {}", spool_dir.display()))?;
                let file = File::open(path).ctx(|| format!("opening {}", path.display()))?;
                let mut dec = decompress::auto(file)?;
                io::copy(&mut dec, tmp.as_file_mut()).map_err(|e| Error::MalformedArchive {
                    entry: None,
                    reason: format!("decompressing {}: {e}", path.display()),
                })?;
                let tp = tmp.into_temp_path();
                (tp.to_path_buf(), Some(tp))
            }
        };
        let members = index_tar(&tar_path)?;
        Ok(Source::Tar {
            path: tar_path,
            members,
            _spool: spool,
        })
    }

    /// A name for messages.
    pub fn describe(&self) -> String {
        match self {
            Source::Dir(p) | Source::Tar { path: p, .. } => p.display().to_string(),
        }
    }

    /// Whether a regular file (or a link to one) exists at `name`.
    pub fn exists(&self, name: &str) -> bool {
        match self {
            Source::Dir(root) => match normalize(name) {
                Some(n) => root.join(n).is_file(),
                None => false,
            },
            Source::Tar { members, .. } => {
                matches!(resolve(members, name), Ok((_, Member::Data { .. })))
            }
        }
    }

    /// Stream the file `name`; a missing file is [`Error::MissingBlob`].
    pub fn open_file(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64)> {
        let missing = || Error::MissingBlob {
            archive: self.describe(),
            blob: name.to_string(),
        };
        match self {
            Source::Dir(root) => {
                let rel = normalize(name).ok_or_else(missing)?;
                let p = root.join(rel);
                let f = match File::open(&p) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
                    Err(e) => return Err(Error::io(format!("opening {}", p.display()), e)),
                };
                let len = f.metadata().ctx(|| format!("stat {}", p.display()))?.len();
                Ok((Box::new(f), len))
            }
            Source::Tar { path, members, .. } => {
                let (_, m) = resolve(members, name).map_err(|_| missing())?;
                let Member::Data { offset, size } = m else {
                    return Err(missing());
                };
                let mut f = File::open(path).ctx(|| format!("opening {}", path.display()))?;
                f.seek(SeekFrom::Start(offset))
                    .ctx(|| format!("reading {}", path.display()))?;
                Ok((Box::new(f.take(size)), size))
            }
        }
    }

    /// Where the file `name` is as a byte range of a file that outlives this source (the
    /// archive itself or a layout's blob): (file, offset). `None` for a spooled copy.
    pub fn region(&self, name: &str) -> Option<(PathBuf, u64)> {
        match self {
            Source::Dir(root) => {
                let p = root.join(normalize(name)?);
                p.is_file().then_some((p, 0))
            }
            Source::Tar {
                path,
                members,
                _spool: None,
            } => match resolve(members, name) {
                Ok((_, Member::Data { offset, .. })) => Some((path.clone(), offset)),
                _ => None,
            },
            Source::Tar { .. } => None,
        }
    }

    /// Read a small file (JSON) whole, refusing anything over [`MAX_JSON`].
    pub fn read_small(&self, name: &str) -> Result<Vec<u8>> {
        let (mut r, len) = self.open_file(name)?;
        if len > MAX_JSON {
            return Err(Error::MalformedArchive {
                entry: Some(name.to_string()),
                reason: format!("{len} bytes is too large for a JSON document"),
            });
        }
        let mut buf = Vec::with_capacity(len as usize);
        r.read_to_end(&mut buf)
            .ctx(|| format!("reading {name} in {}", self.describe()))?;
        if (buf.len() as u64) < len {
            return Err(truncated(name));
        }
        Ok(buf)
    }
}

fn truncated(name: &str) -> Error {
    Error::MalformedArchive {
        entry: Some(name.to_string()),
        reason: "archive is truncated".into(),
    }
}

/// `./a//b/` -> `a/b`; `None` for names that climb out (`..`) or are empty.
pub fn normalize(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Prefix(_) => return None,
        }
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("/"))
    }
}

/// Follow links from `name` to a data member.
fn resolve(
    members: &HashMap<String, Member>,
    name: &str,
) -> std::result::Result<(String, Member), ()> {
    let mut cur = normalize(name).ok_or(())?;
    for _ in 0..MAX_LINK_HOPS {
        match members.get(&cur) {
            Some(Member::Link(t)) => cur = t.clone(),
            Some(m) => return Ok((cur, m.clone())),
            None => return Err(()),
        }
    }
    Err(())
}

/// Index every member of the tar at `path`, checking that each one's data is really there.
fn index_tar(path: &Path) -> Result<HashMap<String, Member>> {
    let file = File::open(path).ctx(|| format!("opening {}", path.display()))?;
    let file_len = file
        .metadata()
        .ctx(|| format!("stat {}", path.display()))?
        .len();
    let malformed =
        |entry: Option<String>, reason: String| Error::MalformedArchive { entry, reason };
    let mut ar = tar::Archive::new(file);
    let mut members = HashMap::new();
    let entries = ar
        .entries_with_seek()
        .map_err(|e| malformed(None, format!("{}: {e}", path.display())))?;
    for entry in entries {
        let entry = entry.map_err(|e| malformed(None, format!("{}: {e}", path.display())))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(name) = normalize(&raw) else {
            continue;
        };
        let ty = entry.header().entry_type();
        let member = if ty.is_dir() {
            Member::Dir
        } else if ty.is_symlink() || ty.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            // A symlink is relative to its own directory; a hard link names a member.
            let joined = if ty.is_symlink() && !target.starts_with('/') {
                match name.rsplit_once('/') {
                    Some((dir, _)) => format!("{dir}/{target}"),
                    None => target,
                }
            } else {
                target
            };
            match normalize(&joined) {
                Some(t) => Member::Link(t),
                None => continue,
            }
        } else if ty.is_file() || ty == tar::EntryType::Continuous {
            let offset = entry.raw_file_position();
            let size = entry.size();
            if offset.saturating_add(size) > file_len {
                return Err(truncated(&name));
            }
            Member::Data { offset, size }
        } else {
            continue;
        };
        members.insert(name, member);
    }
    if members.is_empty() {
        return Err(malformed(
            None,
            format!("{} is not a tar archive (no members)", path.display()),
        ));
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_member_names() {
        assert_eq!(normalize("./a//b/").as_deref(), Some("a/b"));
        assert_eq!(normalize("a/../b").as_deref(), Some("b"));
        assert_eq!(normalize("../x"), None);
        assert_eq!(normalize("."), None);
    }

    #[test]
    fn reads_members_by_range_and_follows_links() {
        let d = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_cksum();
        b.append_data(&mut h, "./x/layer.tar", &b"hello"[..])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "y/layer.tar", "../x/layer.tar")
            .unwrap();
        let p = d.path().join("a.tar");
        std::fs::write(&p, b.into_inner().unwrap()).unwrap();
        let s = Source::open(&p, d.path()).unwrap();
        assert_eq!(s.read_small("x/layer.tar").unwrap(), b"hello");
        assert_eq!(s.read_small("y/layer.tar").unwrap(), b"hello");
        assert!(s.exists("y/layer.tar"));
        assert!(matches!(s.read_small("z"), Err(Error::MissingBlob { .. })));
    }

    #[test]
    fn truncated_and_compressed_archives() {
        let d = tempfile::tempdir().unwrap();
        let big = vec![7u8; 5000];
        let data = crate::archive::files_tar(&[("a", b"1"), ("b", &big)]);
        let p = d.path().join("t.tar");
        std::fs::write(&p, &data[..2048]).unwrap();
        assert!(matches!(
            Source::open(&p, d.path()),
            Err(Error::MalformedArchive { .. })
        ));
        // gzip of the whole archive is spooled, then read like a plain one.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &data).unwrap();
        std::fs::write(&p, gz.finish().unwrap()).unwrap();
        let spool = d.path().join("spool");
        let s = Source::open(&p, &spool).unwrap();
        assert_eq!(s.read_small("b").unwrap(), big);
        assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 1);
        drop(s);
        assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
        // Garbage is not a tar.
        std::fs::write(&p, b"this is not a tar archive at all").unwrap();
        assert!(Source::open(&p, d.path()).is_err());
    }
}
