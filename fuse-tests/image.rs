//! `stratafs image ...` through the built binary: real read-only mounts of docker-save and OCI
//! archives (as root and as an unprivileged user), layer reuse, diff and config output.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::stratafs_bin;

#[path = "image_kit.rs"]
mod kit;

use kit::{Comp, TestImage, E};

#[path = "image_lazy.rs"]
mod lazy;

#[path = "image_writable.rs"]
mod writable;

fn stratafs(root: &Path, args: &[&str]) -> Output {
    Command::new(stratafs_bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .expect("running stratafs")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "stratafs failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fuse_mounted(dir: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = dir.display().to_string();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()) && l.contains(" - fuse"))
}

/// Unmounts in Drop, even when the test failed half-way.
struct Mounted {
    dir: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if fuse_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn mount(root: &Path, archive: &Path, dir: &Path, extra: &[&str]) -> Mounted {
    std::fs::create_dir_all(dir).unwrap();
    let guard = Mounted {
        dir: std::fs::canonicalize(dir).unwrap(),
    };
    let mut args = vec!["image", "mount"];
    args.extend_from_slice(extra);
    let a = archive.to_str().unwrap();
    let d = dir.to_str().unwrap();
    args.extend([a, d]);
    ok(stratafs(root, &args));
    assert!(fuse_mounted(&guard.dir), "{} not mounted", dir.display());
    guard
}

/// Every path under `dir` with a short description (file content, link target, `dir`).
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.file_type().is_symlink() {
                out.push(format!(
                    "{rel} -> {}",
                    std::fs::read_link(&p).unwrap().display()
                ));
            } else if m.is_dir() {
                out.push(format!("{rel}/"));
                stack.push(p);
            } else {
                out.push(format!(
                    "{rel} = {}",
                    String::from_utf8_lossy(&std::fs::read(&p).unwrap()).trim()
                ));
            }
        }
    }
    out.sort();
    out
}

const SAMPLE_TREE: [&str; 10] = [
    "bin/",
    "bin/sh -> tool",
    "bin/tool = tool version 2",
    "bin/tool-link = tool version 2",
    "etc/",
    "etc/kept = kept",
    "etc/motd = hello from the top layer",
    "opt/",
    "opt/data/",
    "opt/data/new = new",
];

/// How many layers the image store under `root` holds.
fn stored_layers(root: &Path) -> usize {
    std::fs::read_dir(root.join("images/layers"))
        .unwrap()
        .count()
}

#[test]
fn docker_save_and_oci_archive_mount_the_same_tree_and_share_layers() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    let img = TestImage::new("sample:1", kit::sample_layers());
    let docker = d.path().join("docker.tar");
    kit::write_tar(&docker, &kit::docker_files(&[&img], Comp::None));
    let oci = d.path().join("oci.tar");
    kit::write_tar(&oci, &kit::oci_files(&[&img], Comp::Gzip));

    let m1 = mount(&root, &docker, &d.path().join("m1"), &["--unpack"]);
    assert_eq!(tree(&m1.dir), SAMPLE_TREE);
    // Hard links stay one inode in the view.
    let a = std::fs::metadata(m1.dir.join("bin/tool")).unwrap();
    let b = std::fs::metadata(m1.dir.join("bin/tool-link")).unwrap();
    assert_eq!(a.ino(), b.ino());
    // Read-only.
    assert!(std::fs::write(m1.dir.join("etc/new"), b"x").is_err());

    let base_dir = root
        .join("images/layers")
        .join(img.diff_ids()[0].trim_start_matches("sha256:"));
    let before = std::fs::metadata(&base_dir).unwrap().ino();
    let m2 = mount(&root, &oci, &d.path().join("m2"), &["--unpack"]);
    assert_eq!(tree(&m2.dir), SAMPLE_TREE);
    // The second archive's layers were not unpacked again.
    assert_eq!(std::fs::metadata(&base_dir).unwrap().ino(), before);

    let ls: serde_json::Value =
        serde_json::from_str(&ok(stratafs(&root, &["--json", "image", "ls"]))).unwrap();
    let images = ls.as_array().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["mounted_at"].as_array().unwrap().len(), 2);
    // A mounted image cannot be removed.
    let rm = stratafs(&root, &["image", "rm", "sample:1"]);
    assert!(!rm.status.success());
    assert!(String::from_utf8_lossy(&rm.stderr).contains("mounted"));

    for m in [&m1, &m2] {
        ok(stratafs(
            &root,
            &["image", "umount", m.dir.to_str().unwrap()],
        ));
        assert!(!fuse_mounted(&m.dir));
    }
    ok(stratafs(&root, &["image", "rm", "sample:1"]));
    assert_eq!(stored_layers(&root), 0);
}

#[test]
fn an_oci_layout_with_a_deep_chain_mounts() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    // 40 layers, each adding a file and deleting the previous one's.
    let names: Vec<&'static str> = (0..40)
        .map(|i| &*Box::leak(format!("f{i}").into_boxed_str()))
        .collect();
    let mut layers = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let mut e = vec![E::File(n, b"x")];
        if i > 0 {
            e.push(E::Whiteout(names[i - 1]));
        }
        layers.push(kit::layer_tar(&e));
    }
    let img = TestImage::new("deep:1", layers);
    let dir = d.path().join("layout");
    kit::write_dir(&dir, &kit::oci_files(&[&img], Comp::Zstd));
    let m = mount(&root, &dir, &d.path().join("m"), &["--tag", "deep:1"]);
    assert_eq!(tree(&m.dir), ["f39 = x"]);
}

#[test]
fn a_corrupt_layer_is_refused_before_mounting() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    let img = TestImage::new("sample:1", kit::sample_layers());
    let mut files = kit::docker_files(&[&img], Comp::None);
    for (_, data) in files.iter_mut() {
        if let Some(at) = data.windows(4).position(|w| w == b"new\n") {
            data[at] ^= 1;
        }
    }
    let p = d.path().join("bad.tar");
    kit::write_tar(&p, &files);
    let dir = d.path().join("m");
    std::fs::create_dir_all(&dir).unwrap();
    let _guard = Mounted {
        dir: std::fs::canonicalize(&dir).unwrap(),
    };
    let out = stratafs(
        &root,
        &[
            "image",
            "mount",
            "--unpack",
            p.to_str().unwrap(),
            dir.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("digest mismatch"), "{err}");
    assert!(!fuse_mounted(&dir));
    // Only the verified base layer remains; prune drops it.
    assert_eq!(stored_layers(&root), 1);
    let pruned = ok(stratafs(&root, &["image", "prune"]));
    assert_eq!(pruned.lines().count(), 1, "{pruned}");
    assert_eq!(stored_layers(&root), 0);
}

#[test]
fn image_diff_and_config_output() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    let base = TestImage::new("base:1", vec![kit::base_layer()]);
    let top = TestImage::new("sample:1", kit::sample_layers());
    let a = d.path().join("a.tar");
    let b = d.path().join("b");
    kit::write_tar(&a, &kit::docker_files(&[&base], Comp::Gzip));
    kit::write_dir(&b, &kit::oci_files(&[&top], Comp::None));
    let out = ok(stratafs(
        &root,
        &["image", "diff", a.to_str().unwrap(), b.to_str().unwrap()],
    ));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "C /bin",
            "C /bin/tool",
            "A /bin/tool-link",
            "C /etc",
            "A /etc/motd",
            "D /etc/removed",
            "C /opt",
            "C /opt/data",
            "A /opt/data/new",
            "D /opt/data/old1",
            "D /opt/data/old2",
        ]
    );
    // Stored images by tag give the same answer, the reverse direction swaps A and D.
    let rev = ok(stratafs(&root, &["image", "diff", "sample:1", "base:1"]));
    assert!(rev.lines().any(|l| l == "D /etc/motd"), "{rev}");
    assert!(rev.lines().any(|l| l == "A /etc/removed"), "{rev}");
    let json: serde_json::Value = serde_json::from_str(&ok(stratafs(
        &root,
        &["--json", "image", "diff", "base:1", "sample:1"],
    )))
    .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 11);

    let cfg = ok(stratafs(&root, &["image", "config", b.to_str().unwrap()]));
    assert!(cfg.contains(r#"Entrypoint:   ["/entry"]"#), "{cfg}");
    assert!(cfg.contains("  LANG=C.UTF-8"), "{cfg}");
    assert!(cfg.contains("  org.example.name=sample:1"), "{cfg}");
    assert!(cfg.contains("step 1"), "{cfg}");
    let j: serde_json::Value = serde_json::from_str(&ok(stratafs(
        &root,
        &["--json", "image", "config", "base:1"],
    )))
    .unwrap();
    assert_eq!(j["id"], base.id());
    assert_eq!(j["config"]["config"]["WorkingDir"], "/work");
}

/// Without root: the store belongs to an unprivileged user, who mounts through fusermount3.
/// /dev/fuse is 0600 on these machines (no udev), so the test opens it up as distributions do
/// (one rootless test at a time, the old mode restored after: see robust::DevFuseOpen).
#[test]
fn an_unprivileged_user_mounts_an_image() {
    if !stratafs::sys::is_root() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        d.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let _fuse = crate::robust::DevFuseOpen::new();
    let home = d.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let img = TestImage::new("sample:1", kit::sample_layers());
    let archive = home.join("oci.tar");
    kit::write_tar(&archive, &kit::oci_files(&[&img], Comp::Gzip));
    let dir = home.join("m");
    std::fs::create_dir_all(&dir).unwrap();
    let st = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&home)
        .status()
        .unwrap();
    assert!(st.success());
    let _guard = Mounted { dir: dir.clone() };
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(stratafs_bin())
            .arg("--root")
            .arg(home.join("root"))
            .args(args)
            .env("HOME", &home)
            .output()
            .unwrap()
    };
    ok(as_nobody(&[
        "image",
        "mount",
        archive.to_str().unwrap(),
        dir.to_str().unwrap(),
    ]));
    assert!(fuse_mounted(&dir));
    // Without allow_other only the mounting user sees inside the mount (root included).
    let motd = dir.join("etc/motd");
    let read = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "stat",
            "-c",
            "%u %s",
        ])
        .arg(&motd)
        .output()
        .unwrap();
    // Ownership recorded in the archive (root) is what the view shows.
    assert_eq!(ok(read).trim(), "0 25");
    let cat = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(&motd)
        .output()
        .unwrap();
    assert_eq!(ok(cat), "hello from the top layer\n");
    ok(as_nobody(&["image", "umount", dir.to_str().unwrap()]));
    assert!(!fuse_mounted(&dir));
}
