//! Choosing a driver: registration by name, lookup by name (or plugin), and the automatic choice
//! of the contract ("Choosing a driver" in graphdriver.md), as Docker's `graphdriver.New` does it.
//!
//! Automatic choice, in order:
//! 1. Prior state: every registered driver except `vfs` whose `<root>/<name>` is a non-empty
//!    directory. Exactly one: use it, and fail loudly if it does not start (the user's images
//!    would otherwise silently disappear). Several: refuse and ask the user to clean up or choose.
//! 2. Priority order (lowest number first, ties in registration order): the first driver that
//!    starts wins; drivers failing with an "unavailable" kind
//!    ([`Error::is_driver_unavailable`]) are skipped; any other error stops the search.
//! 3. Nothing started: [`Error::NoSupportedBackend`].

use std::path::{Path, PathBuf};

use crate::driver::{Driver, DriverConfig};
use crate::error::{Error, Result};

/// Builds a driver from its configuration.
pub type Constructor = Box<dyn Fn(&DriverConfig) -> Result<Box<dyn Driver>> + Send + Sync>;

/// Looks a name up among out-of-process (plugin) drivers: `None` when there is no such plugin,
/// otherwise the plugin driver or the reason it cannot be used.
pub type PluginLookup =
    Box<dyn Fn(&str, &DriverConfig) -> Option<Result<Box<dyn Driver>>> + Send + Sync>;

/// Driver whose state never counts as "prior state" (it works everywhere, so finding its
/// directory says nothing about the user's choice).
const IGNORED_IN_SCAN: &str = "vfs";

/// Where Docker looks for graph driver plugin sockets.
pub const DOCKER_PLUGIN_DIR: &str = "/run/docker/plugins";

struct Entry {
    name: String,
    priority: u32,
    constructor: Constructor,
}

/// The drivers known by name.
#[derive(Default)]
pub struct Registry {
    entries: Vec<Entry>,
    plugins: Option<PluginLookup>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("drivers", &self.names())
            .field("plugin_lookup", &self.plugins.is_some())
            .finish()
    }
}

impl Registry {
    /// An empty registry without plugin lookup.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `constructor` under `name`; lower `priority` is tried first by automatic choice.
    pub fn register(
        &mut self,
        name: &str,
        priority: u32,
        constructor: impl Fn(&DriverConfig) -> Result<Box<dyn Driver>> + Send + Sync + 'static,
    ) -> Result<()> {
        if self.entries.iter().any(|e| e.name == name) {
            return Err(Error::DuplicateDriver(name.to_string()));
        }
        self.entries.push(Entry {
            name: name.to_string(),
            priority,
            constructor: Box::new(constructor),
        });
        // Stable: equal priorities keep registration order.
        self.entries.sort_by_key(|e| e.priority);
        Ok(())
    }

    /// Install the hook that finds plugin drivers for names not registered here.
    pub fn set_plugin_lookup(
        &mut self,
        lookup: impl Fn(&str, &DriverConfig) -> Option<Result<Box<dyn Driver>>> + Send + Sync + 'static,
    ) {
        self.plugins = Some(Box::new(lookup));
    }

    /// Registered names in priority order.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }

    /// The driver called `name`: a registered one, else a plugin of that name, else
    /// [`Error::UnknownDriver`]. A registered driver's own error is returned unchanged.
    pub fn get(&self, name: &str, cfg: &DriverConfig) -> Result<Box<dyn Driver>> {
        if let Some(e) = self.entries.iter().find(|e| e.name == name) {
            return (e.constructor)(cfg);
        }
        if let Some(found) = self.plugins.as_ref().and_then(|lookup| lookup(name, cfg)) {
            return found;
        }
        Err(Error::UnknownDriver(name.to_string()))
    }

    /// The driver called `name` if given (and non-empty), otherwise the automatic choice.
    pub fn new_driver(&self, name: Option<&str>, cfg: &DriverConfig) -> Result<Box<dyn Driver>> {
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            return self.get(name, cfg);
        }
        let prior = self.prior_drivers(&cfg.root);
        match prior.as_slice() {
            [] => {}
            [one] => {
                tracing::info!(driver = %one, root = %cfg.root.display(), "using prior storage driver");
                return self.get(one, cfg).map_err(|e| Error::PriorDriverFailed {
                    root: cfg.root.clone(),
                    name: one.clone(),
                    source: Box::new(e),
                });
            }
            _ => {
                return Err(Error::MultipleDriverState {
                    root: cfg.root.clone(),
                    drivers: prior,
                })
            }
        }
        for e in &self.entries {
            match (e.constructor)(cfg) {
                Ok(d) => {
                    tracing::info!(driver = %e.name, "chose storage driver");
                    return Ok(d);
                }
                Err(err) if err.is_driver_unavailable() => {
                    tracing::info!(driver = %e.name, %err, "storage driver unavailable, trying the next");
                }
                Err(err) => return Err(err),
            }
        }
        Err(Error::NoSupportedBackend)
    }

    /// Registered drivers (except `vfs`) with a non-empty `<root>/<name>` directory, in
    /// priority order.
    pub fn prior_drivers(&self, root: &Path) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| e.name != IGNORED_IN_SCAN && is_non_empty_dir(&root.join(&e.name)))
            .map(|e| e.name.clone())
            .collect()
    }
}

fn is_non_empty_dir(path: &Path) -> bool {
    match std::fs::read_dir(path) {
        Ok(mut rd) => rd.next().is_some(),
        Err(_) => false,
    }
}

/// A plugin lookup for Docker graph driver plugins: a socket `<dir>/NAME.sock` means a plugin
/// exists, but such drivers speak Docker's plugin protocol to dockerd and are not loaded here,
/// so the lookup reports [`Error::NotSupported`] saying so.
pub fn docker_plugin_lookup(
    dir: PathBuf,
) -> impl Fn(&str, &DriverConfig) -> Option<Result<Box<dyn Driver>>> + Send + Sync + 'static {
    move |name: &str, _cfg: &DriverConfig| {
        // A name that is not a single path component cannot name a socket in `dir`.
        crate::store::validate_id(name).ok()?;
        let sock = dir.join(format!("{name}.sock"));
        sock.symlink_metadata().ok()?;
        Some(Err(Error::NotSupported(format!(
            "{name} is a Docker graph driver plugin ({}); plugin drivers are used through \
             dockerd (--storage-driver {name}), not directly by stratafs",
            sock.display()
        ))))
    }
}

type BuiltinConstructor = fn(&DriverConfig) -> Result<Box<dyn Driver>>;

/// The registry of built-in drivers: `stratafs` first, `vfs` last, plugins found by their Docker
/// socket.
pub fn default_registry() -> Registry {
    let mut r = Registry::new();
    let builtins: [(&str, u32, BuiltinConstructor); 2] = [
        (super::strata::NAME, 10, |cfg| {
            Ok(Box::new(super::strata::StrataDriver::new(cfg)?))
        }),
        (super::vfs::NAME, 1000, |cfg| {
            Ok(Box::new(super::vfs::VfsDriver::new(cfg)?))
        }),
    ];
    for (name, priority, ctor) in builtins {
        if let Err(e) = r.register(name, priority, ctor) {
            // Only possible if two built-ins shared a name: a programming error worth a log.
            tracing::error!(%e, "registering built-in driver");
        }
    }
    r.set_plugin_lookup(docker_plugin_lookup(PathBuf::from(DOCKER_PLUGIN_DIR)));
    r
}

#[cfg(test)]
mod tests;
