//! Target `tar_apply`: a layer tar unpacked into a scratch layer, as `stratafs apply`, Docker's
//! `ApplyDiff` and the vfs driver do it.
//!
//! Input: one byte of flags (bit 0: merged mode, the vfs driver's, onto a copy of a parent; bit
//! 1: the layer root mode 0700 instead of 0755), then the tar (its header checksums rewritten).
//! Invariants: no panic; nothing outside the layer directory changes (content, mode, owner,
//! link count, xattrs); a failed apply leaves the layer as it was (empty, or the parent's copy).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::tree::{assert_same, picture};
use crate::archive::{apply_to_dir, ApplyMode};
use crate::layer::idmap::IdMappings;

/// Fill `dir` with a small tree (files, a directory, symlinks in and out, a hard link).
fn populate(dir: &Path) {
    let w = |p: &str, data: &[u8]| std::fs::write(dir.join(p), data).expect("writing a seed file");
    std::fs::create_dir_all(dir.join("etc/sub")).expect("seed dir");
    std::fs::create_dir_all(dir.join("opaque/keep")).expect("seed dir");
    w("etc/passwd", b"root:x:0:0::/root:/bin/sh\n");
    w("etc/sub/file", b"sub");
    w("opaque/keep/x", b"x");
    w("top", b"top");
    std::os::unix::fs::symlink("etc", dir.join("link-in")).expect("seed symlink");
    std::os::unix::fs::symlink("../outside", dir.join("link-out")).expect("seed symlink");
    std::os::unix::fs::symlink("/", dir.join("link-root")).expect("seed symlink");
    std::fs::hard_link(dir.join("top"), dir.join("top-hard")).expect("seed hard link");
}

pub fn tar_apply(data: &[u8]) {
    let Some((&flags, tar)) = data.split_first() else {
        return;
    };
    let mut tar = tar.to_vec();
    super::fix_tar_checksums(&mut tar);
    let merged = flags & 1 != 0;
    let scratch = super::scratch();
    let root = scratch.path();
    let (outside, parent, layer) = (
        root.join("outside"),
        root.join("parent"),
        root.join("layer"),
    );
    for d in [&outside, &parent, &layer] {
        std::fs::create_dir(d).expect("creating a scratch directory");
    }
    populate(&outside);
    populate(&parent);
    let mode = if flags & 2 != 0 { 0o700 } else { 0o755 };
    std::fs::set_permissions(&layer, std::fs::Permissions::from_mode(mode))
        .expect("chmod of the scratch layer");
    if merged {
        crate::layer::copy::copy_tree_contents(&parent, &layer).expect("copying the parent");
    }
    let layer_rel = Path::new("layer");
    let others_before = picture(root, &[layer_rel], true);
    let layer_before = picture(&layer, &[], false);
    let (apply_mode, restore) = if merged {
        (ApplyMode::Merged, Some(parent.as_path()))
    } else {
        (ApplyMode::Layer, None)
    };
    let res = apply_to_dir(
        &layer,
        &mut &tar[..],
        &IdMappings::default(),
        apply_mode,
        restore,
    );
    assert_same(
        "outside the layer",
        &others_before,
        &picture(root, &[layer_rel], true),
    );
    if res.is_err() {
        assert_same(
            "the layer after a failed apply",
            &layer_before,
            &picture(&layer, &[], false),
        );
    }
}
