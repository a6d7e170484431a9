//! stratafs: a container storage driver whose layers are plain directories plus whiteout
//! metadata, merged by a userspace (FUSE) union view.
//!
//! Data flows down: `cli`/`plugin` -> [`driver`] -> [`store`], `union`, `archive` -> [`layer`] ->
//! [`sys`].
//!
//! All `unsafe` code lives in [`sys`], behind safe wrappers; the lint below refuses it anywhere
//! else.

#![deny(unsafe_code)]

pub mod archive;
pub mod driver;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod image;
pub mod layer;
pub mod plugin;
pub mod snapshotter;
pub mod socket;
pub mod store;
#[allow(unsafe_code)]
pub mod sys;
pub mod union;

#[cfg(test)]
mod layering;

pub use driver::{Change, ChangeKind, CreateOpts, Driver, DriverConfig};
pub use error::{Error, Result};
