//! A lower layer served from a tar index ([`crate::layer::tarindex`]) instead of a directory:
//! what the view asks of a lower layer (stat, list, readlink, xattrs, file data at an
//! offset), answered from the index and by `pread` on the tar's bytes. Such a layer never
//! changes while mounted, like every lower layer.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::layer::tarindex::{DataSource, EntryId, TarIndex};

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// A tar-index lower layer.
#[derive(Debug)]
pub struct TarLayer {
    pub index: TarIndex,
    /// The file holding the tar (an image archive or a decompressed copy).
    pub data: File,
    /// The tar's first byte in `data`.
    pub base: u64,
    /// The device number its entries show to the write path (one per tar layer of a mount,
    /// so that hard links of two layers never look like one file).
    pub dev: u64,
}

/// The byte range of a file's data in the tar's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: u64,
    pub len: u64,
}

impl Window {
    /// Read into `buf` at `offset` of the file (short only at its end).
    pub fn read_at(&self, data: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.len - offset) as usize;
        let mut done = 0;
        while done < want {
            match data.read_at(&mut buf[done..want], self.start + offset + done as u64) {
                Ok(0) => return Err(errno(libc::EIO)),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

impl TarLayer {
    /// Whether `path` names a tar index rather than a layer directory.
    pub fn is_index(path: &Path) -> bool {
        path.extension().is_some_and(|e| e == "idx")
            && std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
    }

    /// Open the index at `path` and the tar its sidecar names, checking that the tar's file
    /// is the one indexed.
    pub fn open(path: &Path) -> io::Result<TarLayer> {
        let index = TarIndex::open(path)?;
        let src = DataSource::load(path)?;
        if !src.still_valid() {
            return Err(io::Error::other(format!(
                "{} changed since it was indexed",
                src.path.display()
            )));
        }
        let data = File::open(&src.path)?;
        if src.offset.saturating_add(index.tar_len()) > src.len {
            return Err(io::Error::other(format!(
                "{} is shorter than its index says",
                src.path.display()
            )));
        }
        Ok(TarLayer {
            index,
            data,
            base: src.offset,
            dev: 0,
        })
    }

    /// The entry at `rel`, or ENOENT.
    pub fn entry(&self, rel: &Path) -> io::Result<EntryId> {
        self.index.lookup(rel).ok_or_else(|| errno(libc::ENOENT))
    }

    pub fn stat(&self, rel: &Path) -> io::Result<libc::stat> {
        Ok(self.index.stat(self.entry(rel)?))
    }

    /// Whether `rel` is a directory of this layer (`None`: absent or not a directory).
    pub fn dir(&self, rel: &Path) -> Option<EntryId> {
        let id = self.index.lookup(rel)?;
        (self.index.meta(id).file_type() == libc::S_IFDIR).then_some(id)
    }

    /// Each child of directory `dir` as readdir gives it: name, number, `d_type`.
    pub fn each_child(
        &self,
        dir: EntryId,
        mut f: impl FnMut(&OsStr, u64, u8) -> io::Result<()>,
    ) -> io::Result<()> {
        for c in self.index.children(dir) {
            let m = self.index.meta(c);
            let dt = match m.file_type() {
                libc::S_IFDIR => libc::DT_DIR,
                libc::S_IFREG => libc::DT_REG,
                libc::S_IFLNK => libc::DT_LNK,
                libc::S_IFCHR => libc::DT_CHR,
                libc::S_IFBLK => libc::DT_BLK,
                libc::S_IFIFO => libc::DT_FIFO,
                _ => libc::DT_UNKNOWN,
            };
            f(self.index.name(c), m.ino, dt)?;
        }
        Ok(())
    }

    pub fn readlink(&self, rel: &Path) -> io::Result<OsString> {
        let id = self.entry(rel)?;
        let t = self
            .index
            .link_target(id)
            .ok_or_else(|| errno(libc::EINVAL))?;
        Ok(OsStr::from_bytes(t).to_os_string())
    }

    /// Whether the entry at `rel` has no xattrs at all.
    pub fn no_xattrs(&self, rel: &Path) -> bool {
        self.index
            .lookup(rel)
            .is_some_and(|id| self.index.xattrs(id).next().is_none())
    }

    /// The xattr names of `rel`.
    pub fn listxattr(&self, rel: &Path) -> io::Result<Vec<Vec<u8>>> {
        let id = self.entry(rel)?;
        Ok(self.index.xattrs(id).map(|(k, _)| k.to_vec()).collect())
    }

    /// The value of xattr `name` of `rel`.
    pub fn getxattr(&self, rel: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
        let id = self.entry(rel)?;
        Ok(self
            .index
            .xattrs(id)
            .find(|(k, _)| *k == name.as_bytes())
            .map(|(_, v)| v.to_vec()))
    }

    /// Where the data of regular file `rel` is in [`TarLayer::data`].
    pub fn window(&self, rel: &Path) -> io::Result<Window> {
        let id = self.entry(rel)?;
        let m = self.index.meta(id);
        match m.file_type() {
            libc::S_IFREG => Ok(Window {
                start: self.base + m.data,
                len: m.size,
            }),
            libc::S_IFDIR => Err(errno(libc::EISDIR)),
            _ => Err(errno(libc::ENXIO)),
        }
    }

    /// `stat` of `rel` as the write path sees it (with this layer's device number).
    pub fn lstat(&self, rel: &Path) -> io::Result<libc::stat> {
        let mut st = self.stat(rel)?;
        st.st_dev = self.dev;
        Ok(st)
    }

    /// The paths of every regular file with several names, by its number.
    pub fn hard_links(&self) -> std::collections::HashMap<u64, Vec<std::path::PathBuf>> {
        let mut map: std::collections::HashMap<u64, Vec<std::path::PathBuf>> = Default::default();
        let mut stack = vec![(0, std::path::PathBuf::new())];
        while let Some((dir, rel)) = stack.pop() {
            for c in self.index.children(dir) {
                let m = self.index.meta(c);
                let child = rel.join(self.index.name(c));
                match m.file_type() {
                    libc::S_IFDIR => stack.push((c, child)),
                    libc::S_IFREG if m.nlink > 1 => map.entry(m.ino).or_default().push(child),
                    _ => {}
                }
            }
        }
        map
    }

    /// A file of its own holding the tar's bytes (for an open handle).
    pub fn reopen(&self) -> io::Result<File> {
        self.data.try_clone()
    }
}
