//! The read path of the union view: whiteout/opaque formats, attributes, inode numbers, deep
//! chains, big directories, concurrency, and the get/put mount lifecycle.

use std::collections::BTreeSet;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use stratafs::driver::strata::StrataDriver;
use stratafs::{CreateOpts, Driver, DriverConfig};

use crate::common::*;

fn lowers(paths: &[&Path]) -> String {
    let l: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    format!("lowerdir={}", l.join(":"))
}

/// Bottom layer shared by the whiteout tests.
fn base_layer(root: &Path) {
    for f in [
        "a", "b", "c", "keep", "o1/x", "o2/x", "o3/x", "o4/x", "o5/x", "d/in",
    ] {
        put_file(root, f, f);
    }
}

#[test]
fn every_whiteout_and_opaque_format() {
    let t = tempfile::tempdir().unwrap();
    let (low, mid, top) = (
        t.path().join("low"),
        t.path().join("mid"),
        t.path().join("top"),
    );
    base_layer(&low);
    // mid: a .wh. file, a char 0/0, an opaque marker file and the three xattrs.
    put_file(&mid, ".wh.a", "");
    put_char_whiteout(&mid, "b");
    put_file(&mid, "o1/.wh..wh..opq", "");
    put_file(&mid, "o1/new", "n1");
    for (d, x) in [
        ("o2", "trusted.overlay.opaque"),
        ("o3", "user.overlay.opaque"),
        ("o4", "user.fuseoverlayfs.opaque"),
    ] {
        put_file(&mid, &format!("{d}/new"), d);
        set_xattr(&mid.join(d), x, b"y");
    }
    // top: mixed formats again, a whited-out directory, a file replacing a directory and an
    // aufs-internal name that must stay hidden.
    put_file(&top, ".wh.c", "");
    put_char_whiteout(&top, "o5");
    put_file(&top, "d", "file-now");
    put_file(&top, ".wh..wh.plnk", "");
    put_file(&top, "added", "top");
    let mp = t.path().join("m");
    let _g = mount_stratafs(&lowers(&[&top, &mid, &low]), &mp);
    let got = tree_shape(&mp);
    let want = expect(&[
        ("added", "file:top"),
        ("d", "file:file-now"),
        ("keep", "file:keep"),
        ("o1", "dir"),
        ("o1/new", "file:n1"),
        ("o2", "dir"),
        ("o2/new", "file:o2"),
        ("o3", "dir"),
        ("o3/new", "file:o3"),
        ("o4", "dir"),
        ("o4/new", "file:o4"),
    ]);
    assert_eq!(got, want);
    assert!(!mp.join("a").exists() && !mp.join(".wh.a").exists());
    assert!(std::fs::symlink_metadata(mp.join("b")).is_err());
}

#[test]
fn formats_alone_each_layer_pair() {
    // Each format on its own over the same base, so one broken reader cannot hide behind another.
    type Make<'a> = &'a dyn Fn(&Path);
    let cases: &[(&str, Make)] = &[
        (".wh.", &|p| put_file(p, ".wh.keep", "")),
        ("char", &|p| put_char_whiteout(p, "keep")),
        ("opq-file", &|p| put_file(p, "o1/.wh..wh..opq", "")),
        ("trusted", &|p| {
            std::fs::create_dir_all(p.join("o1")).unwrap();
            set_xattr(&p.join("o1"), "trusted.overlay.opaque", b"y")
        }),
        ("user", &|p| {
            std::fs::create_dir_all(p.join("o1")).unwrap();
            set_xattr(&p.join("o1"), "user.overlay.opaque", b"y")
        }),
        ("fuseoverlayfs", &|p| {
            std::fs::create_dir_all(p.join("o1")).unwrap();
            set_xattr(&p.join("o1"), "user.fuseoverlayfs.opaque", b"y")
        }),
    ];
    for (name, make) in cases {
        let t = tempfile::tempdir().unwrap();
        let (low, top) = (t.path().join("low"), t.path().join("top"));
        base_layer(&low);
        std::fs::create_dir_all(&top).unwrap();
        make(&top);
        let mp = t.path().join("m");
        let _g = mount_stratafs(&lowers(&[&top, &low]), &mp);
        let got = tree_shape(&mp);
        if name.starts_with('.') || *name == "char" {
            assert!(!got.contains_key("keep"), "{name}: {got:?}");
            assert!(got.contains_key("o1/x"), "{name}");
        } else {
            assert!(got.contains_key("keep"), "{name}");
            assert!(got.contains_key("o1"), "{name}");
            assert!(
                !got.contains_key("o1/x"),
                "{name}: opaque dir still shows lower file"
            );
        }
        assert!(
            got.keys().all(|k| !k.contains(".wh.")),
            "{name}: marker shown"
        );
    }
}

#[test]
fn same_as_kernel_overlay() {
    // Formats the kernel reads: char 0/0 whiteouts and trusted.overlay.opaque.
    let t = tempfile::tempdir().unwrap();
    let (l1, l2, l3) = (
        t.path().join("l1"),
        t.path().join("l2"),
        t.path().join("l3"),
    );
    base_layer(&l3);
    put_file(&l3, "deep/a/b/c", "c");
    std::os::unix::fs::symlink("keep", l3.join("ln")).unwrap();
    put_char_whiteout(&l2, "a");
    put_file(&l2, "o2/mine", "m");
    set_xattr(&l2.join("o2"), "trusted.overlay.opaque", b"y");
    put_file(&l2, "deep/a/new", "new");
    put_char_whiteout(&l1, "deep/a/b");
    put_file(&l1, "b", "over");
    put_file(&l1, "d/in2", "in2");
    let ours = t.path().join("ours");
    let kern = t.path().join("kern");
    let _g1 = mount_stratafs(&lowers(&[&l1, &l2, &l3]), &ours);
    let _g2 = mount_kernel_overlay(&[&l1, &l2, &l3], t.path(), &kern);
    let a = tree_listing(&ours);
    let b = tree_listing(&kern);
    assert!(a.len() > 10, "{a:?}");
    assert_eq!(a, b);
}

#[test]
fn attributes_override_stat_and_xattrs() {
    let t = tempfile::tempdir().unwrap();
    let (low, top) = (t.path().join("low"), t.path().join("top"));
    put_file(&low, "f", "data");
    set_xattr(
        &low.join("f"),
        "user.containers.override_stat",
        b"1234:5678:0640",
    );
    set_xattr(&low.join("f"), "user.visible", b"v");
    set_xattr(&low.join("f"), "user.overlay.secret", b"s");
    put_file(&low, "dev", "");
    set_xattr(
        &low.join("dev"),
        "user.containers.override_stat",
        b"0:0:0600:char-1-3",
    );
    put_file(&top, "o/x", "");
    set_xattr(&top.join("o"), "trusted.overlay.opaque", b"y");
    let mp = t.path().join("m");
    let _g = mount_stratafs(&lowers(&[&top, &low]), &mp);
    let m = std::fs::metadata(mp.join("f")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1234, 5678, 0o640));
    let d = std::fs::symlink_metadata(mp.join("dev")).unwrap();
    assert_eq!(d.mode() & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(d.rdev(), libc::makedev(1, 3));
    let names = stratafs::sys::llistxattr(&mp.join("f")).unwrap();
    assert!(names.contains(&b"user.visible".to_vec()), "{names:?}");
    assert!(names
        .iter()
        .all(|n| !n.starts_with(b"user.overlay.")
            && n.as_slice() != b"user.containers.override_stat"));
    assert_eq!(
        stratafs::sys::lgetxattr(&mp.join("f"), "user.visible")
            .unwrap()
            .as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(
        stratafs::sys::lgetxattr(&mp.join("f"), "user.overlay.secret").unwrap(),
        None
    );
    assert_eq!(
        stratafs::sys::lgetxattr(&mp.join("o"), "trusted.overlay.opaque").unwrap(),
        None
    );
    // read-only view
    assert!(std::fs::write(mp.join("new"), "x").is_err());
}

#[test]
fn inode_numbers() {
    let t = tempfile::tempdir().unwrap();
    let (low, top) = (t.path().join("low"), t.path().join("top"));
    put_file(&low, "dir/one", "1");
    std::fs::hard_link(low.join("dir/one"), low.join("dir/two")).unwrap();
    put_file(&top, "dir/three", "3");
    put_file(&top, "four", "4");
    let mp = t.path().join("m");
    let _g = mount_stratafs(&lowers(&[&top, &low]), &mp);
    let mut seen = BTreeSet::new();
    for d in [mp.clone(), mp.join("dir")] {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let st = std::fs::symlink_metadata(e.path()).unwrap();
            assert_eq!(e.ino(), st.ino(), "{}", e.path().display());
            if e.file_name() != "two" {
                assert!(seen.insert(st.ino()), "duplicate ino {}", st.ino());
            }
        }
    }
    let one = std::fs::metadata(mp.join("dir/one")).unwrap().ino();
    let two = std::fs::metadata(mp.join("dir/two")).unwrap().ino();
    assert_eq!(one, two, "hard links share a number");
    assert_eq!(std::fs::metadata(&mp).unwrap().ino(), 1);
}

fn deep_chain(n: usize) {
    let t = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    for i in 0..n {
        let d = t.path().join(format!("l{i:04}"));
        put_file(&d, &format!("f{i}"), &i.to_string());
        put_file(&d, "shared/v", &i.to_string());
        dirs.push(d);
    }
    put_file(&dirs[n - 1], "base/deep/file", "bottom");
    // topmost first, through lowerdir_file (1000 paths exceed one argv string's limit)
    let list = t.path().join("lowers");
    let text: Vec<String> = dirs.iter().rev().map(|d| d.display().to_string()).collect();
    std::fs::write(&list, text.join("\n")).unwrap();
    let mp = t.path().join("m");
    let _g = mount_stratafs(&format!("lowerdir_file={}", list.display()), &mp);
    assert_eq!(
        std::fs::read_to_string(mp.join("base/deep/file")).unwrap(),
        "bottom"
    );
    assert_eq!(
        std::fs::read_to_string(mp.join("shared/v")).unwrap(),
        (n - 1).to_string()
    );
    assert_eq!(std::fs::read_dir(&mp).unwrap().count(), n + 2);
    assert_eq!(std::fs::read_to_string(mp.join("f0")).unwrap(), "0");
}

#[test]
fn chain_of_128_layers() {
    deep_chain(128);
}

#[test]
fn chain_of_1000_layers() {
    deep_chain(1000);
}

#[test]
fn directory_of_100000_entries_over_two_layers() {
    let t = tempfile::tempdir().unwrap();
    let (low, top) = (t.path().join("low/big"), t.path().join("top/big"));
    std::fs::create_dir_all(&low).unwrap();
    std::fs::create_dir_all(&top).unwrap();
    for i in 0..100_000 {
        let dir = if i % 2 == 0 { &low } else { &top };
        std::fs::File::create(dir.join(format!("entry-{i:06}"))).unwrap();
    }
    // one name in both layers, one whited out
    std::fs::write(top.join("entry-000000"), "top").unwrap();
    std::fs::File::create(top.join(".wh.entry-000002")).unwrap();
    let mp = t.path().join("m");
    let _g = mount_stratafs(
        &lowers(&[&t.path().join("top"), &t.path().join("low")]),
        &mp,
    );
    let start = std::time::Instant::now();
    let n = std::fs::read_dir(mp.join("big")).unwrap().count();
    let took = start.elapsed();
    assert_eq!(n, 100_000 - 1);
    assert_eq!(
        std::fs::read_to_string(mp.join("big/entry-000000")).unwrap(),
        "top"
    );
    assert!(!mp.join("big/entry-000002").exists());
    assert!(mp.join("big/entry-099999").exists());
    assert!(mp.join("big/entry-050000").exists());
    assert!(took.as_secs() < 20, "listing took {took:?}");
    // attributes through readdirplus-created nodes: every 100th entry, numbers match readdir
    for e in std::fs::read_dir(mp.join("big")).unwrap().step_by(100) {
        let e = e.unwrap();
        assert_eq!(std::fs::symlink_metadata(e.path()).unwrap().ino(), e.ino());
    }
}

#[test]
fn many_threads_reading_at_once() {
    let t = tempfile::tempdir().unwrap();
    let (low, top) = (t.path().join("low"), t.path().join("top"));
    for i in 0..200 {
        put_file(&low, &format!("d{}/f{i}", i % 10), &format!("low {i}"));
        if i % 3 == 0 {
            put_file(&top, &format!("d{}/f{i}", i % 10), &format!("top {i}"));
        }
    }
    let mp = t.path().join("m");
    let _g = mount_stratafs(&lowers(&[&top, &low]), &mp);
    let expected = tree_listing(&mp);
    assert_eq!(expected.len(), 210);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..5 {
                    assert_eq!(tree_listing(&mp), expected);
                }
            });
        }
    });
    assert_eq!(std::fs::read_to_string(mp.join("d3/f3")).unwrap(), "top 3");
    assert_eq!(std::fs::read_to_string(mp.join("d4/f4")).unwrap(), "low 4");
}

#[test]
fn big_file_read() {
    let t = tempfile::tempdir().unwrap();
    let low = t.path().join("low");
    let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::create_dir_all(&low).unwrap();
    std::fs::write(low.join("big"), &data).unwrap();
    let mp = t.path().join("m");
    let _g = mount_stratafs(&lowers(&[&low]), &mp);
    assert!(std::fs::read(mp.join("big")).unwrap() == data);
}

/// Large reads (answered from a map of the backing file when there is no passthrough): the
/// bytes across several of the map's 8 MiB release steps and up to an end that is not
/// page-aligned, of a lower file and of a file written in the upper, read whole and from
/// several threads at scattered offsets.
#[test]
fn big_reads_of_lower_and_upper_files() {
    use std::os::unix::fs::FileExt;
    let l = OneLower::new();
    let len = 20 * 1024 * 1024 + 12_345;
    let low: Vec<u8> = (0..len as u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(l.lower.join("low"), &low).unwrap();
    let up: Vec<u8> = low.iter().rev().copied().collect();
    let g = l.mount();
    std::fs::write(l.mp.join("up"), &up).unwrap();
    // A fresh mount: nothing of either file in its page cache.
    l.unmount(g);
    let _g = l.mount();
    for (name, want) in [("low", &low), ("up", &up)] {
        let f = std::fs::File::open(l.mp.join(name)).unwrap();
        std::thread::scope(|s| {
            for k in 0..4u64 {
                let (f, want) = (&f, want);
                s.spawn(move || {
                    let mut buf = vec![0u8; 300_000];
                    for j in 0..20u64 {
                        let off = (k * 7_919_000 + j * 3_000_017) % len as u64;
                        let n = f.read_at(&mut buf, off).unwrap();
                        let end = (off as usize + buf.len()).min(len);
                        assert_eq!(n, end - off as usize, "{name} at {off}");
                        assert!(buf[..n] == want[off as usize..end], "{name} at {off}");
                    }
                });
            }
        });
        assert!(&std::fs::read(l.mp.join(name)).unwrap() == want, "{name}");
        let mut tail = [0u8; 10];
        assert_eq!(
            f.read_at(&mut tail, len as u64).unwrap(),
            0,
            "{name} past its end"
        );
    }
}

#[test]
fn mount_fuse3_form_and_version() {
    let out = Command::new(stratafs_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("stratafs version "));
    let t = tempfile::tempdir().unwrap();
    let low = t.path().join("low");
    put_file(&low, "x", "x");
    let mp = t.path().join("m");
    std::fs::create_dir_all(&mp).unwrap();
    let st = Command::new(stratafs_bin())
        .arg("overlay")
        .arg(&mp)
        .arg("-o")
        .arg(format!("lowerdir={},,nodev,context=\"x\"", low.display()))
        .status()
        .unwrap();
    assert!(st.success());
    let _g = MountGuard::new(&mp);
    assert_eq!(std::fs::read_to_string(mp.join("x")).unwrap(), "x");
    let bad = Command::new(stratafs_bin())
        .args(["-o", "lowerdir=/nonexistent-layer,frob"])
        .arg(t.path().join("m2"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("frob"));
}

fn driver(root: &Path) -> StrataDriver {
    use_test_binary();
    StrataDriver::new(&DriverConfig {
        root: root.to_path_buf(),
        ..Default::default()
    })
    .unwrap()
}

/// Unmounts everything the driver mounted, even when the test fails.
struct Cleanup<'a>(&'a StrataDriver);
impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.cleanup();
    }
}

fn two_layers(d: &StrataDriver) {
    d.create("base", None, &CreateOpts::default()).unwrap();
    put_file(&d.store().diff_dir("base"), "etc/hostname", "base");
    put_file(&d.store().diff_dir("base"), "gone", "x");
    d.create_read_write("ctr", Some("base"), &CreateOpts::default())
        .unwrap();
    put_file(&d.store().diff_dir("ctr"), ".wh.gone", "");
}

#[test]
fn driver_get_twice_put_twice() {
    let t = tempfile::tempdir().unwrap();
    let d = driver(t.path());
    let _c = Cleanup(&d);
    two_layers(&d);
    let p1 = d.get("ctr", "").unwrap();
    let p2 = d.get("ctr", "").unwrap();
    assert_eq!(p1, p2);
    assert!(d.is_mounted(&p1));
    assert_eq!(
        std::fs::read_to_string(p1.join("etc/hostname")).unwrap(),
        "base"
    );
    assert!(!p1.join("gone").exists());
    let active = d.status().into_iter().find(|(k, _)| k == "Active Mounts");
    assert_eq!(active.map(|(_, v)| v).as_deref(), Some("1"));
    d.put("ctr").unwrap();
    assert!(d.is_mounted(&p1), "still mounted after the first put");
    d.put("ctr").unwrap();
    assert!(!d.is_mounted(&p1), "unmounted after the second put");
    d.put("ctr").unwrap(); // put of an unmounted layer: logged, not an error
                           // a layer without parent mounts too
    let b = d.get("base", "").unwrap();
    assert!(b.join("gone").exists());
    d.put("base").unwrap();
    assert!(!d.is_mounted(&b));
}

#[test]
fn killed_server_then_get_remounts() {
    let t = tempfile::tempdir().unwrap();
    let d = driver(t.path());
    let _c = Cleanup(&d);
    two_layers(&d);
    let p = d.get("ctr", "").unwrap();
    let pid: i32 = std::fs::read_to_string(d.store().layer_dir("ctr").join("mount.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    stratafs::sys::kill(pid, libc::SIGKILL).unwrap();
    // The kernel aborts the connection once the killed process has closed /dev/fuse, which
    // can take seconds under heavy I/O from the tests running beside this one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::metadata(p.join("etc")).is_ok() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // ENOTCONN once the connection is gone; a request caught in flight while the kernel ends
    // the dead server's queues gets ECONNABORTED instead (ECANCELED on the io_uring
    // transport, whose ring the kernel cancels when the killed server's threads exit).
    let e = std::fs::metadata(p.join("etc")).unwrap_err();
    assert!(
        matches!(
            e.raw_os_error(),
            Some(libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED)
        ),
        "{e}"
    );
    assert!(!d.is_mounted(&p));
    let p2: PathBuf = d.get("ctr", "").unwrap();
    assert_eq!(p2, p);
    assert_eq!(
        std::fs::read_to_string(p.join("etc/hostname")).unwrap(),
        "base"
    );
    d.put("ctr").unwrap();
    assert!(!stratafs::union::mount::fuse_mounted(&p));
}
