//! Stat-ahead for READDIRPLUS, on helper threads that only warm the kernel's dentry, inode and
//! directory-block caches (what the kernel is told still comes from the request's own stat):
//!
//! - while a request stats a directory's entries from the front, a helper stats them from the
//!   back, so a cold directory's inodes are read by two threads at once;
//! - once a directory has been listed, the helpers read and stat its subdirectories (the next
//!   thing a tree walk asks for), so their disk reads overlap the walk instead of following it.
//!
//! The kernel sends one READDIRPLUS at a time per directory and a walk waits for each: without
//! this the machine's other core and the disk's queue sit idle while a cold walk runs.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::union::attr::FileKind;
use parking_lot::{Condvar, Mutex};

use crate::sys;
use crate::union::layers::{rel_or_dot, LayerIdx, Layers};
use crate::union::listing::Listing;

/// Where the front of a directory's READDIRPLUS is: entries below it are done by the request.
/// `usize::MAX` once the directory is closed (the helper drops the job).
pub type Front = Arc<AtomicUsize>;

/// Helper threads: more disk reads in flight at once.
const THREADS: usize = 2;

/// Queued jobs beyond this drop the oldest (they are only hints).
const MAX_JOBS: usize = 4096;

#[derive(Debug)]
enum Job {
    /// Stat `listing`'s entries from the back until `front` reaches them.
    Entries {
        rel: PathBuf,
        listing: Arc<Listing>,
        front: Front,
    },
    /// Read directory `rel` (node `ino`) in `layers` and stat its entries.
    Subdir {
        ino: u64,
        rel: PathBuf,
        layers: Box<[LayerIdx]>,
    },
}

#[derive(Debug, Default)]
struct Jobs {
    /// Newest last, run first: a depth-first walk wants the directory it just entered.
    list: Vec<Job>,
    /// The filesystem is gone: the thread exits (and lets go of the layers).
    closed: bool,
}

#[derive(Debug, Default)]
struct Queue {
    jobs: Mutex<Jobs>,
    ready: Condvar,
}

/// The helper threads.
#[derive(Debug)]
pub struct Prefetcher {
    queue: Arc<Queue>,
}

impl Prefetcher {
    /// Start the helper threads for the layers of one mount.
    pub fn start(layers: Arc<Layers>) -> std::io::Result<Prefetcher> {
        let queue = Arc::new(Queue::default());
        for _ in 0..THREADS {
            let q = queue.clone();
            let layers = layers.clone();
            std::thread::Builder::new()
                .name("stratafs-statahead".into())
                .spawn(move || {
                    // Started by whichever thread first lists a directory: a ring queue
                    // thread is pinned to its CPU, and this thread would be too.
                    if let Err(e) = sys::unpin() {
                        tracing::debug!(%e, "stat-ahead thread keeps its creator's CPUs");
                    }
                    loop {
                        let job = {
                            let mut jobs = q.jobs.lock();
                            loop {
                                if jobs.closed {
                                    return;
                                }
                                if let Some(j) = jobs.list.pop() {
                                    break j;
                                }
                                q.ready.wait(&mut jobs);
                            }
                        };
                        run(&layers, job);
                    }
                })?;
        }
        Ok(Prefetcher { queue })
    }

    /// Directory `ino` at `rel` (listed as `listing`) is being sent from `front` on: stat
    /// ahead of it (if `entries`), then its subdirectories (the first one the walk will enter
    /// on top).
    pub fn listed(
        &self,
        ino: u64,
        rel: &Path,
        listing: &Arc<Listing>,
        front: &Front,
        entries: bool,
    ) {
        let mut guard = self.queue.jobs.lock();
        let jobs = &mut guard.list;
        // The walk got to this directory first: warming it now would only cost CPU.
        jobs.retain(|j| !matches!(j, Job::Subdir { ino: i, .. } if *i == ino));
        for e in listing.entries().iter().rev() {
            if e.kind == FileKind::Directory {
                jobs.push(Job::Subdir {
                    ino: e.ino,
                    rel: rel.join(&*e.name),
                    layers: e.dir_layers.clone(),
                });
            }
        }
        if entries {
            jobs.push(Job::Entries {
                rel: rel.to_path_buf(),
                listing: listing.clone(),
                front: front.clone(),
            });
        }
        if jobs.len() > MAX_JOBS {
            let extra = jobs.len() - MAX_JOBS;
            jobs.drain(..extra);
        }
        self.queue.ready.notify_all();
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.queue.jobs.lock().closed = true;
        self.queue.ready.notify_all();
    }
}

fn open_in(layers: &Layers, li: LayerIdx, rel: &Path) -> Option<OwnedFd> {
    sys::openat(
        layers.get(li).fd(),
        rel_or_dot(rel),
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
    .ok()
}

fn run(layers: &Layers, job: Job) {
    match job {
        Job::Entries {
            rel,
            listing,
            front,
        } => {
            let mut dirs: HashMap<LayerIdx, Option<OwnedFd>> = HashMap::new();
            for (i, e) in listing.entries().iter().enumerate().rev() {
                // The request got here (or the directory was closed): the rest is its own.
                if front.load(Ordering::Relaxed) >= i {
                    return;
                }
                let dfd = dirs
                    .entry(e.layer)
                    .or_insert_with(|| open_in(layers, e.layer, &rel));
                if let Some(fd) = dfd {
                    // Only the cache warming counts; errors are the request's to report.
                    let _ = sys::fstatat(fd.as_fd(), Path::new(&*e.name));
                }
            }
        }
        Job::Subdir {
            rel, layers: dl, ..
        } => {
            for &li in dl.iter() {
                let Some(fd) = open_in(layers, li, &rel) else {
                    continue;
                };
                let _ = sys::read_dirents(fd.as_fd(), |name: &OsStr, _, _| {
                    let _ = sys::fstatat(fd.as_fd(), Path::new(name));
                    Ok(())
                });
            }
        }
    }
}
