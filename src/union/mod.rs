//! The merged view served over FUSE, and the lifecycle of its mounts.

pub mod mount;
pub mod options;
