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

pub mod api;
mod core;
mod meta;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use self::api::snapshots::snapshots_server::{Snapshots, SnapshotsServer};
use self::api::snapshots::*;
pub use self::core::{Core, Update, FUSE_MOUNT_TYPE};
pub use self::meta::Kind;
use crate::error::{Error, IoContext};

/// Default socket containerd's `[proxy_plugins.stratafs]` points at.
pub const DEFAULT_SOCKET: &str = "/run/stratafs/snapshotter.sock";
/// Default state directory.
pub const DEFAULT_ROOT: &str = "/var/lib/stratafs-snapshotter";

/// How many snapshots one message of a `List` stream carries.
const LIST_BATCH: usize = 100;

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

impl From<SnapshotError> for Status {
    fn from(e: SnapshotError) -> Status {
        let msg = e.to_string();
        match e {
            SnapshotError::NotFound(_) | SnapshotError::Store(Error::LayerNotFound(_)) => {
                Status::not_found(msg)
            }
            SnapshotError::AlreadyExists(_) | SnapshotError::Store(Error::LayerExists(_)) => {
                Status::already_exists(msg)
            }
            SnapshotError::FailedPrecondition(_)
            | SnapshotError::Store(Error::HasChildren { .. }) => Status::failed_precondition(msg),
            SnapshotError::InvalidArgument(_) => Status::invalid_argument(msg),
            SnapshotError::Store(_) | SnapshotError::Worker(_) => Status::internal(msg),
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
    ) -> Result<Response<T>, Status> {
        let core = self.core.clone();
        let out = tokio::task::spawn_blocking(move || f(&core))
            .await
            .map_err(|e| SnapshotError::Worker(e.to_string()))
            .and_then(|r| r);
        match out {
            Ok(v) => Ok(Response::new(v)),
            Err(err) => {
                tracing::debug!(what, %err, "snapshot call failed");
                Err(err.into())
            }
        }
    }
}

type ListStream = tokio_stream::Iter<std::vec::IntoIter<Result<ListSnapshotsResponse, Status>>>;

#[tonic::async_trait]
impl Snapshots for Service {
    async fn prepare(
        &self,
        req: Request<PrepareSnapshotRequest>,
    ) -> Result<Response<PrepareSnapshotResponse>, Status> {
        let r = req.into_inner();
        self.run("prepare", move |c| {
            let mounts = c.create(meta::Kind::Active, &r.key, &r.parent, r.labels)?;
            Ok(PrepareSnapshotResponse { mounts })
        })
        .await
    }

    async fn view(
        &self,
        req: Request<ViewSnapshotRequest>,
    ) -> Result<Response<ViewSnapshotResponse>, Status> {
        let r = req.into_inner();
        self.run("view", move |c| {
            let mounts = c.create(meta::Kind::View, &r.key, &r.parent, r.labels)?;
            Ok(ViewSnapshotResponse { mounts })
        })
        .await
    }

    async fn mounts(
        &self,
        req: Request<MountsRequest>,
    ) -> Result<Response<MountsResponse>, Status> {
        let key = req.into_inner().key;
        self.run("mounts", move |c| {
            Ok(MountsResponse {
                mounts: c.mounts(&key)?,
            })
        })
        .await
    }

    async fn commit(&self, req: Request<CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        self.run("commit", move |c| c.commit(&r.name, &r.key, r.labels))
            .await
    }

    async fn remove(&self, req: Request<RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let key = req.into_inner().key;
        self.run("remove", move |c| c.remove(&key)).await
    }

    async fn stat(
        &self,
        req: Request<StatSnapshotRequest>,
    ) -> Result<Response<StatSnapshotResponse>, Status> {
        let key = req.into_inner().key;
        self.run("stat", move |c| {
            Ok(StatSnapshotResponse {
                info: Some(c.stat(&key)?.into()),
            })
        })
        .await
    }

    async fn update(
        &self,
        req: Request<UpdateSnapshotRequest>,
    ) -> Result<Response<UpdateSnapshotResponse>, Status> {
        let r = req.into_inner();
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("update without a snapshot info"))?;
        let paths = r.update_mask.map(|m| m.paths);
        let new = Update {
            name: info.name,
            labels: info.labels,
        };
        self.run("update", move |c| {
            Ok(UpdateSnapshotResponse {
                info: Some(c.update(new, paths)?.into()),
            })
        })
        .await
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        req: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListStream>, Status> {
        // containerd filters in its own metadata layer above the proxy; the backend's list
        // (used by its garbage collector) is unfiltered, so filters are only logged here.
        let filters = req.into_inner().filters;
        if !filters.is_empty() {
            tracing::debug!(?filters, "list filters ignored: returning every snapshot");
        }
        let infos = self.run("list", |c| Ok(c.list())).await?.into_inner();
        let batches = infos.chunks(LIST_BATCH).map(|chunk| ListSnapshotsResponse {
            info: chunk.iter().cloned().map(Into::into).collect(),
        });
        Ok(Response::new(tokio_stream::iter(
            batches.map(Ok).collect::<Vec<_>>(),
        )))
    }

    async fn usage(&self, req: Request<UsageRequest>) -> Result<Response<UsageResponse>, Status> {
        let key = req.into_inner().key;
        self.run("usage", move |c| Ok(c.usage(&key)?.into())).await
    }

    async fn cleanup(&self, _req: Request<CleanupRequest>) -> Result<Response<()>, Status> {
        self.run("cleanup", |c| c.cleanup().map(drop)).await
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
        .add_service(SnapshotsServer::new(Service::new(core)))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    if let Err(e) = std::fs::remove_file(socket) {
        tracing::warn!(socket = %socket.display(), %e, "could not remove the socket");
    }
    result.map_err(|e| SnapshotError::Worker(format!("gRPC server: {e}")))
}

fn bind_socket(socket: &Path) -> Result<UnixListener, SnapshotError> {
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::socket::create_private_dir(dir)?;
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
    // Only root (containerd) may talk to the snapshotter: it hands out host paths.
    let listener = crate::socket::bind_private(socket)?;
    listener
        .set_nonblocking(true)
        .ctx(|| format!("listening on {}", socket.display()))?;
    Ok(UnixListener::from_std(listener).ctx(|| format!("listening on {}", socket.display()))?)
}
