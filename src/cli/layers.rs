//! Commands that mirror the driver: create, rm, mount, umount, diff, apply, ...

use std::process::ExitCode;

use clap::Subcommand;

use super::Cli;

#[derive(Debug, Subcommand)]
pub enum LayerCommand {
    /// Show the driver's status.
    Status,
}

pub fn run(_cli: &Cli, cmd: &LayerCommand) -> stratafs::Result<ExitCode> {
    match cmd {
        LayerCommand::Status => Ok(ExitCode::SUCCESS),
    }
}
