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

// ---- round trips -------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Kind {
    File(Vec<u8>),
    Dir { opaque: bool },
    Symlink(String),
    HardLink(usize),
    Fifo,
    Dev(bool, u32, u32),
    Whiteout,
}

#[derive(Debug, Clone)]
struct Op {
    path: Vec<u8>,
    kind: Kind,
    mode: u32,
    owner: (u32, u32),
    xattr: Option<Vec<u8>>,
    mtime: i64,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let name = prop::sample::select(vec!["a", "b", "c d", "é", ".hidden", "x.wh.y"]);
    let path = prop::collection::vec(name, 1..4).prop_map(|v| v.join("/").into_bytes());
    let kind = prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Kind::File),
        3 => any::<bool>().prop_map(|opaque| Kind::Dir { opaque }),
        1 => "[a-z/.]{1,20}".prop_map(Kind::Symlink),
        1 => (0usize..8).prop_map(Kind::HardLink),
        1 => Just(Kind::Fifo),
        1 => (any::<bool>(), 1u32..300, 1u32..300).prop_map(|(c, a, b)| Kind::Dev(c, a, b)),
        1 => Just(Kind::Whiteout),
    ];
    (
        path,
        kind,
        prop::sample::select(vec![0o755u32, 0o644, 0o4755, 0o1777, 0o600, 0o2711]),
        prop::sample::select(vec![(0u32, 0u32), (1, 2), (1000, 100), (65534, 65534)]),
        // The tar crate (0.4.46) splits PAX records at '\n', so values holding one cannot be
        // read back; a known limitation reported upstream-style in the archive docs.
        prop::option::of(prop::collection::vec(
            any::<u8>().prop_filter("no newline", |b| *b != b'\n'),
            0..20,
        )),
        0i64..2_000_000_000,
    )
        .prop_map(|(path, kind, mode, owner, xattr, mtime)| Op {
            path,
            kind,
            mode,
            owner,
            xattr,
            mtime,
        })
}

/// Build a layer tree by applying ops directly to the directory (skipping impossible ones).
fn materialize(root: &Path, ops: &[Op]) {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut dirs: Vec<(PathBuf, u32, i64)> = Vec::new();
    for op in ops {
        let p = root.join(OsStr::from_bytes(&op.path));
        let parent = p.parent().unwrap();
        if std::fs::create_dir_all(parent).is_err() {
            continue;
        }
        if std::fs::symlink_metadata(&p).is_ok() {
            continue;
        }
        // A parent reached through a symlink (O_NOFOLLOW refuses it): not a layer tree.
        let Ok(pfd) = sys::open_dir(parent) else {
            continue;
        };
        let base = Path::new(p.file_name().unwrap());
        let made = match &op.kind {
            Kind::File(data) => {
                std::fs::write(&p, data).unwrap();
                files.push(p.clone());
                true
            }
            Kind::Dir { opaque } => {
                std::fs::create_dir(&p).unwrap();
                if *opaque {
                    whiteout::write_opaque(sys::open_dir(&p).unwrap().as_fd()).unwrap();
                }
                if let Some(x) = &op.xattr {
                    sys::lsetxattr(&p, "user.test", x).unwrap();
                }
                std::os::unix::fs::lchown(&p, Some(op.owner.0), Some(op.owner.1)).unwrap();
                dirs.push((p.clone(), op.mode, op.mtime));
                false
            }
            Kind::Symlink(t) => {
                std::os::unix::fs::symlink(t, &p).unwrap();
                let _ = std::os::unix::fs::lchown(&p, Some(op.owner.0), Some(op.owner.1));
                false
            }
            Kind::HardLink(i) if !files.is_empty() => {
                let src = &files[i % files.len()];
                // A link shares the inode's attributes: nothing more to set.
                let _ = std::fs::hard_link(src, &p);
                false
            }
            Kind::HardLink(_) => false,
            Kind::Fifo => {
                sys::mknodat(pfd.as_fd(), base, libc::S_IFIFO | 0o600, 0).unwrap();
                true
            }
            Kind::Dev(c, a, b) => {
                let ty = if *c { libc::S_IFCHR } else { libc::S_IFBLK };
                sys::mknodat(pfd.as_fd(), base, ty | 0o600, sys::makedev(*a, *b)).unwrap();
                true
            }
            Kind::Whiteout => {
                whiteout::write_whiteout(pfd.as_fd(), p.file_name().unwrap()).unwrap();
                false
            }
        };
        if made {
            std::os::unix::fs::lchown(&p, Some(op.owner.0), Some(op.owner.1)).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(op.mode)).unwrap();
            if let (Some(x), Kind::File(_)) = (&op.xattr, &op.kind) {
                sys::lsetxattr(&p, "user.test", x).unwrap();
            }
            sys::lutimensat(pfd.as_fd(), base, (op.mtime, 0), (op.mtime, 0)).unwrap();
        }
    }
    dirs.reverse();
    for (d, mode, mtime) in dirs {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
        let fd = sys::open_dir(&d).unwrap();
        sys::lutimensat(fd.as_fd(), Path::new(""), (mtime, 0), (mtime, 0)).unwrap();
    }
}

/// Everything a layer means, in a comparable form.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    fn walk(
        root: &Path,
        rel: &Path,
        out: &mut BTreeMap<String, String>,
        inodes: &mut BTreeMap<(u64, u64), String>,
    ) {
        for name in walk::sorted_names(&root.join(rel)).unwrap() {
            let crel = rel.join(&name);
            let p = root.join(&crel);
            let key = crel.display().to_string();
            if whiteout::classify(&name) != whiteout::NameKind::Plain {
                out.insert(key, "marker".into());
                continue;
            }
            let st = sys::lstat(&p).unwrap();
            let ty = st.st_mode & libc::S_IFMT;
            let mut desc = format!("type={ty:o} owner={}:{} ", st.st_uid, st.st_gid);
            if ty != libc::S_IFLNK {
                desc += &format!("mode={:o} ", st.st_mode & 0o7777);
            }
            if ty != libc::S_IFDIR {
                desc += &format!("mtime={} rdev={} ", st.st_mtime, st.st_rdev);
            } else {
                desc += &format!("mtime={} ", st.st_mtime);
            }
            if ty == libc::S_IFREG {
                desc += &format!("data={:?} ", std::fs::read(&p).unwrap());
                if st.st_nlink > 1 {
                    let first = inodes.entry((st.st_dev, st.st_ino)).or_insert(key.clone());
                    desc += &format!("link-group={first} ");
                }
            }
            if ty == libc::S_IFLNK {
                desc += &format!("target={:?} ", std::fs::read_link(&p).unwrap().as_os_str());
            }
            desc += &format!(
                "xattrs={:?} opaque={}",
                walk::public_xattrs(&p).unwrap(),
                ty == libc::S_IFDIR && whiteout::is_opaque_dir(&p)
            );
            out.insert(key, desc);
            if ty == libc::S_IFDIR {
                walk(root, &crel, out, inodes);
            }
        }
    }
    walk(root, Path::new(""), &mut out, &mut inodes);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]
    #[test]
    fn export_apply_round_trips(ops in prop::collection::vec(op_strategy(), 1..30)) {
        let f = fixture();
        let a = f.layer("a", None);
        materialize(&a, &ops);
        let tar1 = f.export("a");
        prop_assert_eq!(&tar1, &f.export("a"), "export is not deterministic");
        let b = f.layer("b", None);
        let size = f.apply("b", &tar1).unwrap();
        prop_assert_eq!(size, layer_diff_size(&f.store, "a").unwrap());
        prop_assert_eq!(snapshot(&a), snapshot(&b));
        let tar2 = f.export("b");
        prop_assert!(tar1 == tar2, "re-export differs");
    }
}

#[test]
fn symlink_targets_are_kept_verbatim() {
    let f = fixture();
    let a = f.layer("a", None);
    let long = format!("./{}//x/", "y".repeat(120));
    std::os::unix::fs::symlink("./.", a.join("s")).unwrap();
    std::os::unix::fs::symlink(&long, a.join("t")).unwrap();
    let tar = f.export("a");
    let b = f.layer("b", None);
    f.apply("b", &tar).unwrap();
    // Compare bytes: `Path` equality ignores `.` components.
    assert_eq!(
        std::fs::read_link(b.join("s")).unwrap().as_os_str(),
        OsStr::new("./.")
    );
    assert_eq!(
        std::fs::read_link(b.join("t")).unwrap().as_os_str(),
        OsStr::new(&long)
    );
}

/// A real root filesystem: set `STRATAFS_ROOTFS_TAR` to an uncompressed rootfs tar (made by
/// `scripts/e2e-rootfs-apply.sh`); compared entry by entry with GNU tar's own listing.
#[test]
fn rootfs_tar_applies_like_gnu_tar_lists_it() {
    let Some(tar_path) = std::env::var_os("STRATAFS_ROOTFS_TAR") else {
        eprintln!("STRATAFS_ROOTFS_TAR not set; skipping the real-archive check");
        return;
    };
    let f = fixture();
    let dir = f.layer("rootfs", None);
    let started = std::time::Instant::now();
    let mut file = std::io::BufReader::new(std::fs::File::open(&tar_path).unwrap());
    let size = apply_layer(&f.store, "rootfs", &mut file, &IdMappings::default()).unwrap();
    eprintln!("apply_layer: {:?}, {size} bytes", started.elapsed());
    let started = std::time::Instant::now();
    let mut sink = std::io::sink();
    export_layer(&f.store, "rootfs", &mut sink, &IdMappings::default()).unwrap();
    eprintln!("export_layer: {:?}", started.elapsed());
    let out = std::process::Command::new("tar")
        .args(["--numeric-owner", "--full-time", "-tvf"])
        .arg(&tar_path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    let mut seen = std::collections::BTreeSet::new();
    let mut checked = 0;
    for line in listing.lines() {
        // perms, uid/gid, size, date, time, name (split again: spaces pad the size column).
        let mut it = line.split_whitespace();
        let perms = it.next().unwrap();
        let owner = it.next().unwrap();
        let size_field = it.next().unwrap();
        let _date = it.next().unwrap();
        let time = it.next().unwrap();
        // --full-time pads entries without sub-second times with spaces.
        let rest = line[line.find(time).unwrap() + time.len()..].trim_start();
        let (name, target) = match perms.as_bytes()[0] {
            b'l' => rest.split_once(" -> ").map(|(a, b)| (a, Some(b))).unwrap(),
            b'h' => rest
                .split_once(" link to ")
                .map(|(a, b)| (a, Some(b)))
                .unwrap(),
            _ => (rest, None),
        };
        let name = name.trim_start_matches("./").trim_end_matches('/');
        if name.is_empty() || name == "." || name.contains('\\') {
            continue;
        }
        seen.insert(name.to_string());
        let p = dir.join(name);
        let st = sys::lstat(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (uid, gid) = owner.split_once('/').unwrap();
        let ty = st.st_mode & libc::S_IFMT;
        let want_ty = match perms.as_bytes()[0] {
            b'd' => libc::S_IFDIR,
            b'-' | b'h' => libc::S_IFREG,
            b'l' => libc::S_IFLNK,
            b'c' => libc::S_IFCHR,
            b'b' => libc::S_IFBLK,
            b'p' => libc::S_IFIFO,
            other => panic!("unexpected type {}", other as char),
        };
        if perms.as_bytes()[0] == b'h' {
            let t = dir.join(target.unwrap().trim_start_matches("./"));
            let tst = sys::lstat(&t).unwrap();
            assert!(
                sys::same_inode(&st, &tst),
                "{name} not linked to its target"
            );
            checked += 1;
            continue;
        }
        assert_eq!(ty, want_ty, "{name}: type");
        assert_eq!(perm_string(st.st_mode), perms[1..], "{name}: mode");
        assert_eq!(
            (st.st_uid.to_string(), st.st_gid.to_string()),
            (uid.to_string(), gid.to_string()),
            "{name}: owner"
        );
        if want_ty == libc::S_IFREG {
            assert_eq!(st.st_size.to_string(), size_field, "{name}: size");
        }
        if let Some(t) = target {
            assert_eq!(
                std::fs::read_link(&p).unwrap().as_os_str(),
                OsStr::new(t),
                "{name}: target"
            );
        }
        checked += 1;
    }
    eprintln!("checked {checked} entries");
    assert!(checked > 1000, "only {checked} entries checked");
}

fn perm_string(mode: u32) -> String {
    let mut s = String::new();
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        let bit = 0o400 >> i;
        let on = mode & bit != 0;
        let special = match i {
            2 => mode & 0o4000 != 0,
            5 => mode & 0o2000 != 0,
            8 => mode & 0o1000 != 0,
            _ => false,
        };
        s.push(match (special, on) {
            (true, true) => {
                if i == 8 {
                    't'
                } else {
                    's'
                }
            }
            (true, false) => {
                if i == 8 {
                    'T'
                } else {
                    'S'
                }
            }
            (false, true) => c,
            (false, false) => '-',
        });
    }
    s
}

/// Timing of export_layer for a layer of 10,000 files against `tar -c` of the same directory.
/// Set `STRATAFS_BENCH=1` (best with `--release`); prints the figures.
#[test]
fn bench_export_10k_files() {
    if std::env::var_os("STRATAFS_BENCH").is_none() {
        eprintln!("STRATAFS_BENCH not set; skipping");
        return;
    }
    let f = fixture();
    let dir = f.layer("many", None);
    for d in 0..100 {
        let sub = dir.join(format!("dir-{d}"));
        std::fs::create_dir(&sub).unwrap();
        for i in 0..100 {
            std::fs::write(sub.join(format!("file-{i}")), vec![(d + i) as u8; 4096]).unwrap();
        }
    }
    let best = |mut run: Box<dyn FnMut()>| {
        (0..3)
            .map(|_| {
                let t = std::time::Instant::now();
                run();
                t.elapsed()
            })
            .min()
            .unwrap()
    };
    let store = f.store.clone();
    let ours = best(Box::new(move || {
        let mut sink = std::io::sink();
        export_layer(&store, "many", &mut sink, &IdMappings::default()).unwrap();
    }));
    let d2 = dir.clone();
    let gnu = best(Box::new(move || {
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C '{}' -cf - . | cat > /dev/null",
                d2.display()
            ))
            .status()
            .unwrap();
        assert!(st.success());
    }));
    eprintln!("export_layer 10,000 files: {ours:?}; tar -c: {gnu:?}");
}
