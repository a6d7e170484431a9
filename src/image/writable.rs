//! Writable image mounts: an upper directory over an image's layers (lazy tar indexes or
//! unpacked layers), so a person can change files and then list or export the changes.
//!
//! ```text
//! <root>/images/uppers/<name>/diff   a fresh upper directory the store made (`<name>`: time
//!                              work     and process id), and the work directory beside it
//! <root>/images/uppers/work-<hash>   the work directory of an upper given with --upper, when it
//!                                     is on the store's filesystem; else `.<name>.stratafs-work`
//!                                     beside that upper (a work directory must share its
//!                                     upper's filesystem)
//! ```

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::archive::{self, Change};
use crate::error::{Error, IoContext, Result};

use super::{digest, ImageStore, MountRecord};

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
        Ok(d)
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
            let d = digest::of_bytes(upper.as_os_str().as_encoded_bytes());
            let hex = d.trim_start_matches("sha256:");
            store.join(format!("work-{}", &hex[..16]))
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
}
