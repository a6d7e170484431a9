//! `stratafs snapshotter`: the containerd proxy snapshotter server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use stratafs::snapshotter::{self, SnapshotError};

use super::Cli;

#[derive(Debug, Args)]
pub struct SnapshotterArgs {
    /// Unix socket to serve on (containerd's `[proxy_plugins.stratafs] address`).
    #[arg(long, default_value = snapshotter::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

pub fn run(cli: &Cli, args: &SnapshotterArgs) -> stratafs::Result<ExitCode> {
    let root = cli
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from(snapshotter::DEFAULT_ROOT));
    check_mount_helpers(std::env::var_os("PATH").as_deref());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| stratafs::Error::io("starting the async runtime", e))?;
    let served = runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        snapshotter::serve(&args.socket, &root, shutdown).await
    });
    match served {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(SnapshotError::Store(e)) => Err(e),
        Err(e) => {
            eprintln!("stratafs: snapshotter: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Completes on the first SIGTERM or SIGINT, so that the server stops and removes its socket.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, SnapshotError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| stratafs::Error::io("installing the SIGTERM handler", e))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| stratafs::Error::io("installing the SIGINT handler", e))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}

/// containerd performs the snapshotter's `fuse3.stratafs` mounts itself: `mount.fuse3` runs
/// `stratafs` through the shell, found on containerd's PATH (which is normally the one this
/// server was started with). Say at start when that will fail, rather than leave containerd's
/// mount to fail later with "stratafs: not found".
fn check_mount_helpers(path: Option<&std::ffi::OsStr>) {
    let shown = path.map_or_else(String::new, |p| p.to_string_lossy().into_owned());
    for (program, why) in [
        (
            "mount.fuse3",
            "containerd runs it for fuse3.* mounts (package fuse3)",
        ),
        (
            "stratafs",
            "mount.fuse3 runs it to serve the snapshots' mounts",
        ),
    ] {
        match find_on_path(program, path) {
            Some(found) => {
                tracing::debug!(program, found = %found.display(), "mount helper");
            }
            None => tracing::warn!(
                "{program} is not on the PATH ({shown}): {why}, so containerd's mounts of \
                 snapshots with parents will fail; put it there (e.g. a link to this binary in \
                 /usr/local/bin)"
            ),
        }
    }
}

/// The first executable file `name` in the directories of `path`.
fn find_on_path(name: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path?)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|c| {
            std::fs::metadata(c).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
