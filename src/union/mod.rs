//! The merged view served over FUSE, and the lifecycle of its mounts.

pub mod copyup;
pub mod lowers;
pub mod mount;
pub mod quota;
pub mod upper;
