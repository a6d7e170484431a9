//! New entries where a whiteout stands, and `O_RDONLY|O_TRUNC` opens (issue 22),
//! differentially against kernel overlayfs over the same layers.
//!
//! Each case runs one script on both mounts and compares every step; then it compares the
//! whole trees, once more after the kernel forgot its entries (the server answers from its
//! cached listings), again after an unmount and a remount of stratafs over the same layers,
//! and last the export of stratafs's upper applied onto a copy of the lower (what `diff` and
//! `apply` make of the layer) with the tree the mount shows.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{self, MountGuard};

#[derive(Debug, Clone, Copy)]
enum Op {
    /// Create or overwrite a file with this content.
    Write(&'static str, &'static str),
    Mkdir(&'static str),
    /// `rm -rf`.
    RmRf(&'static str),
    /// renameat2(2) with no flags.
    Rename(&'static str, &'static str),
    /// The `mv` tool (copies where the kernel says EXDEV).
    Mv(&'static str, &'static str),
    Symlink(&'static str, &'static str),
    Link(&'static str, &'static str),
    Mkfifo(&'static str),
    /// open(O_RDONLY|O_TRUNC), then read what the descriptor shows.
    OpenRoTrunc(&'static str),
    /// Observe a subtree: kinds and contents.
    Look(&'static str),
    /// Make the kernel forget unused dentries and inodes.
    Forget,
}

fn errno_of(e: &std::io::Error) -> String {
    format!("errno {}", e.raw_os_error().unwrap_or(-1))
}

fn res(r: std::io::Result<()>) -> String {
    r.map_or_else(|e| errno_of(&e), |()| "ok".into())
}

fn look(p: &Path) -> String {
    match fs::symlink_metadata(p) {
        Err(e) => errno_of(&e),
        Ok(m) if m.is_dir() => format!("{:?}", common::tree_shape(p)),
        Ok(m) if m.file_type().is_symlink() => {
            format!("link->{:?}", fs::read_link(p).ok())
        }
        Ok(m) if m.is_file() => format!("file:{:?}", fs::read_to_string(p).ok()),
        Ok(_) => "other".into(),
    }
}

fn run(root: &Path, op: Op) -> String {
    let p = |r: &str| root.join(r);
    match op {
        Op::Write(f, d) => res(fs::write(p(f), d)),
        Op::Mkdir(d) => res(fs::create_dir(p(d))),
        Op::RmRf(d) => {
            let st = Command::new("rm").arg("-rf").arg(p(d)).status().unwrap();
            format!("rm {}", st.success())
        }
        Op::Rename(a, b) => res(fs::rename(p(a), p(b))),
        Op::Mv(a, b) => {
            let st = Command::new("mv").arg(p(a)).arg(p(b)).status().unwrap();
            format!("mv {}", st.success())
        }
        Op::Symlink(t, l) => res(std::os::unix::fs::symlink(t, p(l))),
        Op::Link(a, b) => res(fs::hard_link(p(a), p(b))),
        Op::Mkfifo(f) => {
            let st = Command::new("mkfifo").arg(p(f)).status().unwrap();
            format!("mkfifo {}", st.success())
        }
        Op::OpenRoTrunc(f) => {
            let r = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_TRUNC)
                .open(p(f))
                .and_then(|mut h| {
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut h, &mut s)?;
                    Ok(s)
                });
            match r {
                Ok(s) => format!("ok {s:?} then {}", look(&p(f))),
                Err(e) => errno_of(&e),
            }
        }
        Op::Look(f) => look(&p(f)),
        Op::Forget => res(fs::write("/proc/sys/vm/drop_caches", "2")),
    }
}

/// Set up a case's layers under `base`: lower/, upper/ (perhaps with markers), work/.
type Build = fn(&Path);

/// The lower layer every case starts from: populated directories at depth 1 and nested.
fn build_lower(b: &Path) {
    let l = b.join("lower");
    common::put_file(&l, "d/a", "a");
    common::put_file(&l, "d/sub/c", "c");
    common::put_file(&l, "p/q/x", "x");
    common::put_file(&l, "p/q/y", "y");
    common::put_file(&l, "p/other", "o");
    common::put_file(&l, "f", "file");
    std::os::unix::fs::symlink("f", l.join("s")).unwrap();
    for d in ["upper", "work"] {
        fs::create_dir_all(b.join(d)).unwrap();
    }
}

/// [`build_lower`] with markers in the upper as kernel overlayfs writes them: 0/0 devices
/// for a deleted `d` and a deleted `p/q` (`p` copied up).
fn build_kernel_markers(b: &Path) {
    build_lower(b);
    let u = b.join("upper");
    common::put_char_whiteout(&u, "d");
    common::put_char_whiteout(&u, "p/q");
}

/// [`build_lower`] with `p` opaque in the upper (both formats) and whiteouts inside it in
/// both formats (`q` a device, `other` a `.wh.` file), as an applied layer tar may leave it.
/// Kernel overlayfs is no oracle here: it lists the raw entries of such a directory.
fn build_opaque_with_whiteouts(b: &Path) {
    build_lower(b);
    let u = b.join("upper");
    common::put_char_whiteout(&u, "p/q");
    common::set_xattr(&u.join("p"), "trusted.overlay.opaque", b"y");
    common::put_file(&u, "p/.wh..wh..opq", "");
    common::put_file(&u, "p/.wh.other", "");
}

fn opts_of(b: &Path) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={}",
        b.join("lower").display(),
        b.join("upper").display(),
        b.join("work").display()
    )
}

fn mount_kernel(b: &Path) -> MountGuard {
    let mp = b.join("mnt");
    fs::create_dir_all(&mp).unwrap();
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts_of(b)])
        .arg(&mp)
        .status()
        .unwrap();
    assert!(st.success(), "kernel overlay mount failed");
    MountGuard::new(&mp)
}

fn mount_strata(b: &Path, extra: &str) -> MountGuard {
    common::use_test_binary();
    common::mount_stratafs(&format!("{}{extra}", opts_of(b)), &b.join("mnt"))
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A mount and its temporary directory (dropped in this order: the mount goes first).
struct Side {
    m: Option<MountGuard>,
    t: tempfile::TempDir,
}

impl Side {
    fn mnt(&self) -> PathBuf {
        self.t.path().join("mnt")
    }
}

/// Run `script` on kernel overlayfs and on stratafs (mount options `extra`), comparing each
/// step and then the trees as described at the top of this file.
fn differential(build: Build, extra: &str, script: &[Op]) {
    let kt = tempfile::tempdir().unwrap();
    build(kt.path());
    let k = Side {
        m: Some(mount_kernel(kt.path())),
        t: kt,
    };
    let st = tempfile::tempdir().unwrap();
    build(st.path());
    let mut s = Side {
        m: Some(mount_strata(st.path(), extra)),
        t: st,
    };
    let mut diffs = Vec::new();
    for (i, op) in script.iter().enumerate() {
        let a = run(&k.mnt(), *op);
        let b = run(&s.mnt(), *op);
        if a != b {
            diffs.push(format!("step {i} {op:?}\n  kernel:   {a}\n  stratafs: {b}"));
        }
    }
    assert!(diffs.is_empty(), "differences:\n{}", diffs.join("\n"));
    views_agree(&mut s, extra, &common::tree_shape(&k.mnt()));
}

/// The tree of stratafs's mount `s` (options `extra`) is `want` live, after the kernel forgot
/// its entries and after a remount; and the layer exported and applied onto its parent gives
/// the tree the mount shows. Leaves `s` unmounted.
fn views_agree(s: &mut Side, extra: &str, want: &BTreeMap<String, String>) {
    let seen = |what: &str, got: BTreeMap<String, String>| {
        assert_eq!(&got, want, "stratafs {what} vs what it should show");
    };
    seen("live", common::tree_shape(&s.mnt()));
    run(&s.mnt(), Op::Forget);
    seen("after the kernel forgot", common::tree_shape(&s.mnt()));
    drop(s.m.take());
    s.m = Some(mount_strata(s.t.path(), extra));
    seen("after a remount", common::tree_shape(&s.mnt()));
    let full = common::tree_listing(&s.mnt());
    drop(s.m.take());
    // The layer as a tar, applied onto a copy of its parent.
    let applied = s.t.path().join("applied");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(s.t.path().join("lower"))
        .arg(&applied)
        .status()
        .unwrap();
    assert!(cp.success());
    let tar = export(&s.t.path().join("upper"));
    stratafs::archive::apply_to_dir(
        &applied,
        &mut tar.as_slice(),
        &Default::default(),
        stratafs::archive::ApplyMode::Merged,
        None,
    )
    .unwrap();
    assert_eq!(
        common::tree_listing(&applied),
        full,
        "the exported layer applied onto its parent vs the mount"
    );
}

/// The upper layer `dir` as a layer tar.
fn export(dir: &Path) -> Vec<u8> {
    let mut tar = Vec::new();
    stratafs::archive::export_dir(dir, &mut tar, &Default::default()).unwrap();
    tar.flush().unwrap();
    tar
}

/// The entry names of a layer tar.
fn tar_names(tar: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(tar);
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

use Op::*;

// ---- O_RDONLY|O_TRUNC ----

const RO_TRUNC: &[Op] = &[
    // A lower file: the copy-up makes it empty.
    Write("f2", "x"),
    OpenRoTrunc("f"),
    // Now in the upper: truncated again.
    Write("f", "again"),
    OpenRoTrunc("f"),
    // Through a symlink.
    Write("f", "more"),
    OpenRoTrunc("s"),
    // A file created through the mount.
    Write("new", "new data"),
    OpenRoTrunc("new"),
    Write("new", "kept"),
    Look("new"),
    Look("f"),
];

#[test]
fn o_rdonly_trunc_truncates_upper_files() {
    if !is_root() {
        return;
    }
    differential(build_lower, "", RO_TRUNC);
}

#[test]
fn o_rdonly_trunc_truncates_upper_files_without_passthrough() {
    if !is_root() {
        return;
    }
    differential(build_lower, ",nopassthrough", RO_TRUNC);
}

// ---- a directory renamed over a whiteout ----

#[test]
fn a_directory_renamed_over_a_deleted_directory_hides_the_old_contents() {
    if !is_root() {
        return;
    }
    // The case of the issue: mkdir new; rm -rf d; mv new d; ls d.
    differential(
        build_lower,
        "",
        &[
            Mkdir("new"),
            Write("new/n", "n"),
            RmRf("d"),
            Rename("new", "d"),
            Look("d"),
            Forget,
            Look("d"),
            // Nested, and an empty directory.
            Mkdir("p/new"),
            RmRf("p/q"),
            Rename("p/new", "p/q"),
            Look("p"),
            Forget,
            Look("p"),
            // Deeper: a directory of the new one replaced too.
            Mkdir("p/q/deep"),
            Write("p/q/deep/z", "z"),
            Look("p/q"),
        ],
    );
}

#[test]
fn the_exported_layer_of_a_directory_renamed_over_a_whiteout_is_opaque() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    build_lower(t.path());
    let g = mount_strata(t.path(), "");
    fs::create_dir(g.path.join("new")).unwrap();
    fs::write(g.path.join("new/n"), "n").unwrap();
    fs::remove_dir_all(g.path.join("d")).unwrap();
    fs::rename(g.path.join("new"), g.path.join("d")).unwrap();
    drop(g);
    let names = tar_names(&export(&t.path().join("upper")));
    assert!(
        names.iter().any(|n| n == "d/.wh..wh..opq"),
        "no opaque marker for d in {names:?}"
    );
}

#[test]
fn a_lower_directory_moved_over_a_deleted_directory_hides_the_old_contents() {
    if !is_root() {
        return;
    }
    // Kernel overlayfs says EXDEV and mv copies; stratafs moves an opaque copy.
    differential(
        build_lower,
        "",
        &[
            RmRf("d"),
            Mv("p/q", "d"),
            Look("d"),
            Look("p"),
            RmRf("p"),
            Mv("d", "p"),
            Look("p"),
        ],
    );
}

// ---- other entries where a whiteout stands ----

#[test]
fn files_links_and_nodes_over_deleted_names() {
    if !is_root() {
        return;
    }
    differential(
        build_lower,
        "",
        &[
            // A file renamed over a deleted directory and a directory over a deleted file.
            Write("nf", "nf"),
            RmRf("d"),
            Rename("nf", "d"),
            Look("d"),
            Mkdir("nd"),
            Write("nd/k", "k"),
            RmRf("f"),
            Rename("nd", "f"),
            Look("f"),
            // A symlink, a hard link, a fifo and a new file where directories were.
            RmRf("d"),
            Symlink("elsewhere", "d"),
            Look("d"),
            Write("h", "h"),
            RmRf("p/q"),
            Link("h", "p/q"),
            Look("p/q"),
            RmRf("p/q"),
            Mkfifo("p/q"),
            Look("p"),
            RmRf("p/q"),
            Write("p/q", "now a file"),
            Look("p/q"),
            // And directories made where those stood.
            RmRf("p/q"),
            Mkdir("p/q"),
            Look("p/q"),
            RmRf("d"),
            Mkdir("d"),
            Look("d"),
            RmRf("s"),
            Mkdir("s"),
            Look("s"),
            Forget,
            Look(""),
        ],
    );
}

#[test]
fn new_entries_over_whiteouts_inside_an_opaque_directory() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    build_opaque_with_whiteouts(t.path());
    let mut s = Side {
        m: Some(mount_strata(t.path(), "")),
        t,
    };
    let m = s.mnt();
    assert_eq!(look(&m.join("p")), "{}");
    for (op, want) in [
        (Mkdir("p/new"), "ok"),
        (Write("p/new/n", "n"), "ok"),
        (Rename("p/new", "p/q"), "ok"),
        (Mkdir("p/other"), "ok"),
        (
            Look("p"),
            r#"{"other": "dir", "q": "dir", "q/n": "file:n"}"#,
        ),
        (RmRf("p/other"), "rm true"),
        (Symlink("q", "p/other"), "ok"),
        (Forget, "ok"),
        (
            Look("p"),
            r#"{"other": "link->q", "q": "dir", "q/n": "file:n"}"#,
        ),
    ] {
        assert_eq!(run(&m, op), want, "{op:?}");
    }
    let want = common::tree_shape(&m);
    views_agree(&mut s, "", &want);
}

#[test]
fn renames_and_creation_over_kernel_format_whiteouts() {
    if !is_root() {
        return;
    }
    // The upper as kernel overlayfs leaves it: 0/0 device whiteouts, `p` opaque holding one.
    differential(
        build_kernel_markers,
        "",
        &[
            Look(""),
            Mkdir("new"),
            Write("new/n", "n"),
            Rename("new", "d"),
            Look("d"),
            Mkdir("p/new"),
            Rename("p/new", "p/q"),
            Look("p"),
            RmRf("d"),
            Mkdir("d"),
            Look("d"),
            RmRf("p/q"),
            Mkdir("p/q"),
            Look("p"),
        ],
    );
}

#[test]
fn creation_over_kernel_format_whiteouts() {
    if !is_root() {
        return;
    }
    differential(
        build_kernel_markers,
        "",
        &[
            Mkdir("d"),
            Write("d/new", "new"),
            Look("d"),
            Write("p/q", "file"),
            Look("p"),
            Forget,
            Look(""),
        ],
    );
}

#[test]
fn links_and_symlinks_over_kernel_format_whiteouts() {
    if !is_root() {
        return;
    }
    differential(
        build_kernel_markers,
        "",
        &[
            Write("h", "h"),
            Link("h", "d"),
            Symlink("h", "p/q"),
            Look(""),
            Forget,
            Look(""),
        ],
    );
}
