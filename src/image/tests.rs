use super::*;

#[path = "../../fuse-tests/image_kit.rs"]
mod kit;

use kit::{Comp, TestImage, E};

fn store() -> (tempfile::TempDir, ImageStore) {
    let d = tempfile::tempdir().unwrap();
    let s = ImageStore::open(&d.path().join("root")).unwrap();
    (d, s)
}

fn sel() -> Selector {
    Selector::default()
}

fn layer_ids(s: &ImageStore) -> Vec<String> {
    s.layers()
        .list()
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect()
}

fn sample() -> TestImage {
    TestImage::new("sample:1", kit::sample_layers())
}

fn merged_names(s: &ImageStore, rec: &ImageRecord) -> Vec<String> {
    let dirs = s.lower_dirs(rec).unwrap();
    diff::merged_index(&dirs)
        .unwrap()
        .keys()
        .map(|p| p.display().to_string())
        .collect()
}

#[test]
fn docker_save_and_oci_layout_give_the_same_image_and_share_layers() {
    let (d, s) = store();
    let img = sample();
    let docker = d.path().join("docker.tar");
    kit::write_tar(&docker, &kit::docker_files(&[&img], Comp::None));
    let oci = d.path().join("oci");
    kit::write_dir(&oci, &kit::oci_files(&[&img], Comp::Gzip));

    let first = s.load(&docker, &sel(), &Quiet).unwrap();
    assert_eq!(first.image.id, img.id());
    assert_eq!(first.unpacked, img.diff_ids());
    assert!(first.reused.is_empty());
    assert_eq!(first.image.tags, ["sample:1"]);

    let second = s.load(&oci, &sel(), &Quiet).unwrap();
    assert_eq!(second.image.id, img.id());
    assert!(second.unpacked.is_empty(), "{:?}", second.unpacked);
    assert_eq!(second.reused, img.diff_ids());
    // The layer now also remembers the gzip blob digest it was seen as.
    let meta = s.layer_meta(&img.diff_ids()[1]).unwrap().unwrap();
    assert_eq!(meta.blob_digests.len(), 1);
    assert_eq!(s.list().unwrap().len(), 1);

    assert_eq!(
        merged_names(&s, &second.image),
        [
            "bin",
            "bin/sh",
            "bin/tool",
            "bin/tool-link",
            "etc",
            "etc/kept",
            "etc/motd",
            "opt",
            "opt/data",
            "opt/data/new"
        ]
    );
    // Layers are kept as plain directories with whiteout markers; topmost first.
    let dirs = s.lower_dirs(&second.image).unwrap();
    assert!(dirs[0].join("etc/.wh.removed").exists());
    assert!(dirs[1].join("etc/removed").exists());
    let cfg = s.config(&second.image).unwrap();
    assert_eq!(
        cfg.config().as_ref().unwrap().cmd().as_deref(),
        Some(&["/bin/sh".to_string()][..])
    );
}

#[test]
fn oci_archive_with_zstd_layers_loads() {
    let (d, s) = store();
    let img = sample();
    let p = d.path().join("oci.tar");
    kit::write_tar(&p, &kit::oci_files(&[&img], Comp::Zstd));
    let r = s.load(&p, &sel(), &Quiet).unwrap();
    assert_eq!(r.image.id, img.id());
    assert_eq!(r.image.layers.len(), 2);
    assert!(r.image.layers[0].blob_digest.is_some());
    assert!(r.image.size() > 0);
}

/// Flip one byte of the first occurrence of `needle` in `data`.
fn flip(data: &mut [u8], needle: &[u8]) {
    let at = data
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present");
    data[at] ^= 0x20;
}

#[test]
fn a_corrupt_layer_is_refused_and_leaves_nothing() {
    let (d, s) = store();
    let img = sample();
    // docker save: layers named by directory, checked against the config's diff_ids.
    let mut files = kit::docker_files(&[&img], Comp::None);
    for (_, data) in files.iter_mut() {
        if data.windows(14).any(|w| w == b"tool version 2") {
            flip(data, b"tool version 2");
        }
    }
    let p = d.path().join("bad.tar");
    kit::write_tar(&p, &files);
    let err = s.load(&p, &sel(), &Quiet).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(s.list().unwrap().is_empty());
    // The base layer was verified and kept; the corrupt one is gone entirely.
    assert_eq!(
        layer_ids(&s),
        [img.diff_ids()[0].trim_start_matches("sha256:")]
    );
    assert_eq!(s.prune().unwrap().len(), 1);
    assert!(layer_ids(&s).is_empty());

    // OCI with gzip: the compressed blob's digest no longer matches.
    let mut files = kit::oci_files(&[&img], Comp::Gzip);
    let blob = img.layers[0].clone();
    let gz = kit::compress(&blob, Comp::Gzip);
    for (_, data) in files.iter_mut() {
        if *data == gz {
            let n = data.len();
            data[n - 5] ^= 1; // in the gzip trailer's length/crc: decoding may still succeed
        }
    }
    let dir = d.path().join("bad-oci");
    kit::write_dir(&dir, &files);
    let err = s.load(&dir, &sel(), &Quiet).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DigestMismatch { .. } | Error::MalformedArchive { .. } | Error::Io { .. }
        ),
        "{err}"
    );
    assert!(layer_ids(&s).is_empty());
    assert!(s.list().unwrap().is_empty());
    // Nothing staged is left either.
    assert_eq!(std::fs::read_dir(s.home().join("tmp")).unwrap().count(), 0);
}

#[test]
fn missing_blobs_truncation_and_artifacts_are_clear_errors() {
    let (d, s) = store();
    let img = sample();
    // A missing layer blob.
    let files: Vec<_> = kit::oci_files(&[&img], Comp::None)
        .into_iter()
        .filter(|(_, data)| *data != img.layers[1])
        .collect();
    let dir = d.path().join("missing");
    kit::write_dir(&dir, &files);
    let err = s.load(&dir, &sel(), &Quiet).unwrap_err();
    assert!(matches!(err, Error::MissingBlob { .. }), "{err}");
    assert!(s.list().unwrap().is_empty());

    // A truncated archive.
    let p = d.path().join("full.tar");
    kit::write_tar(&p, &kit::docker_files(&[&img], Comp::None));
    let full = std::fs::read(&p).unwrap();
    let cut = d.path().join("cut.tar");
    std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
    let err = s.load(&cut, &sel(), &Quiet).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MalformedArchive { .. } | Error::MissingBlob { .. }
        ),
        "{err}"
    );

    // An artifact manifest (config of another media type) is not an image.
    let cfg = b"{}".to_vec();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json",
                   "digest": kit::sha256(&cfg), "size": cfg.len()},
        "layers": [],
    });
    let m = serde_json::to_vec(&manifest).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": kit::sha256(&m), "size": m.len()}]});
    let art = d.path().join("artifact");
    kit::write_dir(
        &art,
        &[
            (
                format!("blobs/sha256/{}", &kit::sha256(&cfg)[7..]),
                cfg.clone(),
            ),
            (format!("blobs/sha256/{}", &kit::sha256(&m)[7..]), m),
            ("index.json".into(), serde_json::to_vec(&index).unwrap()),
        ],
    );
    let err = s.load(&art, &sel(), &Quiet).unwrap_err();
    assert!(matches!(err, Error::NotAnImage(_)), "{err}");
    assert!(layer_ids(&s).is_empty());
}

#[test]
fn tag_index_and_platform_pick_one_image() {
    let (d, s) = store();
    let a = sample();
    let mut b = TestImage::new(
        "other:2",
        vec![
            kit::base_layer(),
            kit::layer_tar(&[E::File("b-only", b"b\n")]),
        ],
    );
    b.arch = "arm64".into();
    let p = d.path().join("two.tar");
    kit::write_tar(&p, &kit::docker_files(&[&a, &b], Comp::None));
    let err = s.load(&p, &sel(), &Quiet).unwrap_err();
    assert!(matches!(err, Error::AmbiguousImage { .. }), "{err}");
    let by_tag = Selector {
        tag: Some("other:2".into()),
        ..sel()
    };
    let r = s.load(&p, &by_tag, &Quiet).unwrap();
    assert_eq!(r.image.id, b.id());
    let by_index = Selector {
        index: Some(0),
        ..sel()
    };
    let r = s.load(&p, &by_index, &Quiet).unwrap();
    assert_eq!(r.image.id, a.id());
    // The shared base was unpacked once.
    assert_eq!(r.reused[0], a.diff_ids()[0]);

    // Two platform manifests listed in index.json: the platform decides.
    let dir = d.path().join("multi");
    kit::write_dir(&dir, &kit::oci_files(&[&a, &b], Comp::Gzip));
    let arm = Selector {
        platform: Some(Platform::parse("linux/arm64").unwrap()),
        ..sel()
    };
    assert_eq!(s.load(&dir, &arm, &Quiet).unwrap().image.id, b.id());
    let amd = Selector {
        platform: Some(Platform::parse("linux/amd64").unwrap()),
        ..sel()
    };
    assert_eq!(s.load(&dir, &amd, &Quiet).unwrap().image.id, a.id());
    let s390 = Selector {
        platform: Some(Platform::parse("linux/s390x").unwrap()),
        ..sel()
    };
    assert!(matches!(
        s.load(&dir, &s390, &Quiet),
        Err(Error::ImageNotFound(_))
    ));
}

#[test]
fn nested_index_is_resolved_by_platform() {
    let (d, s) = store();
    let a = sample();
    let mut b = TestImage::new("x:1", vec![kit::layer_tar(&[E::File("arm", b"arm\n")])]);
    b.arch = "arm64".into();
    let mut files = kit::oci_files(&[&a, &b], Comp::None);
    // Move the two manifests into a nested index, as multi-platform images are stored.
    let (_, top) = files.pop().unwrap();
    let top: serde_json::Value = serde_json::from_slice(&top).unwrap();
    let mut nested = top.clone();
    nested["mediaType"] = "application/vnd.oci.image.index.v1+json".into();
    let nested = serde_json::to_vec(&nested).unwrap();
    let nd = kit::sha256(&nested);
    files.push((format!("blobs/sha256/{}", &nd[7..]), nested.clone()));
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": nd, "size": nested.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi:latest"}}]});
    files.push(("index.json".into(), serde_json::to_vec(&index).unwrap()));
    let p = d.path().join("nested.tar");
    kit::write_tar(&p, &files);
    let arm = Selector {
        platform: Some(Platform::parse("linux/arm64").unwrap()),
        ..sel()
    };
    let r = s.load(&p, &arm, &Quiet).unwrap();
    assert_eq!(r.image.id, b.id());
    assert_eq!(r.image.tags, ["multi:latest"]);
    assert_eq!(s.find("multi").unwrap().id, b.id());
}

#[test]
fn remove_prune_and_find() {
    let (d, s) = store();
    let a = sample();
    let b = TestImage::new(
        "b:1",
        vec![
            kit::base_layer(),
            kit::layer_tar(&[E::File("b-only", b"b\n")]),
        ],
    );
    let pa = d.path().join("a.tar");
    let pb = d.path().join("b.tar");
    kit::write_tar(&pa, &kit::docker_files(&[&a], Comp::None));
    kit::write_tar(&pb, &kit::docker_files(&[&b], Comp::Gzip));
    s.load(&pa, &sel(), &Quiet).unwrap();
    let rb = s.load(&pb, &sel(), &Quiet).unwrap();
    assert_eq!(rb.unpacked, [b.diff_ids()[1].clone()]);
    assert_eq!(layer_ids(&s).len(), 3);
    assert_eq!(s.find(&a.id()).unwrap().id, a.id());
    assert_eq!(s.find(&a.id()[7..19]).unwrap().id, a.id());
    assert_eq!(s.find("b:1").unwrap().id, b.id());
    // `b` means `b:latest`, which is not stored.
    assert!(s.find("b").is_err());
    assert!(matches!(s.find("nope"), Err(Error::ImageNotFound(_))));

    // Keeping layers: prune then drops the one only `a` used.
    let (_, removed) = s.remove("sample:1", true).unwrap();
    assert!(removed.is_empty());
    assert_eq!(layer_ids(&s).len(), 3);
    assert_eq!(s.prune().unwrap(), [a.diff_ids()[1].clone()]);
    assert_eq!(layer_ids(&s).len(), 2);
    // Removing the last image drops its layers.
    let (_, removed) = s.remove("b:1", false).unwrap();
    assert_eq!(removed.len(), 2);
    assert!(layer_ids(&s).is_empty());
    assert!(s.prune().unwrap().is_empty());
}

#[test]
fn an_unfinished_layer_is_redone() {
    let (d, s) = store();
    let img = sample();
    let p = d.path().join("a.tar");
    kit::write_tar(&p, &kit::docker_files(&[&img], Comp::None));
    // A crash after the layer was created but before it was verified: no meta file.
    let id = img.diff_ids()[0].trim_start_matches("sha256:").to_string();
    s.layers()
        .create(
            &id,
            None,
            LayerKind::ReadOnly,
            &CreateOpts::default(),
            &IdMappings::default(),
        )
        .unwrap();
    std::fs::write(s.layers().diff_dir(&id).join("junk"), b"x").unwrap();
    let r = s.load(&p, &sel(), &Quiet).unwrap();
    assert_eq!(r.unpacked.len(), 2);
    assert!(!s.layers().diff_dir(&id).join("junk").exists());
    assert!(s.layers().diff_dir(&id).join("etc/kept").exists());
}

#[test]
fn diff_between_loaded_images() {
    let (d, s) = store();
    let base = TestImage::new("base:1", vec![kit::base_layer()]);
    let top = sample();
    let pa = d.path().join("a.tar");
    let pb = d.path().join("b");
    kit::write_tar(&pa, &kit::docker_files(&[&base], Comp::None));
    kit::write_dir(&pb, &kit::oci_files(&[&top], Comp::Gzip));
    let a = s.load(&pa, &sel(), &Quiet).unwrap().image;
    let b = s.load(&pb, &sel(), &Quiet).unwrap().image;
    let changes = s.diff(&a, &b).unwrap();
    let lines: Vec<String> = changes
        .iter()
        .map(|c| format!("{:?} {}", c.kind, c.path))
        .collect();
    assert_eq!(
        lines,
        [
            "Modify /bin",
            "Modify /bin/tool",
            "Add /bin/tool-link",
            "Modify /etc",
            "Add /etc/motd",
            "Delete /etc/removed",
            "Modify /opt",
            "Modify /opt/data",
            "Add /opt/data/new",
            "Delete /opt/data/old1",
            "Delete /opt/data/old2",
        ]
    );
}
