use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(&d.path().join("stratafs")).unwrap();
    (d, s)
}

fn create(s: &Store, id: &str, parent: Option<&str>) -> Result<LayerRecord> {
    s.create(
        id,
        parent,
        LayerKind::ReadOnly,
        &CreateOpts::default(),
        &IdMappings::default(),
    )
}

#[test]
fn ids_are_validated() {
    for bad in [
        "",
        ".",
        "..",
        "a/b",
        "/abs",
        "nul\0",
        "tab\t",
        &"x".repeat(201),
    ] {
        assert!(
            matches!(validate_id(bad), Err(Error::InvalidId { .. })),
            "{bad:?} accepted"
        );
    }
    for good in [
        "abc",
        "0123abcdef",
        "with space",
        "x-init",
        "ns_3_name",
        &"f".repeat(64),
    ] {
        validate_id(good).unwrap();
    }
    let (_d, s) = store();
    assert!(matches!(
        create(&s, "../escape", None),
        Err(Error::InvalidId { .. })
    ));
    assert!(!s.exists(".."));
}

#[test]
fn create_records_and_chains() {
    let (_d, s) = store();
    create(&s, "base", None).unwrap();
    let mut opts = CreateOpts::default();
    opts.storage_opt.insert("size".into(), "10M".into());
    opts.mount_label = "label".into();
    let top = s
        .create(
            "top",
            Some("base"),
            LayerKind::ReadWrite,
            &opts,
            &IdMappings::default(),
        )
        .unwrap();
    assert_eq!(top.storage_opt.size, Some(10 << 20));
    assert!(s.exists("base") && s.exists("top"));
    assert!(s.diff_dir("top").is_dir());
    assert!(s.work_dir("top").is_dir());
    let chain: Vec<String> = s.chain("top").unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(chain, ["top", "base"]);
    assert_eq!(s.record("top").unwrap(), top);
    assert!(matches!(
        create(&s, "base", None),
        Err(Error::LayerExists(_))
    ));
    assert!(matches!(
        create(&s, "orphan", Some("missing")),
        Err(Error::ParentNotFound { .. })
    ));
    assert!(!s.exists("orphan"));
    let mut bad = CreateOpts::default();
    bad.storage_opt.insert("bogus".into(), "1".into());
    match s.create("x", None, LayerKind::ReadOnly, &bad, &IdMappings::default()) {
        Err(Error::UnknownStorageOpt(k)) => assert_eq!(k, "bogus"),
        other => panic!("unexpected {other:?}"),
    }
    let ids: Vec<String> = s.list().unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, ["base", "top"]);
}

#[test]
fn crash_during_create_leaves_no_layer() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("stratafs");
    let s = Store::open(&home).unwrap();
    // What a crash between staging and rename leaves: a complete-looking layer in tmp/.
    let stage = s.staging_path("ghost");
    fs::create_dir_all(stage.join("diff")).unwrap();
    fs::write(
        stage.join(RECORD),
        b"{\"id\":\"ghost\",\"kind\":\"read-only\"}",
    )
    .unwrap();
    assert!(!s.exists("ghost"));
    assert!(s.list().unwrap().is_empty());
    // Reopening drops the leftover staging.
    let s = Store::open(&home).unwrap();
    assert_eq!(fs::read_dir(home.join(TMP)).unwrap().count(), 0);
    assert!(!s.exists("ghost"));
    // A record that is garbage is reported as corrupt, never trusted.
    fs::create_dir_all(s.layer_dir("bad")).unwrap();
    fs::write(s.layer_dir("bad").join(RECORD), b"not json").unwrap();
    assert!(matches!(s.record("bad"), Err(Error::CorruptLayer { .. })));
}

#[test]
fn remove_refuses_parents_and_missing() {
    let (_d, s) = store();
    create(&s, "a", None).unwrap();
    create(&s, "b", Some("a")).unwrap();
    create(&s, "c", Some("a")).unwrap();
    match s.remove("a") {
        Err(Error::HasChildren { id, children }) => {
            assert_eq!(id, "a");
            assert_eq!(children, ["b", "c"]);
        }
        other => panic!("unexpected {other:?}"),
    }
    fs::write(s.diff_dir("b").join("file"), b"x").unwrap();
    s.remove("b").unwrap();
    s.remove("c").unwrap();
    s.remove("a").unwrap();
    assert!(!s.exists("a"));
    assert!(matches!(s.remove("a"), Err(Error::LayerNotFound(_))));
    assert!(s.list().unwrap().is_empty());
}

#[test]
fn remove_handles_read_only_directories() {
    use std::os::unix::fs::PermissionsExt;
    let (_d, s) = store();
    create(&s, "ro", None).unwrap();
    let sub = s.diff_dir("ro").join("locked");
    fs::create_dir(&sub).unwrap();
    fs::write(sub.join("f"), b"x").unwrap();
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o500)).unwrap();
    s.remove("ro").unwrap();
    assert!(!s.layer_dir("ro").exists());
}

#[test]
fn missing_parent_in_chain_is_named() {
    let (_d, s) = store();
    create(&s, "a", None).unwrap();
    create(&s, "b", Some("a")).unwrap();
    // Someone deletes the parent behind the driver's back.
    fs::remove_dir_all(s.layer_dir("a")).unwrap();
    match s.chain("b") {
        Err(Error::ParentNotFound { id, parent }) => {
            assert_eq!((id.as_str(), parent.as_str()), ("b", "a"))
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn layer_root_gets_mapped_owner() {
    if !crate::sys::is_root() {
        return;
    }
    let (_d, s) = store();
    let m = crate::layer::idmap::IdMap::parse_list("0:100000:65536").unwrap();
    let maps = IdMappings::new(m.clone(), m).unwrap();
    s.create(
        "mapped",
        None,
        LayerKind::ReadOnly,
        &CreateOpts::default(),
        &maps,
    )
    .unwrap();
    use std::os::unix::fs::MetadataExt;
    let md = fs::metadata(s.diff_dir("mapped")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (100000, 100000, 0o755)
    );
}
