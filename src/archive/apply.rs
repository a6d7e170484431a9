//! Unpacking layer tars. Two modes share one implementation: `Layer` keeps whiteouts as our
//! marker files in an empty layer directory (stratafs), `Merged` applies them to a full copy of
//! the parent (vfs): whiteouts delete, opaque markers empty the directory of lower content.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::layer::idmap::IdMappings;
use crate::layer::meta::{self, OverrideKind, OverrideStat};
use crate::layer::whiteout::{self, NameKind};
use crate::sys;

use super::safe_path::{self, unsafe_entry, LayerRoot};

/// How whiteouts in the tar are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Into an empty layer directory: whiteouts and opaque markers are kept as markers.
    Layer,
    /// On top of a full copy of the parent: whiteouts delete, opaque markers empty.
    Merged,
}

/// Mode and mtime of a directory, applied after its children are in place.
struct DirAttrs {
    mode: u32,
    mtime: i64,
}

/// What a tar header says about an entry's owner, mode, times and xattrs.
struct Attrs {
    uid: u64,
    gid: u64,
    mode: u32,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Attrs {
    fn read<R: Read>(e: &mut tar::Entry<'_, R>, name: &str) -> Result<Attrs> {
        let (uid, gid, mode, mtime) = header_ids(e.header(), name)?;
        Ok(Attrs {
            uid,
            gid,
            mode,
            mtime,
            xattrs: entry_xattrs(e, name)?,
        })
    }
}

/// The kind of non-directory just made, for [`Owners::set_attrs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    File,
    Symlink,
    /// A device kept as an empty file: its type and mode go into override_stat.
    Placeholder(OverrideKind),
}

struct Applier<'a> {
    root: LayerRoot,
    owners: Owners<'a>,
    mode: ApplyMode,
    root_owner: (u32, u32),
    dirs: BTreeMap<Vec<u8>, DirAttrs>,
    /// Paths this tar has unpacked (merged mode only): an opaque marker or whiteout must not
    /// remove them.
    unpacked: HashSet<Vec<u8>>,
    buf: Vec<u8>,
}

fn malformed(entry: Option<&str>, reason: impl std::fmt::Display) -> Error {
    Error::MalformedArchive {
        entry: entry.map(str::to_string),
        reason: reason.to_string(),
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Unpack `tar` into the directory `dir`. The caller decides what to do with `dir` on error.
pub fn apply_tar(dir: &Path, tar: &mut dyn Read, maps: &IdMappings, mode: ApplyMode) -> Result<()> {
    let mut applier = Applier {
        root: LayerRoot::open(dir)?,
        owners: Owners {
            maps,
            privileged: sys::is_root(),
        },
        mode,
        root_owner: maps.root_pair()?,
        dirs: BTreeMap::new(),
        unpacked: HashSet::new(),
        buf: vec![0u8; 256 * 1024],
    };
    let mut archive = tar::Archive::new(BufReader::with_capacity(256 * 1024, tar));
    let entries = archive
        .entries()
        .map_err(|e| malformed(None, format!("unreadable archive: {e}")))?;
    let mut last: Option<String> = None;
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            let reason = match &last {
                Some(prev) => format!("after entry {prev:?}: {e}"),
                None => e.to_string(),
            };
            malformed(None, reason)
        })?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        applier.entry(&mut entry, &raw, &name)?;
        last = Some(name);
    }
    applier.finish()
}

impl Applier<'_> {
    fn entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>, raw: &[u8], name: &str) -> Result<()> {
        use tar::EntryType as T;
        let et = e.header().entry_type();
        if matches!(
            et,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        let comps = safe_path::normalize(raw).map_err(|r| unsafe_entry(name, r))?;
        let Some((base, parent)) = comps.split_last() else {
            if et == T::Directory {
                return self.root_entry(e, name);
            }
            return Err(unsafe_entry(name, "would replace the layer root"));
        };
        for c in parent {
            match whiteout::classify(c) {
                NameKind::Plain => {}
                NameKind::Internal => {
                    tracing::debug!(entry = name, "skipping aufs metadata");
                    return Ok(());
                }
                _ => return Err(unsafe_entry(name, "a whiteout name used as a directory")),
            }
        }
        match whiteout::classify(base) {
            NameKind::Invalid => Err(unsafe_entry(name, "invalid whiteout name")),
            NameKind::Internal => {
                tracing::debug!(entry = name, "skipping aufs metadata");
                Ok(())
            }
            NameKind::OpaqueMarker => self.opaque(name, parent),
            NameKind::Whiteout(target) => {
                let target = target.to_os_string();
                self.whiteout(name, parent, &target)
            }
            NameKind::Plain => {
                self.unpack(e, name, parent, base)?;
                if self.mode == ApplyMode::Merged {
                    self.unpacked
                        .insert(safe_path::join(&comps).into_os_string().into_vec());
                }
                Ok(())
            }
        }
    }

    fn root_entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>, name: &str) -> Result<()> {
        let attrs = Attrs::read(e, name)?;
        let fd = self
            .root
            .open_beneath(Path::new(""), libc::O_RDONLY | libc::O_DIRECTORY)
            .ctx(|| format!("opening the layer root for entry {name:?}"))?;
        self.owners
            .set_dir_attrs(fd.as_fd(), Path::new(""), name, &attrs)?;
        let (mode, mtime) = (attrs.mode, attrs.mtime);
        self.dirs.insert(Vec::new(), DirAttrs { mode, mtime });
        Ok(())
    }

    fn opaque(&mut self, name: &str, parent: &[OsString]) -> Result<()> {
        let owner = self.root_owner;
        let mode = self.mode;
        let pfd = self.root.parent(name, parent, Some(owner))?;
        match mode {
            ApplyMode::Layer => {
                whiteout::write_opaque(pfd).ctx(|| format!("writing opaque marker for {name:?}"))
            }
            ApplyMode::Merged => {
                let dir = sys::fd_child_path(pfd, Path::new(""));
                let prefix = safe_path::join(parent);
                let mut doomed = Vec::new();
                for e in std::fs::read_dir(&dir)
                    .ctx(|| format!("reading {} for entry {name:?}", prefix.display()))?
                {
                    let child = e
                        .ctx(|| format!("reading {}", prefix.display()))?
                        .file_name();
                    let key = prefix.join(&child).into_os_string().into_vec();
                    if !self.unpacked.contains(&key) {
                        doomed.push(child);
                    }
                }
                for child in doomed {
                    remove_any(pfd, &child)
                        .ctx(|| format!("emptying opaque {}", prefix.display()))?;
                }
                self.root.invalidate();
                Ok(())
            }
        }
    }

    fn whiteout(&mut self, name: &str, parent: &[OsString], target: &OsStr) -> Result<()> {
        let owner = self.root_owner;
        match self.mode {
            ApplyMode::Layer => {
                let pfd = self.root.parent(name, parent, Some(owner))?;
                whiteout::write_whiteout(pfd, target).ctx(|| format!("writing whiteout {name:?}"))
            }
            ApplyMode::Merged => {
                let key = safe_path::join(parent)
                    .join(target)
                    .into_os_string()
                    .into_vec();
                if self.unpacked.contains(&key) {
                    return Ok(());
                }
                let rel = safe_path::join(parent);
                let pfd = match self
                    .root
                    .open_beneath(&rel, libc::O_PATH | libc::O_DIRECTORY)
                {
                    Ok(fd) => fd,
                    // Deleting below a directory that does not exist deletes nothing.
                    Err(err) if matches!(errno(&err), libc::ENOENT | libc::ENOTDIR) => {
                        return Ok(())
                    }
                    Err(err) if matches!(errno(&err), libc::EXDEV | libc::ELOOP) => {
                        return Err(unsafe_entry(name, "whiteout leads outside the layer"))
                    }
                    Err(err) => return Err(Error::io(format!("applying whiteout {name:?}"), err)),
                };
                let pfd = pfd.as_fd();
                match sys::fstatat(pfd, Path::new(target)) {
                    Ok(_) => {
                        remove_any(pfd, target).ctx(|| format!("applying whiteout {name:?}"))?;
                        self.root.invalidate();
                        Ok(())
                    }
                    Err(e) if errno(&e) == libc::ENOENT => Ok(()),
                    Err(e) => Err(Error::io(format!("applying whiteout {name:?}"), e)),
                }
            }
        }
    }

    fn unpack<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        name: &str,
        parent: &[OsString],
        base: &OsStr,
    ) -> Result<()> {
        use tar::EntryType as T;
        let et = e.header().entry_type();
        let attrs = Attrs::read(e, name)?;
        let (mode, mtime) = (attrs.mode, attrs.mtime);
        let base_p = Path::new(base);
        let owner = self.root_owner;
        match et {
            T::Directory => {
                let created = {
                    let pfd = self.root.parent(name, parent, Some(owner))?;
                    match sys::mkdirat(pfd, base_p, 0o700) {
                        Ok(()) => true,
                        Err(err) if errno(&err) == libc::EEXIST => false,
                        Err(err) => {
                            return Err(Error::io(format!("creating directory {name:?}"), err))
                        }
                    }
                };
                if !created {
                    let pfd = self.root.parent(name, parent, Some(owner))?;
                    let st = sys::fstatat(pfd, base_p).ctx(|| format!("stat {name:?}"))?;
                    if (st.st_mode & libc::S_IFMT) != libc::S_IFDIR {
                        remove_any(pfd, base).ctx(|| format!("replacing {name:?}"))?;
                        sys::mkdirat(pfd, base_p, 0o700)
                            .ctx(|| format!("creating directory {name:?}"))?;
                        self.root.invalidate();
                    }
                }
                let pfd = self.root.parent(name, parent, Some(owner))?;
                // Chown before the deferred chmod: chown clears set-id bits.
                let key = safe_path::join(parent)
                    .join(base)
                    .into_os_string()
                    .into_vec();
                self.owners.set_dir_attrs(pfd, base_p, name, &attrs)?;
                self.dirs.insert(key, DirAttrs { mode, mtime });
                Ok(())
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                let file = self.create_excl(name, parent, base, |pfd| {
                    sys::openat(
                        pfd,
                        base_p,
                        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
                        0o600,
                    )
                })?;
                let expected = e.size();
                let mut f = std::fs::File::from(file);
                let mut copied = 0u64;
                loop {
                    let n = match e.read(&mut self.buf) {
                        Ok(n) => n,
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                        Err(err) => {
                            return Err(malformed(Some(name), format!("reading its data: {err}")))
                        }
                    };
                    if n == 0 {
                        break;
                    }
                    f.write_all(&self.buf[..n])
                        .ctx(|| format!("writing {name:?}"))?;
                    copied += n as u64;
                }
                if et != T::GNUSparse && copied != expected {
                    return Err(malformed(
                        Some(name),
                        format!("truncated: {copied} of {expected} bytes"),
                    ));
                }
                self.owners
                    .set_attrs(f.as_fd(), Path::new(""), name, &attrs, Made::File)
            }
            T::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| malformed(Some(name), "symlink without a target"))?
                    .into_owned();
                let target = OsStr::from_bytes(&target).to_os_string();
                self.create_excl(name, parent, base, |pfd| {
                    sys::symlinkat(&target, pfd, base_p)
                })?;
                let pfd = self.root.parent(name, parent, Some(owner))?;
                self.owners
                    .set_attrs(pfd, base_p, name, &attrs, Made::Symlink)
            }
            T::Link => self.hard_link(e, name, parent, base),
            T::Char | T::Block | T::Fifo => {
                let (ty, kind) = match et {
                    T::Char | T::Block => {
                        let ma = e.header().device_major().ok().flatten().unwrap_or(0);
                        let mi = e.header().device_minor().ok().flatten().unwrap_or(0);
                        if et == T::Char {
                            (libc::S_IFCHR, OverrideKind::Char(ma, mi))
                        } else {
                            (libc::S_IFBLK, OverrideKind::Block(ma, mi))
                        }
                    }
                    _ => (libc::S_IFIFO, OverrideKind::Pipe),
                };
                let mut placeholder = false;
                self.create_excl(name, parent, base, |pfd| {
                    match sys::mknodat(pfd, base_p, ty | 0o600, kind.rdev()) {
                        Err(err) if errno(&err) == libc::EPERM && ty != libc::S_IFIFO => {
                            // Unprivileged: keep the device as an empty file plus override_stat.
                            placeholder = true;
                            sys::openat(
                                pfd,
                                base_p,
                                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
                                0o600,
                            )
                            .map(drop)
                        }
                        other => other,
                    }
                })?;
                let pfd = self.root.parent(name, parent, Some(owner))?;
                let made = if placeholder {
                    Made::Placeholder(kind)
                } else {
                    Made::File
                };
                self.owners.set_attrs(pfd, base_p, name, &attrs, made)
            }
            other => Err(malformed(
                Some(name),
                format!("unsupported entry type {other:?}"),
            )),
        }
    }

    /// Create a non-directory with `make`; an existing entry of the same name is replaced
    /// (a file over a directory replaces the whole directory).
    fn create_excl<T>(
        &mut self,
        name: &str,
        parent: &[OsString],
        base: &OsStr,
        mut make: impl FnMut(BorrowedFd<'_>) -> io::Result<T>,
    ) -> Result<T> {
        let owner = self.root_owner;
        let pfd = self.root.parent(name, parent, Some(owner))?;
        match make(pfd) {
            Ok(t) => return Ok(t),
            Err(err) if errno(&err) == libc::EEXIST => {}
            Err(err) => return Err(Error::io(format!("creating {name:?}"), err)),
        }
        remove_any(pfd, base).ctx(|| format!("replacing {name:?}"))?;
        self.root.invalidate();
        let pfd = self.root.parent(name, parent, Some(owner))?;
        make(pfd).ctx(|| format!("creating {name:?}"))
    }

    fn hard_link<R: Read>(
        &mut self,
        e: &tar::Entry<'_, R>,
        name: &str,
        parent: &[OsString],
        base: &OsStr,
    ) -> Result<()> {
        let raw = e
            .link_name_bytes()
            .ok_or_else(|| malformed(Some(name), "hard link without a target"))?
            .into_owned();
        let tcomps = safe_path::normalize(&raw)
            .map_err(|r| unsafe_entry(name, format!("hard link target: {r}")))?;
        let Some((tbase, tparent)) = tcomps.split_last() else {
            return Err(unsafe_entry(name, "hard link to the layer root"));
        };
        let tparent_fd = {
            let rel = safe_path::join(tparent);
            match self
                .root
                .open_beneath(&rel, libc::O_PATH | libc::O_DIRECTORY)
            {
                Ok(fd) => fd,
                Err(err) if matches!(errno(&err), libc::EXDEV | libc::ELOOP) => {
                    return Err(unsafe_entry(
                        name,
                        "hard link target leads outside the layer",
                    ))
                }
                Err(_) => return Err(unsafe_entry(name, "hard link target is not in the layer")),
            }
        };
        let tst = match sys::fstatat(tparent_fd.as_fd(), Path::new(tbase)) {
            Ok(st) => st,
            Err(_) => return Err(unsafe_entry(name, "hard link target is not in the layer")),
        };
        if (tst.st_mode & libc::S_IFMT) == libc::S_IFDIR {
            return Err(unsafe_entry(name, "hard link to a directory"));
        }
        let owner = self.root_owner;
        let pfd = self.root.parent(name, parent, Some(owner))?;
        if let Ok(st) = sys::fstatat(pfd, Path::new(base)) {
            if sys::same_inode(&st, &tst) {
                return Ok(());
            }
        }
        self.create_excl(name, parent, base, |pfd| {
            sys::linkat(tparent_fd.as_fd(), Path::new(tbase), pfd, Path::new(base))
        })
    }

    /// Apply directory modes and mtimes, deepest first, so that creating children no longer
    /// changes them.
    fn finish(self) -> Result<()> {
        for (key, attrs) in self.dirs.iter().rev() {
            let rel = Path::new(OsStr::from_bytes(key));
            let fd = match self
                .root
                .open_beneath(rel, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)
            {
                Ok(fd) => fd,
                // Replaced by a non-directory later in the tar.
                Err(e) if matches!(errno(&e), libc::ENOTDIR | libc::ELOOP | libc::ENOENT) => {
                    continue
                }
                Err(e) => return Err(Error::io(format!("opening {}", rel.display()), e)),
            };
            sys::fchmod(fd.as_fd(), attrs.mode)
                .ctx(|| format!("setting mode of {}", rel.display()))?;
            sys::lutimensat(
                fd.as_fd(),
                Path::new(""),
                (attrs.mtime, 0),
                (attrs.mtime, 0),
            )
            .ctx(|| format!("setting times of {}", rel.display()))?;
        }
        Ok(())
    }
}

/// Owner (container ids), permission bits and mtime of a header.
fn header_ids(h: &tar::Header, name: &str) -> Result<(u64, u64, u32, i64)> {
    let bad = |what: &str, e: io::Error| malformed(Some(name), format!("bad {what} field: {e}"));
    let uid = h.uid().map_err(|e| bad("uid", e))?;
    let gid = h.gid().map_err(|e| bad("gid", e))?;
    let mode = h.mode().map_err(|e| bad("mode", e))? & 0o7777;
    let mtime = h.mtime().map_err(|e| bad("mtime", e))?;
    Ok((uid, gid, mode, i64::try_from(mtime).unwrap_or(i64::MAX)))
}

/// Who may own what: the id maps, and whether chown works (unprivileged, a refused chown is
/// recorded in `override_stat` instead).
#[derive(Clone, Copy)]
struct Owners<'a> {
    maps: &'a IdMappings,
    privileged: bool,
}

impl Owners<'_> {
    /// Owner, mode, xattrs and times of the non-directory `name` just made: `base` in `at`, or
    /// `at` itself when `base` is empty. The owner goes first: a chown clears set-id bits.
    fn set_attrs(
        self,
        at: BorrowedFd<'_>,
        base: &Path,
        name: &str,
        attrs: &Attrs,
        made: Made,
    ) -> Result<()> {
        let (kind, symlink) = match made {
            Made::File => (None, false),
            Made::Symlink => (None, true),
            Made::Placeholder(kind) => (Some(kind), false),
        };
        self.set_owner(at, base, name, attrs, kind, symlink)?;
        // A symlink has no mode of its own; a placeholder's is in its override_stat.
        if made == Made::File {
            if base.as_os_str().is_empty() {
                sys::fchmod(at, attrs.mode)
            } else {
                sys::fchmodat(at, base, attrs.mode)
            }
            .ctx(|| format!("setting mode of {name:?}"))?;
        }
        set_xattrs_at(&attrs.xattrs, at, base, name)?;
        let mtime = (attrs.mtime, 0);
        sys::lutimensat(at, base, mtime, mtime).ctx(|| format!("setting times of {name:?}"))
    }

    /// Owner and xattrs of a directory; its mode and times are set once its entries are in.
    fn set_dir_attrs(
        self,
        at: BorrowedFd<'_>,
        base: &Path,
        name: &str,
        attrs: &Attrs,
    ) -> Result<()> {
        self.set_owner(at, base, name, attrs, None, false)?;
        set_xattrs_at(&attrs.xattrs, at, base, name)
    }

    /// Give `base` in `at` the mapped owner. Unprivileged, a refused chown (or a device kept
    /// as a placeholder, `kind`) is recorded in `override_stat` instead.
    fn set_owner(
        self,
        dir: BorrowedFd<'_>,
        base: &Path,
        name: &str,
        attrs: &Attrs,
        kind: Option<OverrideKind>,
        symlink: bool,
    ) -> Result<()> {
        let (uid, gid) = (attrs.uid, attrs.gid);
        let (uid, gid) = match (u32::try_from(uid), u32::try_from(gid)) {
            (Ok(u), Ok(g)) => (u, g),
            _ => {
                return Err(unsafe_entry(
                    name,
                    format!("owner {uid}:{gid} out of range"),
                ))
            }
        };
        let (hu, hg) = self.maps.to_host(uid, gid).ok_or_else(|| {
            unsafe_entry(name, format!("owner {uid}:{gid} is outside the id maps"))
        })?;
        let mut record = kind.is_some();
        match sys::lchownat(dir, base, hu, hg) {
            Ok(()) => {}
            Err(e) if !self.privileged && matches!(errno(&e), libc::EPERM | libc::EINVAL) => {
                record = true
            }
            Err(e) => return Err(Error::io(format!("giving {name:?} to {hu}:{hg}"), e)),
        }
        if record {
            if symlink {
                tracing::debug!(
                    entry = name,
                    "cannot record the owner of a symlink unprivileged"
                );
                return Ok(());
            }
            let o = OverrideStat {
                uid: hu,
                gid: hg,
                mode: attrs.mode,
                kind,
            };
            let value = o.to_string();
            let res = if base.as_os_str().is_empty() {
                sys::fsetxattr(dir, meta::OVERRIDE_STAT_XATTR, value.as_bytes())
            } else {
                meta::write_override(&sys::fd_child_path(dir, base), &o)
            };
            res.ctx(|| format!("recording owner and mode of {name:?}"))?;
        }
        Ok(())
    }
}

/// The entry's PAX `SCHILY.xattr.*` records (internal names are never taken from a tar).
fn entry_xattrs<R: Read>(e: &mut tar::Entry<'_, R>, name: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let Ok(Some(exts)) = e.pax_extensions() else {
        return Ok(out);
    };
    for ext in exts {
        let ext = ext.map_err(|err| malformed(Some(name), format!("bad PAX record: {err}")))?;
        let Some(key) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
            continue;
        };
        if whiteout::is_internal_xattr(key) {
            tracing::debug!(entry = name, "ignoring an internal xattr in the archive");
            continue;
        }
        let Ok(key) = std::str::from_utf8(key) else {
            continue;
        };
        out.push((key.to_string(), ext.value_bytes().to_vec()));
    }
    Ok(out)
}

/// Set xattrs on `base` in `dir` (on `dir` itself when `base` is empty).
fn set_xattrs_at(
    xattrs: &[(String, Vec<u8>)],
    dir: BorrowedFd<'_>,
    base: &Path,
    name: &str,
) -> Result<()> {
    for (key, value) in xattrs {
        let res = if base.as_os_str().is_empty() {
            sys::fsetxattr(dir, key, value)
        } else {
            sys::lsetxattr(&sys::fd_child_path(dir, base), key, value)
        };
        match res {
            Ok(()) => {}
            Err(err) if matches!(errno(&err), libc::EPERM | libc::ENOTSUP | libc::EACCES) => {
                tracing::warn!(entry = name, xattr = %key, %err, "cannot set xattr here; skipped");
            }
            Err(err) => return Err(Error::io(format!("setting xattr {key} of {name:?}"), err)),
        }
    }
    Ok(())
}

/// Remove `name` in `dir`, whatever it is (a directory with everything under it).
pub fn remove_any(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match sys::unlinkat(dir, Path::new(name), 0) {
        Ok(()) => Ok(()),
        Err(e) if matches!(errno(&e), libc::EISDIR | libc::EPERM) => {
            crate::store::remove_tree(&sys::fd_child_path(dir, Path::new(name)))
        }
        Err(e) => Err(e),
    }
}

/// Delete everything inside `dir` (not `dir` itself).
pub fn empty_dir(dir: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => crate::store::remove_tree(&p)?,
            Ok(_) => std::fs::remove_file(&p)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether `dir` has no entries.
pub fn is_empty_dir(dir: &Path) -> io::Result<bool> {
    Ok(std::fs::read_dir(dir)?.next().is_none())
}
