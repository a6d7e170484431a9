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
    /// lstat of `rel` in this layer: from the index of a tar layer (whose entries are not
    /// files on disk), else of the file.
    pub fn lstat(&self, rel: &Path) -> std::io::Result<libc::stat> {
        match &self.tar {
            Some(t) => t.lstat(rel),
            None => sys::lstat(&self.abs(rel)),
        }
    }

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
    /// The same pairs the other way round: a node has one backing inode at a time, so an
    /// alias to a new one (a directory copied anew) ends the alias of the old one.
    aliased: DashMap<u64, (u16, u64)>,
    /// Backing inodes of the upper whose last name went while the kernel still held their node
    /// (-> that node's number): the filesystem may give the inode to a new file, which must
    /// then get a number of its own, else the kernel would take it for the deleted one.
    retired: DashMap<(u16, u64), u64>,
    /// The same pairs the other way round (node number -> upper backing inode).
    retired_nodes: DashMap<u64, u64>,
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
            aliased: DashMap::new(),
            retired: DashMap::new(),
            retired_nodes: DashMap::new(),
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
        if !self.retired_nodes.is_empty() && self.reused(dev, st_ino) {
            // A new file on the inode of a deleted one the kernel still knows.
            let fresh = self.next_big.fetch_add(1, Ordering::Relaxed);
            self.set_alias((dev, st_ino), fresh);
            return fresh;
        }
        self.plain_number(dev, st_ino)
    }

    /// Whether a file on backing inode `st_ino` (which has no alias) would show as the number
    /// of a deleted file the kernel still holds: the inode's last deleted file's, or its
    /// plain number (an earlier file of that inode may have had it).
    fn reused(&self, dev: u16, st_ino: u64) -> bool {
        let last = self.retired.remove(&(dev, st_ino)).is_some();
        last || self
            .retired_nodes
            .contains_key(&self.plain_number(dev, st_ino))
    }

    /// The number a backing inode shows as without alias or retirement.
    fn plain_number(&self, dev: u16, st_ino: u64) -> u64 {
        if st_ino < (1 << INO_BITS) {
            return ((dev as u64 + 1) << INO_BITS) | st_ino;
        }
        *self
            .big
            .entry((dev, st_ino))
            .or_insert_with(|| self.next_big.fetch_add(1, Ordering::Relaxed))
    }

    /// Whether backing inode `st_ino` of layer `idx` shows as `fuse_ino` now (a check that,
    /// unlike [`Layers::ino_for`], never hands out a new number).
    pub fn shows_as(&self, idx: LayerIdx, st_ino: u64, fuse_ino: u64) -> bool {
        let dev = self.list[idx].dev_index;
        if let Some(a) = self.aliases.get(&(dev, st_ino)) {
            return *a == fuse_ino;
        }
        let plain = self.plain_number(dev, st_ino);
        !self.retired.contains_key(&(dev, st_ino))
            && !self.retired_nodes.contains_key(&plain)
            && plain == fuse_ino
    }

    /// Copy-up hook: make backing inode `st_ino` of layer `idx` show as `fuse_ino` from now on
    /// (a copied-up file keeps the number it had in the lower layer).
    pub fn alias_ino(&self, idx: LayerIdx, st_ino: u64, fuse_ino: u64) {
        let dev = self.list[idx].dev_index;
        self.set_alias((dev, st_ino), fuse_ino);
        // The inode is a live file again: its number comes from the alias.
        if !self.retired.is_empty() {
            self.retired.remove(&(dev, st_ino));
        }
    }

    fn set_alias(&self, key: (u16, u64), fuse_ino: u64) {
        self.aliases.insert(key, fuse_ino);
        if let Some(old) = self.aliased.insert(fuse_ino, key).filter(|k| *k != key) {
            // The node left that inode (it was deleted, or stays for another use): a file
            // there is not this node any more.
            self.aliases.remove_if(&old, |_, n| *n == fuse_ino);
        }
    }

    fn drop_alias(&self, key: (u16, u64)) {
        if let Some((_, n)) = self.aliases.remove(&key) {
            self.aliased.remove_if(&n, |_, k| *k == key);
        }
    }

    /// The last name of upper backing inode `st_ino` is gone. Its alias goes with it (a new
    /// file the filesystem puts on the inode is not the copied-up one), and while the kernel
    /// holds `node` (the deleted file's number) a new file on it gets a fresh number.
    pub fn retire_upper_ino(&self, st_ino: u64, node: Option<u64>) {
        let Some(up) = self.upper() else { return };
        let key = (up.dev_index, st_ino);
        self.drop_alias(key);
        if let Some(n) = node {
            self.retired.insert(key, n);
            self.retired_nodes.insert(n, st_ino);
        }
    }

    /// The kernel forgot node `fuse_ino`: if it was a deleted file's, a new file on that
    /// backing inode may show as the plain number again.
    pub fn forget_retired(&self, fuse_ino: u64) {
        if self.retired_nodes.is_empty() {
            return;
        }
        let (Some(up), Some((_, st_ino))) = (self.upper(), self.retired_nodes.remove(&fuse_ino))
        else {
            return;
        };
        self.retired
            .remove_if(&(up.dev_index, st_ino), |_, n| *n == fuse_ino);
    }

    /// Forget an alias of backing inode `st_ino` of layer `idx` (a number the filesystem gave
    /// a new file after the aliased one was deleted): it shows as its own number again.
    pub fn unalias_ino(&self, idx: LayerIdx, st_ino: u64) {
        let dev = self.list[idx].dev_index;
        self.drop_alias((dev, st_ino));
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
