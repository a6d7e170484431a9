//! Round trips: a random tree (files, directories, links, devices, whiteouts, xattrs, owners)
//! exported as a layer tar and applied again gives the same tree.

use super::*;

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
        // A parent reached through a symlink is no layer tree, and making it would follow the
        // symlink out of the test's directory (a `//` target made `/é` on the host's root).
        if !no_symlink_below(root, parent) || std::fs::create_dir_all(parent).is_err() {
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

/// Whether no existing component of `path` below `root` is a symlink (or other non-directory).
fn no_symlink_below(root: &Path, path: &Path) -> bool {
    let mut at = root.to_path_buf();
    for c in path.strip_prefix(root).unwrap().components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if !m.is_dir() => return false,
            Ok(_) => {}
            Err(_) => return true, // the rest is made by create_dir_all, as directories
        }
    }
    true
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

/// The generator itself must stay inside its tree: a file below a symlinked parent is skipped,
/// not made through the symlink (it once made `/é` on the host's root, and a hard link to a
/// file out there gave the layer a link group it cannot export: the round trip's flake).
#[test]
fn materialize_makes_nothing_through_a_symlinked_parent() {
    let d = tempfile::tempdir().unwrap();
    let (root, outside) = (d.path().join("root"), d.path().join("outside"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let op = |path: &str, kind: Kind| Op {
        path: path.as_bytes().to_vec(),
        kind,
        mode: 0o644,
        owner: (0, 0),
        xattr: None,
        mtime: 1,
    };
    let target = outside.to_str().unwrap().to_string();
    materialize(
        &root,
        &[
            op(".hidden", Kind::Symlink(target)),
            op(".hidden/sub/f", Kind::File(b"x".to_vec())),
            op("a/f", Kind::File(b"y".to_vec())),
            op("b", Kind::HardLink(0)),
        ],
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    let st = sys::lstat(&root.join("a/f")).unwrap();
    assert_eq!(st.st_nlink, 2, "the link is to the file inside the tree");
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
