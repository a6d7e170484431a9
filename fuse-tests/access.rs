//! Who may read what through a mount: `stratafs -o lowerdir=DIR` run by an unprivileged user
//! serves with that user's rights, so the view never shows them anything they could not read
//! in DIR directly; one run by root lets the kernel check each caller's rights.
//!
//! Found while writing these: the server, being that user, is refused by the kernel like the
//! user is. A name inside an execute-only directory (0711), which the user may open directly,
//! used to be refused through the view (it listed the directory to look names up); it is
//! looked up by name now, as the kernel does. A rename or rmdir of a lower directory the user cannot list
//! used to succeed as if it were empty: the rename left an empty directory, the rmdir hid
//! the whole tree. Both are refused now.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::fs::{chown, MetadataExt};
use std::path::{Path, PathBuf};

use crate::common::{stratafs_bin, MountGuard};
use crate::robust::{as_nobody, DevFuseOpen, NOBODY};

struct Tree {
    _t: tempfile::TempDir,
    root: PathBuf,
    lower: PathBuf,
    mp: PathBuf,
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A root-owned lower directory holding what the user may and may not read; a mount point
/// (and upper and work directories) of the user's.
fn tree() -> Tree {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().to_path_buf();
    chmod(&root, 0o755);
    let lower = root.join("lower");
    for d in ["lower/secret/sub", "lower/xonly"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(lower.join("pub.txt"), "public\n").unwrap();
    fs::write(lower.join("rootfile"), "root only\n").unwrap();
    chmod(&lower.join("rootfile"), 0o600);
    fs::write(lower.join("secret/s.txt"), "secret\n").unwrap();
    fs::write(lower.join("secret/sub/deep"), "deep\n").unwrap();
    chmod(&lower.join("secret"), 0o700);
    fs::write(lower.join("xonly/known"), "known\n").unwrap();
    chmod(&lower.join("xonly"), 0o711);
    for d in ["mp", "upper", "work"] {
        let p = root.join(d);
        fs::create_dir(&p).unwrap();
        chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    Tree {
        mp: root.join("mp"),
        root,
        lower,
        _t: t,
    }
}

/// `script` run as the user in directory `dir`: (succeeded, stdout).
fn try_in(dir: &Path, script: &str) -> (bool, String) {
    let out = as_nobody(&format!("cd {} && {script}", dir.display()), None);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn mount_as_user(opts: &str, mp: &Path) -> Result<MountGuard, String> {
    let out = as_nobody(
        &format!("{} -o {opts} {}", stratafs_bin(), mp.display()),
        None,
    );
    if out.status.success() {
        Ok(MountGuard::new(mp))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn unmount_as_user(g: MountGuard) {
    let _ = as_nobody(&format!("fusermount3 -u {}", g.path.display()), None);
}

/// Reads of the user through the view at `mp` succeed only where the same read of `lower`
/// does, and then give the same bytes.
fn assert_no_more_than_direct(lower: &Path, mp: &Path) {
    let reads = [
        "cat pub.txt",
        "ls",
        "cat rootfile",
        "head -c1 rootfile",
        "ls secret",
        "cat secret/s.txt",
        "stat -c %s secret/s.txt",
        "cat secret/sub/deep",
        "ls secret/sub",
        "ls xonly",
        "cat xonly/known",
        "find . -type f -exec cat {} +",
    ];
    for r in reads {
        let direct = try_in(lower, r);
        let view = try_in(mp, r);
        if !direct.0 {
            assert!(
                !view.0,
                "`{r}` is refused in the lower directory but not through the view: {view:?}"
            );
        } else if view.0 {
            assert_eq!(view.1, direct.1, "`{r}`");
        }
    }
    // What the user may read, the view shows.
    assert_eq!(try_in(mp, "cat pub.txt"), (true, "public\n".into()));
    assert_eq!(
        try_in(mp, "ls"),
        (true, "pub.txt\nrootfile\nsecret\nxonly\n".into())
    );
}

/// A known name in the lower directory `xonly` (mode 0711: search, no read) is found through
/// the view as in the directory itself; listing it, and moving or removing it, stay refused.
fn assert_searchable_but_not_listable(mp: &Path) {
    assert_eq!(try_in(mp, "cat xonly/known"), (true, "known\n".into()));
    assert_eq!(try_in(mp, "stat -c %s xonly/known"), (true, "6\n".into()));
    for refused in [
        "ls xonly",
        "cat xonly/unknown",
        "rmdir xonly",
        "mv xonly moved",
    ] {
        assert!(
            !try_in(mp, refused).0,
            "`{refused}` through the view succeeded"
        );
    }
}

#[test]
fn a_root_mount_checks_every_users_rights_as_the_layers_do() {
    // As root the server reads everything; the kernel checks each caller against the modes
    // the view reports (default_permissions), so a user reads no more than in the layer.
    let t = tree();
    let _g = crate::common::mount_stratafs(&format!("lowerdir={}", t.lower.display()), &t.mp);
    assert_no_more_than_direct(&t.lower, &t.mp);
    assert_eq!(try_in(&t.mp, "cat xonly/known"), (true, "known\n".into()));
}

#[test]
fn a_rootless_mount_serves_with_the_users_rights() {
    let _fuse = DevFuseOpen::new();
    let t = tree();

    // A lower directory the user cannot read at all: the mount itself is refused.
    let err = mount_as_user(
        &format!("lowerdir={}", t.lower.join("secret").display()),
        &t.mp,
    )
    .expect_err("mounted a directory its user cannot read");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(!stratafs::union::mount::fuse_mounted(&t.mp));

    // Read-only and read-write views of a partly readable one.
    let ro = mount_as_user(&format!("lowerdir={}", t.lower.display()), &t.mp).unwrap();
    assert_no_more_than_direct(&t.lower, &t.mp);
    assert_searchable_but_not_listable(&t.mp);
    unmount_as_user(ro);
    let upper = t.root.join("upper");
    let rw = format!(
        "lowerdir={},upperdir={},workdir={}",
        t.lower.display(),
        upper.display(),
        t.root.join("work").display()
    );
    let g = mount_as_user(&rw, &t.mp).unwrap();
    assert_no_more_than_direct(&t.lower, &t.mp);
    assert_searchable_but_not_listable(&t.mp);
    // Writes that would copy up what the user cannot read are refused, and copy nothing.
    for w in [
        "echo x >> rootfile",
        "truncate -s 0 rootfile",
        "ln rootfile l",
    ] {
        assert!(!try_in(&t.mp, w).0, "`{w}` through the view succeeded");
    }
    // A directory the user cannot list does not move or vanish as if it were empty.
    for w in ["mv secret moved", "rmdir secret", "rm -rf secret"] {
        assert!(!try_in(&t.mp, w).0, "`{w}` through the view succeeded");
    }
    assert_eq!(
        try_in(&t.mp, "ls"),
        (true, "pub.txt\nrootfile\nsecret\nxonly\n".into()),
        "entries moved or hidden"
    );
    unmount_as_user(g);
    // Nothing the user could not read reached their upper layer.
    let mut leaked = Vec::new();
    let mut stack = vec![upper.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.size() > 0 {
                leaked.push(p);
            }
        }
    }
    assert!(leaked.is_empty(), "data copied to the upper: {leaked:?}");
    assert_eq!(fs::read(t.lower.join("secret/s.txt")).unwrap(), b"secret\n");
}

/// A `system.posix_acl_access` value (version 2): the owner rw, `extra_user` (if any) r, no
/// group or other rights.
fn acl_xattr(extra_user: Option<u32>) -> Vec<u8> {
    // (tag, perm, id): USER_OBJ, USER, GROUP_OBJ, MASK, OTHER; ids only for USER.
    let mut entries = vec![(0x01u16, 6u16, u32::MAX)];
    if let Some(uid) = extra_user {
        entries.push((0x02, 4, uid));
    }
    entries.extend([
        (0x04, 0, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ]);
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(id.to_le_bytes());
    }
    v
}

#[test]
fn an_acl_set_through_a_root_mount_grants_and_revokes_at_once() {
    // The kernel keeps each inode's ACLs (FUSE_POSIX_ACL) and checks them: a change made
    // through the mount must reach the next read of the ACL and the next permission check.
    let l = crate::common::OneLower::new();
    chmod(l.mp.parent().unwrap(), 0o755);
    fs::write(l.lower.join("acl.txt"), "by acl\n").unwrap();
    chmod(&l.lower.join("acl.txt"), 0o600);
    let g = l.mount();
    let f = l.mp.join("acl.txt");
    let read = || try_in(&l.mp, "cat acl.txt");
    let acl = || stratafs::sys::lgetxattr(&f, "system.posix_acl_access").unwrap();
    assert!(!read().0, "read a 0600 root file before any ACL");
    assert_eq!(acl(), None);

    crate::common::set_xattr(&f, "system.posix_acl_access", &acl_xattr(Some(NOBODY)));
    assert_eq!(acl(), Some(acl_xattr(Some(NOBODY))));
    assert_eq!(
        read(),
        (true, "by acl\n".into()),
        "the ACL's user was refused"
    );

    crate::common::set_xattr(&f, "system.posix_acl_access", &acl_xattr(None));
    assert_eq!(acl(), Some(acl_xattr(None)));
    assert!(!read().0, "read after the ACL entry was removed");
    l.unmount(g);
}
