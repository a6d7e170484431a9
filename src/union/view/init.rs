//! The INIT negotiation over plain capability bits (the kernel's `FUSE_*` init flags), so
//! every transport asks for the same things and decides passthrough the same way.

use std::sync::atomic::Ordering;

use crate::sys;
use crate::union::options::Transport;
use crate::union::view::state::View;

/// The kernel's INIT capability bits this view asks for (`include/uapi/linux/fuse.h`).
pub mod caps {
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const ATOMIC_O_TRUNC: u64 = 1 << 3;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const DO_READDIRPLUS: u64 = 1 << 13;
    pub const POSIX_ACL: u64 = 1 << 20;
    pub const WRITEBACK_CACHE: u64 = 1 << 16;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const CACHE_SYMLINKS: u64 = 1 << 23;
    pub const HANDLE_KILLPRIV_V2: u64 = 1 << 28;
    pub const PASSTHROUGH: u64 = 1 << 37;
    /// FUSE over io_uring (offered only when the fuse module's `enable_uring` is set).
    pub const OVER_IO_URING: u64 = 1 << 41;
}

/// What to answer the kernel's INIT with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Capabilities to enable: a subset of those the kernel offered.
    pub flags: u64,
    /// Stacking depth of passthrough backing files (`None`: no passthrough).
    pub max_stack_depth: Option<u32>,
    pub max_readahead: u32,
    /// Serve requests over io_uring (`caps::OVER_IO_URING` is in `flags`).
    pub over_io_uring: bool,
}

/// Asked for whenever the kernel offers them.
const WANTED: u64 = {
    use caps::*;
    // Always READDIRPLUS, never the "auto" mode: in auto the kernel asks for attributes
    // only in the first chunk of a listing and then sends one LOOKUP per remaining entry
    // (50,000 round trips for `find`/`ls -l` of a 50,000-entry directory).
    DO_READDIRPLUS
        | PARALLEL_DIROPS
        | CACHE_SYMLINKS
        | MAX_PAGES
        | BIG_WRITES
        | ASYNC_READ
        // We clear setuid/setgid on writes ourselves (privs.rs): without this the kernel
        // asks for security.capability before every write and chown.
        | HANDLE_KILLPRIV_V2
        // O_TRUNC comes with OPEN (data.rs truncates): no SETATTR round trip after it, and a
        // lower file opened to be overwritten is copied up without its old data.
        | ATOMIC_O_TRUNC
};

impl View {
    /// Answer INIT, given the capabilities the kernel `offered`; opens the upper layer, so
    /// staging leftovers of a crash are cleaned and the quota scanned before the first request.
    /// `ring_served`: the session's runner starts ring queues if the ring is chosen; without
    /// them a mount granted the ring would hang, so it is never asked for then.
    pub fn init(&self, offered: u64, ring_served: bool) -> Negotiated {
        let mut flags = offered & WANTED;
        let mut max_stack_depth = None;
        if self.passthrough_possible() && offered & caps::PASSTHROUGH != 0 {
            flags |= caps::PASSTHROUGH;
            // Backing files on a stacked filesystem (overlayfs) need depth 2.
            let stacked = self
                .tree
                .layers
                .list
                .iter()
                .any(|l| matches!(sys::fs_type_name(&l.path).as_str(), "overlayfs" | "fuse"));
            max_stack_depth = Some(if stacked { 2 } else { 1 });
            self.passthrough.store(true, Ordering::Relaxed);
        } else if self.writeback_wanted() && offered & caps::WRITEBACK_CACHE != 0 {
            // The kernel refuses passthrough together with the writeback cache; without
            // passthrough, writes land in the page cache and reach us in large batches.
            flags |= caps::WRITEBACK_CACHE;
            self.writeback.store(true, Ordering::Relaxed);
        }
        if self.kernel_checks_permissions() && offered & caps::POSIX_ACL != 0 {
            // The kernel then keeps each inode's ACLs (also the answer "none"): `ls -l` asks
            // for system.posix_acl_access once per inode instead of once per file per call,
            // and permission checks honour ACLs. It turns on default_permissions, which is on
            // already whenever we ask.
            flags |= caps::POSIX_ACL;
        }
        let offered_ring = ring_served && offered & caps::OVER_IO_URING != 0;
        let over_io_uring = match self.opts.transport {
            // The ring when the kernel offers it: faster than /dev/fuse on every row of the
            // transports bench (README, docs/performance.md); else /dev/fuse, silently.
            Transport::Auto => offered_ring,
            Transport::Uring if !offered_ring => {
                tracing::warn!(
                    "uring asked for, but the kernel does not offer FUSE over io_uring \
                     (Linux 6.14+ with /sys/module/fuse/parameters/enable_uring = Y): /dev/fuse"
                );
                false
            }
            Transport::Uring => true,
            Transport::DevFuse => false,
        };
        if over_io_uring {
            flags |= caps::OVER_IO_URING;
        }
        if !self.read_only() {
            let _ = self.upper();
        }
        tracing::info!(
            passthrough = self.passthrough.load(Ordering::Relaxed),
            writeback = self.writeback.load(Ordering::Relaxed),
            over_io_uring,
            "FUSE session initialised"
        );
        Negotiated {
            flags,
            max_stack_depth,
            max_readahead: 1 << 20,
            over_io_uring,
        }
    }

    /// Whether the kernel would give this server passthrough backing files: root of the
    /// initial user namespace (the kernel checks `CAP_SYS_ADMIN` there at every
    /// `FUSE_DEV_IOC_BACKING_OPEN`: the namespace root of rootless Podman is refused at each
    /// open, after INIT accepted passthrough and so shut the writeback cache out), Linux 6.9
    /// or later, not turned off.
    fn passthrough_possible(&self) -> bool {
        !self.opts.no_passthrough
            && sys::kernel_version().is_some_and(|v| v >= (6, 9))
            && sys::is_initial_ns_root()
    }

    /// Whether the mount has `default_permissions` (the kernel checks permissions against
    /// the attributes we report): as root, or when asked for (`server::session_config`).
    fn kernel_checks_permissions(&self) -> bool {
        sys::is_root() || self.opts.default_permissions
    }

    /// Whether to ask for the writeback cache (when there is no passthrough): not for a
    /// read-only view (nothing to write back), not with a quota (EDQUOT must come from the
    /// write(2) that passes it, not from a later write-back), not when turned off.
    fn writeback_wanted(&self) -> bool {
        !self.opts.no_writeback && !self.read_only() && self.opts.quota.is_none()
    }
}
