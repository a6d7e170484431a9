//! The merged view served over FUSE, and the lifecycle of its mounts.
//!
//! `options` parses the mount-program option string, `layers` opens the layer directories and
//! numbers inodes, `listing` merges directories, `tree` keeps the inode table and makes the
//! attributes (`attr`) the view shows. `view` is the transport-neutral core: every request is
//! handled there, once, against typed requests and replies; `fs` is the fuser adapter over it
//! (only `fs` and `server` name fuser); `ring` is the FUSE-over-io_uring adapter over the same
//! core. `server` is the background mount program and `mount`
//! the get/put lifecycle the driver uses. The view's write path drives `upper` (mutations of
//! the upper layer, copy-up included) and `quota`; `lowers` is what it asks of the lower
//! layers and `source` where it reads what it copies (a file, or a member of a tar layer), `background` where long requests run, `prefetch` the stat-ahead threads, `unlisted` look-ups in directories that cannot be listed.

pub mod attr;
pub mod background;
pub mod fs;
pub mod ids;
pub mod layers;
pub mod listing;
pub mod lowers;
pub mod mount;
pub mod mountinfo;
pub mod options;
pub mod prefetch;
pub mod quota;
pub mod ring;
pub mod server;
pub mod source;
pub mod tarlayer;
pub mod tree;
pub mod unlisted;
pub mod upper;
pub mod view;
