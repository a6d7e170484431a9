//! Small files written so that a crash leaves the old or the new content, never a mix: the
//! layer records, the image store's records and the snapshotter's table.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, IoContext, Result};

/// Replace `path` with `body`: written to `.<name>.tmp` beside it, flushed, then renamed over
/// it. The directory entry itself is durable after [`sync_dir`] of the parent.
pub fn write_atomic(path: &Path, body: &[u8]) -> Result<()> {
    write_atomic_mode(path, body, 0o666)
}

/// [`write_atomic`] with the file created with `mode` (less the umask), e.g. 0600 for state
/// only root may read. A temporary file left by a crash is replaced, not reused, so it cannot
/// keep a wider mode.
pub fn write_atomic_mode(path: &Path, body: &[u8], mode: u32) -> Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .ctx(|| format!("writing {}", tmp.display()))?;
    f.write_all(body)
        .and_then(|_| f.sync_all())
        .ctx(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).ctx(|| format!("writing {}", path.display()))
}

/// [`write_atomic`] of `value` as pretty-printed JSON.
pub fn write_json_atomic(path: &Path, value: &impl Serialize) -> Result<()> {
    write_json_atomic_mode(path, value, 0o666)
}

/// [`write_atomic_mode`] of `value` as pretty-printed JSON.
pub fn write_json_atomic_mode(path: &Path, value: &impl Serialize, mode: u32) -> Result<()> {
    let body = serde_json::to_vec_pretty(value).map_err(|e| {
        Error::io(
            format!("encoding {}", path.display()),
            std::io::Error::other(e),
        )
    })?;
    write_atomic_mode(path, &body, mode)
}

/// Flush the directory `dir` itself: the names created, renamed or removed in it.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("rec.json");
        write_atomic(&p, b"old").unwrap();
        write_json_atomic(&p, &serde_json::json!({"k": 1})).unwrap();
        sync_dir(d.path()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"k": 1}));
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["rec.json"]);
    }
}
