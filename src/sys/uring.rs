//! FUSE over io_uring, the kernel side of it: one io_uring per queue with 128-byte SQEs,
//! `IORING_OP_URING_CMD` on the `/dev/fuse` descriptor, and the buffers the kernel writes
//! requests into and reads replies from (`Documentation/filesystems/fuse-io-uring.rst`, UAPI
//! `fuse.h`: `fuse_uring_req_header`, `fuse_uring_ent_in_out`, `fuse_uring_cmd_req`).
//!
//! Each entry ("slot") of a queue has two buffers: the headers (the `fuse_in_header` /
//! `fuse_out_header` area, the opcode's own argument struct, and `fuse_uring_ent_in_out`) and
//! the payload (names, written data, replies' bodies). A slot belongs to the kernel from the
//! time it is registered or committed until its completion arrives; then to the one handler
//! of the request in it until that handler commits it. This module copies a request out of
//! its slot when the completion arrives and copies the reply in just before the commit, so
//! no Rust reference ever points into memory the kernel may be writing.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::ThreadId;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// `FUSE_IO_URING_CMD_REGISTER`: give the kernel a slot to put a request in.
const CMD_REGISTER: u32 = 1;
/// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`: the reply in a slot, and the slot back for the next.
const CMD_COMMIT_AND_FETCH: u32 = 2;

/// `sizeof(struct fuse_uring_req_header)`: in_out[128], op_in[128], fuse_uring_ent_in_out.
pub const HEADERS_SIZE: usize = 128 + 128 + 32;
/// Offset of the `fuse_in_header` (request) / `fuse_out_header` (reply) area.
pub const IN_OUT: usize = 0;
/// Offset of the opcode's argument struct (`op_in`).
pub const OP_IN: usize = 128;
/// Offset of `fuse_uring_ent_in_out` {flags u64, commit_id u64, payload_sz u32, padding u32,
/// reserved u64}.
pub const ENT_IN_OUT: usize = 256;

/// One slot's buffers. The vectors are allocated once and never touched through a reference
/// after registration: only through the raw pointers taken at allocation.
struct Slot {
    headers: *mut u8,
    payload: *mut u8,
    iov: Box<[libc::iovec; 2]>,
    _keep: (Vec<u8>, Vec<u8>),
}

/// A request the kernel put in a slot, copied out of it.
#[derive(Debug)]
pub struct RingRequest {
    pub slot: usize,
    pub headers: Box<[u8; HEADERS_SIZE]>,
    pub payload: Vec<u8>,
}

/// What one completion of the queue's ring says.
#[derive(Debug)]
pub enum Completion {
    /// A request arrived in a slot.
    Request(RingRequest),
    /// The register or commit of a slot failed (the slot is the kernel's no more).
    Failed { slot: usize, error: io::Error },
}

/// One FUSE ring queue: its io_uring and slots.
pub struct FuseRing {
    // Declared first: dropped (its commands cancelled) before the slots' buffers.
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    dev: OwnedFd,
    qid: u16,
    payload_size: usize,
    slots: Vec<Slot>,
    sq: Mutex<()>,
    cq: Mutex<()>,
    /// The queue's own thread: the one that registers and waits. Only it submits the
    /// commits, since io_uring cancels the commands a thread submitted when it exits (a
    /// handler answering from a thread of its own would lose its slot).
    owner: OnceLock<ThreadId>,
    /// Slots answered from other threads, for the owner to commit: (slot, commit id).
    deferred: Mutex<Vec<(usize, u64)>>,
    /// An eventfd those threads write to wake the owner (a poll in the ring watches it):
    /// they never touch the SQ, so only the owner's task ever submits.
    wake: OwnedFd,
    /// Whether the multishot poll of `wake` is in the ring (the kernel may end it).
    wake_armed: AtomicBool,
    /// Entries the owner pushed and has not submitted yet: a commit made on the owner's
    /// thread goes in with its next wait, one `io_uring_enter` for the reply and the wait.
    unsubmitted: AtomicBool,
}

/// `user_data` of the poll of the wake-up eventfd.
const WAKE: u64 = u64::MAX;

// SAFETY: the raw pointers point into buffers this struct owns for its whole life; a slot is
// written by at most one party at a time (the kernel between register/commit and completion,
// else the one handler holding its request), and the SQ and CQ are used under their mutexes.
unsafe impl Send for FuseRing {}
// SAFETY: as above.
unsafe impl Sync for FuseRing {}

impl FuseRing {
    /// A queue `qid` of the connection behind `dev` with `depth` slots of `payload_size`
    /// bytes of payload each (at least the kernel's `max_payload_sz` for the connection).
    pub fn new(
        dev: BorrowedFd<'_>,
        qid: u16,
        depth: usize,
        payload_size: usize,
    ) -> io::Result<FuseRing> {
        let entries = (depth.max(1) * 2).next_power_of_two() as u32;
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(entries)?;
        let mut slots = Vec::with_capacity(depth);
        for _ in 0..depth {
            let mut headers = vec![0u8; HEADERS_SIZE];
            let mut payload = vec![0u8; payload_size];
            let (h, p) = (headers.as_mut_ptr(), payload.as_mut_ptr());
            let iov = Box::new([
                libc::iovec {
                    iov_base: h.cast(),
                    iov_len: HEADERS_SIZE,
                },
                libc::iovec {
                    iov_base: p.cast(),
                    iov_len: payload_size,
                },
            ]);
            slots.push(Slot {
                headers: h,
                payload: p,
                iov,
                _keep: (headers, payload),
            });
        }
        Ok(FuseRing {
            ring,
            dev: dev.try_clone_to_owned()?,
            qid,
            payload_size,
            slots,
            sq: Mutex::new(()),
            cq: Mutex::new(()),
            owner: OnceLock::new(),
            deferred: Mutex::new(Vec::new()),
            wake: eventfd()?,
            wake_armed: AtomicBool::new(false),
            unsubmitted: AtomicBool::new(false),
        })
    }

    pub fn depth(&self) -> usize {
        self.slots.len()
    }

    pub fn payload_size(&self) -> usize {
        self.payload_size
    }

    fn cmd(&self, op: u32, slot: usize, commit_id: u64, iov: Option<u64>) -> squeue::Entry128 {
        // struct fuse_uring_cmd_req { u64 flags; u64 commit_id; u16 qid; u8 padding[6]; }
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        cmd[16..18].copy_from_slice(&self.qid.to_ne_bytes());
        let mut b = opcode::UringCmd80::new(types::Fd(self.dev.as_raw_fd()), op).cmd(cmd);
        if let Some(a) = iov {
            b = b.addr(Some(a));
        }
        let e = b.build().user_data(slot as u64);
        if iov.is_some() {
            with_sqe_len(e, 2)
        } else {
            e
        }
    }

    /// Push entries and submit them at once.
    fn submit(&self, entries: &[squeue::Entry128]) -> io::Result<()> {
        self.push(entries)?;
        self.flush()
    }

    /// Submit what was pushed and not submitted yet (no system call when nothing is).
    pub fn flush(&self) -> io::Result<()> {
        if self.unsubmitted.swap(false, Ordering::Relaxed) {
            self.ring.submit()?;
        }
        Ok(())
    }

    /// Push entries for the next submission (submitting early only when the SQ is full).
    fn push(&self, entries: &[squeue::Entry128]) -> io::Result<()> {
        let _g = self.sq.lock().unwrap_or_else(|p| p.into_inner());
        self.unsubmitted.store(true, Ordering::Relaxed);
        for e in entries {
            // SAFETY: the SQ is used only under `self.sq`; the entry's iovecs and buffers
            // live as long as `self`.
            let pushed = unsafe { self.ring.submission_shared().push(e) };
            if pushed.is_err() {
                self.ring.submit()?;
                // SAFETY: as above.
                unsafe { self.ring.submission_shared().push(e) }
                    .map_err(|_| io::Error::other("io_uring submission queue full"))?;
            }
        }
        Ok(())
    }

    /// Register every slot with the kernel (`FUSE_IO_URING_CMD_REGISTER`). The calling thread
    /// becomes the queue's owner: the one that calls [`FuseRing::wait`].
    pub fn register(&self) -> io::Result<()> {
        let _ = self.owner.set(std::thread::current().id());
        let entries: Vec<_> = (0..self.slots.len())
            .map(|i| {
                let iov = self.slots[i].iov.as_ptr() as u64;
                self.cmd(CMD_REGISTER, i, 0, Some(iov))
            })
            .collect();
        self.submit(&entries)
    }

    /// Register one slot again (after its register failed with EAGAIN).
    pub fn register_slot(&self, slot: usize) -> io::Result<()> {
        let iov = self.slots[slot].iov.as_ptr() as u64;
        self.submit(&[self.cmd(CMD_REGISTER, slot, 0, Some(iov))])
    }

    /// Wait for completions (at least one) and take them.
    pub fn wait(&self) -> io::Result<Vec<Completion>> {
        let _g = self.cq.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            self.commit_deferred()?;
            if !self.wake_armed.swap(true, Ordering::Relaxed) {
                let poll =
                    opcode::PollAdd::new(types::Fd(self.wake.as_raw_fd()), libc::POLLIN as u32)
                        .multi(true)
                        .build()
                        .user_data(WAKE);
                self.push(&[poll.into()])?;
            }
            // What this thread pushed (its commits, the poll) goes in with the wait.
            self.unsubmitted.store(false, Ordering::Relaxed);
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let out = self.collect();
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    /// Submit the commits other threads left for the owner.
    fn commit_deferred(&self) -> io::Result<()> {
        let todo = std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|p| p.into_inner()));
        if todo.is_empty() {
            return Ok(());
        }
        let entries: Vec<_> = todo
            .iter()
            .map(|&(slot, id)| self.cmd(CMD_COMMIT_AND_FETCH, slot, id, None))
            .collect();
        self.push(&entries)
    }

    /// Take the completions already there, without waiting.
    pub fn poll_now(&self) -> io::Result<Vec<Completion>> {
        let _g = self.cq.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self.collect())
    }

    /// Take the completions in the CQ (the caller holds `self.cq`).
    fn collect(&self) -> Vec<Completion> {
        let mut out = Vec::new();
        // SAFETY: the CQ is used only under `self.cq`, which the caller holds.
        let cq = unsafe { self.ring.completion_shared() };
        for c in cq {
            if c.user_data() == WAKE {
                drain(&self.wake);
                if !cqueue::more(c.flags()) {
                    self.wake_armed.store(false, Ordering::Relaxed);
                }
                continue;
            }
            let slot = c.user_data() as usize;
            if slot >= self.slots.len() {
                continue;
            }
            if c.result() < 0 {
                out.push(Completion::Failed {
                    slot,
                    error: io::Error::from_raw_os_error(-c.result()),
                });
                continue;
            }
            out.push(Completion::Request(self.take(slot)));
        }
        out
    }

    /// Copy the request the kernel put in `slot` out of it.
    fn take(&self, slot: usize) -> RingRequest {
        let s = &self.slots[slot];
        let mut headers = Box::new([0u8; HEADERS_SIZE]);
        // SAFETY: the slot's completion arrived: the kernel wrote it and is done with it until
        // the commit; the buffer holds HEADERS_SIZE bytes.
        unsafe { std::ptr::copy_nonoverlapping(s.headers, headers.as_mut_ptr(), HEADERS_SIZE) };
        let at = ENT_IN_OUT + 16;
        let mut n = [0u8; 4];
        n.copy_from_slice(&headers[at..at + 4]);
        let len = (u32::from_ne_bytes(n) as usize).min(self.payload_size);
        let mut payload = vec![0u8; len];
        // SAFETY: as above; `len` is at most the payload buffer's size.
        unsafe { std::ptr::copy_nonoverlapping(s.payload, payload.as_mut_ptr(), len) };
        RingRequest {
            slot,
            headers,
            payload,
        }
    }

    /// Answer the request in `slot` (`out_header`: the `fuse_out_header`; `body`: the reply's
    /// bytes) and hand the slot back for the next request. A body larger than the payload
    /// buffer is refused (`EOVERFLOW`) before anything is written.
    pub fn commit(
        &self,
        slot: usize,
        commit_id: u64,
        out_header: &[u8; 16],
        body: &[&[u8]],
    ) -> io::Result<()> {
        let total: usize = body.iter().map(|b| b.len()).sum();
        if total > self.payload_size || slot >= self.slots.len() {
            return Err(io::Error::from_raw_os_error(libc::EOVERFLOW));
        }
        let s = &self.slots[slot];
        // SAFETY: the slot is this caller's (its request's completion arrived, it has not been
        // committed yet); every copy stays inside the slot's buffers (sizes checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(out_header.as_ptr(), s.headers.add(IN_OUT), 16);
            let sz = (total as u32).to_ne_bytes();
            std::ptr::copy_nonoverlapping(sz.as_ptr(), s.headers.add(ENT_IN_OUT + 16), 4);
            let mut at = 0;
            for b in body {
                std::ptr::copy_nonoverlapping(b.as_ptr(), s.payload.add(at), b.len());
                at += b.len();
            }
        }
        if self.owner.get() == Some(&std::thread::current().id()) {
            // Submitted with the owner's next wait (or before its next request's handler).
            return self.push(&[self.cmd(CMD_COMMIT_AND_FETCH, slot, commit_id, None)]);
        }
        self.deferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((slot, commit_id));
        wake(&self.wake)
    }
}

/// Set the SQE's `len` (the number of iovecs of a REGISTER), which the crate's `UringCmd80`
/// leaves 0.
/// A non-blocking eventfd.
fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; a descriptor it returns is ours alone.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Add one to an eventfd (wakes its poll).
fn wake(fd: &OwnedFd) -> io::Result<()> {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer.
    let r = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
    // EAGAIN: the counter is full, so the owner has a wake-up pending anyway.
    if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reset an eventfd's counter (nothing to read is fine).
fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a live buffer.
    let _ = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
}

fn with_sqe_len(e: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // SAFETY: `Entry128` is `repr(C)`, 128 bytes: the 64-byte `io_uring_sqe` and 64 bytes of
    // command; `len` is the u32 at offset 24 of `io_uring_sqe`.
    unsafe {
        let mut raw: [u8; 128] = std::mem::transmute(e);
        raw[24..28].copy_from_slice(&len.to_ne_bytes());
        std::mem::transmute::<[u8; 128], squeue::Entry128>(raw)
    }
}

/// `FUSE_DEV_IOC_BACKING_OPEN`: `_IOW(229, 1, struct fuse_backing_map)` (16 bytes).
const FUSE_DEV_IOC_BACKING_OPEN: libc::c_ulong = (1 << 30) | (16 << 16) | (229 << 8) | 1;

/// Register `fd` as a passthrough backing file of the connection behind `dev`; its id.
pub fn fuse_backing_open(dev: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<u32> {
    // struct fuse_backing_map { int32_t fd; uint32_t flags; uint64_t padding; }
    let map: [u64; 2] = [fd.as_raw_fd() as u32 as u64, 0];
    // SAFETY: the ioctl reads the 16-byte map through the pointer, valid for the call.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), FUSE_DEV_IOC_BACKING_OPEN, map.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as u32)
}

/// `FUSE_DEV_IOC_BACKING_CLOSE`: `_IOW(229, 2, uint32_t)`.
const FUSE_DEV_IOC_BACKING_CLOSE: libc::c_ulong = (1 << 30) | (4 << 16) | (229 << 8) | 2;

/// Unregister passthrough backing file `id` of the connection behind `dev`.
pub fn fuse_backing_close(dev: BorrowedFd<'_>, id: u32) -> io::Result<()> {
    // SAFETY: the ioctl reads one u32 through the pointer, which is valid for the call.
    let r = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            FUSE_DEV_IOC_BACKING_CLOSE,
            &id as *const u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Pin the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set; CPU_SET bounds-checks.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Give the calling thread the CPUs of the process's main thread (the mask the server was
/// started with, `taskset` or cgroup limits included). A thread inherits the mask of the
/// thread that creates it, so a helper a pinned ring queue thread starts (the stat-ahead
/// threads, a long copy-up) would otherwise share that queue's one CPU with it and with the
/// caller whose request it serves, while the other CPUs idle.
pub fn unpin() -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; the kernel fills at most its size; pid 0 would be this
    // thread, getpid() is the main thread, which is never pinned.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(libc::getpid(), size, &mut set) < 0
            || libc::sched_setaffinity(0, size, &set) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// CPUs the kernel may ever have (`/sys/devices/system/cpu/possible`, e.g. `0-3`): the FUSE
/// ring has one queue for each, and is ready only when every one has a slot registered.
pub fn possible_cpus() -> usize {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    let mut max = None;
    for part in s.trim().split(',') {
        let last = part.rsplit('-').next().unwrap_or("");
        if let Ok(n) = last.parse::<usize>() {
            max = Some(max.map_or(n, |m: usize| m.max(n)));
        }
    }
    max.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |m| m + 1,
    )
}
