//! Commands that mirror the driver: create, rm, mount, umount, diff, apply, ...

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;
use stratafs::driver::{ChangeKind, CreateOpts, Driver, StorageOpts};
use stratafs::error::{Error, IoContext, Result};
use stratafs::store::LayerKind;

use super::output::{self, human_size};
use super::Cli;

#[derive(Debug, Subcommand)]
pub enum LayerCommand {
    /// Create a read-only (parent) layer.
    Create(CreateArgs),
    /// Create a read-write (container) layer.
    #[command(name = "create-rw")]
    CreateRw(CreateArgs),
    /// Remove a layer (refused while it is mounted or has children).
    Rm { id: String },
    /// Mount the merged view of a layer and its parents; prints the mount point.
    Mount {
        /// Mount label (SELinux context), passed to the driver.
        #[arg(long, default_value = "")]
        label: String,
        id: String,
    },
    /// Drop one mount reference taken by `mount`; unmounts at zero.
    Umount { id: String },
    /// Exit 0 when the layer exists, 1 when it does not.
    Exists { id: String },
    /// Show the driver's status.
    Status,
    /// Show low-level facts about one layer (its directories, its parents).
    Inspect { id: String },
    /// Write the layer's changes as an uncompressed tar (to stdout or -o FILE).
    Diff {
        #[command(flatten)]
        target: Target,
        /// Write the tar to FILE instead of stdout.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// List changed paths: `A` added, `C` changed, `D` deleted (as `docker diff`).
    Changes(Target),
    /// Unpack a layer tar (plain, gzip or zstd) into an empty layer; prints its size.
    Apply {
        #[command(flatten)]
        target: Target,
        /// The tar file; `-` or nothing reads stdin.
        file: Option<PathBuf>,
    },
    /// Bytes added or modified by the layer.
    #[command(name = "diff-size")]
    DiffSize(Target),
    /// Unmount everything the driver mounted.
    Cleanup,
    /// List layers with parent, kind, size and mount state.
    Ls {
        /// Skip computing sizes (faster on big layers).
        #[arg(long)]
        no_size: bool,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Parent layer (none: a base layer).
    #[arg(long)]
    pub parent: Option<String>,
    /// Mount label (SELinux context), kept with the layer.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Storage option KEY=VALUE, e.g. size=50M (repeatable).
    #[arg(long = "storage-opt", value_name = "KEY=VALUE", value_parser = parse_storage_opt)]
    pub storage_opt: Vec<(String, String)>,
    pub id: String,
}

/// A layer and the parent to compare it with.
#[derive(Debug, Args)]
pub struct Target {
    /// Compare against this layer instead of the layer's own parent; `--parent ''` compares
    /// against nothing (the whole merged tree).
    #[arg(long)]
    pub parent: Option<String>,
    pub id: String,
}

/// `KEY=VALUE`, checked against the storage options the drivers know so mistakes fail early.
pub fn parse_storage_opt(s: &str) -> std::result::Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("empty key in {s:?}"));
    }
    let one = BTreeMap::from([(key.to_string(), value.to_string())]);
    StorageOpts::parse(&one).map_err(|e| e.to_string())?;
    Ok((key.to_string(), value.to_string()))
}

pub fn run(cli: &Cli, cmd: &LayerCommand) -> Result<ExitCode> {
    // Checked before the driver starts: nothing to undo if the request is refused.
    if let LayerCommand::Diff { output, .. } = cmd {
        let to_stdout = !output.as_deref().is_some_and(|p| p != Path::new("-"));
        if to_stdout && io::stdout().is_terminal() {
            return Err(Error::Usage(
                "refusing to write a tar archive to a terminal; redirect stdout or use -o FILE"
                    .into(),
            ));
        }
    }
    let driver = cli.driver()?;
    let d = driver.as_ref();
    match cmd {
        LayerCommand::Create(a) => create(cli, d, a, false),
        LayerCommand::CreateRw(a) => create(cli, d, a, true),
        LayerCommand::Rm { id } => {
            d.remove(id)?;
            report_id(cli, id)
        }
        LayerCommand::Mount { label, id } => {
            let path = d.get(id, label)?;
            if cli.json {
                output::json(&serde_json::json!({ "id": id, "path": path }))?;
            } else {
                output::line(&path.display().to_string())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        LayerCommand::Umount { id } => {
            d.put(id)?;
            report_id(cli, id)
        }
        LayerCommand::Exists { id } => {
            let exists = d.exists(id);
            if cli.json {
                output::json(&serde_json::json!({ "id": id, "exists": exists }))?;
            } else if exists {
                output::line(&format!("layer {id} exists"))?;
            } else {
                output::line(&format!("layer {id} does not exist"))?;
            }
            Ok(if exists {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        LayerCommand::Status => {
            let status = d.status();
            if cli.json {
                let map: serde_json::Map<String, serde_json::Value> = status
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect();
                output::json(&serde_json::json!({ "driver": d.name(), "status": map }))?;
            } else {
                output::line(&format!("Driver: {}", d.name()))?;
                print_pairs(status)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        LayerCommand::Inspect { id } => {
            let meta = d.get_metadata(id)?;
            if cli.json {
                output::json(&meta)?;
            } else {
                print_pairs(meta)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        LayerCommand::Diff { target, output } => {
            let parent = resolve_parent(d, target)?;
            diff(d, &target.id, parent.as_deref(), output.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        LayerCommand::Changes(target) => {
            let parent = resolve_parent(d, target)?;
            let mut changes = d.changes(&target.id, parent.as_deref())?;
            changes.sort();
            if cli.json {
                output::json(&changes)?;
            } else {
                for c in &changes {
                    output::line(&format!("{} {}", change_letter(c.kind), c.path))?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        LayerCommand::Apply { target, file } => {
            let parent = resolve_parent(d, target)?;
            let size = apply(d, &target.id, parent.as_deref(), file.as_deref())?;
            if cli.json {
                output::json(&serde_json::json!({ "id": target.id, "size": size }))?;
            } else {
                output::line(&format!(
                    "applied layer {}: {} ({size} bytes)",
                    target.id,
                    human_size(size)
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        LayerCommand::DiffSize(target) => {
            let parent = resolve_parent(d, target)?;
            let size = d.diff_size(&target.id, parent.as_deref())?;
            if cli.json {
                output::json(&serde_json::json!({ "id": target.id, "size": size }))?;
            } else {
                output::line(&format!("{size} ({})", human_size(size)))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        LayerCommand::Cleanup => {
            d.cleanup()?;
            Ok(ExitCode::SUCCESS)
        }
        LayerCommand::Ls { no_size } => ls(cli, d, !no_size),
    }
}

fn create(cli: &Cli, d: &dyn Driver, a: &CreateArgs, rw: bool) -> Result<ExitCode> {
    let opts = CreateOpts {
        mount_label: a.label.clone(),
        storage_opt: a.storage_opt.iter().cloned().collect(),
    };
    if rw {
        d.create_read_write(&a.id, a.parent.as_deref(), &opts)?;
    } else {
        d.create(&a.id, a.parent.as_deref(), &opts)?;
    }
    report_id(cli, &a.id)
}

fn report_id(cli: &Cli, id: &str) -> Result<ExitCode> {
    if cli.json {
        output::json(&serde_json::json!({ "id": id }))?;
    } else {
        output::line(id)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Result<()> {
    let rows: Vec<Vec<String>> = pairs
        .into_iter()
        .map(|(k, v)| vec![format!("{k}:"), v])
        .collect();
    for l in output::table(&rows) {
        output::line(&l)?;
    }
    Ok(())
}

/// `--parent` absent: the layer's own parent; `--parent ''`: none; otherwise that layer.
fn resolve_parent(d: &dyn Driver, t: &Target) -> Result<Option<String>> {
    match t.parent.as_deref() {
        Some("") => Ok(None),
        Some(p) => Ok(Some(p.to_string())),
        None => d.parent(&t.id),
    }
}

/// The letter `docker diff` uses for a change.
pub fn change_letter(kind: ChangeKind) -> char {
    match kind {
        ChangeKind::Add => 'A',
        ChangeKind::Modify => 'C',
        ChangeKind::Delete => 'D',
    }
}

fn diff(d: &dyn Driver, id: &str, parent: Option<&str>, out: Option<&Path>) -> Result<()> {
    match out.filter(|p| *p != Path::new("-")) {
        None => {
            let stdout = io::stdout();
            let mut w = BufWriter::new(stdout.lock());
            d.diff(id, parent, &mut w)?;
            w.flush().ctx(|| "writing the tar to stdout")
        }
        Some(path) => {
            let file = File::create(path).ctx(|| format!("creating {}", path.display()))?;
            let mut w = BufWriter::new(file);
            let written = d
                .diff(id, parent, &mut w)
                .and_then(|()| w.flush().ctx(|| format!("writing {}", path.display())));
            if written.is_err() {
                // Never leave a truncated archive that looks like a result.
                let _ = std::fs::remove_file(path);
            }
            written
        }
    }
}

fn apply(d: &dyn Driver, id: &str, parent: Option<&str>, file: Option<&Path>) -> Result<u64> {
    let (input, total): (Box<dyn Read>, Option<u64>) = match file.filter(|p| *p != Path::new("-")) {
        Some(path) => {
            let f = File::open(path).ctx(|| format!("opening {}", path.display()))?;
            let len = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
            (Box::new(f), len)
        }
        None => {
            if io::stdin().is_terminal() {
                return Err(Error::Usage(
                    "apply reads a layer tar from stdin; pipe one in or give a FILE".into(),
                ));
            }
            (Box::new(io::stdin().lock()), None)
        }
    };
    let bar = progress_bar(total);
    // Progress counts the bytes read from the input, compressed or not.
    let counted: Box<dyn Read> = match &bar {
        Some(b) => Box::new(b.wrap_read(input)),
        None => input,
    };
    let mut tar = stratafs::archive::decompress::auto(counted)?;
    let result = d.apply_diff(id, parent, &mut tar);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    result
}

/// A byte progress bar on stderr, only when a person is watching.
fn progress_bar(total: Option<u64>) -> Option<indicatif::ProgressBar> {
    if !io::stderr().is_terminal() {
        return None;
    }
    let bar = match total {
        Some(t) => indicatif::ProgressBar::new(t).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        ),
        None => indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        ),
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    Some(bar)
}

#[derive(Debug, Serialize)]
struct LsRow {
    id: String,
    parent: Option<String>,
    kind: LayerKind,
    size: Option<u64>,
    mounted_at: Option<PathBuf>,
}

fn ls(cli: &Cli, d: &dyn Driver, sizes: bool) -> Result<ExitCode> {
    let rows: Vec<LsRow> = d
        .list()?
        .into_iter()
        .map(|l| LsRow {
            // Against its own parent the size walks only the layer's directory: cheap enough.
            size: if sizes {
                d.diff_size(&l.id, l.parent.as_deref())
                    .map_err(|e| tracing::debug!(id = %l.id, %e, "no size"))
                    .ok()
            } else {
                None
            },
            id: l.id,
            parent: l.parent,
            kind: l.kind,
            mounted_at: l.mounted_at,
        })
        .collect();
    if cli.json {
        output::json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = vec![vec![
        "ID".to_string(),
        "PARENT".to_string(),
        "KIND".to_string(),
        "SIZE".to_string(),
        "MOUNTED".to_string(),
    ]];
    for r in rows {
        table.push(vec![
            r.id,
            r.parent.unwrap_or_else(|| "-".into()),
            match r.kind {
                LayerKind::ReadOnly => "read-only".into(),
                LayerKind::ReadWrite => "read-write".into(),
            },
            r.size.map(human_size).unwrap_or_else(|| "-".into()),
            r.mounted_at
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "no".into()),
        ]);
    }
    for l in output::table(&table) {
        output::line(&l)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn storage_opts_parse_and_fail_early() {
        assert_eq!(
            parse_storage_opt("size=50M").unwrap(),
            ("size".to_string(), "50M".to_string())
        );
        // Docker matches keys case-insensitively; the value keeps its spelling.
        assert_eq!(parse_storage_opt("Size=1g").unwrap().0, "Size");
        let e = parse_storage_opt("quota=1G").unwrap_err();
        assert!(e.contains("quota"), "{e}");
        assert!(parse_storage_opt("size=lots").is_err());
        assert!(parse_storage_opt("size").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_storage_opt("=1G").is_err());
    }

    #[test]
    fn change_letters_match_docker_diff() {
        assert_eq!(change_letter(ChangeKind::Add), 'A');
        assert_eq!(change_letter(ChangeKind::Modify), 'C');
        assert_eq!(change_letter(ChangeKind::Delete), 'D');
    }
}
