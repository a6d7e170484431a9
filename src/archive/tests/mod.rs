//! Tests of layer archives: hostile input, whiteouts, duplicates, determinism, round trips.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Cursor, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;
use crate::layer::whiteout;
use crate::store::{CreateOpts, LayerKind};
use crate::sys;

struct Fixture {
    _tmp: tempfile::TempDir,
    store: Store,
    sentinel: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let sentinel = tmp.path().join("sentinel");
    std::fs::create_dir(&sentinel).unwrap();
    std::fs::write(sentinel.join("file"), b"precious").unwrap();
    Fixture {
        _tmp: tmp,
        store,
        sentinel,
    }
}

impl Fixture {
    fn layer(&self, id: &str, parent: Option<&str>) -> PathBuf {
        let maps = IdMappings::default();
        self.store
            .create(
                id,
                parent,
                LayerKind::ReadOnly,
                &CreateOpts::default(),
                &maps,
            )
            .unwrap();
        self.store.diff_dir(id)
    }

    fn apply(&self, id: &str, tar: &[u8]) -> Result<u64> {
        apply_layer(
            &self.store,
            id,
            &mut Cursor::new(tar),
            &IdMappings::default(),
        )
    }

    fn export(&self, id: &str) -> Vec<u8> {
        let mut out = Vec::new();
        export_layer(&self.store, id, &mut out, &IdMappings::default()).unwrap();
        out
    }

    /// Listing of the sentinel with contents, to prove nothing outside changed.
    fn sentinel_state(&self) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(&self.sentinel)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let data = std::fs::read(&p).unwrap_or_default();
                (p.display().to_string(), data)
            })
            .collect();
        v.sort();
        v
    }
}

/// A tar entry with raw bytes for name and link name (the tar crate's builder refuses `..`).
fn raw_entry(out: &mut Vec<u8>, name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o755);
    h.set_mtime(1_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn end(mut v: Vec<u8>) -> Vec<u8> {
    v.extend_from_slice(&[0u8; 1024]);
    v
}

fn build(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut v = Vec::new();
    for (n, k, l, d) in entries {
        raw_entry(&mut v, n.as_bytes(), *k, l.as_bytes(), d);
    }
    end(v)
}

use tar::EntryType as T;

#[test]
fn hostile_archives_are_refused_and_leave_nothing() {
    let f = fixture();
    let s = f.sentinel.display().to_string();
    let sfile = format!("{s}/file");
    let before = f.sentinel_state();
    let mut truncated = Vec::new();
    raw_entry(&mut truncated, b"big", T::Regular, b"", &[7u8; 1000]);
    truncated.truncate(512 + 10);
    let mut huge = Vec::new();
    raw_entry(&mut huge, b"huge", T::Regular, b"", b"x");
    {
        let mut h = tar::Header::new_old();
        h.as_mut_bytes().copy_from_slice(&huge[..512]);
        h.as_old_mut().size = *b"77777777777\0";
        h.set_cksum();
        huge[..512].copy_from_slice(h.as_bytes());
    }
    let mut corrupt = build(&[("ok", T::Regular, "", b"data")]);
    corrupt[100] ^= 0xff;
    let corpus: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", build(&[("../evil", T::Regular, "", b"x")])),
        (
            "dotdot-deep",
            build(&[("a/../../evil", T::Regular, "", b"x")]),
        ),
        (
            "absolute-escape",
            build(&[("/../sentinel/evil", T::Regular, "", b"x")]),
        ),
        (
            "symlink-write-through",
            build(&[
                ("link", T::Symlink, &s, b""),
                ("link/evil", T::Regular, "", b"x"),
            ]),
        ),
        (
            "relative-symlink-write-through",
            build(&[
                ("up", T::Symlink, "../../..", b""),
                ("up/evil", T::Regular, "", b"x"),
            ]),
        ),
        (
            "symlink-dir-create",
            build(&[
                ("link", T::Symlink, &s, b""),
                ("link/newdir", T::Directory, "", b""),
            ]),
        ),
        (
            "hardlink-dotdot",
            build(&[("hl", T::Link, "../sentinel/file", b"")]),
        ),
        ("hardlink-absolute", build(&[("hl", T::Link, &sfile, b"")])),
        (
            "hardlink-through-symlink",
            build(&[("s", T::Symlink, &s, b""), ("hl", T::Link, "s/file", b"")]),
        ),
        ("bare-whiteout", build(&[(".wh.", T::Regular, "", b"")])),
        ("whiteout-dotdot", build(&[(".wh...", T::Regular, "", b"")])),
        ("truncated", truncated),
        ("huge-size", end(huge)),
        ("corrupt-checksum", corrupt),
        (
            "replace-file-by-symlink-then-write",
            build(&[
                ("x", T::Regular, "", b"a"),
                ("x", T::Symlink, &s, b""),
                ("x/evil", T::Regular, "", b"x"),
            ]),
        ),
        (
            "replace-dir-by-symlink-then-write",
            build(&[
                ("d", T::Directory, "", b""),
                ("d/keep", T::Regular, "", b"a"),
                ("d", T::Symlink, &s, b""),
                ("d/evil", T::Regular, "", b"x"),
            ]),
        ),
        ("root-replaced", build(&[(".", T::Regular, "", b"x")])),
    ];
    for (i, (what, tar)) in corpus.iter().enumerate() {
        let id = format!("l{i}");
        let dir = f.layer(&id, None);
        let err = f.apply(&id, tar).expect_err(what);
        assert!(
            matches!(
                err,
                Error::UnsafeEntry { .. } | Error::MalformedArchive { .. }
            ),
            "{what}: unexpected error {err}"
        );
        assert_eq!(f.sentinel_state(), before, "{what} touched the outside");
        assert!(
            std::fs::read_dir(&dir).unwrap().next().is_none(),
            "{what} left files"
        );
        assert!(!f.sentinel.join("evil").exists(), "{what}");
        // The layer is usable again afterwards.
        f.apply(&id, &build(&[("fine", T::Regular, "", b"ok")]))
            .unwrap_or_else(|e| panic!("{what}: layer not reusable: {e}"));
    }
}

#[test]
fn error_names_the_entry() {
    let f = fixture();
    f.layer("l", None);
    let err = f
        .apply(
            "l",
            &build(&[
                ("ok", T::Regular, "", b""),
                ("a/../../x", T::Regular, "", b""),
            ]),
        )
        .unwrap_err();
    assert!(err.to_string().contains("a/../../x"), "{err}");
}

#[test]
fn replacing_a_symlink_by_a_file_stays_inside() {
    let f = fixture();
    let before = f.sentinel_state();
    let dir = f.layer("l", None);
    let target = format!("{}/file", f.sentinel.display());
    f.apply(
        "l",
        &build(&[
            ("x", T::Symlink, &target, b""),
            ("x", T::Regular, "", b"new content"),
        ]),
    )
    .unwrap();
    assert_eq!(f.sentinel_state(), before);
    let m = std::fs::symlink_metadata(dir.join("x")).unwrap();
    assert!(m.is_file());
    assert_eq!(std::fs::read(dir.join("x")).unwrap(), b"new content");
}

#[test]
fn refuses_non_empty_layer() {
    let f = fixture();
    let dir = f.layer("l", None);
    std::fs::write(dir.join("x"), b"").unwrap();
    assert!(matches!(
        f.apply("l", &build(&[])),
        Err(Error::LayerNotEmpty { .. })
    ));
}

#[test]
fn whiteouts_become_markers_and_export_back() {
    let f = fixture();
    let dir = f.layer("l", None);
    let tar = build(&[
        ("d", T::Directory, "", b""),
        ("d/.wh..wh..opq", T::Regular, "", b""),
        ("d/new", T::Regular, "", b"n"),
        (".wh.gone", T::Regular, "", b""),
        ("sub/.wh.x", T::Regular, "", b""),
    ]);
    assert_eq!(f.apply("l", &tar).unwrap(), 1);
    assert!(whiteout::is_opaque_dir(&dir.join("d")));
    assert!(dir.join(".wh.gone").exists());
    assert!(dir.join("sub/.wh.x").exists());
    let names = tar_names(&f.export("l"));
    assert_eq!(
        names,
        vec![
            ".wh.gone",
            "d",
            "d/.wh..wh..opq",
            "d/new",
            "sub",
            "sub/.wh.x"
        ]
    );
}

#[test]
fn foreign_whiteout_formats_export_as_wh_entries() {
    let f = fixture();
    let dir = f.layer("l", None);
    std::fs::create_dir(dir.join("opq")).unwrap();
    sys::lsetxattr(&dir.join("opq"), "user.overlay.opaque", b"y").unwrap();
    let fd = sys::open_dir(&dir).unwrap();
    sys::mknodat(fd.as_fd(), Path::new("dev0"), libc::S_IFCHR | 0o600, 0).unwrap();
    let names = tar_names(&f.export("l"));
    assert_eq!(names, vec![".wh.dev0", "opq", "opq/.wh..wh..opq"]);
    // And no internal xattr leaked into the archive.
    let tar = f.export("l");
    assert!(!tar.windows(13).any(|w| w == b"overlay.opaqu"));
}

fn tar_names(tar: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(Cursor::new(tar));
    a.entries()
        .unwrap()
        .map(|e| {
            String::from_utf8_lossy(&e.unwrap().path_bytes())
                .trim_end_matches('/')
                .to_string()
        })
        .collect()
}

#[test]
fn duplicate_paths_follow_oci_rules() {
    let f = fixture();
    let dir = f.layer("l", None);
    let mut v = Vec::new();
    raw_entry(&mut v, b"d", T::Directory, b"", b"");
    raw_entry(&mut v, b"d/child", T::Regular, b"", b"c");
    // Dir over dir: keeps the children, takes the new mode.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(T::Directory);
    h.set_mode(0o700);
    h.set_size(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_path("d").unwrap();
    h.set_cksum();
    v.extend_from_slice(h.as_bytes());
    raw_entry(&mut v, b"f", T::Directory, b"", b"");
    raw_entry(&mut v, b"f/inner", T::Regular, b"", b"i");
    // File over dir: replaces the whole directory.
    raw_entry(&mut v, b"f", T::Regular, b"", b"file now");
    // Dir over file.
    raw_entry(&mut v, b"g", T::Regular, b"", b"g");
    raw_entry(&mut v, b"g", T::Directory, b"", b"");
    f.apply("l", &end(v)).unwrap();
    assert_eq!(std::fs::read(dir.join("d/child")).unwrap(), b"c");
    assert_eq!(
        std::fs::metadata(dir.join("d"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o700
    );
    assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"file now");
    assert!(dir.join("g").is_dir());
}

#[test]
fn hard_links_and_size() {
    let f = fixture();
    let dir = f.layer("l", None);
    let tar = build(&[
        ("a", T::Regular, "", b"12345"),
        ("b", T::Link, "a", b""),
        ("sub/c", T::Link, "./a", b""),
        ("other", T::Regular, "", b"xy"),
    ]);
    assert_eq!(f.apply("l", &tar).unwrap(), 7);
    assert_eq!(layer_diff_size(&f.store, "l").unwrap(), 7);
    let ino = |p: &str| std::fs::metadata(dir.join(p)).unwrap().ino();
    assert_eq!(ino("a"), ino("b"));
    assert_eq!(ino("a"), ino("sub/c"));
    let tar = f.export("l");
    let mut a = tar::Archive::new(Cursor::new(&tar));
    let kinds: Vec<_> = a
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().display().to_string(),
                e.header().entry_type(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("a".to_string(), T::Regular),
            ("b".to_string(), T::Link),
            ("other".to_string(), T::Regular),
            ("sub".to_string(), T::Directory),
            ("sub/c".to_string(), T::Link),
        ]
    );
}

#[test]
fn changes_look_through_parents() {
    let f = fixture();
    let base = f.layer("base", None);
    for d in ["keep", "opq", "gone"] {
        std::fs::create_dir(base.join(d)).unwrap();
    }
    std::fs::write(base.join("keep/f"), b"1").unwrap();
    std::fs::write(base.join("opq/old1"), b"1").unwrap();
    std::fs::write(base.join("opq/old2"), b"1").unwrap();
    std::fs::write(base.join("gone/x"), b"1").unwrap();
    let mid = f.layer("mid", Some("base"));
    std::fs::create_dir(mid.join("opq")).unwrap();
    let fd = sys::open_dir(&mid.join("opq")).unwrap();
    whiteout::write_whiteout(fd.as_fd(), OsStr::new("old2")).unwrap();
    let top = f.layer("top", Some("mid"));
    std::fs::create_dir_all(top.join("keep")).unwrap();
    std::fs::write(top.join("keep/f"), b"2").unwrap();
    std::fs::write(top.join("keep/new"), b"2").unwrap();
    std::fs::create_dir(top.join("opq")).unwrap();
    std::fs::write(top.join("opq/old1"), b"replaced").unwrap();
    std::fs::write(top.join("opq/fresh"), b"").unwrap();
    let fd = sys::open_dir(&top.join("opq")).unwrap();
    whiteout::write_opaque(fd.as_fd()).unwrap();
    let fd = sys::open_dir(&top).unwrap();
    whiteout::write_whiteout(fd.as_fd(), OsStr::new("gone")).unwrap();
    let ch: Vec<(String, ChangeKind)> = layer_changes(&f.store, "top")
        .unwrap()
        .into_iter()
        .map(|c| (c.path, c.kind))
        .collect();
    use ChangeKind::*;
    let want = vec![
        ("/gone".to_string(), Delete),
        ("/keep".to_string(), Modify),
        ("/keep/f".to_string(), Modify),
        ("/keep/new".to_string(), Add),
        ("/opq".to_string(), Modify),
        ("/opq/fresh".to_string(), Add),
        ("/opq/old1".to_string(), Modify),
    ];
    assert_eq!(ch, want);
    // A whiteout in `mid` hides old2 from `top`'s view of the parents.
    assert!(lower_lookup(&[mid.clone(), base.clone()], Path::new("opq/old2")).is_none());
    assert!(lower_lookup(&[mid, base], Path::new("opq/old1")).is_some());
}

#[test]
fn opaque_dir_deletes_lower_children() {
    let f = fixture();
    let base = f.layer("base", None);
    std::fs::create_dir(base.join("d")).unwrap();
    std::fs::write(base.join("d/a"), b"").unwrap();
    std::fs::write(base.join("d/b"), b"").unwrap();
    let top = f.layer("top", Some("base"));
    std::fs::create_dir(top.join("d")).unwrap();
    std::fs::write(top.join("d/a"), b"x").unwrap();
    let fd = sys::open_dir(&top.join("d")).unwrap();
    whiteout::write_opaque(fd.as_fd()).unwrap();
    let ch = layer_changes(&f.store, "top").unwrap();
    let got: Vec<_> = ch.iter().map(|c| (c.path.as_str(), c.kind)).collect();
    assert_eq!(
        got,
        vec![
            ("/d", ChangeKind::Modify),
            ("/d/a", ChangeKind::Modify),
            ("/d/b", ChangeKind::Delete)
        ]
    );
}

#[test]
fn getter_reads_and_refuses_escapes() {
    let f = fixture();
    let dir = f.layer("l", None);
    std::fs::write(dir.join("x"), b"hello").unwrap();
    std::os::unix::fs::symlink(f.sentinel.join("file"), dir.join("out")).unwrap();
    let mut g = layer_getter(&f.store, "l").unwrap();
    let mut s = String::new();
    g.get("/x").unwrap().read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello");
    assert!(matches!(
        g.get("../sentinel/file"),
        Err(Error::UnsafeEntry { .. })
    ));
    assert!(matches!(g.get("out"), Err(Error::UnsafeEntry { .. })));
    g.close().unwrap();
    assert!(g.get("x").is_err());
}

#[test]
fn compare_trees_naive() {
    let d = tempfile::tempdir().unwrap();
    let (old, new) = (d.path().join("old"), d.path().join("new"));
    for t in [&old, &new] {
        std::fs::create_dir_all(t.join("dir/sub")).unwrap();
        std::fs::write(t.join("same"), b"s").unwrap();
        std::fs::write(t.join("dir/sub/f"), b"1").unwrap();
    }
    crate::layer::copy::copy_tree_contents(&old, &d.path().join("x")).ok();
    // Make `same` identical in times too.
    let t = std::fs::metadata(old.join("same"))
        .unwrap()
        .modified()
        .unwrap();
    std::fs::File::options()
        .write(true)
        .open(new.join("same"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    let t = std::fs::metadata(old.join("dir/sub/f"))
        .unwrap()
        .modified()
        .unwrap();
    std::fs::write(new.join("dir/sub/f"), b"22").unwrap();
    std::fs::File::options()
        .write(true)
        .open(new.join("dir/sub/f"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    std::fs::write(new.join("added"), b"a").unwrap();
    std::fs::create_dir(new.join("newdir")).unwrap();
    std::fs::write(new.join("newdir/in"), b"").unwrap();
    std::fs::remove_dir_all(old.join("dir/sub")).ok();
    std::fs::create_dir_all(old.join("dir/sub")).unwrap();
    std::fs::write(old.join("dir/sub/f"), b"1").unwrap();
    std::fs::File::options()
        .write(true)
        .open(old.join("dir/sub/f"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    std::fs::write(old.join("deleted"), b"").unwrap();
    let ch = compare_trees(Some(&old), &new).unwrap();
    let got: Vec<_> = ch.iter().map(|c| (c.path.as_str(), c.kind)).collect();
    use ChangeKind::*;
    assert_eq!(
        got,
        vec![
            ("/added", Add),
            ("/deleted", Delete),
            ("/dir", Modify),
            ("/dir/sub", Modify),
            ("/dir/sub/f", Modify),
            ("/newdir", Add),
            ("/newdir/in", Add),
        ]
    );
    assert_eq!(changes_size(&new, &ch).unwrap(), 3);
    let mut out = Vec::new();
    export_changes(&new, &ch, &mut out).unwrap();
    assert_eq!(
        tar_names(&out),
        vec![
            "added",
            ".wh.deleted",
            "dir",
            "dir/sub",
            "dir/sub/f",
            "newdir",
            "newdir/in"
        ]
    );
}

#[test]
fn merged_mode_applies_whiteouts_to_a_copy() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("l");
    std::fs::create_dir_all(dir.join("opq")).unwrap();
    std::fs::write(dir.join("opq/lower"), b"").unwrap();
    std::fs::write(dir.join("gone"), b"").unwrap();
    std::fs::write(dir.join("stay"), b"").unwrap();
    let tar = build(&[
        ("opq", T::Directory, "", b""),
        ("opq/mine", T::Regular, "", b"m"),
        ("opq/.wh..wh..opq", T::Regular, "", b""),
        (".wh.gone", T::Regular, "", b""),
        (".wh.never-existed", T::Regular, "", b""),
        ("nodir/.wh.x", T::Regular, "", b""),
    ]);
    apply_to_dir(
        &dir,
        &mut Cursor::new(tar),
        &IdMappings::default(),
        ApplyMode::Merged,
        None,
    )
    .unwrap();
    assert!(dir.join("opq/mine").exists());
    assert!(!dir.join("opq/lower").exists());
    assert!(!dir.join("gone").exists());
    assert!(dir.join("stay").exists());
    assert!(!dir.join(".wh.gone").exists());
    assert!(!dir.join("opq/.wh..wh..opq").exists());
}

mod round_trip;

/// A deleted name too long for a `.wh.` marker (over 251 bytes) is a 0/0 device in a layer
/// directory; it goes into a layer tar as `.wh.NAME` (a long name the tar crate carries in a
/// GNU long-name record) and comes back out of the tar as a device again.
#[test]
fn whiteouts_of_names_too_long_for_a_marker_round_trip() {
    if !sys::is_root() {
        return; // mknod of a device needs root before Linux 5.8
    }
    let t = tempfile::tempdir().unwrap();
    let (layer, back) = (t.path().join("layer"), t.path().join("back"));
    std::fs::create_dir_all(&layer).unwrap();
    std::fs::create_dir_all(&back).unwrap();
    let long = OsStr::from_bytes(&[b'n'; 253]).to_os_string();
    let short = OsStr::new("gone");
    let fd = sys::open_dir(&layer).unwrap();
    whiteout::write_whiteout(fd.as_fd(), &long).unwrap();
    whiteout::write_whiteout(fd.as_fd(), short).unwrap();
    let st = sys::fstatat(fd.as_fd(), Path::new(&long)).unwrap();
    assert!(whiteout::is_whiteout_device(&st));
    let mut tar = Vec::new();
    export_dir(&layer, &mut tar, &Default::default()).unwrap();
    let mut names = Vec::new();
    for e in tar::Archive::new(tar.as_slice()).entries().unwrap() {
        names.push(e.unwrap().path_bytes().into_owned());
    }
    let mut want_long = b".wh.".to_vec();
    want_long.extend_from_slice(long.as_bytes());
    assert!(names.contains(&want_long), "{names:?}");
    apply_to_dir(
        &back,
        &mut tar.as_slice(),
        &Default::default(),
        ApplyMode::Layer,
        None,
    )
    .unwrap();
    let bfd = sys::open_dir(&back).unwrap();
    let st = sys::fstatat(bfd.as_fd(), Path::new(&long)).unwrap();
    assert!(whiteout::is_whiteout_device(&st));
    assert!(sys::fstatat(bfd.as_fd(), Path::new(".wh.gone")).is_ok());
}
