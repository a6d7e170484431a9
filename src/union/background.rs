//! Requests that can take long (the copy-up of a large lower file, the rename of a lower
//! directory) finish on a thread of their own, so the few FUSE reader threads (one per CPU)
//! keep serving every other request meanwhile. Without it, two appends to large lower files
//! on a 2-CPU machine stopped the whole mount (`ls`, `stat`, reads) until a copy was flushed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// Lower files at least this large are copied up off the reader threads. Smaller copies take
/// less than starting a thread would save (a 1 MiB copy plus its flush takes milliseconds).
pub const LONG_COPY_BYTES: u64 = 1 << 20;

/// More long requests than this at once run on the reader thread that received them (each
/// one is a caller blocked in a system call, so this bounds threads, not work).
const MAX_AT_ONCE: usize = 16;

/// Counts the long requests under way.
#[derive(Debug, Default)]
pub struct Background {
    running: Arc<AtomicUsize>,
}

impl Background {
    /// Run `job` on a new thread, or here if too many are running or no thread can be
    /// started (the job then still runs: it holds the reply the kernel waits for).
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        if self.running.fetch_add(1, Ordering::AcqRel) >= MAX_AT_ONCE {
            self.running.fetch_sub(1, Ordering::AcqRel);
            return job();
        }
        let slot = Arc::new(Mutex::new(Some(job)));
        let theirs = slot.clone();
        let running = self.running.clone();
        let spawned = std::thread::Builder::new()
            .name("stratafs-long".into())
            .spawn(move || {
                // Off the CPU of a pinned ring queue thread that may have started it.
                if let Err(e) = crate::sys::unpin() {
                    tracing::debug!(%e, "long request keeps its creator's CPUs");
                }
                if let Some(job) = theirs.lock().take() {
                    job();
                }
                running.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            self.running.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!(%e, "no thread for a long request; serving it here");
            if let Some(job) = slot.lock().take() {
                job();
            }
        }
    }

    /// Long requests under way (for tests and diagnostics).
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_job_runs_off_the_calling_thread_and_is_counted() {
        let bg = Background::default();
        let (started_tx, started_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let caller = std::thread::current().id();
        bg.run(move || {
            started_tx.send(std::thread::current().id()).unwrap();
            go_rx.recv().unwrap();
        });
        // `run` returned while the job still waits: it runs elsewhere.
        let ran_on = started_rx.recv().unwrap();
        assert_ne!(ran_on, caller);
        assert_eq!(bg.running(), 1);
        go_tx.send(()).unwrap();
        for _ in 0..1000 {
            if bg.running() == 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("the finished job is still counted");
    }

    #[test]
    fn past_the_limit_jobs_run_on_the_caller() {
        let bg = Background::default();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let go_rx = Arc::new(Mutex::new(go_rx));
        for _ in 0..MAX_AT_ONCE {
            let rx = go_rx.clone();
            bg.run(move || {
                let _ = rx.lock().recv();
            });
        }
        let caller = std::thread::current().id();
        let (tx, rx) = mpsc::channel();
        bg.run(move || tx.send(std::thread::current().id()).unwrap());
        assert_eq!(rx.recv().unwrap(), caller);
        for _ in 0..MAX_AT_ONCE {
            go_tx.send(()).unwrap();
        }
    }
}
