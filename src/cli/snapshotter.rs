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
