//! Writable image mounts (`image mount --writable`): the same edits on a lazy mount (files
//! copied up from the tar) and on an unpacked one give the same tree and the same changes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use super::kit::{self, Comp, TestImage};
use super::lazy::{full_tree, noise, rich_layers};
use super::{mount, ok, stratafs};

/// Write, chmod, delete, create and rename a lower directory through the mount at `dir`.
fn edit(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("etc/passwd"))
        .unwrap();
    f.write_all(b"user:x:1000:1000::/home/user:/bin/sh\n")
        .unwrap();
    drop(f);
    let when = UNIX_EPOCH + Duration::from_secs(1_700_000_123);
    std::fs::File::options()
        .write(true)
        .open(dir.join("etc/passwd"))
        .unwrap()
        .set_modified(when)
        .unwrap();
    std::fs::set_permissions(
        dir.join("etc/labelled"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::remove_file(dir.join("etc/shadow")).unwrap();
    std::fs::write(dir.join("etc/new.conf"), b"added\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(dir.join("etc/new.conf"))
        .unwrap()
        .set_modified(when)
        .unwrap();
    std::fs::rename(dir.join("var/lib/app"), dir.join("var/lib/app2")).unwrap();
    // A big file of a compressed layer, changed in the middle.
    let mut big = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("opt/big.bin"))
        .unwrap();
    std::io::Seek::seek(&mut big, std::io::SeekFrom::Start(1000)).unwrap();
    big.write_all(b"patched").unwrap();
    big.set_modified(when).unwrap();
}

const CHANGES: &[&str] = &[
    "C /etc",
    "C /etc/labelled",
    "A /etc/new.conf",
    "C /etc/passwd",
    "C /etc/passwd-hard",
    "D /etc/shadow",
    "C /opt",
    "C /opt/big.bin",
    "C /var",
    "C /var/lib",
    "D /var/lib/app",
    "A /var/lib/app2",
    "A /var/lib/app2/new",
];

fn changes_of(root: &Path, dir: &Path) -> Vec<String> {
    let out = ok(stratafs(root, &["image", "changes", dir.to_str().unwrap()]));
    out.lines().map(str::to_string).collect()
}

#[test]
fn writable_lazy_mount_changes_equal_those_of_an_unpacked_one() {
    let d = tempfile::tempdir().unwrap();
    let big = noise(256 << 10, 9);
    let img = TestImage::new("rich:1", rich_layers(&big));
    let root = d.path().join("root");
    let unpacked_archive = d.path().join("plain.tar");
    kit::write_tar(&unpacked_archive, &kit::docker_files(&[&img], Comp::None));
    let unpacked = mount(
        &root,
        &unpacked_archive,
        &d.path().join("unpacked"),
        &["--unpack", "--writable"],
    );
    edit(&unpacked.dir);
    let want_tree = full_tree(&unpacked.dir);
    assert_eq!(changes_of(&root, &unpacked.dir), CHANGES);
    for comp in [Comp::None, Comp::Gzip] {
        let archive = d.path().join(format!("img-{comp:?}.tar"));
        kit::write_tar(&archive, &kit::docker_files(&[&img], comp));
        let lazy = mount(
            &root,
            &archive,
            &d.path().join(format!("lazy-{comp:?}")),
            &["--writable"],
        );
        edit(&lazy.dir);
        assert_eq!(
            full_tree(&lazy.dir),
            want_tree,
            "{comp:?}: lazy (left) vs unpacked (right)"
        );
        assert_eq!(changes_of(&root, &lazy.dir), CHANGES, "{comp:?}");
        let passwd = std::fs::read_to_string(lazy.dir.join("etc/passwd-hard")).unwrap();
        assert!(passwd.ends_with("/home/user:/bin/sh\n"), "{passwd}");
        ok(stratafs(
            &root,
            &["image", "umount", lazy.dir.to_str().unwrap()],
        ));
    }
}

#[test]
fn a_given_upper_directory_keeps_the_changes_for_the_next_mount() {
    let d = tempfile::tempdir().unwrap();
    let img = TestImage::new("sample:1", kit::sample_layers());
    let archive = d.path().join("a.tar");
    kit::write_tar(&archive, &kit::docker_files(&[&img], Comp::Gzip));
    let root = d.path().join("root");
    let upper = d.path().join("upper");
    let args = ["--writable", "--upper", upper.to_str().unwrap()];
    let m = mount(&root, &archive, &d.path().join("m1"), &args);
    std::fs::write(m.dir.join("etc/kept"), b"changed\n").unwrap();
    std::fs::remove_file(m.dir.join("bin/sh")).unwrap();
    ok(stratafs(
        &root,
        &["image", "umount", m.dir.to_str().unwrap()],
    ));
    assert_eq!(std::fs::read(upper.join("etc/kept")).unwrap(), b"changed\n");
    // Listed after unmount by its path: the store recorded what it was mounted over.
    let want = ["C /bin", "D /bin/sh", "C /etc", "C /etc/kept"];
    assert_eq!(changes_of(&root, &upper), want);
    let m = mount(&root, &archive, &d.path().join("m2"), &args);
    assert_eq!(std::fs::read(m.dir.join("etc/kept")).unwrap(), b"changed\n");
    assert!(!m.dir.join("bin/sh").exists());
    assert_eq!(changes_of(&root, &m.dir), want);
    // Pruning keeps a given upper and its record while the directory is there.
    ok(stratafs(
        &root,
        &["image", "umount", m.dir.to_str().unwrap()],
    ));
    ok(stratafs(&root, &["image", "prune"]));
    assert_eq!(changes_of(&root, &upper), want);
    // A read-only mount has no changes to list.
    let ro = mount(&root, &archive, &d.path().join("ro"), &[]);
    let out = stratafs(&root, &["image", "changes", ro.dir.to_str().unwrap()]);
    assert!(!out.status.success());
}

#[test]
fn new_entries_go_into_a_directory_only_a_tar_layer_has() {
    let d = tempfile::tempdir().unwrap();
    let img = TestImage::new("sample:1", kit::sample_layers());
    let archive = d.path().join("a.tar");
    kit::write_tar(&archive, &kit::docker_files(&[&img], Comp::None));
    let root = d.path().join("root");
    let m = mount(&root, &archive, &d.path().join("m"), &["--writable"]);
    // Nothing below opt or bin was changed first: their parents come straight from the index.
    std::fs::write(m.dir.join("opt/data/fresh"), b"fresh\n").unwrap();
    std::fs::create_dir(m.dir.join("bin/sub")).unwrap();
    std::fs::File::open(m.dir.join("etc"))
        .unwrap()
        .sync_all()
        .unwrap();
    assert_eq!(
        changes_of(&root, &m.dir),
        [
            "C /bin",
            "A /bin/sub",
            "C /opt",
            "C /opt/data",
            "A /opt/data/fresh"
        ]
    );
}

/// The upper a writable mount made in the store, from what `image umount` printed.
fn kept_upper(umount_out: &str) -> std::path::PathBuf {
    let line = umount_out
        .lines()
        .find_map(|l| l.strip_prefix("upper kept at "));
    std::path::PathBuf::from(line.unwrap_or_else(|| panic!("no upper reported: {umount_out:?}")))
}

#[test]
fn a_store_made_upper_outlives_its_mount_until_pruned() {
    let d = tempfile::tempdir().unwrap();
    let img = TestImage::new("sample:1", kit::sample_layers());
    let archive = d.path().join("a.tar");
    kit::write_tar(&archive, &kit::docker_files(&[&img], Comp::Gzip));
    let root = d.path().join("root");
    let umount = |m: &Path| ok(stratafs(&root, &["image", "umount", m.to_str().unwrap()]));
    let gone = mount(&root, &archive, &d.path().join("m1"), &["--writable"]);
    std::fs::write(gone.dir.join("etc/kept"), b"changed\n").unwrap();
    let upper = kept_upper(&umount(&gone.dir));
    assert_eq!(std::fs::read(upper.join("etc/kept")).unwrap(), b"changed\n");
    // Listed after unmount by its path, its directory or its name in the store.
    let name = upper
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    for target in [upper.as_path(), upper.parent().unwrap(), Path::new(name)] {
        assert_eq!(
            changes_of(&root, target),
            ["C /etc", "C /etc/kept"],
            "{target:?}"
        );
    }
    let live = mount(&root, &archive, &d.path().join("m2"), &["--writable"]);
    std::fs::write(live.dir.join("etc/live"), b"live\n").unwrap();
    let mine = d.path().join("mine");
    let args = ["--writable", "--upper", mine.to_str().unwrap()];
    let given = mount(&root, &archive, &d.path().join("m3"), &args);
    std::fs::write(given.dir.join("etc/given"), b"given\n").unwrap();
    umount(&given.dir);
    let pruned = ok(stratafs(&root, &["image", "prune"]));
    assert!(!upper.parent().unwrap().exists(), "{pruned}");
    assert!(
        pruned.contains(&format!("upper {}", upper.parent().unwrap().display())),
        "{pruned}"
    );
    assert_eq!(std::fs::read(live.dir.join("etc/live")).unwrap(), b"live\n");
    assert_eq!(changes_of(&root, &live.dir), ["C /etc", "A /etc/live"]);
    assert_eq!(std::fs::read(mine.join("etc/given")).unwrap(), b"given\n");
    let out = stratafs(&root, &["image", "changes", name]);
    assert!(
        !out.status.success(),
        "a pruned upper has no changes to list"
    );
    let live_upper = kept_upper(&umount(&live.dir));
    ok(stratafs(&root, &["image", "prune"]));
    assert!(!live_upper.exists());
    assert_eq!(std::fs::read(mine.join("etc/given")).unwrap(), b"given\n");
}
