//! File data: OPEN, READ, WRITE, RELEASE, FLUSH, FSYNC, FALLOCATE, LSEEK, COPY_FILE_RANGE.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use crate::sys;
use crate::union::view::copy::{
    copies_much, copy_up_beside_readers, copy_up_node_open, reopen_beside_readers,
};
use crate::union::view::privs::{kill_privs, reads_may_pass, shown_perm, writes_may_bypass};
use crate::union::view::state::{Handle, View};
use crate::union::view::types::{Caller, Errno, OpenFlags, OpenReply, Opened, Registrar, Reply};

/// Whether a file opened read-write at creation can serve an open with `flags` as it is:
/// the synchronous and direct modes are fixed at open (and O_SYNC cannot be set later).
pub(super) fn reusable_for(flags: i32) -> bool {
    flags & (libc::O_SYNC | libc::O_DSYNC | libc::O_DIRECT) == 0
}

/// Reads at least this large are answered from a map of the backing file (see
/// [`mapped_read`]); smaller ones are cheaper as a pread (no map faulted in).
const MAPPED_READ_MIN: u32 = 64 << 10;

/// Pages of the read map stay mapped in the process for at most about this many bytes behind
/// a read: a long sequential read does not count the whole file in the process's memory.
const MAP_RELEASE_STEP: u64 = 8 << 20;

/// The bytes a READ of `size` at `offset` of `h` returns, from the handle's map of the file,
/// for a reply the kernel copies straight from the page cache: one copy of the data instead
/// of two (pread into a buffer, then the write to /dev/fuse). `None`: no map (pread instead).
/// Only for handles that do not write; the file's end comes from an fstat just before.
fn mapped_read(h: &Handle, offset: u64, size: u32) -> Option<&[u8]> {
    let map = h
        .read_map
        .get_or_init(|| match sys::ReadMap::map(&h.file) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::debug!(%e, "read: no map of the file, pread instead");
                None
            }
        })
        .as_ref()?;
    let end = u64::try_from(sys::fstat(h.file.as_fd()).ok()?.st_size).ok()?;
    let bytes = map.for_kernel();
    if offset >= end {
        return Some(&[]);
    }
    let stop = end.min(offset + u64::from(size));
    if stop > bytes.len() as u64 {
        return None; // the file grew past the map: pread
    }
    // Drop the pages of the step this read finished.
    let step_end = stop / MAP_RELEASE_STEP * MAP_RELEASE_STEP;
    if step_end > offset && step_end >= MAP_RELEASE_STEP {
        map.release_pages(
            (step_end - MAP_RELEASE_STEP) as usize,
            MAP_RELEASE_STEP as usize,
        );
    }
    Some(&bytes[offset as usize..stop as usize])
}

impl View {
    /// OPEN with `flags` (open(2) flags); a writable open that copies a large file up
    /// answers from a thread of its own.
    pub fn open(&self, caller: Caller, ino: u64, flags: i32, reply: impl OpenReply) {
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            // O_TRUNC: nothing is copied.
            let long = flags & libc::O_TRUNC == 0 && copies_much(self, ino, false);
            return self.serve(long, move |fs| {
                let r = fs.open_writable(&caller, ino, flags, &reply);
                reply.reply(r)
            });
        }
        let r = self.open_read(ino, &reply);
        reply.reply(r)
    }

    fn open_read(&self, ino: u64, reg: &dyn Registrar) -> Reply<Opened> {
        if reopen_beside_readers(self, ino)? {
            return Err(Errno::ESTALE);
        }
        if let Some((file, window)) = self.open_tar_file(ino)? {
            // No passthrough: the kernel would need a whole backing file.
            let fh = self.add_handle(Handle {
                ino,
                file,
                writable: false,
                passthrough: false,
                window: Some(window),
                read_map: OnceLock::new(),
            });
            return Ok(Opened {
                fh,
                flags: OpenFlags::KEEP_CACHE,
                backing: None,
            });
        }
        let file = self.open_backing_file(ino, libc::O_RDONLY)?;
        let pass = reads_may_pass(self, ino, &file);
        Ok(self.opened_file(ino, file, false, pass, reg))
    }

    /// Whether an open of `ino` (backing file `file`) lets the kernel keep the inode's cached
    /// pages: always for a lower file (lower layers never change while mounted), for an upper
    /// one when it is as the view last saw it (every change made through the mount went
    /// through that cache; a change made to the upper directory behind the mount's back
    /// drops it).
    fn keeps_cache(&self, ino: u64, file: &File) -> bool {
        let in_upper = self
            .tree
            .node(ino)
            .map_or(true, |n| self.tree.layers.get(n.state.read().layer).upper);
        !in_upper || self.upper_unchanged(ino, file)
    }

    /// Register an open of `file` for `ino`, through passthrough when `passthrough_ok` and the
    /// kernel allows it.
    fn opened_file(
        &self,
        ino: u64,
        file: File,
        writable: bool,
        passthrough_ok: bool,
        reg: &dyn Registrar,
    ) -> Opened {
        let backing = passthrough_ok
            .then(|| self.backing_id(ino, file.as_fd(), reg))
            .flatten();
        // The kernel refuses page-cache flags (KEEP_CACHE) on passthrough opens.
        let keep = backing.is_none() && self.keeps_cache(ino, &file);
        let fh = self.add_handle(Handle {
            ino,
            file,
            writable,
            passthrough: backing.is_some(),
            window: None,
            read_map: OnceLock::new(),
        });
        let flags = if keep {
            OpenFlags::KEEP_CACHE
        } else {
            OpenFlags::NONE
        };
        Opened { fh, flags, backing }
    }

    /// Register an open upper file (passthrough only when no other backing file is in use
    /// for the inode).
    fn open_upper(&self, ino: u64, file: File, perm: Option<u32>, reg: &dyn Registrar) -> Opened {
        let perm = perm.or_else(|| shown_perm(file.as_fd()).ok().map(|(p, _)| p));
        let bypass = perm.is_some_and(|p| writes_may_bypass(self, p));
        let pass = bypass && !self.writer.blocks_passthrough(ino);
        self.opened_file(ino, file, true, pass, reg)
    }

    /// `open` with write access or `O_TRUNC`.
    fn open_writable(
        &self,
        req: &Caller,
        ino: u64,
        flags: i32,
        reg: &dyn Registrar,
    ) -> Reply<Opened> {
        let up = self.upper()?;
        let rel = self.tree.path_of(ino)?;
        // O_TRUNC: the lower data would be thrown away at once, so it is not copied.
        let truncating = flags & libc::O_TRUNC != 0;
        if copy_up_beside_readers(self, up, ino, &rel, !truncating)? {
            return Err(Errno::ESTALE);
        }
        // The copy just made is the file to open (no second open by name, no second look at
        // its mode).
        let copy =
            copy_up_node_open(self, up, ino, &rel, !truncating)?.filter(|_| reusable_for(flags));
        let (fd, perm) = match copy {
            Some(c) => {
                if truncating {
                    up.truncate_fd(c.file.as_fd(), 0)?;
                }
                (c.file, Some(c.perm))
            }
            None => (self.open_upper_for_write(up, &rel, flags)?, None),
        };
        if truncating && req.uid != 0 {
            kill_privs(self, up, req, ino, fd.as_fd())?;
        }
        Ok(self.open_upper(ino, File::from(fd), perm, reg))
    }

    /// Open the upper file at `rel` for a writable open with `flags`. Never with O_APPEND:
    /// the kernel gives every write its offset (with the writeback cache it writes pages back
    /// anywhere in the file). With the writeback cache a write-only open is opened read-write:
    /// the kernel reads the rest of a page it writes part of through that handle. A file its
    /// owner may not read (an unprivileged server) is then opened as asked.
    fn open_upper_for_write(
        &self,
        up: &crate::union::upper::UpperLayer,
        rel: &std::path::Path,
        flags: i32,
    ) -> io::Result<std::os::fd::OwnedFd> {
        let flags = flags & !libc::O_APPEND;
        let write_only = flags & libc::O_ACCMODE == libc::O_WRONLY;
        if write_only && self.writeback.load(std::sync::atomic::Ordering::Relaxed) {
            let rw = (flags & !libc::O_ACCMODE) | libc::O_RDWR;
            match up.open_write(rel, rw) {
                Err(e) if e.raw_os_error() == Some(libc::EACCES) => {}
                r => return r,
            }
        }
        up.open_write(rel, flags)
    }

    /// READ of up to `size` bytes at `offset` (short only at the end of the file).
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Reply<Vec<u8>> {
        self.read_with(fh, offset, size, |r| r.map(<[u8]>::to_vec))
    }

    /// [`View::read_with`] for a `reply` that only hands the bytes to the kernel (a write to
    /// /dev/fuse), never reads them itself: a large read comes from a map of the backing file
    /// then (see [`mapped_read`]; the process touching the map could take SIGBUS).
    pub fn read_for_kernel<R>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        reply: impl FnOnce(Reply<&[u8]>) -> R,
    ) -> R {
        if size >= MAPPED_READ_MIN {
            if let Some(h) = self.handle(fh) {
                if h.window.is_none() && !h.writable {
                    if let Some(bytes) = mapped_read(&h, offset, size) {
                        return reply(Ok(bytes));
                    }
                }
            }
        }
        self.read_with(fh, offset, size, reply)
    }

    /// [`View::read`] into a buffer this thread keeps, handed to `reply` (which sends it):
    /// no allocation per request. A fresh buffer of a read's size (up to 1 MiB) comes from
    /// mmap, zeroed page by page as it is filled, and goes back to the kernel after each read:
    /// reads served without passthrough spent much of their time in those page faults.
    pub fn read_with<R>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        reply: impl FnOnce(Reply<&[u8]>) -> R,
    ) -> R {
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let Some(h) = self.handle(fh) else {
            return reply(Err(Errno::EBADF));
        };
        BUF.with(|cell| {
            // A reply that reads again on this thread (none does) gets a buffer of its own.
            let mut own = Vec::new();
            let mut borrowed = cell.try_borrow_mut();
            let buf = match borrowed.as_mut() {
                Ok(b) => &mut **b,
                Err(_) => &mut own,
            };
            if buf.len() < size as usize {
                buf.resize(size as usize, 0);
            }
            let buf = &mut buf[..size as usize];
            if let Some(w) = h.window {
                return match w.read_at(&h.file, buf, offset) {
                    Ok(n) => reply(Ok(&buf[..n])),
                    Err(e) => reply(Err(e.into())),
                };
            }
            let mut done = 0usize;
            while done < buf.len() {
                match h.file.read_at(&mut buf[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return reply(Err(e.into())),
                }
            }
            reply(Ok(&buf[..done]))
        })
    }

    /// WRITE of `data` at `offset`; `kill_suidgid`: the kernel asks us to clear
    /// setuid/setgid (`FUSE_WRITE_KILL_SUIDGID`).
    pub fn write(
        &self,
        caller: &Caller,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
    ) -> Reply<u32> {
        let up = self.upper()?;
        let h = self.handle(fh).filter(|h| h.writable).ok_or(Errno::EBADF)?;
        if kill_suidgid {
            kill_privs(self, up, caller, h.ino, h.file.as_fd())?;
        }
        Ok(up.write_fd(h.file.as_fd(), data, offset as i64)? as u32)
    }

    pub fn release(&self, fh: u64) {
        self.remove_handle(fh);
    }

    /// FLUSH (sent at every close) has nothing to do here: data goes to the backing file at
    /// each write, and locks stay in the kernel (no FUSE_POSIX_LOCKS). ENOSYS tells the kernel
    /// so; it then stops sending FLUSH, and `close` no longer waits for a round trip.
    pub fn flush(&self) -> Reply<()> {
        Err(Errno::ENOSYS)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Reply<()> {
        if self.opts.volatile {
            return Ok(());
        }
        let h = self.handle(fh).ok_or(Errno::EBADF)?;
        Ok(sys::fsync(h.file.as_fd(), datasync)?)
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Reply<()> {
        let up = self.upper()?;
        let h = self.handle(fh).filter(|h| h.writable).ok_or(Errno::EBADF)?;
        Ok(up.fallocate_fd(h.file.as_fd(), mode, offset as i64, length as i64)?)
    }

    /// `SEEK_DATA`/`SEEK_HOLE` (and the others) on the backing file of `fh`.
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Reply<i64> {
        let h = self.handle(fh).ok_or(Errno::EBADF)?;
        if let Some(w) = h.window {
            // A file in a tar has no holes: data up to its end, one hole from there.
            let len = w.len as i64;
            return match whence {
                libc::SEEK_DATA if (0..len).contains(&offset) => Ok(offset),
                libc::SEEK_HOLE if (0..len).contains(&offset) => Ok(len),
                libc::SEEK_DATA | libc::SEEK_HOLE => Err(Errno(libc::ENXIO)),
                _ => Err(Errno::EINVAL),
            };
        }
        Ok(sys::lseek(h.file.as_fd(), offset, whence)?)
    }

    /// In-kernel copy between two open files of the view (quota charged for the growth).
    pub fn copy_file_range(
        &self,
        fh_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
    ) -> Reply<u32> {
        let up = self.upper()?;
        let (Some(hi), Some(ho)) = (
            self.handle(fh_in),
            self.handle(fh_out).filter(|h| h.writable),
        ) else {
            return Err(Errno::EBADF);
        };
        let size = sys::fstat(ho.file.as_fd())?.st_size as u64;
        let len = len.min(u32::MAX as u64 / 2);
        let growth = (offset_out + len).saturating_sub(size);
        up.quota.reserve(growth)?;
        let (mut oi, mut oo) = (offset_in as i64, offset_out as i64);
        let r = sys::copy_file_range(
            hi.file.as_fd(),
            &mut oi,
            ho.file.as_fd(),
            &mut oo,
            len as usize,
        );
        let after = sys::fstat(ho.file.as_fd())
            .map(|s| s.st_size as u64)
            .unwrap_or(size);
        up.quota.release(growth);
        up.quota.resized(size, after);
        Ok(r? as u32)
    }
}
