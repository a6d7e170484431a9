//! Lazy image mounts (served from tar indexes) against unpacked ones: the same trees in every
//! archive format and compression, refused corrupt and cut archives, random reads of a big
//! compressed file, and the second mount reusing the indexes.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::kit::{self, Comp, TestImage};
use super::{fuse_mounted, mount, ok, stratafs, Mounted};

/// A deterministic pseudo-random byte sequence (xorshift), incompressible enough to make
/// gzip and zstd streams of real length.
pub(super) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn head(ty: tar::EntryType, mode: u32, uid: u64, mtime: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid + 1);
        h.set_mtime(mtime);
        h.set_size(0);
        h
    }

    fn dir(mut self, p: &str, mode: u32, uid: u64) -> Layer {
        let mut h = Layer::head(tar::EntryType::Directory, mode, uid, 1_600_000_000);
        self.0.append_data(&mut h, p, &[][..]).unwrap();
        self
    }

    fn file(mut self, p: &str, data: &[u8], mode: u32, uid: u64) -> Layer {
        let mut h = Layer::head(tar::EntryType::Regular, mode, uid, 1_650_000_000 + uid);
        h.set_size(data.len() as u64);
        self.0.append_data(&mut h, p, data).unwrap();
        self
    }

    fn xattr_file(mut self, p: &str, data: &[u8], key: &str, value: &[u8]) -> Layer {
        self.0
            .append_pax_extensions([(format!("SCHILY.xattr.{key}").as_str(), value)])
            .unwrap();
        self.file(p, data, 0o640, 3)
    }

    fn link(mut self, ty: tar::EntryType, p: &str, target: &str) -> Layer {
        let mut h = Layer::head(ty, 0o777, 0, 1_700_000_000);
        self.0.append_link(&mut h, p, target).unwrap();
        self
    }

    fn fifo(mut self, p: &str) -> Layer {
        let mut h = Layer::head(tar::EntryType::Fifo, 0o600, 5, 1_700_000_000);
        self.0.append_data(&mut h, p, &[][..]).unwrap();
        self
    }

    fn done(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// Three layers with owners, modes, mtimes, xattrs, hard links, symlinks, a fifo, whiteouts,
/// an opaque directory, a long name and a big file.
pub(super) fn rich_layers(big: &[u8]) -> Vec<Vec<u8>> {
    let long = format!("deep/{}", "n".repeat(200));
    vec![
        Layer::new()
            .dir("./", 0o755, 0)
            .dir("etc", 0o755, 0)
            .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644, 0)
            .file("etc/shadow", b"secret\n", 0o600, 0)
            .file("etc/gone", b"deleted above\n", 0o644, 0)
            .dir("var/lib/app", 0o750, 1000)
            .file("var/lib/app/old", b"old\n", 0o644, 1000)
            .file("usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o4755, 0)
            .link(tar::EntryType::Link, "usr/bin/tool2", "usr/bin/tool")
            .link(tar::EntryType::Symlink, "usr/bin/sh", "tool")
            .fifo("run/pipe")
            .file(&long, b"long name\n", 0o644, 2)
            .done(),
        Layer::new()
            .dir("etc", 0o775, 0)
            .file("etc/.wh.gone", b"", 0o644, 0)
            .xattr_file("etc/labelled", b"with an xattr\n", "user.label", b"blue")
            .dir("var/lib/app", 0o700, 1000)
            .file("var/lib/app/.wh..wh..opq", b"", 0o644, 0)
            .file("var/lib/app/new", b"new\n", 0o644, 1000)
            .file("opt/big.bin", big, 0o644, 7)
            .done(),
        Layer::new()
            .file("etc/passwd", b"root:x:0:0::/root:/bin/bash\n", 0o644, 0)
            .link(tar::EntryType::Link, "etc/passwd-hard", "etc/passwd")
            .link(tar::EntryType::Symlink, "etc/abs", "/etc/passwd")
            .done(),
    ]
}

/// Everything the view shows of each path under `dir`: type, mode, owner, size, mtime,
/// content digest, link target, user xattrs, and which names share an inode.
pub(super) fn full_tree(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let what = if ft.is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else if ft.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if ft.is_fifo() {
                "fifo".to_string()
            } else {
                by_ino.entry(m.ino()).or_default().push(rel.clone());
                kit::sha256(&std::fs::read(&p).unwrap())
            };
            let mut xattrs: Vec<String> = stratafs::sys::llistxattr(&p)
                .unwrap_or_default()
                .into_iter()
                .filter(|n| n.starts_with(b"user."))
                .map(|n| {
                    let n = String::from_utf8(n).unwrap();
                    let v = stratafs::sys::lgetxattr(&p, &n)
                        .unwrap()
                        .unwrap_or_default();
                    format!("{n}={}", String::from_utf8_lossy(&v))
                })
                .collect();
            xattrs.sort();
            let size = if ft.is_dir() { 0 } else { m.size() };
            // A directory the tar names only as a parent has no mtime of its own (unpacking
            // gives it the time of the unpack): only the ones the tar sets are compared.
            let mtime = if ft.is_dir() && m.mtime() != 1_600_000_000 {
                0
            } else {
                m.mtime()
            };
            out.insert(
                rel,
                format!(
                    "{what} mode={:o} {}:{} size={size} mtime={} nlink={} {xattrs:?}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    mtime,
                    if ft.is_dir() { 0 } else { m.nlink() },
                ),
            );
        }
    }
    for names in by_ino.values_mut().filter(|n| n.len() > 1) {
        names.sort();
        out.insert(format!("hardlinks {names:?}"), String::new());
    }
    out
}

#[test]
fn lazy_and_unpacked_mounts_show_the_same_tree_in_every_format() {
    let d = tempfile::tempdir().unwrap();
    let big = noise(512 << 10, 42);
    let img = TestImage::new("rich:1", rich_layers(&big));
    let mut n = 0;
    for comp in [Comp::None, Comp::Gzip, Comp::Zstd] {
        for form in ["docker", "oci-archive", "oci-layout"] {
            n += 1;
            let archive = d.path().join(format!("img{n}"));
            match form {
                "docker" => kit::write_tar(&archive, &kit::docker_files(&[&img], comp)),
                "oci-archive" => kit::write_tar(&archive, &kit::oci_files(&[&img], comp)),
                _ => kit::write_dir(&archive, &kit::oci_files(&[&img], comp)),
            }
            let root = d.path().join(format!("root{n}"));
            let lazy = mount(&root, &archive, &d.path().join(format!("lazy{n}")), &[]);
            let unpacked = mount(
                &root,
                &archive,
                &d.path().join(format!("unpacked{n}")),
                &["--unpack"],
            );
            let (a, b) = (full_tree(&lazy.dir), full_tree(&unpacked.dir));
            assert_eq!(a, b, "{form} {comp:?}: lazy (left) vs unpacked (right)");
            assert!(a.contains_key("etc/labelled") && !a.contains_key("etc/gone"));
            assert!(a.keys().any(|k| k.starts_with("hardlinks")), "{a:#?}");
            // Nothing was unpacked for the lazy mount: its layers are indexes.
            let idx = std::fs::read_dir(root.join("images/index"))
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "idx")
                })
                .count();
            assert_eq!(idx, 3, "{form} {comp:?}");
        }
    }
}

#[test]
fn random_reads_of_a_big_compressed_file_match() {
    let d = tempfile::tempdir().unwrap();
    let big = noise(8 << 20, 7);
    let img = TestImage::new("big:1", rich_layers(&big));
    let archive = d.path().join("big.tar");
    kit::write_tar(&archive, &kit::docker_files(&[&img], Comp::Gzip));
    let root = d.path().join("root");
    let m = mount(&root, &archive, &d.path().join("m"), &[]);
    let mut f = std::fs::File::open(m.dir.join("opt/big.bin")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), big.len() as u64);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x % big.len() as u64) as usize;
        let len = ((x >> 32) % 200_000) as usize;
        let mut buf = vec![0u8; len];
        f.seek(SeekFrom::Start(off as u64)).unwrap();
        let got = f.read(&mut buf).unwrap();
        let want = &big[off..(off + len).min(big.len())];
        assert!(got > 0 || want.is_empty());
        assert_eq!(&buf[..got], &want[..got], "read at {off}+{len}");
    }
    // Past the end: nothing.
    f.seek(SeekFrom::Start(big.len() as u64 + 10)).unwrap();
    assert_eq!(f.read(&mut [0u8; 16]).unwrap(), 0);
}

#[test]
fn a_second_lazy_mount_reuses_the_indexes() {
    let d = tempfile::tempdir().unwrap();
    let img = TestImage::new("sample:1", kit::sample_layers());
    let archive = d.path().join("a.tar");
    kit::write_tar(&archive, &kit::docker_files(&[&img], Comp::Gzip));
    let root = d.path().join("root");
    let m1 = mount(&root, &archive, &d.path().join("m1"), &[]);
    let idx = root.join("images/index").join(format!(
        "{}.idx",
        img.diff_ids()[0].trim_start_matches("sha256:")
    ));
    let before = std::fs::metadata(&idx).unwrap().ino();
    let m2 = mount(&root, &archive, &d.path().join("m2"), &[]);
    assert_eq!(
        std::fs::metadata(&idx).unwrap().ino(),
        before,
        "index rewritten"
    );
    assert_eq!(super::tree(&m1.dir), super::tree(&m2.dir));
    assert_eq!(super::tree(&m2.dir), super::SAMPLE_TREE);
    // Nothing unpacked.
    assert_eq!(
        std::fs::read_dir(root.join("images/layers"))
            .unwrap()
            .count(),
        0
    );
    for m in [&m1, &m2] {
        ok(stratafs(
            &root,
            &["image", "umount", m.dir.to_str().unwrap()],
        ));
    }
}

#[test]
fn a_corrupt_or_cut_archive_is_refused_by_a_lazy_mount() {
    let d = tempfile::tempdir().unwrap();
    let img = TestImage::new("sample:1", kit::sample_layers());
    let root = d.path().join("root");
    let dir = d.path().join("m");
    std::fs::create_dir_all(&dir).unwrap();
    let _guard = Mounted {
        dir: std::fs::canonicalize(&dir).unwrap(),
    };
    let try_mount = |archive: &Path| {
        let out = stratafs(
            &root,
            &[
                "image",
                "mount",
                archive.to_str().unwrap(),
                dir.to_str().unwrap(),
            ],
        );
        assert!(!out.status.success());
        assert!(!fuse_mounted(&dir));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // One byte of a file's data flipped: the digest check refuses it.
    for comp in [Comp::None, Comp::Gzip] {
        let mut files = kit::docker_files(&[&img], comp);
        let layer = files
            .iter_mut()
            .find(|(n, _)| n.ends_with("layer.tar"))
            .unwrap();
        let data = &mut layer.1;
        if comp == Comp::None {
            let at = data.windows(5).position(|w| w == b"kept\n").unwrap();
            data[at] ^= 1;
        } else {
            let at = data.len() / 2;
            data[at] ^= 0x55;
        }
        let p = d.path().join(format!("bad-{comp:?}.tar"));
        kit::write_tar(&p, &files);
        let err = try_mount(&p);
        assert!(
            err.contains("digest mismatch") || err.contains("malformed") || err.contains("corrupt"),
            "{comp:?}: {err}"
        );
    }
    // A cut archive.
    let full = d.path().join("full.tar");
    kit::write_tar(&full, &kit::docker_files(&[&img], Comp::None));
    let raw = std::fs::read(&full).unwrap();
    let cut = d.path().join("cut.tar");
    std::fs::write(&cut, &raw[..raw.len() * 2 / 3]).unwrap();
    let err = try_mount(&cut);
    assert!(!err.is_empty());
    // Nothing half-made was left: no index, source or copy of the corrupted (base) layer.
    let base = img.diff_ids()[0].trim_start_matches("sha256:").to_string();
    let left: Vec<String> = std::fs::read_dir(root.join("images/index"))
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(!left.iter().any(|n| n.starts_with(&base)), "{left:?}");
}

/// The layer files (`.idx`, `.src`, `.tar`) in the index directory under `root`.
fn index_files(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join("images/index"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".idx") || n.ends_with(".src") || n.ends_with(".tar"))
        .collect();
    v.sort();
    v
}

#[test]
fn lazily_indexed_images_are_listed_removed_and_pruned() {
    let d = tempfile::tempdir().unwrap();
    let img = TestImage::new("sample:1", kit::sample_layers());
    let archive = d.path().join("a.tar");
    kit::write_tar(&archive, &kit::docker_files(&[&img], Comp::Gzip));
    let root = d.path().join("root");
    let m = mount(&root, &archive, &d.path().join("m"), &[]);
    let ls: serde_json::Value =
        serde_json::from_str(&ok(stratafs(&root, &["--json", "image", "ls"]))).unwrap();
    let rows = ls.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{ls:#}");
    assert_eq!(rows[0]["kind"], "lazy");
    assert_eq!(rows[0]["tags"][0], "sample:1");
    assert_eq!(rows[0]["mounted_at"].as_array().unwrap().len(), 1);
    let layers = img.diff_ids().len();
    // Index, source and decompressed copy of each layer.
    assert_eq!(index_files(&root).len(), 3 * layers);
    let rm = stratafs(&root, &["image", "rm", "sample:1"]);
    assert!(!rm.status.success());
    assert!(String::from_utf8_lossy(&rm.stderr).contains("mounted"));
    // Pruning keeps what a lazily indexed image names.
    ok(stratafs(&root, &["image", "prune"]));
    assert_eq!(index_files(&root).len(), 3 * layers);
    ok(stratafs(
        &root,
        &["image", "umount", m.dir.to_str().unwrap()],
    ));
    ok(stratafs(&root, &["image", "rm", "sample:1"]));
    assert!(index_files(&root).is_empty(), "{:?}", index_files(&root));
    let ls = ok(stratafs(&root, &["--json", "image", "ls"]));
    assert_eq!(ls.trim(), "[]");
    // rm --keep-layers leaves the indexes for prune.
    drop(mount(&root, &archive, &d.path().join("m2"), &[]));
    ok(stratafs(
        &root,
        &["image", "rm", "--keep-layers", "sample:1"],
    ));
    assert_eq!(index_files(&root).len(), 3 * layers);
    let pruned = ok(stratafs(&root, &["image", "prune"]));
    assert_eq!(pruned.lines().count(), layers, "{pruned}");
    assert!(index_files(&root).is_empty());
}
