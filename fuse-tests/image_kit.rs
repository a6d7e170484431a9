//! Builds small image archives for tests: layer tars with files, directories, symlinks, hard
//! links, whiteouts and opaque markers; written as a `docker save` tar, an OCI layout
//! directory or an OCI archive, with plain, gzip or zstd layers. Shared by the unit tests of
//! `src/image` (through `#[path]`) and the FUSE tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

/// One entry of a test layer.
#[derive(Debug, Clone)]
pub enum E {
    File(&'static str, &'static [u8]),
    Dir(&'static str),
    Symlink(&'static str, &'static str),
    HardLink(&'static str, &'static str),
    /// `dir/.wh.name` for the path given.
    Whiteout(&'static str),
    /// `dir/.wh..wh..opq` for the directory given.
    Opaque(&'static str),
}

pub fn sha256(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

/// An uncompressed layer tar with fixed mtimes (so equal specs give equal digests).
pub fn layer_tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let head = |ty: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    for e in entries {
        match e {
            E::File(p, data) => {
                let mut h = head(tar::EntryType::Regular, 0o644, data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Dir(p) => {
                let mut h = head(tar::EntryType::Directory, 0o755, 0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::Symlink(p, t) => {
                let mut h = head(tar::EntryType::Symlink, 0o777, 0);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::HardLink(p, t) => {
                let mut h = head(tar::EntryType::Link, 0o644, 0);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Whiteout(p) => {
                let (dir, name) = p.rsplit_once('/').unwrap_or(("", p));
                let wh = if dir.is_empty() {
                    format!(".wh.{name}")
                } else {
                    format!("{dir}/.wh.{name}")
                };
                let mut h = head(tar::EntryType::Regular, 0o644, 0);
                b.append_data(&mut h, wh, &[][..]).unwrap();
            }
            E::Opaque(dir) => {
                let mut h = head(tar::EntryType::Regular, 0o644, 0);
                b.append_data(&mut h, format!("{dir}/.wh..wh..opq"), &[][..])
                    .unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

pub fn compress(data: &[u8], c: Comp) -> Vec<u8> {
    match c {
        Comp::None => data.to_vec(),
        Comp::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(data).unwrap();
            gz.finish().unwrap()
        }
        Comp::Zstd => zstd::encode_all(data, 1).unwrap(),
    }
}

/// A test image: uncompressed layer tars (bottom first) and a tag.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub tag: String,
    pub layers: Vec<Vec<u8>>,
    pub arch: String,
    pub cmd: Vec<String>,
}

impl TestImage {
    pub fn new(tag: &str, layers: Vec<Vec<u8>>) -> TestImage {
        TestImage {
            tag: tag.to_string(),
            layers,
            arch: "amd64".into(),
            cmd: vec!["/bin/sh".into()],
        }
    }

    pub fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| sha256(l)).collect()
    }

    pub fn config(&self) -> Vec<u8> {
        let v = serde_json::json!({
            "created": "2024-01-02T03:04:05Z",
            "architecture": self.arch,
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
                "Cmd": self.cmd,
                "Entrypoint": ["/entry"],
                "WorkingDir": "/work",
                "Labels": {"org.example.name": self.tag},
            },
            "rootfs": {"type": "layers", "diff_ids": self.diff_ids()},
            "history": self.layers.iter().enumerate()
                .map(|(i, _)| serde_json::json!({"created_by": format!("step {i}")}))
                .collect::<Vec<_>>(),
        });
        serde_json::to_vec(&v).unwrap()
    }

    pub fn id(&self) -> String {
        sha256(&self.config())
    }

    /// The OCI blobs (path, bytes) and the manifest descriptor of this image.
    fn oci_blobs(&self, c: Comp) -> (Vec<(String, Vec<u8>)>, serde_json::Value) {
        let mut blobs = Vec::new();
        let cfg = self.config();
        let cfg_d = sha256(&cfg);
        let mt = match c {
            Comp::None => "application/vnd.oci.image.layer.v1.tar",
            Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        };
        let mut layers = Vec::new();
        for l in &self.layers {
            let blob = compress(l, c);
            let d = sha256(&blob);
            layers.push(serde_json::json!({"mediaType": mt, "digest": d, "size": blob.len()}));
            blobs.push((format!("blobs/sha256/{}", hex(&d)), blob));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": cfg_d, "size": cfg.len()},
            "layers": layers,
        });
        blobs.push((format!("blobs/sha256/{}", hex(&cfg_d)), cfg));
        let m = serde_json::to_vec(&manifest).unwrap();
        let md = sha256(&m);
        let desc = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": m.len(),
            "platform": {"os": "linux", "architecture": self.arch},
            "annotations": {"org.opencontainers.image.ref.name": self.tag},
        });
        blobs.push((format!("blobs/sha256/{}", hex(&md)), m));
        (blobs, desc)
    }
}

/// Files of an OCI layout holding `images` (each listed in index.json).
pub fn oci_files(images: &[&TestImage], c: Comp) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![(
        "oci-layout".to_string(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    let mut descs = Vec::new();
    for img in images {
        let (blobs, desc) = img.oci_blobs(c);
        files.extend(blobs);
        descs.push(desc);
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": descs});
    files.push(("index.json".into(), serde_json::to_vec(&index).unwrap()));
    files
}

/// Files of a `docker save` archive (the classic layout: `<id>/layer.tar`, `<config>.json`).
pub fn docker_files(images: &[&TestImage], c: Comp) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut manifest = Vec::new();
    for img in images {
        let cfg = img.config();
        let cfg_name = format!("{}.json", hex(&sha256(&cfg)));
        let mut layers = Vec::new();
        for l in &img.layers {
            let name = format!("{}/layer.tar", hex(&sha256(l)));
            if !files.iter().any(|(n, _)| n == &name) {
                files.push((name.clone(), compress(l, c)));
            }
            layers.push(name);
        }
        files.push((cfg_name.clone(), cfg));
        manifest.push(serde_json::json!({
            "Config": cfg_name, "RepoTags": [img.tag], "Layers": layers,
        }));
    }
    files.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    ));
    files
}

pub fn write_tar(path: &Path, files: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.finish().unwrap();
}

pub fn write_dir(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (name, data) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

/// The sample image used by several tests: a base and a top layer exercising additions,
/// deletions, an opaque directory, a symlink and hard links.
pub fn sample_layers() -> Vec<Vec<u8>> {
    vec![
        base_layer(),
        layer_tar(&[
            E::Dir("etc"),
            E::File("etc/motd", b"hello from the top layer\n"),
            E::Whiteout("etc/removed"),
            E::Dir("opt/data"),
            E::Opaque("opt/data"),
            E::File("opt/data/new", b"new\n"),
            E::File("bin/tool", b"tool version 2\n"),
            E::HardLink("bin/tool-link", "bin/tool"),
        ]),
    ]
}

pub fn base_layer() -> Vec<u8> {
    layer_tar(&[
        E::Dir("etc"),
        E::File("etc/removed", b"gone soon\n"),
        E::File("etc/kept", b"kept\n"),
        E::Dir("opt"),
        E::Dir("opt/data"),
        E::File("opt/data/old1", b"old1\n"),
        E::File("opt/data/old2", b"old2\n"),
        E::Dir("bin"),
        E::File("bin/tool", b"tool v1\n"),
        E::Symlink("bin/sh", "tool"),
    ])
}
