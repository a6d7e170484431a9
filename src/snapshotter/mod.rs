//! A containerd proxy snapshotter: the `containerd.services.snapshots.v1.Snapshots` gRPC service
//! on a unix socket, backed by a stratafs layer store.
//!
//! ```text
//! <root>/
//!   snapshotter.lock      flock held by the running server (one server per root)
//!   snapshots.json        containerd key/name -> {layer id, kind, parent, labels, times}
//!   layers/<id>/diff      a snapshot's own files (the store's layout)
//! ```
//!
//! The snapshotter never mounts anything itself: it returns mounts that containerd performs (a
//! bind mount for a snapshot without parents, else `fuse3.stratafs`, which `mount.fuse3` turns
//! into `stratafs overlay TARGET -o lowerdir=...`). The FUSE servers therefore belong to
//! containerd's mounts, and restarting the snapshotter leaves running containers alone.

mod core;
mod meta;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::{self, transport::Server};
use containerd_snapshots::{Info, Usage};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

pub use self::core::{Core, FUSE_MOUNT_TYPE};
use crate::error::{Error, IoContext};

/// Default socket containerd's `[proxy_plugins.stratafs]` points at.
pub const DEFAULT_SOCKET: &str = "/run/stratafs/snapshotter.sock";
/// Default state directory.
pub const DEFAULT_ROOT: &str = "/var/lib/stratafs-snapshotter";

/// What a snapshot call can fail with; each kind maps to the gRPC code containerd expects
/// (containerd turns the codes back into its `errdefs` kinds, which its callers match on).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {0:?} does not exist")]
    NotFound(String),
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Store(#[from] Error),
    #[error("snapshotter worker failed: {0}")]
    Worker(String),
}

impl From<SnapshotError> for tonic::Status {
    fn from(e: SnapshotError) -> tonic::Status {
        let msg = e.to_string();
        match e {
            SnapshotError::NotFound(_) | SnapshotError::Store(Error::LayerNotFound(_)) => {
                tonic::Status::not_found(msg)
            }
            SnapshotError::AlreadyExists(_) | SnapshotError::Store(Error::LayerExists(_)) => {
                tonic::Status::already_exists(msg)
            }
            SnapshotError::FailedPrecondition(_)
            | SnapshotError::Store(Error::HasChildren { .. }) => {
                tonic::Status::failed_precondition(msg)
            }
            SnapshotError::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            SnapshotError::Store(_) | SnapshotError::Worker(_) => tonic::Status::internal(msg),
        }
    }
}

/// The gRPC face of [`Core`]: each call runs on a blocking thread (they touch the disk).
pub struct Service {
    core: Arc<Core>,
}

impl Service {
    pub fn new(core: Core) -> Service {
        Service {
            core: Arc::new(core),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Core) -> Result<T, SnapshotError> + Send + 'static,
    ) -> Result<T, SnapshotError> {
        let core = self.core.clone();
        let out = tokio::task::spawn_blocking(move || f(&core))
            .await
            .map_err(|e| SnapshotError::Worker(e.to_string()))?;
        if let Err(err) = &out {
            tracing::debug!(what, %err, "snapshot call failed");
        }
        out
    }
}

type InfoStream = tokio_stream::Iter<std::vec::IntoIter<Result<Info, SnapshotError>>>;

#[tonic::async_trait]
impl containerd_snapshots::Snapshotter for Service {
    type Error = SnapshotError;

    async fn stat(&self, key: String) -> Result<Info, SnapshotError> {
        self.run("stat", move |c| c.stat(&key)).await
    }

    async fn update(
        &self,
        info: Info,
        fieldpaths: Option<Vec<String>>,
    ) -> Result<Info, SnapshotError> {
        self.run("update", move |c| c.update(info, fieldpaths))
            .await
    }

    async fn usage(&self, key: String) -> Result<Usage, SnapshotError> {
        self.run("usage", move |c| c.usage(&key)).await
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, SnapshotError> {
        self.run("mounts", move |c| c.mounts(&key)).await
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.run("prepare", move |c| {
            c.create(meta::Kind::Active, &key, &parent, labels)
        })
        .await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.run("view", move |c| {
            c.create(meta::Kind::View, &key, &parent, labels)
        })
        .await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), SnapshotError> {
        self.run("commit", move |c| c.commit(&name, &key, labels))
            .await
    }

    async fn remove(&self, key: String) -> Result<(), SnapshotError> {
        self.run("remove", move |c| c.remove(&key)).await
    }

    async fn clear(&self) -> Result<(), SnapshotError> {
        self.run("cleanup", |c| c.cleanup().map(drop)).await
    }

    type InfoStream = InfoStream;

    async fn list(
        &self,
        _snapshotter: String,
        filters: Vec<String>,
    ) -> Result<InfoStream, SnapshotError> {
        // containerd filters in its own metadata layer above the proxy; the backend's list
        // (used by its garbage collector) is unfiltered, so filters are only logged here.
        if !filters.is_empty() {
            tracing::debug!(?filters, "list filters ignored: returning every snapshot");
        }
        let infos = self.run("list", |c| Ok(c.list())).await?;
        Ok(tokio_stream::iter(
            infos.into_iter().map(Ok).collect::<Vec<_>>(),
        ))
    }
}

/// Serve the snapshots service for `root` on the unix socket `socket` until `shutdown`
/// completes, then remove the socket. Refuses a socket another server still answers on.
pub async fn serve(
    socket: &Path,
    root: &Path,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SnapshotError> {
    let core = Core::open(root)?;
    let listener = bind_socket(socket)?;
    tracing::info!(socket = %socket.display(), root = %root.display(), "snapshotter listening");
    let result = Server::builder()
        .add_service(containerd_snapshots::server(Arc::new(Service::new(core))))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    if let Err(e) = std::fs::remove_file(socket) {
        tracing::warn!(socket = %socket.display(), %e, "could not remove the socket");
    }
    result.map_err(|e| SnapshotError::Worker(format!("gRPC server: {e}")))
}

fn bind_socket(socket: &Path) -> Result<UnixListener, SnapshotError> {
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    }
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(SnapshotError::FailedPrecondition(format!(
                "{} is in use by another server",
                socket.display()
            )));
        }
        // Left by a server that died without cleaning up.
        std::fs::remove_file(socket).ctx(|| format!("removing stale {}", socket.display()))?;
    }
    let listener =
        UnixListener::bind(socket).ctx(|| format!("listening on {}", socket.display()))?;
    set_socket_mode(socket)?;
    Ok(listener)
}

/// Only root (containerd) may talk to the snapshotter: it hands out host paths.
fn set_socket_mode(socket: &Path) -> Result<(), SnapshotError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .ctx(|| format!("setting mode of {}", socket.display()))?;
    Ok(())
}
