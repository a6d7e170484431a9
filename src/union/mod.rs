//! The merged view served over FUSE, and the lifecycle of its mounts.
//!
//! `options` parses the mount-program option string, `layers` opens the layer directories and
//! numbers inodes, `tree` merges them in memory, `fs` serves the tree over FUSE (delegating every
//! change to `write`), `server` is the background mount program and `mount` the get/put
//! lifecycle the driver uses.

pub mod fs;
pub mod layers;
pub mod mount;
pub mod options;
pub mod server;
pub mod tree;
pub(crate) mod write;
