//! The mount program: mounts the merged view and serves it in a background process.
//!
//! The parent validates the options, forks while still single-threaded, and waits on a pipe
//! until the child reports that the mount is ready (or why it failed). The child starts a new
//! session, sends its output to the log file, mounts with a multi-threaded `fuser` session and
//! serves until unmounted or told to stop (SIGTERM/SIGINT/SIGHUP: it unmounts and exits).

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, MountOption, SessionACL};

use crate::error::{Error, IoContext, Result};
use crate::sys;
use crate::union::fs::{notifier, UnionFs};
use crate::union::ids::IdView;
use crate::union::layers::Layers;
use crate::union::options::MountOptions;
use crate::union::ring;
use crate::union::ring::access::{Acl, Users};
use crate::union::tree::Tree;

/// What the command line asked the mount program to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerArgs {
    pub options: MountOptions,
    pub mountpoint: PathBuf,
    /// `SOURCE` of `stratafs SOURCE MERGED -o ...` (shown as the filesystem name).
    pub source: Option<String>,
    pub foreground: bool,
    pub debug: bool,
}

fn mount_err(mp: &Path, reason: impl Into<String>) -> Error {
    Error::Mount {
        id: mp.display().to_string(),
        reason: reason.into(),
    }
}

/// Mount and serve. Without `foreground`, returns in the parent once the mount is ready.
pub fn run(mut args: ServerArgs) -> Result<()> {
    args.options.resolve_paths()?;
    args.mountpoint = std::fs::canonicalize(&args.mountpoint)
        .ctx(|| format!("resolving mount point {}", args.mountpoint.display()))?;
    if args.foreground {
        return serve(&args, &mut None);
    }
    let (rd, wr) = sys::pipe().ctx(|| "creating a pipe")?;
    // The CLI calls this before anything starts a thread (sys::fork checks).
    match sys::fork().ctx(|| "forking the mount server")? {
        sys::ForkResult::Parent { .. } => {
            drop(wr);
            let mut msg = String::new();
            std::fs::File::from(rd)
                .read_to_string(&mut msg)
                .ctx(|| "waiting for the mount server")?;
            match msg.strip_prefix("OK") {
                Some(_) => Ok(()),
                None if msg.is_empty() => Err(mount_err(
                    &args.mountpoint,
                    "the mount server exited without a word (see its log)",
                )),
                None => Err(mount_err(&args.mountpoint, msg.trim().to_string())),
            }
        }
        sys::ForkResult::Child => {
            drop(rd);
            let mut ready = Some(wr);
            let code = match daemonize(&args).and_then(|()| serve(&args, &mut ready)) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!(%e, "mount server failed");
                    if let Some(w) = ready {
                        let _ = std::fs::File::from(w).write_all(e.to_string().as_bytes());
                    }
                    1
                }
            };
            std::process::exit(code)
        }
    }
}

/// New session, stdio to the log file, working directory `/`.
fn daemonize(args: &ServerArgs) -> Result<()> {
    sys::setsid().ctx(|| "setsid")?;
    let null = std::fs::File::open("/dev/null").ctx(|| "opening /dev/null")?;
    let log: OwnedFd = match &args.options.log {
        Some(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ctx(|| format!("opening log {}", p.display()))?
            .into(),
        None => std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .ctx(|| "opening /dev/null")?
            .into(),
    };
    sys::dup2(null.as_fd(), 0).ctx(|| "redirecting stdin")?;
    sys::dup2(log.as_fd(), 1).ctx(|| "redirecting stdout")?;
    sys::dup2(log.as_fd(), 2).ctx(|| "redirecting stderr")?;
    std::env::set_current_dir("/").ctx(|| "changing directory to /")?;
    Ok(())
}

/// The `fuser` configuration for these options.
fn session_config(args: &ServerArgs) -> Config {
    let o = &args.options;
    let root = sys::is_root();
    let mut mount_options = vec![
        MountOption::FSName(
            o.fsname
                .clone()
                .or_else(|| args.source.clone())
                .unwrap_or_else(|| "stratafs".into()),
        ),
        MountOption::Subtype(o.subtype.clone().unwrap_or_else(|| "stratafs".into())),
    ];
    // As root the kernel checks permissions against what we report, for every user.
    if root || o.default_permissions {
        mount_options.push(MountOption::DefaultPermissions);
    }
    if o.read_only() {
        mount_options.push(MountOption::RO);
    }
    for f in &o.flags {
        let m = match f.as_str() {
            "nodev" => MountOption::NoDev,
            "dev" => MountOption::Dev,
            "nosuid" => MountOption::NoSuid,
            "suid" => MountOption::Suid,
            "noexec" => MountOption::NoExec,
            "exec" => MountOption::Exec,
            "noatime" => MountOption::NoAtime,
            "atime" => MountOption::Atime,
            "sync" => MountOption::Sync,
            "async" => MountOption::Async,
            "dirsync" => MountOption::DirSync,
            _ => continue,
        };
        if !mount_options.contains(&m) {
            mount_options.push(m);
        }
    }
    let mut cfg = Config::default();
    cfg.mount_options = mount_options;
    // The ring transport checks ring requests by the same rule (`ring::access`).
    cfg.acl = match Acl::for_mount(o).users {
        Users::All => SessionACL::All,
        Users::RootAndOwner => SessionACL::RootAndOwner,
        Users::Owner => SessionACL::Owner,
    };
    cfg.n_threads = Some(o.threads.unwrap_or_else(default_threads));
    cfg.clone_fd = true;
    cfg
}

/// FUSE reader threads when `threads=` is not given: one per CPU, at least two (a copy-up or
/// a cold look-up blocking one thread leaves the other to answer), at most eight. Every reader
/// takes the kernel's one request-queue lock and wait queue of the connection; readers beyond
/// the CPUs only add wake-ups and lock contention. Measured on 2 CPUs (issue 4): 2 readers
/// against 4 took a touch storm from 0.68 to 0.53 s and `ls -l` of 50,000 lower files cold
/// from 6.0 to 2.9 s; 1 and 3 readers were as slow as 4.
fn default_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    cpus.clamp(2, 8)
}

/// Mount and serve until unmounted; `ready` gets "OK" (and is closed) once the mount is usable.
fn serve(args: &ServerArgs, ready: &mut Option<OwnedFd>) -> Result<()> {
    let mp = &args.mountpoint;
    // Before the worker threads exist: one arena for all of them keeps the peak memory of a
    // tree walk at what the tree needs (an arena per thread held up to 25% more).
    sys::limit_malloc_arenas(1);
    // Signals go to the one thread that waits for them, not to the workers.
    sys::block_termination_signals().ctx(|| "blocking signals")?;
    let o = &args.options;
    let layers = Layers::open(o.upperdir.as_deref(), &o.lowerdirs)?;
    let ids = IdView {
        uid_map: o.uid_map.clone(),
        gid_map: o.gid_map.clone(),
        squash_uid: o.squash_to_uid,
        squash_gid: o.squash_to_gid,
    };
    let tree = Tree::new(layers, ids).ctx(|| "building the merged view")?;
    let mut fs = UnionFs::new(tree, o.clone());
    let view = fs.view().clone();
    let on_destroy = fs.on_destroy();
    let ring_plan = fs.serve_ring();
    let cfg = session_config(args);
    let mut session = fuser::Session::new(fs, mp, &cfg).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied && o.allow_other {
            " (allow_other without root needs user_allow_other in /etc/fuse.conf)"
        } else {
            ""
        };
        mount_err(mp, format!("mounting: {e}{hint}"))
    })?;
    view.start_invalidations(notifier(session.notifier()))
        .ctx(|| "starting the invalidation worker")?;
    // The handshake (INIT) is done: start the ring if INIT chose it, before the mount is
    // reported ready, so the ring carries the first request a user makes.
    match ring_plan.get() {
        Some(&payload) => {
            match ring::start(view.clone(), session.as_fd(), payload, Acl::for_mount(o)) {
                Ok(queues) => tracing::info!(transport = "io_uring", queues, "transport"),
                Err(e) => {
                    tracing::warn!(%e, "FUSE over io_uring failed to start; serving /dev/fuse");
                    tracing::info!(transport = "dev-fuse", "transport");
                }
            }
        }
        None => tracing::info!(transport = "dev-fuse", "transport"),
    }
    let session_end = Arc::new(SessionEnd {
        mountpoint: mp.clone(),
        connection: session
            .as_fd()
            .try_clone_to_owned()
            .ctx(|| "duplicating the FUSE device")?,
        upper: match (&o.upperdir, o.volatile || o.read_only()) {
            (Some(up), false) => {
                Some(sys::open_dir(up).ctx(|| format!("opening {}", up.display()))?)
            }
            _ => None,
        },
    });
    let end = session_end.clone();
    let _ = on_destroy.set(Box::new(move || end.finish()));
    if let Some(p) = &o.pidfile {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .ctx(|| format!("writing pid file {}", p.display()))?;
    }
    let mut unmounter = session.unmount_callable();
    let mp_for_signal = mp.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = sys::wait_termination_signal() {
                tracing::info!(sig, "signal received, unmounting");
                if let Err(e) = unmounter.unmount() {
                    tracing::warn!(%e, "unmount failed, detaching");
                    if let Err(e) = sys::umount2(&mp_for_signal, libc::MNT_DETACH) {
                        tracing::error!(%e, "could not detach the mount");
                        std::process::exit(1);
                    }
                }
            }
        })
        .ctx(|| "starting the signal thread")?;
    tracing::info!(mountpoint = %mp.display(), layers = o.lowerdirs.len(), "mounted");
    if let Some(w) = ready.take() {
        let mut f = std::fs::File::from(w);
        f.write_all(b"OK")
            .ctx(|| "telling the parent the mount is ready")?;
    }
    let served = session
        .run()
        .map_err(|e| mount_err(mp, format!("serving: {e}")));
    session_end.flush_upper();
    served
}

/// How the server leaves once its session ends.
///
/// When the session ends, fuser 0.18 unmounts the mount point *by path*, guarded by a check
/// meant to skip that when the mount is already gone, a check that always passes (it takes the
/// dead connection's POLLERR for "still mounted"). After a lazy unmount (`umount -l`, the
/// MNT_DETACH container engines use) the path may already hold a new mount, often of the same
/// layers (even the same device and mount ids: the kernel reuses both), and that unmount would
/// take it down. So the server exits before fuser gets there, unless its own connection still
/// serves the mount (the session ended on an error).
#[derive(Debug)]
pub struct SessionEnd {
    pub mountpoint: PathBuf,
    /// A duplicate of the session's `/dev/fuse` descriptor, to ask whether it is still mounted.
    pub connection: OwnedFd,
    /// The upper directory, flushed before the server leaves (`None`: volatile or read-only).
    pub upper: Option<OwnedFd>,
}

impl SessionEnd {
    /// Called as the session ends (from `destroy`, after the last request).
    pub fn finish(&self) {
        if sys::fuse_connection_alive(self.connection.as_fd()) {
            tracing::warn!(mountpoint = %self.mountpoint.display(), "session ended while mounted, unmounting");
            return;
        }
        tracing::info!(
            mountpoint = %self.mountpoint.display(),
            ring_requests = ring::served(),
            "unmounted, exiting"
        );
        tracing::debug!(by_opcode = %ring::requests_by_opcode(), "ring requests received");
        self.flush_upper();
        std::process::exit(0);
    }

    /// Write the upper layer's data to disk, as an unmount of kernel overlayfs does (it syncs
    /// the upper filesystem): the kernel sends a FUSE server no `syncfs` (only virtiofs gets
    /// one), so without this a file written just before the unmount could still be lost in a
    /// crash seconds later. The driver's `put` waits for the server to leave.
    pub fn flush_upper(&self) {
        let Some(up) = &self.upper else {
            return;
        };
        let t = std::time::Instant::now();
        match sys::syncfs(up.as_fd()) {
            Ok(()) => tracing::info!(took = ?t.elapsed(), "upper layer flushed"),
            Err(e) => tracing::error!(%e, "flushing the upper layer failed"),
        }
    }
}

/// Parse the mount-program command line (without the program name): `-o OPTS` (repeatable,
/// also `-oOPTS`), `-f`, `-d`, then `MERGED` or `SOURCE MERGED`.
pub fn parse_args(args: &[String]) -> Result<ServerArgs> {
    let bad = |reason: String| Error::InvalidMountOption {
        option: args.join(" "),
        reason,
    };
    let mut opts: Vec<String> = Vec::new();
    let mut positional = Vec::new();
    let (mut foreground, mut debug) = (false, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => opts.push(
                it.next()
                    .ok_or_else(|| bad("-o needs a value".into()))?
                    .clone(),
            ),
            "-f" => foreground = true,
            "-d" | "--debug" => {
                debug = true;
                foreground = true;
            }
            "--" => positional.extend(it.by_ref().cloned()),
            s if s.starts_with("-o") => opts.push(s[2..].to_string()),
            s if s.starts_with('-') && s.len() > 1 => return Err(bad(format!("unknown flag {s}"))),
            s => positional.push(s.to_string()),
        }
    }
    let (source, mountpoint) = match positional.len() {
        1 => (None, positional.remove(0)),
        2 => {
            let mp = positional.remove(1);
            (Some(positional.remove(0)), mp)
        }
        _ => return Err(bad("expected MERGED or SOURCE MERGED".into())),
    };
    // Test hook: the test command reruns the FUSE suite with options every mount must take
    // (a transport, `nopassthrough`), without each test knowing about them.
    if let Ok(extra) = std::env::var(EXTRA_OPTS_ENV) {
        if !extra.trim().is_empty() {
            tracing::info!(%extra, "options added from {EXTRA_OPTS_ENV}");
            opts.push(extra);
        }
    }
    let options = MountOptions::parse(&opts.join(","))?;
    Ok(ServerArgs {
        options,
        mountpoint: PathBuf::from(mountpoint),
        source,
        foreground,
        debug,
    })
}

/// Environment variable whose comma-separated mount options are added to every mount.
pub const EXTRA_OPTS_ENV: &str = "STRATAFS_EXTRA_MOUNT_OPTS";

/// Whether a command line (without the program name) is the mount-program form.
pub fn is_mount_program_form(args: &[String]) -> bool {
    args.iter().any(|a| a.starts_with("-o"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn forms() {
        let a = parse_args(&s(&["-o", "lowerdir=/a:/b", "-o", "ro", "/m"])).unwrap();
        assert_eq!(a.mountpoint, PathBuf::from("/m"));
        assert_eq!(a.options.lowerdirs.len(), 2);
        assert!(a.options.ro && !a.foreground);
        let a = parse_args(&s(&[
            "overlay",
            "/m",
            "-o",
            "lowerdir=/a,upperdir=/u,workdir=/w",
        ]))
        .unwrap();
        assert_eq!(a.source.as_deref(), Some("overlay"));
        assert!(!a.options.read_only());
        let a = parse_args(&s(&["-f", "-olowerdir=/a", "/m"])).unwrap();
        assert!(a.foreground);
        assert!(is_mount_program_form(&s(&["-olowerdir=/a", "/m"])));
        assert!(!is_mount_program_form(&s(&["status"])));
        assert!(parse_args(&s(&["-o", "lowerdir=/a"])).is_err());
        assert!(parse_args(&s(&["-o", "lowerdir=/a", "-x", "/m"])).is_err());
    }
}
