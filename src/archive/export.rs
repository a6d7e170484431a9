//! Writing layer tars in a deterministic order with fixed header fields, so that the same tree
//! always gives the same bytes: names sorted bytewise, parents before children, no atime or
//! ctime, no user or group names, xattrs as sorted PAX `SCHILY.xattr.*` records.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::layer::idmap::IdMappings;
use crate::layer::whiteout::{self, NameKind};

use super::walk::{self, file_type};
use super::{Change, ChangeKind};

/// A tar being written, remembering hard-linked inodes to emit later paths as links.
pub struct TarWriter<'a, W: Write> {
    builder: tar::Builder<BufWriter<W>>,
    links: HashMap<(u64, u64), Vec<u8>>,
    maps: &'a IdMappings,
}

fn archive_path(rel: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(rel))
}

fn write_err(rel: &[u8], e: io::Error) -> Error {
    Error::io(
        format!("writing tar entry {:?}", String::from_utf8_lossy(rel)),
        e,
    )
}

/// Reads exactly `remaining` bytes or fails: a file that shrank while being archived must
/// not silently corrupt the tar.
struct Exact<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while archiving",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

impl<'a, W: Write> TarWriter<'a, W> {
    pub fn new(out: W, maps: &'a IdMappings) -> Self {
        TarWriter {
            builder: tar::Builder::new(BufWriter::with_capacity(1 << 20, out)),
            links: HashMap::new(),
            maps,
        }
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u32, gid: u32, mtime: i64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode & 0o7777);
        h.set_uid(uid.into());
        h.set_gid(gid.into());
        h.set_mtime(mtime.max(0) as u64);
        h.set_size(0);
        h
    }

    /// An empty regular file with fixed attributes: a `.wh.` whiteout or opaque marker.
    pub fn marker(&mut self, rel: &[u8]) -> Result<()> {
        let mut h = Self::header(tar::EntryType::Regular, 0, 0, 0, 0);
        self.builder
            .append_data(&mut h, archive_path(rel), io::empty())
            .map_err(|e| write_err(rel, e))
    }

    /// Emit the file at `path` under the archive name `rel`, as the view shows it. Returns
    /// whether it is a directory.
    pub fn entry(&mut self, path: &Path, rel: &[u8]) -> Result<bool> {
        use tar::EntryType as T;
        let raw = crate::sys::lstat(path).ctx(|| format!("stat {}", path.display()))?;
        let view = walk::view_stat(path)?;
        // The type comes from the backing file unless it is a placeholder for a device.
        let ty = if walk::is_reg(&raw) {
            file_type(view.st_mode)
        } else {
            file_type(raw.st_mode)
        };
        let (uid, gid) = self
            .maps
            .to_container(view.st_uid, view.st_gid)
            .ok_or_else(|| Error::InvalidIdMap {
                spec: format!("{:?}", self.maps),
                reason: format!(
                    "owner {}:{} of {} is outside the id maps",
                    view.st_uid,
                    view.st_gid,
                    path.display()
                ),
            })?;
        let mode = view.st_mode;
        let mtime = view.st_mtime;
        if ty != libc::S_IFDIR && raw.st_nlink > 1 {
            let key = (raw.st_dev, raw.st_ino);
            if let Some(first) = self.links.get(&key) {
                let mut h = Self::header(T::Link, mode, uid, gid, mtime);
                let first = first.clone();
                self.builder
                    .append_link(&mut h, archive_path(rel), archive_path(&first))
                    .map_err(|e| write_err(rel, e))?;
                return Ok(false);
            }
            self.links.insert(key, rel.to_vec());
        }
        let xattrs = walk::public_xattrs(path)?;
        let kind = match ty {
            libc::S_IFDIR => T::Directory,
            libc::S_IFREG => T::Regular,
            libc::S_IFLNK => T::Symlink,
            libc::S_IFCHR => T::Char,
            libc::S_IFBLK => T::Block,
            libc::S_IFIFO => T::Fifo,
            _ => {
                tracing::debug!(path = %path.display(), "sockets cannot go into a tar; skipped");
                return Ok(false);
            }
        };
        // Symlink targets go in verbatim (the crate's link-name setter normalises `./` and
        // `//`): in the header when they fit, else as a PAX `linkpath` record.
        let target = if kind == T::Symlink {
            Some(
                crate::sys::readlink(path)
                    .ctx(|| format!("reading link {}", path.display()))?
                    .into_vec(),
            )
        } else {
            None
        };
        let mut records: Vec<(String, &[u8])> = Vec::new();
        if let Some(t) = target.as_deref().filter(|t| t.len() > 100) {
            records.push(("linkpath".to_string(), t));
        }
        for (k, v) in &xattrs {
            records.push((
                format!("SCHILY.xattr.{}", String::from_utf8_lossy(k)),
                v.as_slice(),
            ));
        }
        if !records.is_empty() {
            self.builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                .map_err(|e| write_err(rel, e))?;
        }
        let mut h = Self::header(kind, mode, uid, gid, mtime);
        match kind {
            T::Regular => {
                let size = raw.st_size as u64;
                h.set_size(size);
                let f = crate::sys::open_file(path, libc::O_RDONLY | libc::O_NOFOLLOW)
                    .map(std::fs::File::from)
                    .ctx(|| format!("opening {}", path.display()))?;
                let data = Exact {
                    inner: f,
                    remaining: size,
                };
                self.builder
                    .append_data(&mut h, archive_path(rel), data)
                    .map_err(|e| write_err(rel, e))?;
            }
            T::Symlink => {
                let t = target.as_deref().unwrap_or_default();
                if t.len() <= 100 {
                    h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
                }
                self.builder
                    .append_data(&mut h, archive_path(rel), io::empty())
                    .map_err(|e| write_err(rel, e))?;
            }
            T::Char | T::Block => {
                let (ma, mi) = crate::sys::dev_major_minor(view.st_rdev);
                h.set_device_major(ma).map_err(|e| write_err(rel, e))?;
                h.set_device_minor(mi).map_err(|e| write_err(rel, e))?;
                self.builder
                    .append_data(&mut h, archive_path(rel), io::empty())
                    .map_err(|e| write_err(rel, e))?;
            }
            _ => self
                .builder
                .append_data(&mut h, archive_path(rel), io::empty())
                .map_err(|e| write_err(rel, e))?,
        }
        Ok(kind == T::Directory)
    }

    /// Write the end-of-archive blocks and flush.
    pub fn finish(self) -> Result<()> {
        let mut out = self
            .builder
            .into_inner()
            .map_err(|e| Error::io("finishing tar", e))?;
        out.flush().map_err(|e| Error::io("flushing tar", e))
    }
}

fn child_rel(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(rel.len() + name.len() + 1);
    if !rel.is_empty() {
        v.extend_from_slice(rel);
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

enum Item {
    Whiteout,
    Entry(std::ffi::OsString),
}

/// Export a layer directory (never its parents): markers in any format become `.wh.` entries.
pub fn export_dir<W: Write>(root: &Path, out: W, maps: &IdMappings) -> Result<()> {
    let mut w = TarWriter::new(out, maps);
    if whiteout::is_opaque_dir(root) {
        w.marker(whiteout::OPAQUE_MARKER.as_bytes())?;
    }
    walk_layer(&mut w, root, b"")?;
    w.finish()
}

fn walk_layer<W: Write>(w: &mut TarWriter<'_, W>, dir: &Path, rel: &[u8]) -> Result<()> {
    let mut items: Vec<(Vec<u8>, Item)> = Vec::new();
    for name in walk::sorted_names(dir)? {
        match whiteout::classify(&name) {
            NameKind::OpaqueMarker | NameKind::Internal => {}
            NameKind::Invalid => {
                tracing::warn!(dir = %dir.display(), "skipping an invalid whiteout name")
            }
            NameKind::Whiteout(_) => items.push((name.as_bytes().to_vec(), Item::Whiteout)),
            NameKind::Plain => {
                let st = crate::sys::lstat(&dir.join(&name))
                    .ctx(|| format!("stat {}", dir.join(&name).display()))?;
                if whiteout::is_whiteout_device(&st) {
                    items.push((whiteout::whiteout_name(&name).into_vec(), Item::Whiteout));
                } else {
                    items.push((name.as_bytes().to_vec(), Item::Entry(name)));
                }
            }
        }
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    items.dedup_by(|a, b| a.0 == b.0);
    for (out_name, item) in items {
        let crel = child_rel(rel, &out_name);
        match item {
            Item::Whiteout => w.marker(&crel)?,
            Item::Entry(name) => {
                let p = dir.join(&name);
                if w.entry(&p, &crel)? {
                    if whiteout::is_opaque_dir(&p) {
                        w.marker(&child_rel(&crel, whiteout::OPAQUE_MARKER.as_bytes()))?;
                    }
                    walk_layer(w, &p, &crel)?;
                }
            }
        }
    }
    Ok(())
}

use std::os::unix::ffi::OsStringExt;

/// Write the given changes of the plain tree `new`, sorted by path; deletions as whiteouts.
pub fn export_changes_to<W: Write>(new: &Path, changes: &[Change], out: W) -> Result<()> {
    let maps = IdMappings::default();
    let mut w = TarWriter::new(out, &maps);
    let mut sorted: Vec<&Change> = changes.iter().collect();
    sorted.sort_by(|a, b| {
        a.path
            .as_bytes()
            .cmp(b.path.as_bytes())
            .then(a.kind.cmp(&b.kind))
    });
    for c in sorted {
        let rel = c.path.trim_start_matches('/').as_bytes();
        if rel.is_empty() {
            continue;
        }
        match c.kind {
            ChangeKind::Delete => {
                let (dir, base) = match rel.iter().rposition(|b| *b == b'/') {
                    Some(i) => (&rel[..i], &rel[i + 1..]),
                    None => (&b""[..], rel),
                };
                let wh = whiteout::whiteout_name(OsStr::from_bytes(base));
                w.marker(&child_rel(dir, wh.as_bytes()))?;
            }
            ChangeKind::Add | ChangeKind::Modify => {
                w.entry(&new.join(OsStr::from_bytes(rel)), rel)?;
            }
        }
    }
    w.finish()
}
