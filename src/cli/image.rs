//! `stratafs image ...`: inspect image archives without a daemon. Layers are unpacked once into
//! `<root>/images` (see `stratafs::image`); `mount` then runs this binary's own mount program
//! (`stratafs -o lowerdir_file=...`) for a read-only union view of the image.

use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use clap::{Args, Subcommand};
use serde::Serialize;
use stratafs::error::{Error, IoContext, Result};
use stratafs::image::writable::UpperRecord;
use stratafs::image::{ImageRecord, ImageStore, MountRecord, Platform, Progress, Quiet, Selector};

use super::layers::change_letter;
use super::output::{self, human_size};
use super::Cli;

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// Which image of an archive to take.
#[derive(Debug, Args, Default)]
pub struct Pick {
    /// Take the image with this tag (`name:tag`) or OCI reference name.
    #[arg(long)]
    pub tag: Option<String>,
    /// Take the N-th image of the archive (0-based).
    #[arg(long, value_name = "N")]
    pub index: Option<usize>,
    /// Platform of a multi-platform image: os/arch[/variant]. Default: this machine's.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", value_parser = parse_platform)]
    pub platform: Option<Platform>,
}

fn parse_platform(s: &str) -> std::result::Result<Platform, String> {
    Platform::parse(s).map_err(|e| e.to_string())
}

impl Pick {
    fn selector(&self) -> Selector {
        Selector {
            tag: self.tag.clone(),
            index: self.index,
            platform: self.platform.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Unpack an image archive (docker save, OCI archive or layout) into the store.
    Load {
        #[command(flatten)]
        pick: Pick,
        archive: PathBuf,
    },
    /// Mount an image read-only at DIR (IMAGE: an archive, or a stored image's id or tag).
    /// An archive is served straight from its layer tars (indexed once, nothing unpacked).
    Mount {
        #[command(flatten)]
        pick: Pick,
        /// Unpack the layers into the store first (as `image load`) and mount those.
        #[arg(long)]
        unpack: bool,
        /// Put an upper directory on top: changes go there (`image changes DIR` lists them).
        #[arg(long)]
        writable: bool,
        /// The upper directory of a writable mount (made if missing; kept after unmount;
        /// never removed by stratafs). Default: a fresh one under `<root>/images/uppers/`,
        /// kept after unmount until `image prune`.
        #[arg(long, value_name = "UPPERDIR", requires = "writable")]
        upper: Option<PathBuf>,
        image: String,
        dir: PathBuf,
    },
    /// The changes of a writable image mount at TARGET, as `docker diff` (A/C/D lines).
    /// TARGET may also be a store-made upper (its name or path) of an unmounted image.
    Changes {
        #[arg(value_name = "TARGET")]
        dir: PathBuf,
    },
    /// Unmount an image mounted by `image mount` (a writable mount's upper is kept).
    Umount { dir: PathBuf },
    /// List stored images and their layers.
    Ls,
    /// Remove stored images (and the layers no other image uses).
    Rm {
        /// Keep the layers for later loads; `image prune` drops them.
        #[arg(long)]
        keep_layers: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove layers no stored image uses, tar indexes no lazily indexed image uses, and
    /// store-made uppers (and store work directories) no live mount uses.
    Prune,
    /// The changes from image A to image B (archives or stored images), as `docker diff`.
    Diff { a: String, b: String },
    /// Show an image's configuration (entrypoint, cmd, env, labels, history).
    Config {
        #[command(flatten)]
        pick: Pick,
        image: String,
    },
}

pub fn run(cli: &Cli, args: &ImageArgs) -> Result<ExitCode> {
    let store = ImageStore::open(&cli.root())?;
    match &args.command {
        ImageCommand::Load { pick, archive } => {
            let rec = load(&store, archive, &pick.selector())?;
            if cli.json {
                output::json(&rec)?;
            } else {
                output::line(&rec.id)?;
            }
        }
        ImageCommand::Mount {
            pick,
            unpack,
            writable,
            upper,
            image,
            dir,
        } => {
            let how = MountHow {
                lazy: !*unpack,
                writable: *writable,
                upper: upper.as_deref(),
            };
            mount(cli, &store, pick, &how, image, dir)?
        }
        ImageCommand::Changes { dir } => changes(cli, &store, dir)?,
        ImageCommand::Umount { dir } => umount(&store, dir)?,
        ImageCommand::Ls => ls(cli, &store)?,
        ImageCommand::Rm {
            keep_layers,
            images,
        } => {
            for i in images {
                let (rec, layers) = store.remove(i, *keep_layers)?;
                output::line(&format!(
                    "removed {} ({} layer(s) deleted)",
                    rec.short_id(),
                    layers.len()
                ))?;
            }
        }
        ImageCommand::Prune => {
            let removed = store.prune()?;
            if cli.json {
                output::json(&removed)?;
            } else {
                for r in &removed {
                    output::line(&format!("deleted {r}"))?;
                }
            }
        }
        ImageCommand::Diff { a, b } => image_diff(cli, &store, a, b)?,
        ImageCommand::Config { pick, image } => config(cli, &store, pick, image)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// A bar per layer on a terminal; nothing otherwise.
struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    fn new() -> Bar {
        if !io::stderr().is_terminal() {
            return Bar(None);
        }
        let bar = indicatif::ProgressBar::new(0).with_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        Bar(Some(bar))
    }
}

impl Progress for Bar {
    fn layer(&self, index: usize, total: usize, diff_id: &str, bytes: Option<u64>, reused: bool) {
        let Some(b) = &self.0 else { return };
        let short = diff_id.trim_start_matches("sha256:");
        let short = &short[..short.len().min(12)];
        if reused {
            b.println(format!(
                "layer {}/{total} {short}: already in the store",
                index + 1
            ));
            return;
        }
        b.reset();
        b.set_length(bytes.unwrap_or(0));
        b.set_message(format!("layer {}/{total} {short}", index + 1));
    }
    fn advance(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }
    fn layer_done(&self) {}
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

fn load(store: &ImageStore, archive: &Path, sel: &Selector) -> Result<ImageRecord> {
    let bar = Bar::new();
    let progress: &dyn Progress = if bar.0.is_some() { &bar } else { &Quiet };
    let report = store.load(archive, sel, progress)?;
    drop(bar);
    tracing::info!(
        unpacked = report.unpacked.len(),
        reused = report.reused.len(),
        "loaded {}",
        report.image.id
    );
    Ok(report.image)
}

/// An existing path is an archive to load; anything else names a stored image.
fn resolve(store: &ImageStore, image: &str, pick: &Pick) -> Result<ImageRecord> {
    let p = Path::new(image);
    if p.exists() {
        load(store, p, &pick.selector())
    } else {
        store.find(image)
    }
}

/// The image to mount: its id and layers (topmost first), indexed in place of unpacked when
/// `lazy` and `image` is an archive.
fn mount_layers(
    store: &ImageStore,
    pick: &Pick,
    lazy: bool,
    image: &str,
) -> Result<(String, String, Vec<PathBuf>)> {
    if lazy && Path::new(image).exists() {
        let bar = Bar::new();
        let progress: &dyn Progress = if bar.0.is_some() { &bar } else { &Quiet };
        let img = store.load_lazy(Path::new(image), &pick.selector(), progress)?;
        drop(bar);
        tracing::info!(indexed = img.indexed.len(), "image {} indexed", img.id);
        return Ok((img.id, img.short_id, img.indexes));
    }
    let rec = resolve(store, image, pick)?;
    let lowers = store.lower_dirs(&rec)?;
    Ok((rec.id.clone(), rec.short_id().to_string(), lowers))
}

/// How `image mount` mounts.
struct MountHow<'a> {
    /// Serve the layers from tar indexes (else unpack them).
    lazy: bool,
    writable: bool,
    upper: Option<&'a Path>,
}

/// `path` as a value of a mount option (commas escaped).
fn opt_path(path: &Path) -> Result<String> {
    let s = path.to_str().filter(|s| !s.contains('\\')).ok_or_else(|| {
        Error::Usage(format!(
            "{}: a path for a mount option must be UTF-8 without backslashes",
            path.display()
        ))
    })?;
    Ok(s.replace(',', "\\,"))
}

fn mount(
    cli: &Cli,
    store: &ImageStore,
    pick: &Pick,
    how: &MountHow<'_>,
    image: &str,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir).ctx(|| format!("resolving {}", dir.display()))?;
    if stratafs::union::mount::fuse_mounted(&dir) {
        return Err(Error::Usage(format!(
            "{} is already a mount point",
            dir.display()
        )));
    }
    let (id, short_id, lowers) = mount_layers(store, pick, how.lazy, image)?;
    if lowers.is_empty() {
        return Err(Error::NotAnImage(format!("{short_id} has no layers")));
    }
    let _lock = store.mount_lock()?;
    let (_, lowers_file, log) = store.mount_paths(&dir);
    let list: String = lowers
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect();
    std::fs::write(&lowers_file, list).ctx(|| format!("writing {}", lowers_file.display()))?;
    let exe = std::env::current_exe().ctx(|| "finding the stratafs binary")?;
    // Paths go through a file: a long chain would not fit an option string, and commas or
    // colons in paths need no escaping there.
    let upper = match how.writable {
        true => Some(store.upper_dirs(how.upper)?),
        false => None,
    };
    let mode = match &upper {
        Some(u) => format!(
            "upperdir={},workdir={}",
            opt_path(&u.upper)?,
            opt_path(&u.work)?
        ),
        None => "ro".to_string(),
    };
    let opts = format!(
        "{mode},lowerdir_file={},log={}",
        opt_path(&lowers_file)?,
        opt_path(&log)?
    );
    let out = Command::new(&exe)
        .arg("-o")
        .arg(&opts)
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .ctx(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        let _ = store.forget_mount(&dir);
        if let (Some(u), None) = (&upper, how.upper) {
            if let Err(err) = store.discard_upper(u) {
                tracing::warn!(%err, "could not remove the upper of a failed mount");
            }
        }
        return Err(Error::Mount {
            id: short_id,
            reason: format!(
                "{} (log: {})",
                String::from_utf8_lossy(&out.stderr).trim(),
                log.display()
            ),
        });
    }
    if let Some(u) = &upper {
        let made_over = UpperRecord {
            image: id.clone(),
            lowers: lowers.clone(),
            upper: None,
        };
        store.record_upper(u, &made_over)?;
    }
    let upper = upper.map(|u| u.upper);
    store.record_mount(&MountRecord {
        dir: dir.clone(),
        image: id.clone(),
        upper: upper.clone(),
    })?;
    if cli.json {
        output::json(&serde_json::json!({"image": id, "dir": dir, "upper": upper}))?;
    } else {
        output::line(&dir.display().to_string())?;
        if let Some(u) = &upper {
            output::line(&format!("upper {}", u.display()))?;
        }
    }
    Ok(())
}

fn changes(cli: &Cli, store: &ImageStore, dir: &Path) -> Result<()> {
    let (_, changes) = store.changes_of(dir)?;
    if cli.json {
        return output::json(&changes);
    }
    for c in changes {
        output::line(&format!("{} {}", change_letter(c.kind), c.path))?;
    }
    Ok(())
}

fn umount(store: &ImageStore, dir: &Path) -> Result<()> {
    let dir = std::fs::canonicalize(dir).ctx(|| format!("resolving {}", dir.display()))?;
    if !stratafs::union::mount::fuse_mounted(&dir) {
        store.forget_mount(&dir)?;
        return Err(Error::Usage(format!("{} is not mounted", dir.display())));
    }
    let upper = store
        .mounts()?
        .into_iter()
        .find(|m| m.dir == dir)
        .and_then(|m| m.upper);
    if stratafs::sys::is_root() {
        stratafs::sys::umount2(&dir, 0).ctx(|| format!("unmounting {}", dir.display()))?;
    } else {
        let st = Command::new("fusermount3")
            .arg("-u")
            .arg(&dir)
            .status()
            .ctx(|| "running fusermount3")?;
        if !st.success() {
            return Err(Error::io(
                format!("fusermount3 -u {}", dir.display()),
                io::Error::other(format!("exited with {st}")),
            ));
        }
    }
    store.forget_mount(&dir)?;
    if let Some(u) = upper {
        // Said so the changes are not lost track of: `image changes` and `image prune` take it.
        output::line(&format!("upper kept at {}", u.display()))?;
    }
    Ok(())
}

fn ls(cli: &Cli, store: &ImageStore) -> Result<()> {
    // Unpacked images, then the lazily indexed ones (sizes in tar bytes).
    let images: Vec<(&str, ImageRecord)> = store
        .list()?
        .into_iter()
        .map(|r| ("unpacked", r))
        .chain(store.list_lazy()?.into_iter().map(|r| ("lazy", r)))
        .collect();
    let mounts = store.mounts()?;
    #[derive(Serialize)]
    struct Row<'a> {
        #[serde(flatten)]
        image: &'a ImageRecord,
        kind: &'a str,
        size: u64,
        mounted_at: Vec<&'a Path>,
    }
    let mounted = |id: &str| -> Vec<&Path> {
        mounts
            .iter()
            .filter(|m| m.image == id)
            .map(|m| m.dir.as_path())
            .collect()
    };
    if cli.json {
        let rows: Vec<Row> = images
            .iter()
            .map(|(kind, i)| Row {
                image: i,
                kind,
                size: i.size(),
                mounted_at: mounted(&i.id),
            })
            .collect();
        return output::json(&rows);
    }
    let mut rows = vec![vec![
        "IMAGE".to_string(),
        "TAGS".into(),
        "PLATFORM".into(),
        "KIND".into(),
        "LAYERS".into(),
        "SIZE".into(),
        "MOUNTED AT".into(),
    ]];
    for (kind, i) in &images {
        let m: Vec<String> = mounted(&i.id)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        rows.push(vec![
            i.short_id().to_string(),
            if i.tags.is_empty() {
                "<none>".into()
            } else {
                i.tags.join(",")
            },
            format!("{}/{}", i.os, i.architecture),
            kind.to_string(),
            i.layers.len().to_string(),
            human_size(i.size()),
            if m.is_empty() {
                "-".into()
            } else {
                m.join(",")
            },
        ]);
        for (n, l) in i.layers.iter().enumerate() {
            let hex = l.diff_id.trim_start_matches("sha256:");
            rows.push(vec![
                format!("  {}", n),
                hex[..hex.len().min(12)].to_string(),
                String::new(),
                String::new(),
                String::new(),
                human_size(l.size),
                String::new(),
            ]);
        }
    }
    for line in output::table(&rows) {
        output::line(&line)?;
    }
    Ok(())
}

fn image_diff(cli: &Cli, store: &ImageStore, a: &str, b: &str) -> Result<()> {
    let ra = resolve(store, a, &Pick::default())?;
    let rb = resolve(store, b, &Pick::default())?;
    let changes = store.diff(&ra, &rb)?;
    if cli.json {
        return output::json(&changes);
    }
    for c in changes {
        output::line(&format!("{} {}", change_letter(c.kind), c.path))?;
    }
    Ok(())
}

fn config(cli: &Cli, store: &ImageStore, pick: &Pick, image: &str) -> Result<()> {
    let p = Path::new(image);
    let (id, cfg) = if p.exists() {
        // Read from the archive only: nothing is unpacked.
        let src = store.open_archive(p)?;
        let r = stratafs::image::format::resolve(&src, &pick.selector())?;
        (r.id, r.config)
    } else {
        let rec = store.find(image)?;
        let cfg = store.config(&rec)?;
        (rec.id, cfg)
    };
    if cli.json {
        return output::json(&serde_json::json!({"id": id, "config": cfg}));
    }
    let mut lines = vec![format!("ID:           {id}")];
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    lines.push(format!("Created:      {}", opt(cfg.created())));
    if let Some(a) = cfg.author() {
        lines.push(format!("Author:       {a}"));
    }
    lines.push(format!("Platform:     {}/{}", cfg.os(), cfg.architecture()));
    if let Some(c) = cfg.config() {
        let list = |v: &Option<Vec<String>>| match v {
            Some(v) => serde_json::to_string(v).unwrap_or_default(),
            None => "-".into(),
        };
        lines.push(format!("Entrypoint:   {}", list(c.entrypoint())));
        lines.push(format!("Cmd:          {}", list(c.cmd())));
        lines.push(format!("WorkingDir:   {}", opt(c.working_dir())));
        lines.push(format!("User:         {}", opt(c.user())));
        if let Some(env) = c.env() {
            lines.push("Env:".into());
            lines.extend(env.iter().map(|e| format!("  {e}")));
        }
        if let Some(ports) = c.exposed_ports() {
            lines.push(format!("ExposedPorts: {}", ports.join(", ")));
        }
        if let Some(v) = c.volumes() {
            lines.push(format!("Volumes:      {}", v.join(", ")));
        }
        if let Some(labels) = c.labels() {
            let mut l: Vec<_> = labels.iter().collect();
            l.sort();
            lines.push("Labels:".into());
            lines.extend(l.iter().map(|(k, v)| format!("  {k}={v}")));
        }
    }
    lines.push(format!("Layers:       {}", cfg.rootfs().diff_ids().len()));
    if let Some(h) = cfg.history() {
        lines.push("History:".into());
        for e in h {
            let empty = if e.empty_layer() == Some(true) {
                " (no layer)"
            } else {
                ""
            };
            lines.push(format!(
                "  {}  {}{empty}",
                opt(e.created()),
                e.created_by()
                    .clone()
                    .or_else(|| e.comment().clone())
                    .unwrap_or_default()
            ));
        }
    }
    for l in lines {
        output::line(&l)?;
    }
    Ok(())
}
