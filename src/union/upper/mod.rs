//! The writable (upper) layer of a mount and every mutation of it: copy-up, creation, deletion
//! with whiteouts, rename (including directories that come from lower layers), hard links and
//! attribute changes. Paths are relative to the layer roots ("" is the root).
//!
//! Conventions that make each step crash-safe:
//! - New entries are built in the staging directory and renamed into place.
//! - An entry and its own `.wh.NAME` in the same upper directory: the entry wins. So a
//!   re-created name is placed first and its whiteout removed after; a deletion writes the
//!   whiteout first and removes the upper entry after. A crash in between shows the old state.
//! - A new directory where a whiteout stands (made, or renamed there) is opaque: what the
//!   deleted lower directory held stays hidden.
//!
//! By concern, each module using only those listed before it: `layer` (opening the layer, the
//! paths of its entries, what the view shows at a path), `node` (building a node in staging),
//! `copyup`, `data` (file data with quota), `remove` (whiteouts and deletion), `create`,
//! `rename` and `attr`.

mod attr;
pub mod copyup;
mod create;
mod data;
mod layer;
mod node;
mod remove;
mod rename;

pub use attr::{Applied, SetAttr};
pub use copyup::{CopyUp, Known, OpenCopy};
pub use create::NewAttr;
pub use layer::UpperLayer;
pub use remove::Present;

#[cfg(test)]
mod tests;
