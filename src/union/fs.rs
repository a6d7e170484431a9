//! The fuser adapter: `impl fuser::Filesystem` over the view's core ([`View`]). Each method
//! converts fuser's arguments to the core's types, calls the core and sends its answer; no
//! logic lives here, so another transport can serve the same core beside it.

use std::any::Any;
use std::ffi::OsStr;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, BsdFileFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, Notifier, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};

use crate::union::attr::{Attr, FileKind, Timestamp};
use crate::union::options::MountOptions;
use crate::union::tree::Tree;
use crate::union::view::types::{
    self, Backing, Caller, Entry, Notify, OpenReply, Opened, Registrar, SetAttrReq, SetTime, Xattr,
};
use crate::union::view::View;

/// Run when the session ends (from `destroy`, after the last request).
pub type DestroyHook = Arc<OnceLock<Box<dyn Fn() + Send + Sync>>>;

/// Set at INIT when the ring transport was negotiated: the payload size of its slots.
pub type RingPlan = Arc<OnceLock<usize>>;

/// `max_write` when the ring carries requests: each ring slot's payload buffer must hold
/// `max_write` bytes, and the kernel sends no write larger than 256 pages anyway.
const RING_MAX_WRITE: u32 = 1 << 20;

/// The union filesystem served through fuser.
pub struct UnionFs {
    view: View,
    on_destroy: DestroyHook,
    /// Set by [`UnionFs::serve_ring`]: only a session whose runner starts the ring queues may
    /// ask for the ring at INIT (the kernel then holds every request until they register).
    ring: Option<RingPlan>,
}

impl UnionFs {
    pub fn new(tree: Tree, opts: MountOptions) -> UnionFs {
        UnionFs {
            view: View::new(tree, opts),
            on_destroy: Arc::default(),
            ring: None,
        }
    }

    /// The core this adapter serves (shared: clone it to reach the view after the session
    /// took the adapter).
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Say that the caller will serve the ring if INIT chooses it (`ring::start` once the
    /// handshake is done). The returned plan says whether (and how) INIT chose it. A session
    /// run without this call (fuser alone) never asks for the ring.
    pub fn serve_ring(&mut self) -> RingPlan {
        self.ring.get_or_insert_with(Arc::default).clone()
    }

    /// Where the mount program puts what to do when the session ends.
    pub fn on_destroy(&self) -> DestroyHook {
        self.on_destroy.clone()
    }
}

/// The notifier of a fuser session as the core's notification channel.
pub fn notifier(n: Notifier) -> impl Notify {
    FuseNotifier(n)
}

struct FuseNotifier(Notifier);

impl Notify for FuseNotifier {
    fn inval_entry(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        self.0.inval_entry(INodeNo(parent), name)
    }
}

impl Backing for BackingId {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Registrar for ReplyOpen {
    fn open_backing(&self, fd: BorrowedFd<'_>) -> io::Result<Arc<dyn Backing>> {
        Ok(Arc::new(ReplyOpen::open_backing(self, fd)?))
    }
}

impl Registrar for ReplyCreate {
    fn open_backing(&self, fd: BorrowedFd<'_>) -> io::Result<Arc<dyn Backing>> {
        Ok(Arc::new(ReplyCreate::open_backing(self, fd)?))
    }
}

impl OpenReply for ReplyOpen {
    fn reply(self, r: types::Reply<Opened>) {
        match r {
            Ok(o) => {
                let (fh, flags) = (FileHandle(o.fh), FopenFlags::from_bits_retain(o.flags.0));
                match backing_id(&o) {
                    Some(id) => self.opened_passthrough(fh, flags, id),
                    None => self.opened(fh, flags),
                }
            }
            Err(e) => self.error(err(e)),
        }
    }
}

/// The fuser backing id of an open (the core holds the ones this adapter registered).
fn backing_id(o: &Opened) -> Option<&BackingId> {
    o.backing.as_deref()?.as_any().downcast_ref::<BackingId>()
}

fn err(e: types::Errno) -> Errno {
    Errno::from_i32(e.code())
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn kind(k: FileKind) -> fuser::FileType {
    match k {
        FileKind::NamedPipe => fuser::FileType::NamedPipe,
        FileKind::CharDevice => fuser::FileType::CharDevice,
        FileKind::BlockDevice => fuser::FileType::BlockDevice,
        FileKind::Directory => fuser::FileType::Directory,
        FileKind::RegularFile => fuser::FileType::RegularFile,
        FileKind::Symlink => fuser::FileType::Symlink,
        FileKind::Socket => fuser::FileType::Socket,
    }
}

fn system_time(t: Timestamp) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::new(t.sec.unsigned_abs(), 0) + Duration::new(0, t.nsec)
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        },
        // Before the epoch: whole seconds down, nanoseconds up from there.
        Err(e) => {
            let d = e.duration();
            let ns = d.subsec_nanos();
            Timestamp {
                sec: -(d.as_secs() as i64) - i64::from(ns > 0),
                nsec: if ns > 0 { 1_000_000_000 - ns } else { 0 },
            }
        }
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => SetTime::At(timestamp(st)),
    }
}

fn file_attr(a: &Attr) -> fuser::FileAttr {
    fuser::FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        crtime: UNIX_EPOCH,
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn reply_entry(reply: ReplyEntry, r: types::Reply<Entry>) {
    match r {
        Ok(e) => reply.entry_with_ttls(
            &e.attr_ttl,
            &e.entry_ttl,
            &file_attr(&e.attr),
            Generation(e.generation),
        ),
        Err(e) => reply.error(err(e)),
    }
}

fn reply_empty(reply: ReplyEmpty, r: types::Reply<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(err(e)),
    }
}

fn reply_xattr(reply: ReplyXattr, r: types::Reply<Xattr>) {
    match r {
        Ok(Xattr::Size(n)) => reply.size(n),
        Ok(Xattr::Data(v)) => reply.data(&v),
        Err(e) => reply.error(err(e)),
    }
}

fn reply_written(reply: ReplyWrite, r: types::Reply<u32>) {
    match r {
        Ok(n) => reply.written(n),
        Err(e) => reply.error(err(e)),
    }
}

impl Filesystem for UnionFs {
    fn destroy(&mut self) {
        if let Some(f) = self.on_destroy.get() {
            f();
        }
    }

    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let n = self
            .view
            .init(config.capabilities().bits(), self.ring.is_some());
        // A subset of what the kernel offered: accepted as a whole.
        let _ = config.add_capabilities(InitFlags::from_bits_truncate(n.flags));
        if let Some(depth) = n.max_stack_depth {
            let _ = config.set_max_stack_depth(depth);
        }
        let _ = config.set_max_readahead(n.max_readahead);
        if n.over_io_uring
            && config
                .capabilities()
                .contains(InitFlags::FUSE_OVER_IO_URING)
        {
            let _ = config.set_max_write(RING_MAX_WRITE);
            if let Some(plan) = &self.ring {
                let _ = plan.set(crate::union::ring::payload_size(RING_MAX_WRITE, 256));
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(reply, self.view.lookup(parent.0, name))
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.view.forget(ino.0, nlookup);
    }

    // batch_forget: fuser 0.18 keeps `ForgetOne` private, so its default (one `forget` per
    // node) is what runs.

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.view.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(a) => reply.attr(&a.ttl, &file_attr(&a.attr)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.view.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(err(e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.view.open(caller(req), ino.0, flags.0, reply)
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // fuser writes the bytes to /dev/fuse as they are (no copy in this process).
        self.view.read_for_kernel(fh.0, offset, size, |r| match r {
            Ok(buf) => reply.data(buf),
            Err(e) => reply.error(err(e)),
        })
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.view.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        OpenReply::reply(reply, self.view.opendir(ino.0))
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self
            .view
            .readdir(ino.0, fh.0, offset, &mut |i, off, k, name| {
                reply.add(INodeNo(i), off, kind(k), name)
            });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let r = self
            .view
            .readdirplus(ino.0, fh.0, offset, &mut |name, off, e| {
                let a = file_attr(&e.attr);
                reply.add(a.ino, off, name, &e.entry_ttl, &a, Generation(e.generation))
            });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.view.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.view.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, self.view.getxattr(ino.0, name, size))
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, self.view.listxattr(ino.0, size))
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        reply_empty(reply, self.view.access(&caller(req), ino.0, mask.bits()))
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = SetAttrReq {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            fh: fh.map(|f| f.0),
        };
        self.view.setattr(caller(req), ino.0, r, move |r| match r {
            Ok(a) => reply.attr(&a.ttl, &file_attr(&a.attr)),
            Err(e) => reply.error(err(e)),
        })
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = self
            .view
            .mknod(&caller(req), parent.0, name, mode, umask, rdev);
        reply_entry(reply, r)
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(
            reply,
            self.view.mkdir(&caller(req), parent.0, name, mode, umask),
        )
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.view.unlink(parent.0, name))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.view.rmdir(parent.0, name))
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        reply_entry(
            reply,
            self.view.symlink(&caller(req), parent.0, link_name, target),
        )
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (p, np, f) = (parent.0, newparent.0, flags.bits());
        self.view
            .rename(p, name, np, newname, f, move |r| reply_empty(reply, r))
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.view
            .link(ino.0, newparent.0, newname, move |r| reply_entry(reply, r))
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        reply_written(
            reply,
            self.view.write(&caller(req), fh.0, offset, data, kill),
        )
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self
            .view
            .create(&caller(req), parent.0, name, mode, umask, flags, &reply);
        match r {
            Ok(c) => {
                let (e, o) = (&c.entry, &c.open);
                let (attr, gen) = (file_attr(&e.attr), Generation(e.generation));
                let (fh, flags) = (FileHandle(o.fh), FopenFlags::from_bits_retain(o.flags.0));
                match backing_id(o) {
                    Some(id) => reply.created_passthrough(&e.entry_ttl, &attr, gen, fh, flags, id),
                    None => reply.created(&e.entry_ttl, &attr, gen, fh, flags),
                }
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.view.flush())
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.view.fsync(fh.0, datasync))
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.view.fsyncdir(ino.0, datasync))
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.view
            .setxattr(ino.0, name, value, flags, move |r| reply_empty(reply, r))
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.view
            .removexattr(ino.0, name, move |r| reply_empty(reply, r))
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.view.fallocate(fh.0, offset, length, mode))
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.view.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(err(e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let r = self
            .view
            .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len);
        reply_written(reply, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_the_epoch_keep_their_nanoseconds() {
        let t = UNIX_EPOCH - Duration::new(5, 250_000_000);
        let ts = timestamp(t);
        assert_eq!((ts.sec, ts.nsec), (-6, 750_000_000));
        assert_eq!(system_time(ts), t);
        let after = UNIX_EPOCH + Duration::new(7, 1);
        assert_eq!(timestamp(after), Timestamp { sec: 7, nsec: 1 });
        assert_eq!(system_time(timestamp(after)), after);
        assert_eq!(timestamp(UNIX_EPOCH - Duration::from_secs(3)).sec, -3);
    }
}
