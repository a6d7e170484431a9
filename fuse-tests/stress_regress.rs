//! Short op sequences that `scripts/stress.sh` (issue 21) found failing, each minimised from
//! its trace and checked through a real mount, then again after a remount of the same layers.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::common::{MountGuard, OneLower};

/// Lower directories `dirs`, each holding the files `files` (content "lower").
fn layers(dirs: &[&str], files: &[&str]) -> OneLower {
    let l = OneLower::new();
    for d in dirs {
        fs::create_dir_all(l.lower.join(d)).unwrap();
    }
    for f in files {
        fs::write(l.lower.join(f), "lower").unwrap();
    }
    l
}

fn unmount(g: MountGuard) {
    let st = std::process::Command::new("umount")
        .arg(&g.path)
        .status()
        .unwrap();
    assert!(st.success(), "umount {}", g.path.display());
}

/// (inode number, link count) of `p`.
fn ino_nlink(p: &Path) -> (u64, u64) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    (m.ino(), m.nlink())
}

#[test]
fn a_hard_link_into_a_lower_directory_stays_a_link_when_the_directory_moves() {
    // Trace of seed 11: `link d3/n7 d5/n9`, then `rename d3 d4/n10`. The move copied the
    // lower directory's tree anew, its upper file included: the two names then showed one
    // inode number with a link count of 1 each, and a fresh mount two separate files.
    let l = layers(&["d3", "d4", "d5"], &["d3/n7"]);
    let g = l.mount();
    fs::hard_link(l.mp.join("d3/n7"), l.mp.join("d5/n9")).unwrap();
    fs::rename(l.mp.join("d3"), l.mp.join("d4/n10")).unwrap();
    let check = |when: &str| {
        let (a, b) = (
            ino_nlink(&l.mp.join("d5/n9")),
            ino_nlink(&l.mp.join("d4/n10/n7")),
        );
        assert_eq!(a, b, "{when}: the two names of one file differ");
        assert_eq!(a.1, 2, "{when}: link count of a file with two names");
        fs::write(l.mp.join("d5/n9"), "changed").unwrap();
        assert_eq!(
            fs::read_to_string(l.mp.join("d4/n10/n7")).unwrap(),
            "changed",
            "{when}: a write through one name does not show through the other"
        );
    };
    check("live");
    unmount(g);
    let g = l.mount();
    check("after a remount");
    unmount(g);
}

#[test]
fn a_directory_made_where_a_copied_up_lower_directory_moved_away_is_a_new_one() {
    // Trace of seed 11: a copy-up inside the lower `d1/s1`, `rename d1/s1 d2/s0/n5`, `mkdir
    // d1/s1`. The move put a copy in the old upper directory's place and deleted that one,
    // whose inode kept the moved node's number: when the filesystem gave the inode to the new
    // directory, that showed as the moved one (its contents; ESTALE after). Whether it
    // reuses the inode is the filesystem's choice: ten tries.
    let dirs: Vec<String> = (0..10).map(|i| format!("d1/s{i}")).collect();
    let mut all: Vec<&str> = dirs.iter().map(String::as_str).collect();
    all.push("d2");
    let files: Vec<String> = dirs.iter().map(|d| format!("{d}/f0")).collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let l = layers(&all, &files);
    let g = l.mount();
    for (i, d) in dirs.iter().enumerate() {
        let moved = format!("d2/m{i}");
        fs::set_permissions(
            l.mp.join(format!("{d}/f0")),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        fs::rename(l.mp.join(d), l.mp.join(&moved)).unwrap();
        fs::create_dir(l.mp.join(d)).unwrap();
        let (new, old) = (ino_nlink(&l.mp.join(d)).0, ino_nlink(&l.mp.join(&moved)).0);
        assert_ne!(
            new, old,
            "{d}: the new directory shows the moved one's number"
        );
        assert_eq!(
            fs::read_dir(l.mp.join(d)).unwrap().count(),
            0,
            "{d}: new, not empty"
        );
        assert_eq!(
            fs::read_dir(l.mp.join(&moved)).unwrap().count(),
            1,
            "{moved}"
        );
    }
    unmount(g);
    let g = l.mount();
    for i in 0..dirs.len() {
        assert_eq!(
            fs::read_dir(l.mp.join(format!("d2/m{i}"))).unwrap().count(),
            1
        );
    }
    unmount(g);
}
