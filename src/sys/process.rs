//! The process itself: ids, `fork` and daemon plumbing, signals, other processes, malloc.
//! Part of `sys`: the crate's `unsafe` stays in `sys`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::check;

/// Whether the process runs as root in the initial user namespace-ish sense (euid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid never fails.
    unsafe { libc::geteuid() == 0 }
}

/// Whether the process is root of the initial user namespace: euid 0 there, not only inside a
/// user namespace (rootless Podman runs its mount program as the namespace's root). Only then
/// does the kernel grant what needs `CAP_SYS_ADMIN` in the initial namespace, such as FUSE
/// passthrough backing files.
pub fn is_initial_ns_root() -> bool {
    is_root()
        && std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| is_identity_uid_map(&m))
}

/// Whether `uid_map` (the text of `/proc/PID/uid_map`) is the initial user namespace's: one
/// line mapping every id to itself.
pub fn is_identity_uid_map(uid_map: &str) -> bool {
    let mut lines = uid_map.lines().filter(|l| !l.trim().is_empty());
    let first: Vec<&str> = lines
        .next()
        .map_or(vec![], |l| l.split_whitespace().collect());
    lines.next().is_none() && first == ["0", "0", "4294967295"]
}

/// The effective uid and gid of this process.
pub fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid/getegid never fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Result of [`fork`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForkResult {
    Parent { child: i32 },
    Child,
}

/// `fork()`, refused with an error unless the calling thread is the only thread of the process.
///
/// Safety argument: the child runs only the calling thread, so a lock held by any other thread
/// (in malloc, stdio, a logger) would stay locked in the child forever. With exactly one thread
/// (counted in `/proc/self/task`) no other thread holds anything, and none can start between
/// the count and the fork: only this thread could start it.
pub fn fork() -> io::Result<ForkResult> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "refusing to fork a process with {threads} threads"
        )));
    }
    // SAFETY: single-threaded, checked above.
    let pid = check(unsafe { libc::fork() })?;
    Ok(if pid == 0 {
        ForkResult::Child
    } else {
        ForkResult::Parent { child: pid }
    })
}

/// The number of threads of this process (entries of `/proc/self/task`).
pub fn thread_count() -> io::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc/self/task")? {
        entry?;
        n += 1;
    }
    Ok(n)
}

/// `setsid()`.
pub fn setsid() -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::setsid() }).map(drop)
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is valid for two ints.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `dup2(from, to)`: make `to` (e.g. 0, 1, 2) refer to `from`.
pub fn dup2(from: BorrowedFd<'_>, to: i32) -> io::Result<()> {
    // SAFETY: plain syscall; `to` is replaced atomically.
    check(unsafe { libc::dup2(from.as_raw_fd(), to) }).map(drop)
}

/// The set of SIGTERM, SIGINT and SIGHUP.
fn termination_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is a plain C struct (all-zero is a valid value), and sigemptyset and
    // sigaddset only write into the local set, with signal numbers that exist.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Block SIGTERM, SIGINT and SIGHUP in the calling thread (inherited by threads it starts).
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_signals();
    // SAFETY: a valid set; no old mask is asked for (null).
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    match r {
        0 => Ok(()),
        r => Err(io::Error::from_raw_os_error(r)),
    }
}

/// Wait for one of the signals blocked by [`block_termination_signals`]; returns its number.
pub fn wait_termination_signal() -> io::Result<i32> {
    let set = termination_signals();
    let mut sig: libc::c_int = 0;
    // SAFETY: a valid set; sigwait writes the signal number into `sig`.
    match unsafe { libc::sigwait(&set, &mut sig) } {
        0 => Ok(sig),
        r => Err(io::Error::from_raw_os_error(r)),
    }
}

/// Whether a process with this pid exists (`kill(pid, 0)`; EPERM still means it exists).
pub fn process_exists(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The names (`comm`) of the threads of process `pid`.
pub fn thread_names(pid: i32) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let comm = t?.path().join("comm");
        // A thread that ended since the listing has no comm left: skip it.
        if let Ok(n) = std::fs::read_to_string(comm) {
            names.push(n.trim_end().to_string());
        }
    }
    Ok(names)
}

/// Whether `pid` is a zombie (exited, not yet reaped): such a server is gone.
pub fn process_is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Send `sig` to `pid`.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Limit glibc malloc to `n` arenas. Each thread otherwise gets an arena of its own, and memory
/// freed in one is not reused by the others: the peak grows with the thread count.
pub fn limit_malloc_arenas(n: i32) {
    // SAFETY: mallopt only changes allocator parameters.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, n);
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = n;
}

#[cfg(test)]
mod uid_map_tests {
    use super::is_identity_uid_map;

    #[test]
    fn only_the_full_identity_map_is_the_initial_namespace() {
        assert!(is_identity_uid_map("         0          0 4294967295\n"));
        assert!(!is_identity_uid_map("0 1000 1\n1 100000 65536\n"));
        assert!(!is_identity_uid_map("0 0 65536\n"));
        assert!(!is_identity_uid_map(""));
    }
}
