//! The JSON bodies of Docker's graph driver plugin protocol (`graphdriver.md`), with Docker's
//! field names. Requests tolerate missing fields and `null`s: Docker omits empty values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::driver::{Change, ChangeKind, IdMap};

/// The media type Docker's plugin client speaks; used for our JSON replies.
pub const MEDIA_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// `/GraphDriver.Init`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct InitRequest {
    pub home: String,
    pub opts: Option<Vec<String>>,
    #[serde(rename = "UIDMaps")]
    pub uid_maps: Option<Vec<IdMap>>,
    #[serde(rename = "GIDMaps")]
    pub gid_maps: Option<Vec<IdMap>>,
}

/// Every other call: the fields a call does not use are simply absent.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct LayerRequest {
    #[serde(rename = "ID")]
    pub id: Option<String>,
    pub parent: Option<String>,
    pub mount_label: Option<String>,
    pub storage_opt: Option<BTreeMap<String, String>>,
}

impl LayerRequest {
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_default()
    }

    /// Docker sends "" (or nothing) for "no parent".
    pub fn parent(&self) -> Option<&str> {
        self.parent.as_deref().filter(|p| !p.is_empty())
    }

    pub fn mount_label(&self) -> &str {
        self.mount_label.as_deref().unwrap_or_default()
    }
}

/// One entry of `Changes`: Kind 0 Modify, 1 Add, 2 Delete.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ChangeJson {
    pub path: String,
    pub kind: u8,
}

impl From<&Change> for ChangeJson {
    fn from(c: &Change) -> Self {
        let kind = match c.kind {
            ChangeKind::Modify => 0,
            ChangeKind::Add => 1,
            ChangeKind::Delete => 2,
        };
        ChangeJson {
            path: c.path.clone(),
            kind,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CapabilitiesJson {
    pub reproduces_exact_diffs: bool,
}

/// A reply; only the fields a call answers with are set (as Docker's own proxy expects).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Reply {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub err: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub implements: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Vec<[String; 2]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<Vec<ChangeJson>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<CapabilitiesJson>,
}

impl Reply {
    pub fn error(err: impl std::fmt::Display) -> Self {
        Reply {
            err: err.to_string(),
            ..Default::default()
        }
    }
}
