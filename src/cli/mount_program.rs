//! The fuse-overlayfs-compatible mount-program form: `stratafs -o OPTIONS MERGED`,
//! `stratafs SOURCE MERGED -o OPTIONS` (what `mount.fuse3` runs) and `stratafs --version`.
//! Recognised before clap parsing, because these forms have no subcommand.

use std::process::ExitCode;

use stratafs::union::server;

/// Handle the mount-program forms; `None` when the command line is a regular one.
pub fn try_run(args: &[String]) -> Option<ExitCode> {
    if args == ["--version"] {
        println!("stratafs version {}", env!("CARGO_PKG_VERSION"));
        return Some(ExitCode::SUCCESS);
    }
    if !server::is_mount_program_form(args) || names_a_command(args) {
        return None;
    }
    let parsed = server::parse_args(args);
    let debug = parsed.as_ref().map(|a| a.debug).unwrap_or(false);
    init_server_logging(debug);
    let result = parsed.and_then(server::run);
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stratafs: {e}");
            ExitCode::FAILURE
        }
    })
}

/// Whether the command line is a regular one that happens to contain `-o` (e.g. `diff -o FILE`):
/// it uses a long flag, or its first positional word is one of our subcommands.
fn names_a_command(args: &[String]) -> bool {
    use clap::CommandFactory;
    if args
        .iter()
        .any(|a| a.starts_with("--") && a != "--" && a != "--debug")
    {
        return true;
    }
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-o" {
            it.next();
        } else if !a.starts_with('-') {
            return super::Cli::command()
                .get_subcommands()
                .any(|c| c.get_name() == a || c.get_all_aliases().any(|al| al == a));
        }
    }
    false
}

/// Servers log at `info` (or `RUST_LOG`), `debug` with `-d`; to stderr, which the background
/// server points at its log file.
fn init_server_logging(debug: bool) {
    let filter = if debug {
        tracing_subscriber::EnvFilter::new("debug")
    } else {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
