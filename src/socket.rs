//! Root-only files of the servers: their unix sockets (mode 0600) and state (0600 files in
//! 0700 directories). Whoever can connect to the plugin or snapshotter socket can make the
//! server mount, read and write any layer as root.

use std::fs::DirBuilder;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// Mode of the servers' sockets and state files.
pub const PRIVATE_FILE: u32 = 0o600;
/// Mode of the directories stratafs creates for them.
pub const PRIVATE_DIR: u32 = 0o700;

/// Create `dir` and its missing parents with mode 0700. Existing directories are left as
/// they are (`/run/docker/plugins` belongs to Docker).
pub fn create_private_dir(dir: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
        .ctx(|| format!("creating {}", dir.display()))
}

/// Bind a unix socket at `path` that only its owner may connect to. The socket is made in a
/// fresh 0700 directory beside `path`, made 0600 and only then renamed into place, so there
/// is no moment at which another user could connect (a connection made before a `chmod`
/// would outlive it). The caller handles what was at `path` before.
pub fn bind_private(path: &Path) -> Result<UnixListener> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        Error::io(
            format!("binding {}", path.display()),
            std::io::Error::new(ErrorKind::InvalidInput, "no file name"),
        )
    })?;
    let staging = dir.join(format!(
        ".{}.{}.bind",
        name.to_string_lossy(),
        std::process::id()
    ));
    // A directory left by a killed process of the same pid (after a reboot) is stale.
    let _ = std::fs::remove_dir_all(&staging);
    DirBuilder::new()
        .mode(PRIVATE_DIR)
        .create(&staging)
        .ctx(|| format!("creating {}", staging.display()))?;
    let inside = staging.join(name);
    let result = (|| {
        let listener = UnixListener::bind(&inside).ctx(|| format!("binding {}", path.display()))?;
        std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(PRIVATE_FILE))
            .ctx(|| format!("setting the mode of {}", inside.display()))?;
        std::fs::rename(&inside, path)
            .ctx(|| format!("moving the socket to {}", path.display()))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&inside);
    let _ = std::fs::remove_dir(&staging);
    result
}

/// Write `data` to `path` atomically (a temporary file renamed over it) with mode 0600.
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    crate::store::write_atomic_mode(path, data, PRIVATE_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn sockets_dirs_and_files_are_private() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("a/b");
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&t.path().join("a")), PRIVATE_DIR);
        assert_eq!(mode(&dir), PRIVATE_DIR);
        let sock = dir.join("s.sock");
        let _l = bind_private(&sock).unwrap();
        assert_eq!(mode(&sock), PRIVATE_FILE);
        std::os::unix::net::UnixStream::connect(&sock).unwrap();
        let f = dir.join("state.json");
        write_private(&f, b"{}").unwrap();
        assert_eq!(mode(&f), PRIVATE_FILE);
        assert_eq!(std::fs::read(&f).unwrap(), b"{}");
        // Nothing but the socket and the file is left beside them.
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["s.sock", "state.json"]);
    }
}
