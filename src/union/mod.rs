//! The merged view served over FUSE, and the lifecycle of its mounts.
//!
//! `options` parses the mount-program option string, `layers` opens the layer directories and
//! numbers inodes, `tree` merges them in memory, `fs` serves the tree over FUSE (delegating every
//! change to `write`), `server` is the background mount program and `mount` the get/put
//! lifecycle the driver uses. `write` drives `upper` (mutations of the upper layer), `copyup`
//! (materialising lower entries) and `quota`; `lowers` is what the write path asks of the lower
//! layers.

pub mod attr;
pub mod background;
pub mod copyup;
pub mod fs;
pub mod ids;
pub mod layers;
pub mod listing;
pub mod lowers;
pub mod mount;
pub mod options;
pub mod prefetch;
pub mod quota;
pub mod server;
pub mod tree;
pub mod upper;
pub(crate) mod write;
