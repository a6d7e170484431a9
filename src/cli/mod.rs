//! The `stratafs` command line: a thin layer over the library. One file per command group;
//! each group adds a variant to [`Command`] and a branch to [`dispatch`].

mod layers;
mod snapshotter;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// stratafs: layered container storage on plain directories, merged by FUSE.
#[derive(Debug, Parser)]
#[command(name = "stratafs", version, about, long_about = None)]
pub struct Cli {
    /// Engine root; the driver keeps its state in ROOT/<driver>. Default: /var/lib/stratafs as
    /// root, $XDG_DATA_HOME/stratafs otherwise.
    #[arg(long, global = true, env = "STRATAFS_ROOT")]
    pub root: Option<PathBuf>,
    /// Storage driver: stratafs or vfs. Default: chosen automatically.
    #[arg(long, global = true, env = "STRATAFS_DRIVER")]
    pub driver: Option<String>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Layers(layers::LayerCommand),
    /// Serve containerd's snapshots API (a proxy snapshotter) on a unix socket. State lives in
    /// --root (default /var/lib/stratafs-snapshotter).
    Snapshotter(snapshotter::SnapshotterArgs),
}

/// Parse the process arguments and run; errors go to stderr with a non-zero exit code.
pub fn run() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("stratafs: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> stratafs::Result<ExitCode> {
    match &cli.command {
        Command::Layers(cmd) => layers::run(&cli, cmd),
        Command::Snapshotter(args) => snapshotter::run(&cli, args),
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
