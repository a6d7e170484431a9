//! Tests that mount real FUSE filesystems. Run as root with /dev/fuse present; each test cleans
//! up its mounts, even when it fails (see `common::MountGuard`).

mod access;
mod common;
mod conformance;
mod image;
mod limits;
mod limits_disk;
mod read;
mod restart;
mod ring;
mod robust;
mod stress_regress;
mod untar;
mod whiteout_replace;
mod write;
mod writeback;
