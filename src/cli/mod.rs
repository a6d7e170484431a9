//! The `stratafs` command line: a thin layer over the library. One file per command group;
//! each group adds a variant to [`Command`] and a branch to [`dispatch`].

mod demo;
mod image;
mod layers;
mod mount_program;
mod output;
mod plugin;
mod snapshotter;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stratafs::driver::{default_registry, Driver, DriverConfig, IdMap, IdMappings};

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
    /// Uid map for new layers: CONTAINER:HOST:SIZE (repeatable; triples may also be chained
    /// with ':').
    #[arg(long = "uidmap", global = true, value_name = "C:H:N", value_parser = parse_id_map)]
    pub uidmap: Vec<Vec<IdMap>>,
    /// Gid map for new layers: CONTAINER:HOST:SIZE (repeatable).
    #[arg(long = "gidmap", global = true, value_name = "C:H:N", value_parser = parse_id_map)]
    pub gidmap: Vec<Vec<IdMap>>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Layers(layers::LayerCommand),
    /// Serve Docker's graph driver plugin protocol on a unix socket (for dockerd
    /// --experimental --storage-driver=stratafs).
    Plugin(plugin::PluginArgs),
    /// Build a small three-layer sample, mount it and show the merged tree and its changes.
    Demo(demo::DemoArgs),
    /// Inspect image archives: mount read-only, list, compare, show the config.
    Image(image::ImageArgs),
    /// Serve containerd's snapshots API (a proxy snapshotter) on a unix socket. State lives in
    /// --root (default /var/lib/stratafs-snapshotter).
    Snapshotter(snapshotter::SnapshotterArgs),
}

/// Parse the process arguments and run; errors go to stderr with a non-zero exit code.
pub fn run() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if let Some(code) = mount_program::try_run(&args) {
        return code;
    }
    let cli = Cli::parse();
    // The servers say where they listen and what Docker asked of them (one line each) unless
    // told otherwise; the commands a person runs stay quiet.
    let servers = matches!(cli.command, Command::Plugin(_) | Command::Snapshotter(_));
    init_logging(if servers { SERVER_LOG } else { "warn" });
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
        Command::Plugin(args) => plugin::run(&cli, args),
        Command::Demo(args) => demo::run(&cli, args),
        Command::Image(args) => image::run(&cli, args),
        Command::Snapshotter(args) => snapshotter::run(&cli, args),
    }
}

fn parse_id_map(s: &str) -> Result<Vec<IdMap>, String> {
    IdMap::parse_list(s).map_err(|e| e.to_string())
}

impl Cli {
    /// The engine root: `--root`, else the default for this user.
    pub fn root(&self) -> PathBuf {
        self.root.clone().unwrap_or_else(|| {
            default_root(
                stratafs::sys::is_root(),
                std::env::var_os("XDG_DATA_HOME").map(PathBuf::from),
                std::env::var_os("HOME").map(PathBuf::from),
            )
        })
    }

    /// The driver configuration the global flags describe.
    pub fn driver_config(&self) -> stratafs::Result<DriverConfig> {
        let uids = self.uidmap.iter().flatten().copied().collect();
        let gids = self.gidmap.iter().flatten().copied().collect();
        Ok(DriverConfig {
            root: self.root(),
            options: Vec::new(),
            id_mappings: IdMappings::new(uids, gids)?,
        })
    }

    /// The driver named by `--driver`, or the one the registry chooses.
    pub fn driver(&self) -> stratafs::Result<Box<dyn Driver>> {
        let cfg = self.driver_config()?;
        default_registry().new_driver(self.driver.as_deref(), &cfg)
    }
}

/// `/var/lib/stratafs` for root; otherwise `$XDG_DATA_HOME/stratafs`, falling back to
/// `~/.local/share/stratafs` (and a relative `.stratafs` without any home).
pub fn default_root(
    is_root: bool,
    xdg_data_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> PathBuf {
    if is_root {
        return PathBuf::from("/var/lib/stratafs");
    }
    // The XDG spec says relative values are invalid and must be ignored.
    if let Some(x) = xdg_data_home.filter(|p| p.is_absolute()) {
        return x.join("stratafs");
    }
    match home.filter(|p| p.is_absolute()) {
        Some(h) => h.join(".local/share/stratafs"),
        None => Path::new(".stratafs").to_path_buf(),
    }
}

/// The default log filter of the long-running servers (`plugin`, `snapshotter`).
const SERVER_LOG: &str = "warn,stratafs=info";

/// Logs go to stderr, filtered by `RUST_LOG` (default: `default`).
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: the plugin server's stderr is usually a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_root_per_user() {
        let p = PathBuf::from;
        assert_eq!(
            default_root(true, Some(p("/x")), Some(p("/home/a"))),
            p("/var/lib/stratafs")
        );
        assert_eq!(
            default_root(false, Some(p("/x/data")), Some(p("/home/a"))),
            p("/x/data/stratafs")
        );
        assert_eq!(
            default_root(false, None, Some(p("/home/a"))),
            p("/home/a/.local/share/stratafs")
        );
        // A relative XDG_DATA_HOME is invalid per the spec and ignored.
        assert_eq!(
            default_root(false, Some(p("rel")), Some(p("/home/a"))),
            p("/home/a/.local/share/stratafs")
        );
        assert_eq!(default_root(false, None, None), p(".stratafs"));
    }

    #[test]
    fn id_map_flags_feed_the_driver_config() {
        let cli = Cli::try_parse_from([
            "stratafs",
            "--root",
            "/r",
            "--uidmap",
            "0:100000:65536",
            "--gidmap",
            "0:200000:1:1:300000:10",
            "status",
        ])
        .unwrap();
        let cfg = cli.driver_config().unwrap();
        assert_eq!(cfg.root, PathBuf::from("/r"));
        assert_eq!(cfg.id_mappings.root_pair().unwrap(), (100000, 200000));
        assert_eq!(cfg.id_mappings.gids.len(), 2);
        assert_eq!(cfg.id_mappings.to_host(5, 5), Some((100005, 300004)));
        // Repeated flags add ranges.
        let cli = Cli::try_parse_from([
            "stratafs",
            "--uidmap",
            "0:1000:1",
            "--uidmap",
            "1:100000:100",
            "status",
        ])
        .unwrap();
        assert_eq!(cli.driver_config().unwrap().id_mappings.uids.len(), 2);
    }

    #[test]
    fn bad_id_maps_are_refused() {
        for bad in ["0:1000", "a:b:c", "0:1000:0"] {
            assert!(
                Cli::try_parse_from(["stratafs", "--uidmap", bad, "status"]).is_err(),
                "{bad} accepted"
            );
        }
        // Overlapping ranges across two flags are caught when the config is built.
        let cli = Cli::try_parse_from([
            "stratafs",
            "--uidmap",
            "0:1000:10",
            "--uidmap",
            "5:2000:10",
            "status",
        ])
        .unwrap();
        assert!(matches!(
            cli.driver_config(),
            Err(stratafs::Error::InvalidIdMap { .. })
        ));
    }

    #[test]
    fn storage_opts_are_checked_at_parse_time() {
        let cli = Cli::try_parse_from([
            "stratafs",
            "create",
            "--storage-opt",
            "size=1G",
            "--parent",
            "p",
            "id",
        ])
        .unwrap();
        match cli.command {
            Command::Layers(layers::LayerCommand::Create(a)) => {
                assert_eq!(a.storage_opt, [("size".to_string(), "1G".to_string())]);
                assert_eq!(a.parent.as_deref(), Some("p"));
                assert_eq!(a.id, "id");
            }
            other => panic!("parsed as {other:?}"),
        }
        let err = Cli::try_parse_from(["stratafs", "create", "--storage-opt", "quota=1", "id"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("quota"), "{err}");
    }

    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
