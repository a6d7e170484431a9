//! `stratafs plugin`: serve Docker's graph driver plugin protocol on a unix socket.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::Cli;

#[derive(Debug, Args)]
pub struct PluginArgs {
    /// Unix socket to listen on; Docker finds a plugin named NAME at
    /// /run/docker/plugins/NAME.sock. The directory is created and a stale socket replaced.
    #[arg(long, default_value = stratafs::plugin::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Where the last Init request is kept, so that a restarted plugin serves a dockerd that is
    /// still running (and cleans up the mounts of its previous run at once).
    #[arg(long, default_value = stratafs::plugin::DEFAULT_STATE_FILE)]
    pub state: PathBuf,
    /// Do not keep or resume the Init request.
    #[arg(long, conflicts_with = "state")]
    pub no_state: bool,
}

/// Serve until SIGTERM/SIGINT. The driver (`--driver`, default stratafs; or vfs) is constructed
/// when Docker calls `Init`, in the home directory Docker names.
pub fn run(cli: &Cli, args: &PluginArgs) -> stratafs::Result<ExitCode> {
    let name = cli
        .driver
        .as_deref()
        .unwrap_or(stratafs::driver::strata::NAME);
    let factory = stratafs::plugin::factory_for(name)?;
    let state = (!args.no_state).then(|| args.state.clone());
    stratafs::plugin::run(&args.socket, state, name, factory)?;
    Ok(ExitCode::SUCCESS)
}
