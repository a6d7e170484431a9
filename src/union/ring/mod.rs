//! FUSE over io_uring (Linux 6.14+, `/sys/module/fuse/parameters/enable_uring` = Y): the
//! second transport of the union view beside fuser's `/dev/fuse` readers.
//!
//! The INIT reply (fuser's handshake, `fs.rs`) carries `FUSE_OVER_IO_URING`; then [`start`]
//! registers one queue per possible CPU, each served by a thread pinned to its CPU, and once
//! every queue has its slots registered the kernel sends each request to the queue of the
//! CPU it came from. The reply and the fetch of the next request go in one submission
//! (`COMMIT_AND_FETCH`). FORGET, INTERRUPT and notifications stay on `/dev/fuse`, where the
//! fuser threads keep serving (as they serve anything sent before the ring was ready).
//!
//! `wire` is the wire format; `dispatch` decodes each opcode and calls the same [`View`]
//! handlers as the fuser adapter; `sys::FuseRing` owns the io_uring and its buffers.

pub mod access;
mod dispatch;
pub mod wire;

use std::any::Any;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use crate::sys::{self, Completion, FuseRing};
use crate::union::ring::access::Acl;
use crate::union::view::types::{self, Backing, Errno, OpenReply, Opened, Registrar};
use crate::union::view::View;

/// Slots per queue: requests one CPU's queue holds at once (one is being answered while the
/// kernel fills the others; a handler answering from a thread of its own holds one).
const DEPTH: usize = 8;

/// Name prefix of the queue threads (`ring-q0`, ...): `stratafs status` counts them to tell a
/// mount's transport.
pub const QUEUE_THREAD_PREFIX: &str = "ring-q";

/// Requests answered over the ring since the mount (read at exit by the server's log line).
static SERVED: AtomicU64 = AtomicU64::new(0);

/// Requests answered over the ring so far.
pub fn served() -> u64 {
    SERVED.load(Ordering::Relaxed)
}

/// Opcodes counted one by one (FUSE's are below 64; any other counts in the last cell).
const COUNTED_OPCODES: usize = 64;

/// Requests received over the ring per opcode: what a workload asks (the fuser transport's
/// `RUST_LOG=fuser=debug` log shows the same for /dev/fuse).
static BY_OPCODE: [AtomicU64; COUNTED_OPCODES] = [const { AtomicU64::new(0) }; COUNTED_OPCODES];

fn count_opcode(opcode: u32) {
    let cell = (opcode as usize).min(COUNTED_OPCODES - 1);
    BY_OPCODE[cell].fetch_add(1, Ordering::Relaxed);
}

/// `opcode=count` for every opcode the ring received, e.g. `22=100003 44=247`.
pub fn requests_by_opcode() -> String {
    BY_OPCODE
        .iter()
        .enumerate()
        .filter_map(|(op, n)| {
            let n = n.load(Ordering::Relaxed);
            (n > 0).then(|| format!("{op}={n}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Payload buffer size for a connection with these INIT limits: the kernel refuses a
/// slot smaller than max(8 KiB, max_write, max_pages * page size).
pub fn payload_size(max_write: u32, max_pages: u32) -> usize {
    let page = 4096usize;
    (max_write as usize)
        .max(max_pages as usize * page)
        .max(8192)
}

/// One queue: its ring and the connection it serves.
struct Queue {
    ring: FuseRing,
    dev: Arc<OwnedFd>,
    /// Who may use the mount (fuser's check, which ring requests never pass through).
    acl: Acl,
    /// Slots still the kernel's or a handler's (a failed one leaves this count).
    live: AtomicUsize,
}

/// Start the ring transport on the connection behind `dev`: one queue per possible CPU with
/// `DEPTH` slots of `payload` bytes, serving the users `acl` admits. Returns once every queue's slots are registered (the
/// ring then carries every new request), or the first registration error.
pub fn start(view: View, dev: BorrowedFd<'_>, payload: usize, acl: Acl) -> io::Result<usize> {
    let dev = Arc::new(dev.try_clone_to_owned()?);
    let n = sys::possible_cpus();
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (tx, rx) = mpsc::channel::<io::Result<()>>();
    for qid in 0..n {
        let ring = FuseRing::new(dev.as_fd(), qid as u16, DEPTH, payload)?;
        let q = Arc::new(Queue {
            ring,
            dev: dev.clone(),
            acl,
            live: AtomicUsize::new(DEPTH),
        });
        let (view, tx) = (view.clone(), tx.clone());
        std::thread::Builder::new()
            .name(format!("{QUEUE_THREAD_PREFIX}{qid}"))
            .spawn(move || {
                if qid < online {
                    if let Err(e) = sys::pin_to_cpu(qid) {
                        tracing::warn!(qid, %e, "could not pin the ring thread");
                    }
                }
                serve_queue(&view, &q, &tx)
            })?;
    }
    drop(tx);
    for _ in 0..n {
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("a ring thread ended while registering")),
        }
    }
    Ok(n)
}

/// A queue's thread: register its slots, then answer what arrives until the connection ends.
fn serve_queue(view: &View, q: &Arc<Queue>, started: &mpsc::Sender<io::Result<()>>) {
    let mut tries = 0;
    let mut reported = false;
    let mut report = |r: io::Result<()>| {
        if !reported {
            reported = true;
            let _ = started.send(r);
        }
    };
    if let Err(e) = q.ring.register() {
        report(Err(e));
        return;
    }
    // Registration errors come back at once; a REGISTER that took completes only when a
    // request arrives in its slot. Requests may well arrive before we stop looking.
    let mut first = true;
    loop {
        let batch = if first {
            first = false;
            match q.ring.poll_now() {
                Ok(b) if b.is_empty() => {
                    report(Ok(()));
                    continue;
                }
                r => r,
            }
        } else {
            q.ring.wait()
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(%e, "waiting on the FUSE ring failed; its queue stops");
                report(Err(e));
                return;
            }
        };
        for c in batch {
            match c {
                Completion::Request(rq) => {
                    report(Ok(()));
                    // The replies of this batch so far go out before a handler that may
                    // take long; the last one goes in with the next wait.
                    if let Err(e) = q.ring.flush() {
                        tracing::warn!(%e, "submitting ring replies failed");
                    }
                    dispatch::dispatch(view, q, rq);
                }
                Completion::Failed { slot, error } => {
                    if error.raw_os_error() == Some(libc::EAGAIN) && tries < 100 {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        if q.ring.register_slot(slot).is_ok() {
                            continue;
                        }
                    }
                    let left = q.live.fetch_sub(1, Ordering::Relaxed) - 1;
                    match error.raw_os_error() {
                        // The connection ended (unmount, abort).
                        Some(libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED) => {
                            tracing::debug!(slot, %error, "ring slot ended")
                        }
                        _ => tracing::warn!(slot, %error, "ring slot failed"),
                    }
                    report(Err(error));
                    if left == 0 {
                        return;
                    }
                }
            }
        }
    }
}

/// Where the answer to one ring request goes. It may travel to another thread (a copy-up
/// answered from a thread of its own) and commits its slot from there.
pub struct RingReply {
    q: Arc<Queue>,
    slot: usize,
    unique: u64,
}

impl RingReply {
    fn send(self, r: Result<&[&[u8]], Errno>) {
        let (error, body): (i32, &[&[u8]]) = match r {
            Ok(b) => (0, b),
            Err(e) => (-e.code(), &[]),
        };
        let len = body.iter().map(|b| b.len()).sum();
        let h = wire::out_header(self.unique, error, len);
        let mut res = self.q.ring.commit(self.slot, self.unique, &h, body);
        if matches!(&res, Err(e) if e.raw_os_error() == Some(libc::EOVERFLOW)) {
            tracing::error!(len, "reply larger than the ring's payload buffer");
            let h = wire::out_header(self.unique, -libc::EIO, 0);
            res = self.q.ring.commit(self.slot, self.unique, &h, &[]);
        }
        match res {
            Ok(()) => {
                SERVED.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.q.live.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(%e, "committing a ring reply failed");
            }
        }
    }

    pub fn data(self, body: &[u8]) {
        self.send(Ok(&[body]))
    }

    pub fn error(self, e: Errno) {
        self.send(Err(e))
    }

    pub fn empty(self, r: types::Reply<()>) {
        match r {
            Ok(()) => self.send(Ok(&[])),
            Err(e) => self.error(e),
        }
    }

    /// The answer `f` makes of a value, or the error.
    pub fn with<T>(self, r: types::Reply<T>, f: impl FnOnce(&T) -> Vec<u8>) {
        match r {
            Ok(v) => self.data(&f(&v)),
            Err(e) => self.error(e),
        }
    }
}

/// A passthrough backing file this transport registered; closed when the last open drops it.
#[derive(Debug)]
pub struct RingBacking {
    dev: Arc<OwnedFd>,
    pub id: u32,
}

impl Drop for RingBacking {
    fn drop(&mut self) {
        if let Err(e) = sys::fuse_backing_close(self.dev.as_fd(), self.id) {
            tracing::debug!(id = self.id, %e, "closing a backing file");
        }
    }
}

impl Backing for RingBacking {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The kernel's id of a backing file, whichever transport registered it. One the fuser
/// transport registered (an open served before the ring was ready) shows its id only in its
/// `Debug` form.
pub fn backing_raw_id(b: &dyn Backing) -> Option<u32> {
    if let Some(r) = b.as_any().downcast_ref::<RingBacking>() {
        return Some(r.id);
    }
    let dbg = format!("{b:?}");
    let at = dbg.find("backing_id: ")? + "backing_id: ".len();
    let digits: String = dbg[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl Registrar for RingReply {
    fn open_backing(&self, fd: BorrowedFd<'_>) -> io::Result<Arc<dyn Backing>> {
        let id = sys::fuse_backing_open(self.q.dev.as_fd(), fd)?;
        Ok(Arc::new(RingBacking {
            dev: self.q.dev.clone(),
            id,
        }))
    }
}

/// `fuse_open_out` fields of an open: passthrough when it has a backing file.
pub fn open_fields(o: &Opened) -> (u32, u32) {
    match o.backing.as_deref().and_then(backing_raw_id) {
        Some(id) => (o.flags.0 | wire::FOPEN_PASSTHROUGH, id),
        None => (o.flags.0, 0),
    }
}

impl OpenReply for RingReply {
    fn reply(self, r: types::Reply<Opened>) {
        match r {
            Ok(o) => {
                let (flags, id) = open_fields(&o);
                self.data(&wire::open_out(o.fh, flags, id))
            }
            Err(e) => self.error(e),
        }
    }
}
