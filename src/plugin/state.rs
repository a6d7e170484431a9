//! The plugin's state file: the last `Init` and the dockerd that sent it, so that a plugin
//! restarted under that same dockerd serves it at once (Docker does not call `Init` again),
//! and a file left by an earlier, unrelated dockerd is not resumed.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::proto::InitRequest;
use crate::error::{Error, Result};
use crate::socket;

/// A process, told apart from a later one that reuses its pid by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Peer {
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat`: clock ticks after boot.
    pub start: u64,
}

impl Peer {
    /// The process `pid` as it is now (None if it is gone or its start time is unreadable).
    pub fn of(pid: i32) -> Option<Peer> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces and parentheses: fields count from the last ')'.
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state), so field 22 is at index 19.
        let start = fields.get(19)?.parse().ok()?;
        let zombie = fields.first() == Some(&"Z");
        (!zombie).then_some(Peer { pid, start })
    }

    /// Whether this very process still runs.
    pub fn alive(&self) -> bool {
        Peer::of(self.pid) == Some(*self)
    }
}

/// What the state file holds: Docker's Init request and who sent it.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Saved {
    #[serde(flatten)]
    pub init: InitRequest,
    /// Absent in files of older versions and when the peer's pid was not visible (another pid
    /// namespace).
    #[serde(rename = "Dockerd", default, skip_serializing_if = "Option::is_none")]
    pub dockerd: Option<Peer>,
}

/// Why a saved Init is not resumed.
#[derive(Debug, thiserror::Error)]
pub enum Stale {
    #[error("its home {0} no longer exists")]
    HomeGone(PathBuf),
    #[error("the dockerd that sent it (pid {0}) is gone")]
    DockerdGone(i32),
}

impl Saved {
    pub fn load(path: &Path) -> io::Result<Option<Saved>> {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Written atomically, root-only, in a root-only directory it creates if needed.
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            socket::create_private_dir(dir)?;
        }
        let data = serde_json::to_vec(self)
            .map_err(|e| Error::io("encoding plugin state", io::Error::other(e)))?;
        socket::write_private(path, &data)
    }

    /// Whether this Init may be resumed: its home must still exist (resuming never creates
    /// one) and the dockerd that sent it, when known, must still run.
    pub fn check(&self) -> std::result::Result<(), Stale> {
        let home = PathBuf::from(&self.init.home);
        if !home.is_dir() {
            return Err(Stale::HomeGone(home));
        }
        match self.dockerd {
            Some(d) if !d.alive() => Err(Stale::DockerdGone(d.pid)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = Peer::of(std::process::id() as i32).expect("own stat");
        assert!(me.alive());
        let other = Peer {
            start: me.start + 1,
            ..me
        };
        assert!(!other.alive(), "a reused pid passed for the old process");
        assert!(Peer::of(-1).is_none());
    }

    #[test]
    fn a_saved_init_of_a_gone_home_or_dockerd_is_stale() {
        let t = tempfile::tempdir().unwrap();
        let me = Peer::of(std::process::id() as i32).unwrap();
        let mut s = Saved {
            init: InitRequest {
                home: t.path().join("stratafs").display().to_string(),
                ..Default::default()
            },
            dockerd: Some(me),
        };
        assert!(matches!(s.check(), Err(Stale::HomeGone(_))));
        std::fs::create_dir(t.path().join("stratafs")).unwrap();
        assert!(s.check().is_ok());
        s.dockerd = Some(Peer {
            start: me.start + 1,
            ..me
        });
        assert!(matches!(s.check(), Err(Stale::DockerdGone(_))));
        s.dockerd = None;
        assert!(s.check().is_ok(), "unknown sender: resumed (loudly)");
    }

    #[test]
    fn files_of_older_versions_load() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("init.json");
        std::fs::write(&p, br#"{"Home":"/x/stratafs","Opts":[]}"#).unwrap();
        let s = Saved::load(&p).unwrap().unwrap();
        assert_eq!(s.init.home, "/x/stratafs");
        assert!(s.dockerd.is_none());
        s.save(&p).unwrap();
        assert!(!std::fs::read_to_string(&p).unwrap().contains("Dockerd"));
    }
}
