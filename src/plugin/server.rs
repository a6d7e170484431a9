//! Request routing and handlers. Each driver call runs in `spawn_blocking` so that slow calls
//! (mounts, large archives) never stall other requests.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::channel::Channel;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use tokio::net::UnixListener;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::bridge::{BodyReader, ChannelWriter};
use super::proto::{CapabilitiesJson, ChangeJson, InitRequest, LayerRequest, Reply, MEDIA_TYPE};
use super::state::{Peer, Saved, Stale};
use super::{DriverFactory, InitParams};
use crate::driver::{CreateOpts, Driver, IdMappings};
use crate::error::{Error, Result};

/// Response bodies: small JSON documents or a streamed tar.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Largest JSON request accepted (requests are a few hundred bytes).
const MAX_JSON: usize = 1 << 20;
/// `Diff` chunks buffered between the driver thread and the socket.
const DIFF_QUEUE: usize = 4;

/// The plugin server: the driver it was initialised with, and how to make one.
pub struct Server {
    factory: DriverFactory,
    driver: RwLock<Option<Arc<dyn Driver>>>,
    /// The home of `driver`.
    home: RwLock<Option<PathBuf>>,
    /// The dockerd that sent the Init of `driver`, when known.
    dockerd: RwLock<Option<Peer>>,
    /// Where the last successful `Init` request is kept, so that a restarted plugin can serve a
    /// dockerd that is still running (Docker does not call `Init` again on a known plugin).
    state_file: Option<PathBuf>,
}

impl Server {
    pub fn new(factory: DriverFactory) -> Arc<Self> {
        Self::with_state_file(factory, None)
    }

    pub fn with_state_file(factory: DriverFactory, state_file: Option<PathBuf>) -> Arc<Self> {
        Arc::new(Server {
            factory,
            driver: RwLock::new(None),
            home: RwLock::new(None),
            dockerd: RwLock::new(None),
            state_file,
        })
    }

    /// Initialise from the state file of an earlier run, if it is still current: its home
    /// exists and the dockerd that sent it still runs (that dockerd will not call `Init`
    /// again). Mounts whose server died are released; live ones (running containers) are
    /// kept. Failures are logged; Docker's next `Init` wins.
    pub async fn resume(&self) {
        let Some(path) = self.state_file.clone() else {
            return;
        };
        let saved = match Saved::load(&path) {
            Ok(Some(saved)) => saved,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable plugin state");
                return;
            }
        };
        if let Err(why) = saved.check() {
            // A dockerd that is gone is the usual case after both were stopped; a home that
            // is gone is a file of some earlier, unrelated dockerd.
            match why {
                Stale::DockerdGone(_) => tracing::info!(
                    path = %path.display(),
                    home = %saved.init.home,
                    "not resuming the saved Init: {why}; waiting for Docker's Init"
                ),
                Stale::HomeGone(_) => tracing::warn!(
                    path = %path.display(),
                    home = %saved.init.home,
                    "not resuming the saved Init: {why}; waiting for Docker's Init"
                ),
            }
            return;
        }
        match saved.dockerd {
            Some(d) => {
                tracing::info!(home = %saved.init.home, dockerd = d.pid, "resuming the Init of the running dockerd")
            }
            None => tracing::warn!(
                home = %saved.init.home,
                path = %path.display(),
                "resuming a saved Init whose dockerd is unknown (an older state file, or another pid namespace)"
            ),
        }
        if let Err(e) = self.init_driver(saved.init, saved.dockerd).await {
            tracing::warn!(error = %e, "resuming the previous Init failed");
        }
    }

    /// Keep the Init request and its sender for [`Server::resume`].
    fn save_state(&self, init: InitRequest, dockerd: Option<Peer>) -> Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        Saved { init, dockerd }.save(path)
    }

    /// The driver `Init` made, if any.
    pub fn driver(&self) -> Option<Arc<dyn Driver>> {
        self.driver.read().clone()
    }

    /// Serve connections from `listener` until `shutdown` completes, then run the driver's
    /// `cleanup` (unmount everything) unless the dockerd that sent Init still runs.
    /// Connections are served concurrently.
    pub async fn serve(
        self: Arc<Self>,
        listener: UnixListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (stream, _) = match accepted {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "accepting a plugin connection");
                            continue;
                        }
                    };
                    let server = self.clone();
                    // Who connected: kept with an Init, so that a restarted plugin knows
                    // whether that dockerd still runs.
                    let peer = stream
                        .peer_cred()
                        .ok()
                        .and_then(|c| c.pid())
                        .and_then(Peer::of);
                    tokio::spawn(async move {
                        let service = service_fn(move |req| server.clone().handle(req, peer));
                        if let Err(e) = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                        {
                            tracing::debug!(error = %e, "plugin connection ended");
                        }
                    });
                }
            }
        }
        // The mounts' servers are processes of their own. While the dockerd that sent Init
        // runs, its containers' mounts stay for the next plugin process to adopt (a restart
        // or an upgrade of the plugin); dockerd's own `Cleanup` at its shutdown unmounts them.
        if let Some(d) = *self.dockerd.read() {
            if d.alive() {
                tracing::info!(
                    dockerd = d.pid,
                    "shutting down: dockerd still runs, its mounts stay for the next plugin"
                );
                return Ok(());
            }
        }
        tracing::info!("shutting down: cleaning up the driver");
        self.cleanup().await
    }

    /// Run the current driver's `cleanup`, if one was initialised.
    pub async fn cleanup(&self) -> Result<()> {
        let Some(driver) = self.driver() else {
            return Ok(());
        };
        blocking(move || driver.cleanup()).await
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Option<Peer>,
    ) -> std::result::Result<Response<Body>, Infallible> {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        tracing::debug!(%path, %query, "plugin call");
        let body = req.into_body();
        let response = match path.as_str() {
            "/Plugin.Activate" => json_ok(Reply {
                implements: Some(vec!["GraphDriver".into()]),
                ..Default::default()
            }),
            "/GraphDriver.Init" => match read_json::<InitRequest>(body).await {
                Ok(req) => self.init(req, peer).await,
                Err(resp) => resp,
            },
            "/GraphDriver.ApplyDiff" => self.apply_diff(&query, body).await,
            other => match other.strip_prefix("/GraphDriver.") {
                Some(method) => match read_json::<LayerRequest>(body).await {
                    Ok(req) => self.call(method, req).await,
                    Err(resp) => resp,
                },
                None => json_reply(
                    StatusCode::NOT_FOUND,
                    Reply::error(format!("no such plugin endpoint {other}")),
                ),
            },
        };
        Ok(response)
    }

    async fn init(&self, req: InitRequest, peer: Option<Peer>) -> Response<Body> {
        match self.init_driver(req, peer).await {
            Ok(()) => json_ok(Reply::default()),
            Err(e) => {
                tracing::error!(error = %e, "init failed");
                json_ok(Reply::error(e))
            }
        }
    }

    /// Construct the driver for `req`, clean up stale mounts, and remember the request.
    pub(super) async fn init_driver(&self, req: InitRequest, dockerd: Option<Peer>) -> Result<()> {
        let id_mappings = IdMappings::new(
            req.uid_maps.clone().unwrap_or_default(),
            req.gid_maps.clone().unwrap_or_default(),
        )?;
        let params = InitParams {
            home: req.home.clone().into(),
            options: req.opts.clone().unwrap_or_default(),
            id_mappings,
        };
        // A second Init (dockerd restarted while we kept running) of another home: release
        // what the previous driver holds. For the same home the new driver takes its mounts
        // over below; the old one is not used after a failed Init either.
        let previous = self.driver.write().take();
        let same_home = self.home.read().as_deref() == Some(params.home.as_path());
        if let Some(old) = previous.filter(|_| !same_home) {
            if let Err(e) = blocking(move || old.cleanup()).await {
                tracing::warn!(error = %e, "cleanup of the previous driver");
            }
        }
        let factory = self.factory.clone();
        let home = params.home.clone();
        let made = blocking(move || {
            let driver = factory(&params)?;
            // Mounts of an earlier run of the plugin whose server died are stale; the live
            // ones serve running containers, whose `put` comes later.
            driver.release_stale()?;
            tracing::info!(
                home = %params.home.display(),
                driver = driver.name(),
                dockerd = dockerd.map(|d| d.pid),
                "initialised"
            );
            Ok(driver)
        })
        .await;
        let driver = made?;
        *self.driver.write() = Some(driver);
        *self.home.write() = Some(home);
        *self.dockerd.write() = dockerd;
        if let Err(e) = self.save_state(req, dockerd) {
            tracing::warn!(error = %e, "saving the Init request");
        }
        Ok(())
    }

    async fn call(&self, method: &str, req: LayerRequest) -> Response<Body> {
        let Some(driver) = self.driver() else {
            return json_ok(Reply::error(Error::NotInitialized));
        };
        if method == "Diff" {
            return diff(driver, req).await;
        }
        let method = method.to_string();
        let result = blocking(move || dispatch(driver.as_ref(), &method, &req)).await;
        match result {
            Ok(Some(reply)) => json_ok(reply),
            Ok(None) => json_reply(
                StatusCode::NOT_FOUND,
                Reply::error("no such graph driver endpoint"),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "driver call failed");
                json_ok(Reply::error(e))
            }
        }
    }

    async fn apply_diff(&self, query: &str, body: Incoming) -> Response<Body> {
        let Some(driver) = self.driver() else {
            return json_ok(Reply::error(Error::NotInitialized));
        };
        let (id, parent) = apply_diff_query(query);
        let mut reader = BodyReader::new(body, Handle::current());
        let result = blocking(move || {
            let parent = (!parent.is_empty()).then_some(parent.as_str());
            let r = driver.apply_diff(&id, parent, &mut reader);
            reader.drain();
            r
        })
        .await;
        match result {
            Ok(size) => json_ok(Reply {
                size: Some(size),
                ..Default::default()
            }),
            Err(e) => {
                tracing::warn!(error = %e, "apply_diff failed");
                json_ok(Reply::error(e))
            }
        }
    }
}

/// `ApplyDiff`'s layer and parent from its query string (`id=...&parent=...`).
pub(crate) fn apply_diff_query(query: &str) -> (String, String) {
    let mut id = String::new();
    let mut parent = String::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "id" => id = v.into_owned(),
            "parent" => parent = v.into_owned(),
            _ => {}
        }
    }
    (id, parent)
}

/// The JSON calls. `None` for an unknown method.
pub(crate) fn dispatch(
    driver: &dyn Driver,
    method: &str,
    req: &LayerRequest,
) -> Result<Option<Reply>> {
    let id = req.id();
    let parent = req.parent();
    let reply = match method {
        "Create" | "CreateReadWrite" => {
            let opts = CreateOpts {
                mount_label: req.mount_label().to_string(),
                storage_opt: req.storage_opt.clone().unwrap_or_default(),
            };
            if method == "Create" {
                driver.create(id, parent, &opts)?;
            } else {
                driver.create_read_write(id, parent, &opts)?;
            }
            Reply::default()
        }
        "Remove" => {
            driver.remove(id)?;
            Reply::default()
        }
        "Get" => Reply {
            dir: Some(driver.get(id, req.mount_label())?.display().to_string()),
            ..Default::default()
        },
        "Put" => {
            driver.put(id)?;
            Reply::default()
        }
        "Exists" => Reply {
            exists: Some(driver.exists(id)),
            ..Default::default()
        },
        "Status" => Reply {
            status: Some(driver.status().into_iter().map(|(k, v)| [k, v]).collect()),
            ..Default::default()
        },
        "GetMetadata" => Reply {
            metadata: Some(driver.get_metadata(id)?),
            ..Default::default()
        },
        "Cleanup" => {
            driver.cleanup()?;
            Reply::default()
        }
        "Changes" => Reply {
            changes: Some(
                driver
                    .changes(id, parent)?
                    .iter()
                    .map(ChangeJson::from)
                    .collect(),
            ),
            ..Default::default()
        },
        "DiffSize" => Reply {
            size: Some(driver.diff_size(id, parent)?),
            ..Default::default()
        },
        "Capabilities" => Reply {
            capabilities: Some(CapabilitiesJson {
                reproduces_exact_diffs: driver.capabilities().reproduces_exact_diffs,
            }),
            ..Default::default()
        },
        _ => return Ok(None),
    };
    Ok(Some(reply))
}

/// `Diff`: the driver writes the tar on a blocking thread into a bounded channel that is the
/// response body.
async fn diff(driver: Arc<dyn Driver>, req: LayerRequest) -> Response<Body> {
    let (sender, body) = Channel::<Bytes, io::Error>::new(DIFF_QUEUE);
    let (started_tx, started_rx) = oneshot::channel();
    let handle = Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter::new(sender, handle, started_tx);
        match driver.diff(req.id(), req.parent(), &mut writer) {
            Ok(()) => writer.finish(),
            Err(e) => {
                tracing::warn!(error = %e, id = req.id(), "diff failed");
                writer.fail(e.to_string());
            }
        }
    });
    match started_rx.await {
        Ok(Ok(())) => Response::builder()
            .header(CONTENT_TYPE, "application/x-tar")
            .body(body.boxed_unsync())
            .unwrap_or_else(internal_error),
        Ok(Err(e)) => json_reply(StatusCode::INTERNAL_SERVER_ERROR, Reply::error(e)),
        Err(_) => json_reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            Reply::error("diff ended without an answer (driver panicked?)"),
        ),
    }
}

/// Run a blocking driver call off the async workers; a panic becomes an error, not a crash.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::io("driver call", io::Error::other(e.to_string())))?
}

/// Parse a JSON request body; an empty body means "all fields empty" (Docker sends no body for
/// `Plugin.Activate` and some parameterless calls).
async fn read_json<T: DeserializeOwned + Default>(
    body: Incoming,
) -> std::result::Result<T, Response<Body>> {
    let bytes = match Limited::new(body, MAX_JSON).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return Err(json_reply(
                StatusCode::BAD_REQUEST,
                Reply::error(format!("reading request body: {e}")),
            ))
        }
    };
    parse_body(&bytes).map_err(|e| json_reply(StatusCode::BAD_REQUEST, Reply::error(e)))
}

/// A request body as JSON; an empty (or blank) body is the default request.
pub(crate) fn parse_body<T: DeserializeOwned + Default>(
    bytes: &[u8],
) -> std::result::Result<T, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| format!("parsing request body: {e}"))
}

fn json_ok(reply: Reply) -> Response<Body> {
    json_reply(StatusCode::OK, reply)
}

fn json_reply(status: StatusCode, reply: Reply) -> Response<Body> {
    let body = match serde_json::to_vec(&reply) {
        Ok(b) => b,
        Err(e) => return internal_error(e),
    };
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, MEDIA_TYPE)
        .body(full(body))
        .unwrap_or_else(internal_error)
}

fn internal_error(e: impl std::fmt::Display) -> Response<Body> {
    tracing::error!(error = %e, "building a response");
    let mut r = Response::new(full(Vec::new()));
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

fn full(data: Vec<u8>) -> Body {
    Full::new(Bytes::from(data))
        .map_err(|never| match never {})
        .boxed_unsync()
}
