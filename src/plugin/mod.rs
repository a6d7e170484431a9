//! Docker graph driver plugin server: Docker's plugin protocol (HTTP POSTs with JSON bodies on a
//! unix socket, `graphdriver.md`) over any [`Driver`].
//!
//! `Init` constructs the driver through a [`DriverFactory`] and releases what an earlier run of
//! the plugin left that is dead (mounts whose server died), keeping live mounts of running
//! containers. `Diff` streams the tar as the
//! response body and `ApplyDiff` reads the request body as a stream ([`bridge`]). SIGTERM and
//! SIGINT end [`run`], running `cleanup` unless the dockerd that sent `Init` still runs (its
//! containers' mounts then stay for the next plugin process).

pub mod bridge;
pub mod proto;
pub(crate) mod server;
mod state;
#[cfg(test)]
mod tests;

use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};

pub use server::{Body, Server};

use crate::driver::{default_registry, Driver, DriverConfig, IdMappings};
use crate::error::{Error, IoContext, Result};

/// Where Docker looks for a plugin named `stratafs`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/stratafs.sock";

/// What `/GraphDriver.Init` hands the driver.
#[derive(Debug, Clone, Default)]
pub struct InitParams {
    /// Docker's `Home`: `<data-root>/<plugin name>`.
    pub home: PathBuf,
    /// Docker's `--storage-opt` values.
    pub options: Vec<String>,
    pub id_mappings: IdMappings,
}

/// Makes the driver when Docker calls `Init`.
pub type DriverFactory = Arc<dyn Fn(&InitParams) -> Result<Arc<dyn Driver>> + Send + Sync>;

/// The driver configuration for `Init`: drivers keep their state in `<root>/<name>`, and Docker's
/// `Home` already ends in the plugin's name, so the store lives at `Home` itself when the names
/// agree and in `Home/<name>` otherwise (a `vfs` driver behind a plugin called `stratafs`).
pub fn driver_config(params: &InitParams, driver_name: &str) -> Result<DriverConfig> {
    if !params.home.is_absolute() {
        return Err(Error::InvalidMountOption {
            option: format!("Home={}", params.home.display()),
            reason: "Docker must pass an absolute home directory".into(),
        });
    }
    let root = match (params.home.file_name(), params.home.parent()) {
        (Some(name), Some(parent)) if name == driver_name => parent.to_path_buf(),
        _ => params.home.clone(),
    };
    Ok(DriverConfig {
        root,
        options: params.options.clone(),
        id_mappings: params.id_mappings.clone(),
    })
}

/// The factory for a built-in driver chosen by name (`stratafs` or `vfs`), constructed through
/// the driver registry when Docker calls `Init`.
pub fn factory_for(name: &str) -> Result<DriverFactory> {
    if !default_registry().names().contains(&name) {
        return Err(Error::UnknownDriver(name.to_string()));
    }
    let name = name.to_string();
    Ok(Arc::new(move |p: &InitParams| {
        let cfg = driver_config(p, &name)?;
        Ok(Arc::from(default_registry().get(&name, &cfg)?))
    }))
}

/// Bind the plugin socket (mode 0600: whoever talks to it commands a root storage driver):
/// create its directory (0700) and replace a stale socket file. A socket that still answers
/// belongs to a running plugin and is left alone.
pub fn bind(socket: &Path) -> Result<UnixListener> {
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::socket::create_private_dir(dir)?;
    }
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Err(Error::io(
                    format!("binding {}", socket.display()),
                    std::io::Error::new(
                        ErrorKind::AddrInUse,
                        "another plugin server is listening there",
                    ),
                ));
            }
            tracing::info!(socket = %socket.display(), "removing stale socket");
            std::fs::remove_file(socket).ctx(|| format!("removing {}", socket.display()))?;
        }
        Ok(_) => {
            return Err(Error::io(
                format!("binding {}", socket.display()),
                std::io::Error::new(ErrorKind::AlreadyExists, "a non-socket file is in the way"),
            ))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("inspecting {}", socket.display()), e)),
    }
    let listener = crate::socket::bind_private(socket)?;
    listener
        .set_nonblocking(true)
        .ctx(|| format!("binding {}", socket.display()))?;
    UnixListener::from_std(listener).ctx(|| format!("binding {}", socket.display()))
}

/// Where the last Init is kept by default (outside Docker's plugin directory, which Docker scans).
pub const DEFAULT_STATE_FILE: &str = "/run/stratafs/plugin-init.json";

/// Serve the plugin protocol on `socket` until SIGTERM or SIGINT, then clean up the driver
/// (unless its dockerd still runs) and remove the socket. With a `state_file`, a restarted
/// plugin resumes the last `Init` at once.
pub fn run(
    socket: &Path,
    state_file: Option<PathBuf>,
    driver_name: &str,
    factory: DriverFactory,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .ctx(|| "starting the async runtime")?;
    runtime.block_on(async {
        let listener = bind(socket)?;
        let mut term = signal(SignalKind::terminate()).ctx(|| "installing a SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).ctx(|| "installing a SIGINT handler")?;
        tracing::info!(
            socket = %socket.display(),
            driver = driver_name,
            state = %state_file.as_deref().map_or("none".into(), |p| p.display().to_string()),
            "stratafs plugin listening"
        );
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = int.recv() => tracing::info!("SIGINT"),
            }
        };
        let server = Server::with_state_file(factory, state_file);
        server.resume().await;
        let result = server.serve(listener, shutdown).await;
        if let Err(e) = std::fs::remove_file(socket) {
            tracing::warn!(socket = %socket.display(), error = %e, "removing the socket");
        }
        result
    })
}
