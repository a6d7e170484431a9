//! New entries: CREATE, MKNOD, MKDIR, SYMLINK, LINK.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::OnceLock;

use crate::layer::meta;
use crate::sys;
use crate::union::ids::container_to_host;
use crate::union::upper::{NewAttr, UpperLayer};
use crate::union::view::copy::{copies_much, copy_up_node};
use crate::union::view::data::reusable_for;
use crate::union::view::lookup::entry;
use crate::union::view::privs::writes_may_bypass;
use crate::union::view::state::{Handle, View};
use crate::union::view::sync::{add_stat_to_listing, add_to_listing, errno, new_name, refresh};
use crate::union::view::types::{
    Caller, Created, Entry, Errno, OpenFlags, Opened, Registrar, Reply,
};

/// Host ids for a new entry made by `req` in `parent` (setgid directories pass on their group).
fn owner_for(fs: &View, req: &Caller, parent: u64) -> io::Result<(u32, u32, bool)> {
    let uid =
        container_to_host(&fs.tree.ids.uid_map, req.uid).ok_or_else(|| errno(libc::EOVERFLOW))?;
    let mut gid =
        container_to_host(&fs.tree.ids.gid_map, req.gid).ok_or_else(|| errno(libc::EOVERFLOW))?;
    let (layer, rel) = fs.tree.backing(parent)?;
    let pst = fs.tree.layers.get(layer).lstat(&rel)?;
    let setgid = pst.st_mode & libc::S_ISGID != 0;
    if setgid {
        gid = pst.st_gid;
    }
    Ok((uid, gid, setgid))
}

impl View {
    /// The entry just made in the upper as `name` (at `rel`) in `parent`: the tree and the
    /// parent's cached listing learn of it, and the reply holds a lookup of it.
    fn new_entry(&self, up: &UpperLayer, parent: u64, name: &OsStr, rel: &Path) -> Reply<Entry> {
        refresh(
            self,
            up,
            Some(parent),
            rel.parent().unwrap_or(Path::new("")),
        );
        add_to_listing(self, up, parent, name, rel);
        let (_, attr) = self.tree.lookup(parent, name)?;
        Ok(entry(attr))
    }

    /// Run `make` to create `name` in `parent`, then answer with the new entry.
    fn create_entry(
        &self,
        req: &Caller,
        parent: u64,
        name: &OsStr,
        make: impl FnOnce(&UpperLayer, &Path, u32, u32, bool) -> io::Result<()>,
    ) -> Reply<Entry> {
        let up = self.upper()?;
        let rel = new_name(self, parent, name)?;
        let (uid, gid, setgid) = owner_for(self, req, parent)?;
        make(up, &rel, uid, gid, setgid)?;
        self.new_entry(up, parent, name, &rel)
    }

    /// MKNOD of `mode` (type and permissions) with device number `rdev`.
    pub fn mknod(
        &self,
        req: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> Reply<Entry> {
        if self.opts.flags.iter().any(|f| f == "nodev")
            && matches!(mode & libc::S_IFMT, libc::S_IFCHR | libc::S_IFBLK)
        {
            return Err(Errno::EPERM);
        }
        self.create_entry(req, parent, name, |up, rel, uid, gid, _| {
            up.mknod(
                rel,
                &NewAttr {
                    mode: (mode & libc::S_IFMT) | (mode & 0o7777 & !umask),
                    uid,
                    gid,
                    rdev: rdev as u64,
                },
            )
        })
    }

    pub fn mkdir(
        &self,
        req: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> Reply<Entry> {
        self.create_entry(req, parent, name, |up, rel, uid, gid, setgid| {
            let sgid = if setgid { libc::S_ISGID } else { 0 };
            up.mkdir(
                rel,
                &NewAttr {
                    mode: (mode & 0o7777 & !umask) | sgid,
                    uid,
                    gid,
                    rdev: 0,
                },
            )
        })
    }

    pub fn symlink(
        &self,
        req: &Caller,
        parent: u64,
        link_name: &OsStr,
        target: &Path,
    ) -> Reply<Entry> {
        self.create_entry(req, parent, link_name, |up, rel, uid, gid, _| {
            up.symlink(rel, target, uid, gid)
        })
    }

    /// LINK of `ino` as `newname` in `newparent`; when the link copies a large file up, `done`
    /// is called from a thread of its own.
    pub fn link(
        &self,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        done: impl FnOnce(Reply<Entry>) + Send + 'static,
    ) {
        let newname = newname.to_owned();
        let long = copies_much(self, ino, false);
        self.serve(long, move |fs| done(fs.link_now(ino, newparent, &newname)))
    }

    fn link_now(&self, ino: u64, newparent: u64, newname: &OsStr) -> Reply<Entry> {
        let up = self.upper()?;
        let src = self.tree.path_of(ino)?;
        let dst = new_name(self, newparent, newname)?;
        copy_up_node(self, up, ino, &src)?;
        up.link(&src, &dst)?;
        self.new_entry(up, newparent, newname, &dst)
    }

    /// CREATE of `name` in `parent` (open(2) `flags`), opened read-write; `reg` registers a
    /// passthrough backing file.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        req: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reg: &dyn Registrar,
    ) -> Reply<Created> {
        let up = self.upper()?;
        let (rel, made) = match new_name(self, parent, name) {
            Ok(r) => {
                let (uid, gid, _) = owner_for(self, req, parent)?;
                let attr = NewAttr {
                    mode: libc::S_IFREG | (mode & 0o7777 & !umask),
                    uid,
                    gid,
                    rdev: 0,
                };
                let (fd, st) = match up.create_file_direct(&r, &attr)? {
                    Some(made) => made,
                    None => {
                        let fd = up.create_file(&r, &attr)?;
                        let st = sys::fstat(fd.as_fd())?;
                        (fd, st)
                    }
                };
                refresh(self, up, Some(parent), r.parent().unwrap_or(Path::new("")));
                add_stat_to_listing(self, parent, name, &st);
                (r, Some((fd, st)))
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL == 0 => {
                (self.tree.path_of(parent)?.join(name), None)
            }
            Err(e) => return Err(e.into()),
        };
        let (ino, file, attr) = match made.filter(|_| reusable_for(flags)) {
            // The file just made, still open: its stat and override (none unless the owner
            // had to go to override_stat) are what the view shows.
            Some((fd, st)) => {
                let node = self.tree.lookup_node(parent, name)?;
                let epoch = node.xattr_epoch();
                // New files usually have no xattrs at all (else: ACLs inherited, security
                // labels, or the owner kept in override_stat); knowing it spares reading
                // them at every later setattr and getxattr.
                let names = sys::flistxattr(fd.as_fd())?;
                let over = if names.is_empty() {
                    node.mark_upper_plain(epoch);
                    None
                } else {
                    meta::fd_override(fd.as_fd())
                };
                let attr = self.tree.attr_with_override(&node, st, over);
                (node.ino, File::from(fd), attr)
            }
            None => {
                let (node, _) = self.tree.lookup(parent, name)?;
                copy_up_node(self, up, node.ino, &rel)?;
                let fd = up.open_write(
                    &rel,
                    (flags & !(libc::O_APPEND | libc::O_ACCMODE)) | libc::O_RDWR,
                )?;
                let attr = self.tree.getattr(node.ino)?;
                (node.ino, File::from(fd), attr)
            }
        };
        let backing = if writes_may_bypass(self, mode & 0o7777) {
            self.backing_id(ino, file.as_fd(), reg)
        } else {
            None
        };
        let fh = self.add_handle(Handle {
            ino,
            file,
            writable: true,
            passthrough: backing.is_some(),
            window: None,
            read_map: OnceLock::new(),
        });
        Ok(Created {
            entry: entry(attr),
            open: Opened {
                fh,
                flags: OpenFlags::NONE,
                backing,
            },
        })
    }
}
