//! The crate's typed errors. Every fallible public function returns [`Result`].

use std::io;
use std::path::PathBuf;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in stratafs, as distinct, matchable kinds.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The driver cannot work on this system at all (the graph driver contract's
    /// `ErrNotSupported`).
    #[error("driver not supported: {0}")]
    NotSupported(String),
    /// Something the driver needs is missing (`ErrPrerequisites`).
    #[error("prerequisites for driver not satisfied: {0}")]
    PrerequisitesNotSatisfied(String),
    /// The filesystem under the store cannot hold this driver's layers
    /// (`ErrIncompatibleFS`).
    #[error("backing filesystem is unsupported for this graph driver: {0}")]
    BackingFsUnsupported(String),

    /// An id that is not a safe single path component.
    #[error("invalid layer id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error("layer {0} already exists")]
    LayerExists(String),
    #[error("layer {0} does not exist")]
    LayerNotFound(String),
    #[error("parent layer {parent} of layer {id} does not exist")]
    ParentNotFound { id: String, parent: String },
    #[error("layer {id} still has children: {}", children.join(", "))]
    HasChildren { id: String, children: Vec<String> },
    #[error("layer {id} is mounted at {}", path.display())]
    Mounted { id: String, path: PathBuf },
    #[error("layer {id} is corrupt: {reason}")]
    CorruptLayer { id: String, reason: String },

    #[error("unknown storage option {0:?}")]
    UnknownStorageOpt(String),
    #[error("invalid storage option {key}={value:?}: {reason}")]
    InvalidStorageOpt {
        key: String,
        value: String,
        reason: String,
    },
    #[error("invalid id map {spec:?}: {reason}")]
    InvalidIdMap { spec: String, reason: String },
    #[error("invalid mount option {option:?}: {reason}")]
    InvalidMountOption { option: String, reason: String },

    /// An archive entry that would escape the layer or is otherwise refused.
    #[error("refused archive entry {entry:?}: {reason}")]
    UnsafeEntry { entry: String, reason: String },
    /// A truncated, corrupt or otherwise unreadable archive.
    #[error("malformed archive{}: {reason}", entry.as_ref().map(|e| format!(" at entry {e:?}")).unwrap_or_default())]
    MalformedArchive {
        entry: Option<String>,
        reason: String,
    },
    #[error("layer {id} must be empty before apply_diff")]
    LayerNotEmpty { id: String },

    #[error("mount of layer {id} failed: {reason}")]
    Mount { id: String, reason: String },
    #[error("quota of layer {id} exceeded ({limit} bytes)")]
    QuotaExceeded { id: String, limit: u64 },

    #[error("a driver named {0} is already registered")]
    DuplicateDriver(String),
    #[error("driver {0} is not supported (no such driver or plugin)")]
    UnknownDriver(String),
    #[error(
        "{} contains state of several storage drivers ({}); clean up or choose one with --driver",
        root.display(),
        drivers.join(", ")
    )]
    MultipleDriverState { root: PathBuf, drivers: Vec<String> },
    #[error(
        "{} holds images of storage driver {name}, which failed to start; fix it or remove its state \
         (your images would otherwise disappear): {source}",
        root.display()
    )]
    PriorDriverFailed {
        root: PathBuf,
        name: String,
        #[source]
        source: Box<Error>,
    },
    #[error("no supported storage backend found")]
    NoSupportedBackend,

    /// A plugin call that needs a driver arrived before `/GraphDriver.Init`.
    #[error("the plugin has no driver yet: /GraphDriver.Init was not called")]
    NotInitialized,
    /// A blob whose content does not hash to the digest that names it.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// An image archive that lacks a file its manifests name.
    #[error("image archive {archive}: missing blob {blob}")]
    MissingBlob { archive: String, blob: String },
    /// A manifest (or index entry) that does not describe a container image.
    #[error("not a container image: {0}")]
    NotAnImage(String),
    /// No stored image or archive entry matches the given name.
    #[error("no image {0}")]
    ImageNotFound(String),
    /// Several images match; the message says how to pick one.
    #[error("{what} holds several images ({}); pick one with {hint}", candidates.join(", "))]
    AmbiguousImage {
        what: String,
        candidates: Vec<String>,
        hint: &'static str,
    },
    /// An image that is mounted cannot be removed.
    #[error("image {id} is mounted at {}", path.display())]
    ImageMounted { id: String, path: PathBuf },

    /// A request that makes no sense as given (a bad command-line argument, a tar to a terminal).
    #[error("{0}")]
    Usage(String),

    /// An I/O error with the path or operation it concerns.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Wrap an `io::Error` with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True for the three kinds that let automatic driver choice move on to the next driver.
    pub fn is_driver_unavailable(&self) -> bool {
        matches!(
            self,
            Error::NotSupported(_)
                | Error::PrerequisitesNotSatisfied(_)
                | Error::BackingFsUnsupported(_)
        )
    }

    /// The errno a FUSE reply or a CLI exit should carry for this error, where one fits.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::LayerNotFound(_)
            | Error::ParentNotFound { .. }
            | Error::ImageNotFound(_)
            | Error::MissingBlob { .. } => libc::ENOENT,
            Error::LayerExists(_) => libc::EEXIST,
            Error::HasChildren { .. } | Error::Mounted { .. } | Error::ImageMounted { .. } => {
                libc::EBUSY
            }
            Error::QuotaExceeded { .. } => libc::EDQUOT,
            Error::InvalidId { .. }
            | Error::UnknownStorageOpt(_)
            | Error::InvalidStorageOpt { .. }
            | Error::InvalidIdMap { .. }
            | Error::InvalidMountOption { .. }
            | Error::Usage(_) => libc::EINVAL,
            _ => libc::EIO,
        }
    }
}

/// Attach a context to `io::Result`s: `fs::read(p).ctx(|| format!("reading {}", p.display()))`.
pub trait IoContext<T> {
    fn ctx<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::io(f(), e))
    }
}
