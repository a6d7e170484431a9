//! Unit tests of the merged tree (`tree.rs`).

use super::*;
use std::fs;

fn tree(lowers: &[&Path]) -> Tree {
    let l: Vec<PathBuf> = lowers.iter().map(|p| p.to_path_buf()).collect();
    Tree::new(Layers::open(None, &l).unwrap(), IdView::default()).unwrap()
}

fn names(t: &Tree, ino: u64) -> Vec<String> {
    let mut v: Vec<String> = t
        .listing(ino)
        .unwrap()
        .entries()
        .iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn merges_and_whiteouts() {
    let top = tempfile::tempdir().unwrap();
    let low = tempfile::tempdir().unwrap();
    fs::write(low.path().join("a"), "low").unwrap();
    fs::write(low.path().join("gone"), "x").unwrap();
    fs::create_dir_all(low.path().join("d/sub")).unwrap();
    fs::write(low.path().join("d/old"), "x").unwrap();
    fs::create_dir_all(low.path().join("o")).unwrap();
    fs::write(low.path().join("o/hidden"), "x").unwrap();
    fs::write(top.path().join("a"), "top").unwrap();
    fs::write(top.path().join(".wh.gone"), "").unwrap();
    fs::create_dir_all(top.path().join("d")).unwrap();
    fs::write(top.path().join("d/new"), "x").unwrap();
    fs::create_dir_all(top.path().join("o")).unwrap();
    fs::write(top.path().join("o/.wh..wh..opq"), "").unwrap();
    fs::write(top.path().join("o/mine"), "x").unwrap();
    let t = tree(&[top.path(), low.path()]);
    assert_eq!(names(&t, ROOT_INO), ["a", "d", "o"]);
    let (a, attr) = t.lookup(ROOT_INO, OsStr::new("a")).unwrap();
    assert_eq!(attr.size, 3);
    assert_eq!(a.state.read().layer, 0);
    let (d, _) = t.lookup(ROOT_INO, OsStr::new("d")).unwrap();
    assert_eq!(names(&t, d.ino), ["new", "old", "sub"]);
    let (o, _) = t.lookup(ROOT_INO, OsStr::new("o")).unwrap();
    assert_eq!(names(&t, o.ino), ["mine"]);
    assert!(t.lookup(ROOT_INO, OsStr::new("gone")).is_err());
    // forget drops nodes; the number comes back the same
    let n = t.node_count();
    let ino_a = a.ino;
    drop(a);
    t.forget(ino_a, 1);
    assert_eq!(t.node_count(), n - 1);
    let (a2, _) = t.lookup(ROOT_INO, OsStr::new("a")).unwrap();
    assert_eq!(a2.ino, ino_a);
}

#[test]
fn three_layers_end_hide_and_merge() {
    let (top, mid, low) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    fs::create_dir_all(top.path().join("d")).unwrap();
    fs::write(top.path().join("d/t"), "").unwrap();
    fs::write(top.path().join(".wh.w"), "").unwrap();
    fs::write(top.path().join("x"), "top").unwrap();
    fs::write(top.path().join(".wh.x"), "").unwrap();
    // A file under the directory ends it: the directory below it does not merge in.
    fs::write(mid.path().join("d"), "").unwrap();
    fs::write(mid.path().join("w"), "").unwrap();
    fs::create_dir_all(mid.path().join("e/m")).unwrap();
    fs::write(mid.path().join("x"), "mid").unwrap();
    fs::create_dir_all(low.path().join("d/under")).unwrap();
    fs::write(low.path().join("w"), "").unwrap();
    fs::create_dir_all(low.path().join("e/l")).unwrap();
    fs::write(low.path().join("only_low"), "").unwrap();
    let t = tree(&[top.path(), mid.path(), low.path()]);
    assert_eq!(names(&t, ROOT_INO), ["d", "e", "only_low", "x"]);
    let root = t.listing(ROOT_INO).unwrap();
    assert_eq!(root.get(OsStr::new("e")).unwrap().dir_layers[..], [1, 2]);
    assert_eq!(root.get(OsStr::new("d")).unwrap().dir_layers[..], [0]);
    assert_eq!(root.get(OsStr::new("only_low")).unwrap().layer, 2);
    let (x, attr) = t.lookup(ROOT_INO, OsStr::new("x")).unwrap();
    assert_eq!((x.state.read().layer, attr.size), (0, 3));
    let (d, _) = t.lookup(ROOT_INO, OsStr::new("d")).unwrap();
    assert_eq!(names(&t, d.ino), ["t"]);
    let (e, _) = t.lookup(ROOT_INO, OsStr::new("e")).unwrap();
    assert_eq!(names(&t, e.ino), ["l", "m"]);
}

#[test]
fn no_xattrs_cache_and_override() {
    let low = tempfile::tempdir().unwrap();
    fs::write(low.path().join("plain"), "x").unwrap();
    fs::write(low.path().join("forced"), "x").unwrap();
    let o = meta::OverrideStat::parse(b"7:8:600:file").unwrap();
    if meta::write_override(&low.path().join("forced"), &o).is_err() {
        return; // no user xattrs on this filesystem: nothing to check
    }
    let t = tree(&[low.path()]);
    let (plain, _) = t.lookup(ROOT_INO, OsStr::new("plain")).unwrap();
    assert!(t.no_xattrs(&plain));
    let (forced, attr) = t.lookup(ROOT_INO, OsStr::new("forced")).unwrap();
    assert!(!t.no_xattrs(&forced));
    assert_eq!((attr.uid, attr.gid, attr.perm), (7, 8, 0o600));
}

#[test]
fn a_number_met_under_another_name_takes_that_name() {
    // A deleted file's backing inode number given to a new file before the kernel forgot
    // the old node: the node must answer for the new name (and parent) from then on.
    let low = tempfile::tempdir().unwrap();
    fs::create_dir_all(low.path().join("d1")).unwrap();
    fs::create_dir_all(low.path().join("d2")).unwrap();
    let t = tree(&[low.path()]);
    let (d1, _) = t.lookup(ROOT_INO, OsStr::new("d1")).unwrap();
    let (d2, _) = t.lookup(ROOT_INO, OsStr::new("d2")).unwrap();
    let entry = |name: &str, kind| DirEntry {
        name: OsStr::new(name).into(),
        ino: 77,
        kind,
        layer: 0,
        dir_layers: Box::default(),
    };
    let old = t
        .get_or_insert(d1.ino, &entry("b", FileKind::RegularFile))
        .unwrap();
    assert_eq!(t.path_of(old.ino).unwrap(), Path::new("d1/b"));
    let new = t
        .get_or_insert(d2.ino, &entry("c", FileKind::Symlink))
        .unwrap();
    assert!(Arc::ptr_eq(&old, &new));
    assert_eq!(t.path_of(new.ino).unwrap(), Path::new("d2/c"));
    assert_eq!(new.state.read().kind, FileKind::Symlink);
    // The child count moved with it: d1 can go, d2 cannot while its child lives.
    t.forget(d1.ino, 1);
    assert!(
        t.node(d1.ino).is_err(),
        "d1 kept alive by a child it no longer has"
    );
    t.forget(d2.ino, 1);
    assert!(t.node(d2.ino).is_ok(), "d2 dropped while its child lives");
    t.forget(new.ino, 2);
    assert!(t.node(d2.ino).is_err());
}

#[test]
fn a_number_met_again_whose_old_name_holds_another_file_takes_the_new_name() {
    // useradd's pattern: `passwd+` renamed over `passwd`, then a new `shadow-` gets the
    // freed backing number of the old `passwd` before the kernel forgot its node. The old
    // name still exists but is another file: the node is not a hard link to it, and a
    // chmod of `shadow-` must not reach `passwd`.
    let low = tempfile::tempdir().unwrap();
    fs::write(low.path().join("passwd"), "old").unwrap();
    fs::write(low.path().join("passwd+"), "new").unwrap();
    let t = tree(&[low.path()]);
    let (old, _) = t.lookup(ROOT_INO, OsStr::new("passwd")).unwrap();
    fs::rename(low.path().join("passwd+"), low.path().join("passwd")).unwrap();
    let entry = DirEntry {
        name: OsStr::new("shadow-").into(),
        ino: old.ino,
        kind: FileKind::RegularFile,
        layer: 0,
        dir_layers: Box::default(),
    };
    let new = t.get_or_insert(ROOT_INO, &entry).unwrap();
    assert!(Arc::ptr_eq(&old, &new));
    assert_eq!(t.path_of(new.ino).unwrap(), Path::new("shadow-"));
}

#[test]
fn a_node_moved_after_its_forget_leaves_the_child_counts_alone() {
    // A rename holding a node that a FORGET dropped meanwhile: the move must not take the
    // node off its old parent's count a second time (that parent then went while another
    // child lived: ESTALE for that child) nor count it in the new parent (kept forever).
    let low = tempfile::tempdir().unwrap();
    fs::create_dir_all(low.path().join("d1")).unwrap();
    fs::create_dir_all(low.path().join("d2")).unwrap();
    fs::write(low.path().join("d1/f"), "").unwrap();
    fs::write(low.path().join("d1/h"), "").unwrap();
    let t = tree(&[low.path()]);
    let (d1, _) = t.lookup(ROOT_INO, OsStr::new("d1")).unwrap();
    let (d2, _) = t.lookup(ROOT_INO, OsStr::new("d2")).unwrap();
    let (f, _) = t.lookup(d1.ino, OsStr::new("f")).unwrap();
    let (h, _) = t.lookup(d1.ino, OsStr::new("h")).unwrap();
    t.forget(f.ino, 1);
    t.reparent(&f, d2.ino, OsStr::new("g").into());
    t.forget(d1.ino, 1);
    assert_eq!(t.path_of(h.ino).unwrap(), Path::new("d1/h"));
    t.forget(d2.ino, 1);
    assert!(t.node(d2.ino).is_err(), "d2 kept by a child it never had");
}

#[test]
fn a_node_whose_path_shows_another_kind_of_file_is_stale() {
    // Attributes of a directory for the kernel's inode of a file make that inode bad (EIO
    // for every request on it): ESTALE instead, which a request by path answers by looking
    // the name up again.
    let low = tempfile::tempdir().unwrap();
    fs::write(low.path().join("a"), "x").unwrap();
    let t = tree(&[low.path()]);
    let (a, _) = t.lookup(ROOT_INO, OsStr::new("a")).unwrap();
    assert!(t.getattr(a.ino).is_ok());
    fs::remove_file(low.path().join("a")).unwrap();
    fs::create_dir(low.path().join("a")).unwrap();
    let e = t.getattr(a.ino).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ESTALE));
}

#[test]
fn a_look_up_whose_cached_entry_is_another_kind_than_the_disk_merges_again() {
    // A cached listing that says "file" where the layer now has a directory: the look-up
    // must not answer with the file's node and the directory's attributes (the kernel's
    // inode of that number would go bad: EIO).
    let low = tempfile::tempdir().unwrap();
    fs::write(low.path().join("a"), "x").unwrap();
    let t = tree(&[low.path()]);
    let (a, _) = t.lookup(ROOT_INO, OsStr::new("a")).unwrap();
    // Made before the file goes, so that it cannot get the file's inode number.
    fs::create_dir(low.path().join("b")).unwrap();
    fs::remove_file(low.path().join("a")).unwrap();
    fs::rename(low.path().join("b"), low.path().join("a")).unwrap();
    let (d, attr) = t.lookup(ROOT_INO, OsStr::new("a")).unwrap();
    assert_eq!(attr.kind, FileKind::Directory);
    assert_eq!(d.state.read().kind, FileKind::Directory);
    assert_ne!(d.ino, a.ino);
}
