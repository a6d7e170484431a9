//! `stratafs demo`: a small three-layer sample with the stratafs driver (a deletion, an opaque
//! directory, a writable top), mounted and listed, then removed again.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use stratafs::driver::strata::StrataDriver;
use stratafs::driver::{CreateOpts, Driver};
use stratafs::error::{IoContext, Result};
use stratafs::layer::whiteout::{self, NameKind};
use stratafs::sys;

use super::layers::change_letter;
use super::output::line;
use super::Cli;

const BASE: &str = "demo-base";
const MIDDLE: &str = "demo-middle";
const TOP: &str = "demo-top";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the layers afterwards (with --root; a temporary root is always removed).
    #[arg(long)]
    pub keep: bool,
}

pub fn run(cli: &Cli, args: &DemoArgs) -> Result<ExitCode> {
    // A temporary root unless the user gave one; deleted when the demo ends.
    let (temp, root) = match &cli.root {
        Some(r) => (None, r.clone()),
        None => {
            let t = tempfile::Builder::new()
                .prefix("stratafs-demo.")
                .tempdir()
                .ctx(|| "creating a temporary directory for the demo")?;
            let path = t.path().to_path_buf();
            (Some(t), path)
        }
    };
    let mut cfg = cli.driver_config()?;
    cfg.root = root;
    if cli
        .driver
        .as_deref()
        .is_some_and(|d| d != stratafs::driver::strata::NAME)
    {
        tracing::warn!("the demo always uses the stratafs driver; ignoring --driver");
    }
    let driver = StrataDriver::new(&cfg)?;
    line(&format!(
        "stratafs demo: store in {}",
        driver.store().home().display()
    ))?;

    let built = build_layers(&driver);
    let outcome = built.and_then(|()| show(&driver));
    let teardown = if args.keep && temp.is_none() {
        line(&format!("keeping layers {BASE}, {MIDDLE}, {TOP}"))?;
        Ok(())
    } else {
        remove_layers(&driver)
    };
    drop(driver);
    if let Some(t) = temp {
        t.close()
            .ctx(|| "removing the demo's temporary directory")?;
    }
    let ok = outcome?;
    teardown?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The three layers, written with plain file operations into their `diff/` directories.
fn build_layers(d: &StrataDriver) -> Result<()> {
    let none = CreateOpts::default();
    let store = d.store();

    d.create(BASE, None, &none)?;
    let base = store.diff_dir(BASE);
    write(&base, "etc/hostname", b"demo-base\n", 0o644)?;
    write(&base, "etc/motd", b"Welcome to the stratafs demo.\n", 0o644)?;
    write(
        &base,
        "etc/os-release",
        b"NAME=\"stratafs demo\"\nID=demo\n",
        0o644,
    )?;
    write(
        &base,
        "usr/bin/hello",
        b"#!/bin/sh\necho hello from the base layer\n",
        0o755,
    )?;
    let readme = "stratafs keeps each layer as a plain directory.\n".repeat(40);
    write(&base, "usr/share/doc/readme.txt", readme.as_bytes(), 0o644)?;
    write(&base, "var/cache/app/old-1.bin", &[1u8; 4096], 0o600)?;
    write(&base, "var/cache/app/old-2.bin", &[2u8; 8192], 0o600)?;
    symlink("usr/bin", base.join("bin")).ctx(|| "creating bin -> usr/bin in the base layer")?;

    d.create(MIDDLE, Some(BASE), &none)?;
    let middle = store.diff_dir(MIDDLE);
    // Delete /etc/motd: a whiteout marker in the middle layer's etc/.
    mkdirs(&middle.join("etc"))?;
    let etc = sys::open_dir(&middle.join("etc")).ctx(|| "opening the middle layer's etc/")?;
    whiteout::write_whiteout(std::os::fd::AsFd::as_fd(&etc), OsStr::new("motd"))
        .ctx(|| "writing the whiteout of etc/motd")?;
    // Make /var/cache/app opaque: the base's old files vanish, only fresh.bin shows.
    let app = middle.join("var/cache/app");
    mkdirs(&app)?;
    let app_fd = sys::open_dir(&app).ctx(|| "opening the middle layer's var/cache/app")?;
    whiteout::write_opaque(std::os::fd::AsFd::as_fd(&app_fd))
        .ctx(|| "marking var/cache/app opaque")?;
    write(&middle, "var/cache/app/fresh.bin", &[3u8; 1024], 0o644)?;

    d.create_read_write(TOP, Some(MIDDLE), &none)?;
    let top = store.diff_dir(TOP);
    write(&top, "etc/hostname", b"demo-top\n", 0o644)?;
    write(
        &top,
        "home/user/notes.txt",
        b"written in the container layer\n",
        0o644,
    )?;
    Ok(())
}

/// Print the layers, then the merged view and the changes. `Ok(false)`: a step failed.
fn show(d: &StrataDriver) -> Result<bool> {
    for (id, what) in [
        (BASE, "read-only, no parent"),
        (
            MIDDLE,
            "read-only, parent demo-base: deletes etc/motd, makes var/cache/app opaque",
        ),
        (
            TOP,
            "read-write, parent demo-middle: changes etc/hostname, adds home/user/notes.txt",
        ),
    ] {
        line("")?;
        line(&format!("== layer {id} ({what})"))?;
        line(&format!("   {}", d.store().diff_dir(id).display()))?;
        for l in tree(&d.store().diff_dir(id), true)? {
            line(&format!("   {l}"))?;
        }
    }
    let mut ok = true;

    line("")?;
    line(&format!("== merged view of {TOP} (driver get)"))?;
    match d.get(TOP, "") {
        Ok(path) => {
            line(&format!("   mounted at {}", path.display()))?;
            let listed = tree(&path, false);
            if let Err(e) = d.put(TOP) {
                line(&format!("   unmount failed: {e}"))?;
                ok = false;
            }
            for l in listed? {
                line(&format!("   {l}"))?;
            }
        }
        Err(e) => {
            line(&format!("   mount failed: {e}"))?;
            ok = false;
        }
    }

    line("")?;
    line(&format!("== changes of {TOP} against {MIDDLE}"))?;
    match d.changes(TOP, Some(MIDDLE)) {
        Ok(mut changes) => {
            changes.sort();
            for c in changes {
                line(&format!("   {} {}", change_letter(c.kind), c.path))?;
            }
        }
        Err(e) => {
            line(&format!("   changes failed: {e}"))?;
            ok = false;
        }
    }
    line("")?;
    Ok(ok)
}

fn remove_layers(d: &StrataDriver) -> Result<()> {
    for id in [TOP, MIDDLE, BASE] {
        if d.exists(id) {
            d.remove(id)?;
        }
    }
    Ok(())
}

fn mkdirs(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))
}

fn write(layer: &Path, rel: &str, data: &[u8], mode: u32) -> Result<()> {
    let path = layer.join(rel);
    if let Some(parent) = path.parent() {
        mkdirs(parent)?;
    }
    fs::write(&path, data).ctx(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
        .ctx(|| format!("setting the mode of {}", path.display()))
}

/// One line per entry under `root`, depth first, sorted by name: type, mode, size, path.
/// With `markers`, whiteout and opaque markers are explained.
fn tree(root: &Path, markers: bool) -> Result<Vec<String>> {
    let mut out = Vec::new();
    walk(root, PathBuf::new(), markers, &mut out)?;
    if out.is_empty() {
        out.push("(empty)".into());
    }
    Ok(out)
}

fn walk(root: &Path, rel: PathBuf, markers: bool, out: &mut Vec<String>) -> Result<()> {
    let dir = root.join(&rel);
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .ctx(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .ctx(|| format!("reading {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let path = rel.join(&name);
        let full = root.join(&path);
        let meta = fs::symlink_metadata(&full).ctx(|| format!("inspecting {}", full.display()))?;
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_char_device() {
            'c'
        } else if ft.is_block_device() {
            'b'
        } else if ft.is_fifo() {
            'p'
        } else if ft.is_socket() {
            's'
        } else {
            '-'
        };
        let mut text = format!(
            "{kind} {:04o} {:>7}  /{}",
            meta.permissions().mode() & 0o7777,
            if ft.is_file() {
                meta.len().to_string()
            } else {
                String::new()
            },
            path.display()
        );
        if ft.is_symlink() {
            if let Ok(target) = fs::read_link(&full) {
                text.push_str(&format!(" -> {}", target.display()));
            }
        }
        if ft.is_dir() {
            text.push('/');
        }
        if markers {
            match whiteout::classify(&name) {
                NameKind::Whiteout(target) => text.push_str(&format!(
                    "   (whiteout: hides /{} of lower layers)",
                    rel.join(target).display()
                )),
                NameKind::OpaqueMarker => text.push_str(&format!(
                    "   (opaque marker: hides what lower layers have in /{})",
                    rel.display()
                )),
                _ => {}
            }
        }
        out.push(text);
        if ft.is_dir() {
            walk(root, path, markers, out)?;
        }
    }
    Ok(())
}
