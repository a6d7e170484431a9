//! The layer directories of one mount, opened once, and the inode-number scheme that keeps
//! numbers unique across the filesystems they live on.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::error::{Error, IoContext, Result};
use crate::sys;
use crate::union::tarlayer::TarLayer;

/// Index of a layer in [`Layers::list`]: the upper (if any) is 0, then lowers topmost first.
pub type LayerIdx = usize;

/// One layer directory.
#[derive(Debug)]
pub struct Layer {
    pub fd: OwnedFd,
    pub path: PathBuf,
    /// Index of the layer's `st_dev` in the device table (0-based).
    pub dev_index: u16,
    pub upper: bool,
    /// A lower layer served from a tar index (`fd` is then the index file, `O_PATH`).
    pub tar: Option<Arc<TarLayer>>,
}

impl Layer {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// `rel` as a directory and a name to use with `*at` calls. A lower layer never changes
    /// while mounted, so its root and `rel` serve as they are. In the upper (which requests
    /// change while others run) the parent directory is opened beneath the root refusing
    /// symlinks, and the name is one component, so that a directory swapped for a symlink
    /// meanwhile cannot lead a read outside the layer.
    pub fn at<'a>(&'a self, rel: &'a Path) -> std::io::Result<At<'a>> {
        let (parent, name) = match (rel.parent(), rel.file_name()) {
            (Some(p), Some(n)) if self.upper && !p.as_os_str().is_empty() => (p, n),
            _ => {
                let name = if rel.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    rel
                };
                return Ok(At {
                    dir: None,
                    root: self.fd(),
                    name,
                });
            }
        };
        let dir = sys::open_beneath(self.fd(), parent, libc::O_PATH | libc::O_DIRECTORY)?;
        Ok(At {
            dir: Some(dir),
            root: self.fd(),
            name: Path::new(name),
        })
    }

    /// Absolute path of `rel` inside this layer.
    pub fn abs(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.path.clone()
        } else {
            self.path.join(rel)
        }
    }
}

/// A path of a layer resolved for `*at` calls: see [`Layer::at`].
#[derive(Debug)]
pub struct At<'a> {
    dir: Option<OwnedFd>,
    root: BorrowedFd<'a>,
    name: &'a Path,
}

impl At<'_> {
    /// The directory `name` is relative to.
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_ref().map_or(self.root, |d| d.as_fd())
    }

    pub fn name(&self) -> &Path {
        self.name
    }

    /// The entry as a path for the `l*xattr` calls (through `/proc/self/fd`).
    pub fn xattr_path(&self) -> PathBuf {
        sys::fd_child_path(self.dir(), self.name)
    }
}

/// Numbers at or above this are allocated from a counter (backing inode does not fit in 48 bits).
const BIG_BASE: u64 = 0xFFFF << 48;
const INO_BITS: u32 = 48;

/// All layers of a mount.
#[derive(Debug)]
pub struct Layers {
    pub list: Vec<Layer>,
    devs: Vec<u64>,
    big: DashMap<(u16, u64), u64>,
    next_big: AtomicU64,
    /// Copy-up hook: (device index, backing inode) of a copied-up file -> its original number.
    aliases: DashMap<(u16, u64), u64>,
}

impl Layers {
    /// Open `upper` (if any) and `lowers` (topmost first).
    pub fn open(upper: Option<&Path>, lowers: &[PathBuf]) -> Result<Layers> {
        let mut list = Vec::with_capacity(lowers.len() + 1);
        let mut devs: Vec<u64> = Vec::new();
        let all = upper
            .map(|u| (u, true))
            .into_iter()
            .chain(lowers.iter().map(|l| (l.as_path(), false)));
        for (path, is_upper) in all {
            if !is_upper && TarLayer::is_index(path) {
                list.push(open_tar(path, &mut devs)?);
                continue;
            }
            let fd = sys::open_dir(path).ctx(|| format!("opening layer {}", path.display()))?;
            let st = sys::fstatat(fd.as_fd(), Path::new(""))
                .ctx(|| format!("stat of layer {}", path.display()))?;
            let dev = st.st_dev;
            let dev_index = match devs.iter().position(|d| *d == dev) {
                Some(i) => i,
                None => {
                    devs.push(dev);
                    devs.len() - 1
                }
            };
            list.push(Layer {
                fd,
                path: path.to_path_buf(),
                dev_index: dev_index.min(0xFFFD) as u16,
                upper: is_upper,
                tar: None,
            });
        }
        Ok(Layers {
            list,
            devs,
            big: DashMap::new(),
            next_big: AtomicU64::new(BIG_BASE),
            aliases: DashMap::new(),
        })
    }

    /// The upper layer, if the mount is writable.
    pub fn upper(&self) -> Option<&Layer> {
        self.list.first().filter(|l| l.upper)
    }

    pub fn get(&self, idx: LayerIdx) -> &Layer {
        &self.list[idx]
    }

    /// Number of distinct backing devices.
    pub fn device_count(&self) -> usize {
        self.devs.len()
    }

    /// The FUSE inode number of backing inode `st_ino` in layer `idx`: the device index in the
    /// top 16 bits, the backing number below, unless it does not fit (then a counter).
    pub fn ino_for(&self, idx: LayerIdx, st_ino: u64) -> u64 {
        let dev = self.list[idx].dev_index;
        if !self.aliases.is_empty() {
            if let Some(a) = self.aliases.get(&(dev, st_ino)) {
                return *a;
            }
        }
        if st_ino < (1 << INO_BITS) {
            return ((dev as u64 + 1) << INO_BITS) | st_ino;
        }
        *self
            .big
            .entry((dev, st_ino))
            .or_insert_with(|| self.next_big.fetch_add(1, Ordering::Relaxed))
    }

    /// Copy-up hook: make backing inode `st_ino` of layer `idx` show as `fuse_ino` from now on
    /// (a copied-up file keeps the number it had in the lower layer).
    pub fn alias_ino(&self, idx: LayerIdx, st_ino: u64, fuse_ino: u64) {
        let dev = self.list[idx].dev_index;
        self.aliases.insert((dev, st_ino), fuse_ino);
    }

    /// Forget an alias of backing inode `st_ino` of layer `idx` (a number the filesystem gave
    /// a new file after the aliased one was deleted): it shows as its own number again.
    pub fn unalias_ino(&self, idx: LayerIdx, st_ino: u64) {
        let dev = self.list[idx].dev_index;
        self.aliases.remove(&(dev, st_ino));
    }
}

/// A tar-index lower layer, numbered as a device of its own (its entries' numbers are its
/// own, not the index file's filesystem's).
fn open_tar(path: &Path, devs: &mut Vec<u64>) -> Result<Layer> {
    let mut tar = TarLayer::open(path).map_err(|e| Error::Mount {
        id: path.display().to_string(),
        reason: format!("opening the tar index: {e}"),
    })?;
    let fd = sys::open_path(path).ctx(|| format!("opening layer {}", path.display()))?;
    tar.dev = u64::MAX - devs.len() as u64;
    devs.push(tar.dev);
    Ok(Layer {
        fd,
        path: path.to_path_buf(),
        dev_index: (devs.len() - 1).min(0xFFFD) as u16,
        upper: false,
        tar: Some(Arc::new(tar)),
    })
}

/// `rel`, or `.` for the layer root (for `openat`).
pub fn rel_or_dot(rel: &Path) -> &Path {
    if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    }
}
