//! Who may use a mount: the check fuser makes of each `/dev/fuse` request (its `SessionACL`),
//! made again for ring requests, which fuser never sees. The kernel itself keeps every other
//! user out of a mount without `allow_other`; this check matters where the kernel lets them
//! in but the mount means to refuse them (`allow_root` is mounted `allow_other`, and the fuse
//! module's `allow_sys_admin_access` lets CAP_SYS_ADMIN through).

use crate::sys;
use crate::union::options::MountOptions;
use crate::union::ring::wire::op;

/// The users a mount serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Users {
    /// Everyone the kernel lets in (root's mounts, `allow_other`).
    All,
    /// The owner and root (`allow_root`).
    RootAndOwner,
    /// The owner only.
    Owner,
}

/// The rule for one mount: which users, and who owns it (the server's effective uid, as
/// fuser takes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acl {
    pub users: Users,
    pub owner: u32,
}

impl Acl {
    /// The rule of a mount with these options served by this process.
    pub fn for_mount(o: &MountOptions) -> Acl {
        let users = if sys::is_root() || o.allow_other {
            Users::All
        } else if o.allow_root {
            Users::RootAndOwner
        } else {
            Users::Owner
        };
        Acl {
            users,
            owner: sys::effective_ids().0,
        }
    }

    /// Whether a request of `opcode` from `uid` is served (else it gets EACCES). As in
    /// fuser, the requests the kernel may send on behalf of no particular user (reads and
    /// writes of open files, listings of open directories, releases, syncs, forgets) pass.
    pub fn permits(&self, uid: u32, opcode: u32) -> bool {
        let allowed = match self.users {
            Users::All => true,
            Users::RootAndOwner => uid == self.owner || uid == 0,
            Users::Owner => uid == self.owner,
        };
        allowed || without_user(opcode)
    }
}

/// Opcodes the kernel may send without the uid of a user who may use the mount.
fn without_user(opcode: u32) -> bool {
    matches!(
        opcode,
        op::READ
            | op::WRITE
            | op::READDIR
            | op::READDIRPLUS
            | op::FSYNC
            | op::FSYNCDIR
            | op::RELEASE
            | op::RELEASEDIR
            | op::FORGET
            | op::BATCH_FORGET
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: u32 = 1000;

    fn acl(users: Users) -> Acl {
        Acl {
            users,
            owner: OWNER,
        }
    }

    #[test]
    fn owner_only_refuses_root_and_others_but_not_io_on_open_files() {
        let a = acl(Users::Owner);
        assert!(a.permits(OWNER, op::LOOKUP));
        assert!(!a.permits(0, op::LOOKUP));
        assert!(!a.permits(2000, op::GETATTR));
        assert!(!a.permits(2000, op::CREATE));
        assert!(a.permits(2000, op::READ));
        assert!(a.permits(2000, op::RELEASE));
    }

    #[test]
    fn root_and_owner_lets_root_in_only() {
        let a = acl(Users::RootAndOwner);
        assert!(a.permits(0, op::LOOKUP));
        assert!(a.permits(OWNER, op::MKDIR));
        assert!(!a.permits(2000, op::LOOKUP));
        assert!(!a.permits(2000, op::OPEN));
        assert!(a.permits(2000, op::WRITE));
    }

    #[test]
    fn all_lets_everyone_in() {
        let a = acl(Users::All);
        assert!(a.permits(2000, op::UNLINK));
        assert!(a.permits(0, op::SETATTR));
    }
}
