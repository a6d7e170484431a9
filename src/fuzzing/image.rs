//! Target `image_archive`: an image archive (`docker save` tar, OCI archive) opened, resolved and
//! loaded into a scratch image store, as `stratafs image load` and `image mount` do.
//!
//! Input: one byte of flags, then either (flag bit 7) the raw archive file, or a list of members
//! separated by `\n%%\n`, each `NAME\nCONTENT`, built into a tar here so that mutations reach the
//! JSON and the nested layer tars instead of dying on tar checksums. In members, `@N` stands for
//! the sha256 hex of member N's content and `#N` for its size (N an earlier member, 0-9, or in
//! a name the member itself), which
//! lets configs and manifests name blobs by digest. `NAME -> TARGET` is a symlink, `NAME => TARGET`
//! a hard link, `NAME/` a directory. Flag bit 6 gzips the archive; bits 0-1 choose the selector
//! (default, `--index`, `--tag`, `--platform`) and bits 2-3 its value.
//! Invariants: no panic; nothing outside the store changes; a failed load records no image.

use std::io::Write as _;
use std::path::Path;

use super::tree::{assert_same, picture};
use crate::image::{ImageStore, Platform, Quiet, Selector};

const SEPARATOR: &[u8] = b"\n%%\n";

pub(crate) fn split<'a>(mut data: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    while let Some(at) = data.windows(sep.len()).position(|w| w == sep) {
        out.push(&data[..at]);
        data = &data[at + sep.len()..];
    }
    out.push(data);
    out
}

/// Replace `@N` and `#N` by the digest and size of earlier members.
fn substitute(text: &[u8], done: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        let n = text
            .get(i + 1)
            .and_then(|d| d.is_ascii_digit().then(|| (d - b'0') as usize));
        match (c, n.and_then(|n| done.get(n))) {
            (b'@', Some(m)) => {
                let hex = crate::image::digest::of_bytes(m);
                out.extend_from_slice(hex.trim_start_matches("sha256:").as_bytes());
                i += 2;
            }
            (b'#', Some(m)) => {
                out.extend_from_slice(m.len().to_string().as_bytes());
                i += 2;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn build_tar(members: &[&[u8]]) -> Vec<u8> {
    let mut contents: Vec<Vec<u8>> = Vec::new();
    let mut b = ::tar::Builder::new(Vec::new());
    for m in members {
        let (name, content) = match m.iter().position(|c| *c == b'\n') {
            Some(at) => (&m[..at], &m[at + 1..]),
            None => (&m[..], &[][..]),
        };
        let mut content = substitute(content, &contents);
        if content.get(257..262) == Some(b"ustar") {
            super::fix_tar_checksums(&mut content);
        }
        // A name may also name its own content's digest (`blobs/sha256/@N` for member N).
        contents.push(content);
        let name = String::from_utf8_lossy(&substitute(name, &contents)).into_owned();
        let content = contents.last().map(Vec::as_slice).unwrap_or_default();
        let mut h = ::tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(0);
        let res = if let Some((n, t)) = name.split_once(" -> ") {
            h.set_entry_type(::tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, n, t)
        } else if let Some((n, t)) = name.split_once(" => ") {
            h.set_entry_type(::tar::EntryType::Link);
            h.set_size(0);
            b.append_link(&mut h, n, t)
        } else if name.ends_with('/') {
            h.set_entry_type(::tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, &name, &[][..])
        } else {
            h.set_size(content.len() as u64);
            b.append_data(&mut h, &name, content)
        };
        // Names the tar crate refuses to write (empty, `..`) are simply left out.
        drop(res);
    }
    b.into_inner().unwrap_or_default()
}

fn selector(flags: u8) -> Selector {
    let v = (flags >> 2) & 3;
    match flags & 3 {
        0 => Selector::default(),
        1 => Selector {
            index: Some(v as usize),
            ..Default::default()
        },
        2 => Selector {
            tag: Some(["latest", "x:1", "docker.io/library/x:latest", "x"][v as usize].into()),
            ..Default::default()
        },
        _ => Selector {
            platform: Platform::parse(
                [
                    "linux/amd64",
                    "linux/arm64/v8",
                    "linux/arm",
                    "windows/amd64",
                ][v as usize],
            )
            .ok(),
            ..Default::default()
        },
    }
}

pub fn image_archive(data: &[u8]) {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let mut archive = if flags & 0x80 != 0 {
        let mut raw = body.to_vec();
        super::fix_tar_checksums(&mut raw);
        raw
    } else {
        build_tar(&split(body, SEPARATOR))
    };
    if flags & 0x40 != 0 {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = gz.write_all(&archive);
        archive = gz.finish().unwrap_or_default();
    }
    let scratch = super::scratch();
    let root = scratch.path();
    let path = root.join("image.tar");
    std::fs::write(&path, &archive).expect("writing the archive");
    std::fs::create_dir(root.join("outside")).expect("scratch dir");
    std::fs::write(root.join("outside/canary"), b"canary").expect("scratch file");
    let engine = root.join("engine");
    let store = ImageStore::open(&engine).expect("opening a scratch image store");
    let before = picture(root, &[Path::new("engine")], true);
    let res = store.load(&path, &selector(flags), &Quiet);
    assert_same(
        "outside the image store",
        &before,
        &picture(root, &[Path::new("engine")], true),
    );
    match res {
        Ok(report) => {
            let rec = store
                .find(&report.image.id)
                .expect("a loaded image is found");
            for d in store
                .lower_dirs(&rec)
                .expect("a loaded image has its layers")
            {
                assert!(
                    d.is_dir(),
                    "layer {} of a loaded image is missing",
                    d.display()
                );
            }
        }
        Err(_) => {
            let images = store.list().expect("listing images after a failed load");
            assert!(images.is_empty(), "a failed load recorded {images:?}");
        }
    }
}
