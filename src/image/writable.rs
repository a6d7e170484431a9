//! Writable image mounts: an upper directory over an image's layers (lazy tar indexes or
//! unpacked layers), so a person can change files and then list or export the changes.
//!
//! ```text
//! <root>/images/uppers/<name>/diff   a fresh upper directory the store made (`<name>`: time
//!                              work     and process id), the work directory beside it, and
//!                              upper.json  what it was made over (image id, lower layers), so
//!                                          its changes can be listed after unmount
//! <root>/images/uppers/work-<hash>   the work directory of an upper given with --upper, when it
//!                                     is on the store's filesystem; else `.<name>.stratafs-work`
//!                                     beside that upper (a work directory must share its
//!                                     upper's filesystem)
//! <root>/images/uppers/given-<hash>.json  what an upper given with --upper was last mounted
//!                                         over (its path inside), so its changes can be
//!                                         listed after unmount
//! ```
//!
//! Life cycle: an upper outlives its mount (`image umount` says where it is). `image prune`
//! removes the store-made uppers and store work directories that no live mount uses; an upper
//! given with `--upper` belongs to the user and is never removed.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::archive::{self, Change};
use crate::error::{Error, IoContext, Result};
use crate::store::write_json_atomic;

use super::{digest, read_json, ImageStore, MountRecord};

/// What an upper was made over: `upper.json` beside a store-made upper's `diff`, or
/// `given-<hash>.json` in the store for an upper given with `--upper`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpperRecord {
    pub image: String,
    /// Lower layers, topmost first, as the mount had them.
    pub lowers: Vec<PathBuf>,
    /// The upper directory itself (a given upper's record; a store-made one is beside it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<PathBuf>,
}

const UPPER_RECORD: &str = "upper.json";
const WORK_PREFIX: &str = "work-";
const GIVEN_PREFIX: &str = "given-";

/// The upper and work directories of a writable mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpperDirs {
    pub upper: PathBuf,
    pub work: PathBuf,
}

impl ImageStore {
    fn uppers_dir(&self) -> Result<PathBuf> {
        let d = self.home.join("uppers");
        fs::create_dir_all(&d).ctx(|| format!("creating {}", d.display()))?;
        // Canonical, so an upper named by any path to it is recognised as the store's.
        fs::canonicalize(&d).ctx(|| format!("resolving {}", d.display()))
    }

    /// The directories of a writable mount: `upper` (made if missing) with a work directory
    /// on its filesystem, or a fresh pair in the store.
    pub fn upper_dirs(&self, upper: Option<&Path>) -> Result<UpperDirs> {
        let store = self.uppers_dir()?;
        let Some(upper) = upper else {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let base = store.join(format!("{now}-{}", std::process::id()));
            let dirs = UpperDirs {
                upper: base.join("diff"),
                work: base.join("work"),
            };
            for d in [&dirs.upper, &dirs.work] {
                fs::create_dir_all(d).ctx(|| format!("creating {}", d.display()))?;
            }
            return Ok(dirs);
        };
        fs::create_dir_all(upper).ctx(|| format!("creating {}", upper.display()))?;
        let upper = fs::canonicalize(upper).ctx(|| format!("resolving {}", upper.display()))?;
        let dev = |p: &Path| fs::metadata(p).map(|m| m.dev()).ok();
        let work = if dev(&upper).is_some() && dev(&upper) == dev(&store) {
            work_in_store(&store, &upper)
        } else {
            let name = upper.file_name().unwrap_or_default().to_string_lossy();
            upper
                .parent()
                .unwrap_or(Path::new("/"))
                .join(format!(".{name}.stratafs-work"))
        };
        fs::create_dir_all(&work).ctx(|| format!("creating {}", work.display()))?;
        Ok(UpperDirs { upper, work })
    }

    /// The live mount at `dir`, with its lower layers (topmost first).
    pub fn mount_at(&self, dir: &Path) -> Result<(MountRecord, Vec<PathBuf>)> {
        let dir = fs::canonicalize(dir).ctx(|| format!("resolving {}", dir.display()))?;
        let rec = self
            .mounts()?
            .into_iter()
            .find(|m| m.dir == dir)
            .ok_or_else(|| Error::Usage(format!("{} is not an image mount", dir.display())))?;
        let list = self.mount_paths(&dir).1;
        let raw = fs::read_to_string(&list).ctx(|| format!("reading {}", list.display()))?;
        let lowers = raw
            .lines()
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect();
        Ok((rec, lowers))
    }

    /// What the writable mount at `dir` changed against its image, as `docker diff`.
    pub fn mount_changes(&self, dir: &Path) -> Result<(PathBuf, Vec<Change>)> {
        let (rec, lowers) = self.mount_at(dir)?;
        let upper = rec
            .upper
            .ok_or_else(|| Error::Usage(format!("{} is a read-only mount", rec.dir.display())))?;
        let changes = archive::upper_changes(&upper, &lowers)?;
        Ok((upper, changes))
    }

    /// Remember what the upper `dirs` (from [`ImageStore::upper_dirs`]) was mounted over: beside
    /// a store-made upper, or in the store's record of a given one (the latest mount's).
    pub fn record_upper(&self, dirs: &UpperDirs, rec: &UpperRecord) -> Result<()> {
        let store = self.uppers_dir()?;
        match store_made_base(&store, &dirs.upper) {
            Some(base) => write_json_atomic(&base.join(UPPER_RECORD), rec),
            None => {
                let rec = UpperRecord {
                    upper: Some(dirs.upper.clone()),
                    ..rec.clone()
                };
                write_json_atomic(&given_record(&store, &dirs.upper), &rec)
            }
        }
    }

    /// Remove a fresh upper whose mount failed (never one given with `--upper`).
    pub fn discard_upper(&self, dirs: &UpperDirs) -> Result<()> {
        match store_made_base(&self.uppers_dir()?, &dirs.upper) {
            Some(base) => fs::remove_dir_all(&base).ctx(|| format!("removing {}", base.display())),
            None => Ok(()),
        }
    }

    /// The changes of `target`: a live writable mount's directory, or a store-made upper (its
    /// name under `<root>/images/uppers`, its directory or its `diff`) mounted or not.
    pub fn changes_of(&self, target: &Path) -> Result<(PathBuf, Vec<Change>)> {
        let live = fs::canonicalize(target)
            .ok()
            .filter(|d| crate::union::mount::fuse_mounted(d));
        if let Some(dir) = live {
            return self.mount_changes(&dir);
        }
        let store = self.uppers_dir()?;
        if let Some((upper, rec)) = fs::canonicalize(target)
            .ok()
            .and_then(|u| Some((u.clone(), self.given_upper(&store, &u).ok()??)))
        {
            let changes = archive::upper_changes(&upper, &rec.lowers)?;
            return Ok((upper, changes));
        }
        let named = store.join(target);
        let base = [named.as_path(), target]
            .into_iter()
            .filter_map(|p| fs::canonicalize(p).ok())
            .find_map(|p| {
                store_made_base(&store, &p).or_else(|| store_made_base(&store, &p.join("diff")))
            })
            .ok_or_else(|| {
                Error::Usage(format!(
                    "{}: neither a writable image mount nor an upper the store knows",
                    target.display()
                ))
            })?;
        let rec: UpperRecord = read_json(&base.join(UPPER_RECORD))?.ok_or_else(|| {
            Error::Usage(format!(
                "{}: no record of what it was made over",
                base.display()
            ))
        })?;
        let upper = base.join("diff");
        let changes = archive::upper_changes(&upper, &rec.lowers)?;
        Ok((upper, changes))
    }

    /// The record of the given upper `upper` (canonical), if it was mounted through the store.
    fn given_upper(&self, store: &Path, upper: &Path) -> Result<Option<UpperRecord>> {
        let rec: Option<UpperRecord> = read_json(&given_record(store, upper))?;
        // Two paths with one hash prefix: the record names its upper.
        Ok(rec.filter(|r| r.upper.as_deref() == Some(upper)))
    }

    /// Remove store-made uppers and store work directories no live mount uses (call with
    /// the store locked: a mount holds the lock from making its upper to recording itself).
    /// Returns what was removed.
    pub(super) fn prune_uppers(&self) -> Result<Vec<PathBuf>> {
        let store = self.uppers_dir()?;
        let in_use: Vec<PathBuf> = self
            .mounts()?
            .into_iter()
            .filter_map(|m| m.upper)
            .flat_map(|u| {
                [
                    work_in_store(&store, &u),
                    store_made_base(&store, &u).unwrap_or(u),
                ]
            })
            .collect();
        let mut removed = Vec::new();
        for e in fs::read_dir(&store).ctx(|| format!("reading {}", store.display()))? {
            let p = e.ctx(|| format!("reading {}", store.display()))?.path();
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with(GIVEN_PREFIX) {
                // A given upper is the user's: only the record of one that is gone goes.
                let rec: Option<UpperRecord> = read_json(&p).ok().flatten();
                if rec.and_then(|r| r.upper).is_some_and(|u| !u.is_dir()) {
                    fs::remove_file(&p).ctx(|| format!("removing {}", p.display()))?;
                }
                continue;
            }
            let ours = name.starts_with(WORK_PREFIX) || p.join("diff").is_dir();
            if !ours || !p.is_dir() || in_use.contains(&p) {
                continue;
            }
            fs::remove_dir_all(&p).ctx(|| format!("removing {}", p.display()))?;
            removed.push(p);
        }
        removed.sort();
        Ok(removed)
    }
}

/// A short name for the user's upper `upper`: a hash of its path.
fn path_key(upper: &Path) -> String {
    let d = digest::of_bytes(upper.as_os_str().as_encoded_bytes());
    d.trim_start_matches("sha256:")[..16].to_string()
}

/// The store's work directory for the user's upper `upper`.
fn work_in_store(store: &Path, upper: &Path) -> PathBuf {
    store.join(format!("{WORK_PREFIX}{}", path_key(upper)))
}

/// The store's record of what the user's upper `upper` was last mounted over.
fn given_record(store: &Path, upper: &Path) -> PathBuf {
    store.join(format!("{GIVEN_PREFIX}{}.json", path_key(upper)))
}

/// `<store>/<name>` when `upper` is `<store>/<name>/diff`, a store-made upper.
fn store_made_base(store: &Path, upper: &Path) -> Option<PathBuf> {
    let base = upper.parent()?;
    let made = upper.file_name()? == "diff" && base.parent()? == store;
    let name = base.file_name()?.to_string_lossy();
    (made && !name.starts_with(WORK_PREFIX)).then(|| base.to_path_buf())
}
