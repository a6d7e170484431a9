//! The core of the union view, written once against typed requests and replies (no
//! transport's types): each transport converts its requests, calls these handlers and sends
//! what they answer. The fuser adapter is [`crate::union::fs`]; a FUSE-over-io_uring transport
//! calls the same handlers.
//!
//! One file per concern, each a block of `impl View` handlers: `lookup` (look-up and
//! attributes), `dir` (listings), `data` (open files), `create` (new entries), `remove`,
//! `rename`, `setattr`, `xattr`, `init` (the INIT negotiation). Below them: `copy` (copy-up as
//! the view drives it), `privs` (setuid/setgid clearing), `sync` (the tree brought in line
//! after a change), `state` (the view's state) and `types` (what crosses the seam). Handlers
//! that may copy much (a large copy-up, a lower directory renamed) take a reply callback and
//! may answer from a thread of their own; the others return their answer.

pub mod types;

mod copy;
mod create;
mod data;
mod dir;
mod init;
mod lookup;
mod privs;
mod remove;
mod rename;
mod setattr;
mod state;
mod sync;
#[cfg(test)]
mod tests;
mod xattr;

pub use dir::{DirPlusSink, DirSink};
pub use init::{caps, Negotiated};
pub use state::{View, ViewState, TTL};
