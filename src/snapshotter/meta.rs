//! The snapshotter's metadata: containerd's snapshot keys and names mapped to store layer ids.
//!
//! containerd's keys contain `/` (`default/3/sha256:...`), so they never become paths: each
//! snapshot gets a numeric layer id from a counter that only grows (a removed key that comes back
//! gets a fresh directory, never an orphan's). The whole table is one JSON file, rewritten
//! atomically (temporary file, fsync, rename) after every change.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store;

const DB_FILE: &str = "snapshots.json";

/// containerd's snapshot kinds (Unknown is never stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    View,
    Active,
    Committed,
}

/// One snapshot as containerd sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The store layer holding this snapshot's own files.
    pub id: String,
    pub kind: Kind,
    /// The parent's key (always a committed snapshot's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default)]
    pub labels: HashMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
}

/// The table of all snapshots, keyed by containerd key (active/view) or name (committed).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Db {
    /// Next layer id to hand out.
    #[serde(default)]
    pub next_id: u64,
    #[serde(default)]
    pub snapshots: BTreeMap<String, SnapshotRecord>,
}

impl Db {
    /// Read the table under `root`; a missing file is an empty table.
    pub fn load(root: &Path) -> Result<Db> {
        let path = root.join(DB_FILE);
        match fs::read(&path) {
            Ok(raw) => serde_json::from_slice(&raw).map_err(|e| Error::CorruptLayer {
                id: "snapshotter metadata".into(),
                reason: format!("{}: {e}", path.display()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Db::default()),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Write the table atomically: a crash leaves either the old or the new file.
    pub fn save(&self, root: &Path) -> Result<()> {
        store::write_json_atomic_mode(&root.join(DB_FILE), self, crate::socket::PRIVATE_FILE)?;
        store::sync_dir(root)
    }

    /// A fresh layer id.
    pub fn allocate_id(&mut self) -> String {
        self.next_id += 1;
        self.next_id.to_string()
    }

    /// Keys of the snapshots whose parent is `key`.
    pub fn children(&self, key: &str) -> Vec<String> {
        self.snapshots
            .iter()
            .filter(|(_, r)| r.parent.as_deref() == Some(key))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The snapshot and its ancestors, `key` first.
    pub fn chain(&self, key: &str) -> Result<Vec<(&str, &SnapshotRecord)>> {
        let mut out: Vec<(&str, &SnapshotRecord)> = Vec::new();
        let mut next = Some(key);
        while let Some(k) = next {
            let Some((k, rec)) = self.snapshots.get_key_value(k) else {
                return Err(Error::CorruptLayer {
                    id: key.to_string(),
                    reason: format!("ancestor snapshot {k:?} is missing from the metadata"),
                });
            };
            if out.iter().any(|(seen, _)| *seen == k.as_str()) {
                return Err(Error::CorruptLayer {
                    id: key.to_string(),
                    reason: format!("parent chain loops at {k:?}"),
                });
            }
            out.push((k.as_str(), rec));
            next = rec.parent.as_deref();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, kind: Kind, parent: Option<&str>) -> SnapshotRecord {
        SnapshotRecord {
            id: id.into(),
            kind,
            parent: parent.map(str::to_string),
            labels: HashMap::new(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::default();
        let id = db.allocate_id();
        let mut r = rec(&id, Kind::Committed, None);
        r.labels.insert("a/b".into(), "c".into());
        db.snapshots.insert("ns/1/sha256:x".into(), r.clone());
        db.save(dir.path()).unwrap();
        let back = Db::load(dir.path()).unwrap();
        assert_eq!(back.next_id, 1);
        assert_eq!(back.snapshots.get("ns/1/sha256:x"), Some(&r));
        assert!(!dir.path().join(".snapshots.json.tmp").exists());
    }

    #[test]
    fn missing_file_is_empty_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Db::load(dir.path()).unwrap().snapshots.is_empty());
        fs::write(dir.path().join(DB_FILE), b"{not json").unwrap();
        assert!(matches!(
            Db::load(dir.path()),
            Err(Error::CorruptLayer { .. })
        ));
    }

    #[test]
    fn chain_walks_parents_and_detects_loops() {
        let mut db = Db::default();
        db.snapshots
            .insert("a".into(), rec("1", Kind::Committed, None));
        db.snapshots
            .insert("b".into(), rec("2", Kind::Committed, Some("a")));
        db.snapshots
            .insert("c".into(), rec("3", Kind::Active, Some("b")));
        let ids: Vec<&str> = db
            .chain("c")
            .unwrap()
            .iter()
            .map(|(_, r)| r.id.as_str())
            .collect();
        assert_eq!(ids, ["3", "2", "1"]);
        assert_eq!(db.children("a"), ["b"]);
        db.snapshots.get_mut("a").unwrap().parent = Some("c".into());
        assert!(db.chain("c").is_err());
    }
}
