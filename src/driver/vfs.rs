//! The `vfs` driver: each layer a full copy of its parent, as Docker's vfs. The fallback where
//! FUSE is missing and the oracle tests compare stratafs against.
//! (Interface fixed; implementation lands with the archive issue.)

use crate::driver::DriverConfig;
use crate::error::{Error, Result};

/// The driver's registered name.
pub const NAME: &str = "vfs";

/// The copying driver.
#[derive(Debug)]
pub struct VfsDriver {}

impl VfsDriver {
    /// Open the driver's store under `<root>/vfs`.
    pub fn new(_cfg: &DriverConfig) -> Result<Self> {
        Err(Error::NotSupported("vfs: not implemented yet".into()))
    }
}
