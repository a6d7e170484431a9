//! Helpers shared by the FUSE tests.

/// Path of the built `stratafs` binary, which the library spawns as the mount server.
#[allow(dead_code)]
pub fn stratafs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_stratafs")
}
