//! Short op sequences that `scripts/stress.sh` (issue 21) found failing, each minimised from
//! its trace and checked through a real mount, then again after a remount of the same layers.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::common::{MountGuard, OneLower};

/// Lower directories `dirs`, each holding the files `files` (content "lower").
fn layers(dirs: &[&str], files: &[&str]) -> OneLower {
    let l = OneLower::new();
    for d in dirs {
        fs::create_dir_all(l.lower.join(d)).unwrap();
    }
    for f in files {
        fs::write(l.lower.join(f), "lower").unwrap();
    }
    l
}

fn unmount(g: MountGuard) {
    let st = std::process::Command::new("umount")
        .arg(&g.path)
        .status()
        .unwrap();
    assert!(st.success(), "umount {}", g.path.display());
}

/// (inode number, link count) of `p`.
fn ino_nlink(p: &Path) -> (u64, u64) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    (m.ino(), m.nlink())
}

#[test]
fn a_hard_link_into_a_lower_directory_stays_a_link_when_the_directory_moves() {
    // Trace of seed 11: `link d3/n7 d5/n9`, then `rename d3 d4/n10`. The move copied the
    // lower directory's tree anew, its upper file included: the two names then showed one
    // inode number with a link count of 1 each, and a fresh mount two separate files.
    let l = layers(&["d3", "d4", "d5"], &["d3/n7"]);
    let g = l.mount();
    fs::hard_link(l.mp.join("d3/n7"), l.mp.join("d5/n9")).unwrap();
    fs::rename(l.mp.join("d3"), l.mp.join("d4/n10")).unwrap();
    let check = |when: &str| {
        let (a, b) = (
            ino_nlink(&l.mp.join("d5/n9")),
            ino_nlink(&l.mp.join("d4/n10/n7")),
        );
        assert_eq!(a, b, "{when}: the two names of one file differ");
        assert_eq!(a.1, 2, "{when}: link count of a file with two names");
        fs::write(l.mp.join("d5/n9"), "changed").unwrap();
        assert_eq!(
            fs::read_to_string(l.mp.join("d4/n10/n7")).unwrap(),
            "changed",
            "{when}: a write through one name does not show through the other"
        );
    };
    check("live");
    unmount(g);
    let g = l.mount();
    check("after a remount");
    unmount(g);
}

#[test]
fn a_directory_made_where_a_copied_up_lower_directory_moved_away_is_a_new_one() {
    // Trace of seed 11: a copy-up inside the lower `d1/s1`, `rename d1/s1 d2/s0/n5`, `mkdir
    // d1/s1`. The move put a copy in the old upper directory's place and deleted that one,
    // whose inode kept the moved node's number: when the filesystem gave the inode to the new
    // directory, that showed as the moved one (its contents; ESTALE after). Whether it
    // reuses the inode is the filesystem's choice: ten tries.
    let dirs: Vec<String> = (0..10).map(|i| format!("d1/s{i}")).collect();
    let mut all: Vec<&str> = dirs.iter().map(String::as_str).collect();
    all.push("d2");
    let files: Vec<String> = dirs.iter().map(|d| format!("{d}/f0")).collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let l = layers(&all, &files);
    let g = l.mount();
    for (i, d) in dirs.iter().enumerate() {
        let moved = format!("d2/m{i}");
        fs::set_permissions(
            l.mp.join(format!("{d}/f0")),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        fs::rename(l.mp.join(d), l.mp.join(&moved)).unwrap();
        fs::create_dir(l.mp.join(d)).unwrap();
        let (new, old) = (ino_nlink(&l.mp.join(d)).0, ino_nlink(&l.mp.join(&moved)).0);
        assert_ne!(
            new, old,
            "{d}: the new directory shows the moved one's number"
        );
        assert_eq!(
            fs::read_dir(l.mp.join(d)).unwrap().count(),
            0,
            "{d}: new, not empty"
        );
        assert_eq!(
            fs::read_dir(l.mp.join(&moved)).unwrap().count(),
            1,
            "{moved}"
        );
    }
    unmount(g);
    let g = l.mount();
    for i in 0..dirs.len() {
        assert_eq!(
            fs::read_dir(l.mp.join(format!("d2/m{i}"))).unwrap().count(),
            1
        );
    }
    unmount(g);
}

#[test]
fn an_open_file_whose_name_a_new_file_took_keeps_its_own_attributes() {
    // A file unlinked while open, then a new file made at its name: the old node still
    // resolved by its old name, so a stat of the open file (and what the kernel then believed
    // of it) was the new file's.
    let l = layers(&["d0"], &[]);
    let g = l.mount();
    let p = l.mp.join("d0/a");
    fs::write(&p, "the old contents").unwrap();
    let old = fs::File::open(&p).unwrap();
    let old_ino = old.metadata().unwrap().ino();
    fs::remove_file(&p).unwrap();
    fs::write(&p, "new").unwrap();
    let m = old.metadata().unwrap();
    assert_eq!(m.len(), 16, "the unlinked file shows the new file's size");
    assert_eq!(m.ino(), old_ino);
    assert_ne!(
        ino_nlink(&p).0,
        old_ino,
        "the new file shows the old one's number"
    );
    assert_eq!(fs::read_to_string(&p).unwrap(), "new");
    drop(old);
    unmount(g);
}

#[test]
fn a_lower_hard_link_stays_a_link_when_the_directory_of_one_name_moves() {
    // `d0/n0` and `d1/hl` are one lower file (as in the stress tree); `rename d0 d4/n2` copied
    // `d0` whole, `n0` as a file of its own: the two names showed one number with link counts 1 and 2,
    // a write through one did not show through the other, and a fresh mount two files.
    let l = layers(&["d0", "d1", "d4"], &["d0/n0"]);
    fs::hard_link(l.lower.join("d0/n0"), l.lower.join("d1/hl")).unwrap();
    let g = l.mount();
    assert_eq!(ino_nlink(&l.mp.join("d1/hl")).1, 2);
    fs::rename(l.mp.join("d0"), l.mp.join("d4/n2")).unwrap();
    let check = |when: &str| {
        let (a, b) = (
            ino_nlink(&l.mp.join("d1/hl")),
            ino_nlink(&l.mp.join("d4/n2/n0")),
        );
        assert_eq!(a, b, "{when}: the two names of one file differ");
        assert_eq!(a.1, 2, "{when}: link count of a file with two names");
    };
    check("live");
    fs::write(l.mp.join("d4/n2/n0"), "changed").unwrap();
    assert_eq!(
        fs::read_to_string(l.mp.join("d1/hl")).unwrap(),
        "changed",
        "a write through one name does not show through the other"
    );
    unmount(g);
    let g = l.mount();
    check("after a remount");
    assert_eq!(fs::read_to_string(l.mp.join("d1/hl")).unwrap(), "changed");
    unmount(g);
}

#[test]
fn a_file_on_the_freed_inode_of_a_moved_directorys_old_copy_gets_a_number_of_its_own() {
    // Upper directories inside a lower one, which then moves: the move copies the
    // tree and deletes the old copies, whose nodes now show the new copies. The filesystem
    // gives a freed inode to a new file, which showed the moved directory's number (EIO in
    // a listing: the kernel's inode of that number is a directory). Whether the filesystem
    // reuses the inodes is its choice: many directories, many new files.
    let l = layers(&["d0", "d1"], &["d0/f"]);
    let g = l.mount();
    let mut moved = std::collections::HashSet::new();
    for i in 0..30 {
        fs::create_dir(l.mp.join(format!("d0/s{i}"))).unwrap();
    }
    fs::rename(l.mp.join("d0"), l.mp.join("d1/m")).unwrap();
    for i in 0..30 {
        moved.insert(ino_nlink(&l.mp.join(format!("d1/m/s{i}"))).0);
    }
    for i in 0..60 {
        let p = l.mp.join(format!("d1/f{i}"));
        fs::write(&p, "x").unwrap();
        let m = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(m.is_file(), "{}", p.display());
        assert!(
            !moved.contains(&m.ino()),
            "{}: a new file shows a moved directory's number",
            p.display()
        );
    }
    for i in 0..30 {
        let d = l.mp.join(format!("d1/m/s{i}"));
        assert!(
            fs::symlink_metadata(&d).unwrap().is_dir(),
            "{}",
            d.display()
        );
        assert_eq!(fs::read_dir(&d).unwrap().count(), 0, "{}", d.display());
    }
    unmount(g);
}

#[test]
fn a_listing_begun_before_a_rename_gives_no_entry_the_name_lost() {
    // A READDIRPLUS answered from the listing of opendir: an entry renamed away since (and a
    // file made at its name) came back with the moved directory's node and the new file's
    // attributes, and the kernel's inode of that number then failed every request (EIO).
    let l = layers(&["d0/s0", "d1"], &["d0/n0", "d0/s0/f"]);
    let g = l.mount();
    let dir = l.mp.join("d0");
    for _ in 0..3 {
        let s0 = fs::symlink_metadata(dir.join("s0")).unwrap();
        assert!(s0.is_dir());
        let rd = fs::read_dir(&dir).unwrap();
        fs::rename(dir.join("s0"), l.mp.join("d1/s0")).unwrap();
        fs::write(dir.join("s0"), "a file now").unwrap();
        let names: Vec<String> = rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"n0".to_string()), "{names:?}");
        let m = fs::symlink_metadata(dir.join("s0")).unwrap();
        assert!(m.is_file(), "d0/s0 is a file now");
        assert_ne!(
            m.ino(),
            s0.ino(),
            "the new file shows the moved directory's number"
        );
        let moved = fs::symlink_metadata(l.mp.join("d1/s0")).unwrap();
        assert!(moved.is_dir() && moved.ino() == s0.ino());
        assert_eq!(fs::read_dir(l.mp.join("d1/s0")).unwrap().count(), 1);
        fs::remove_file(dir.join("s0")).unwrap();
        fs::rename(l.mp.join("d1/s0"), dir.join("s0")).unwrap();
    }
    unmount(g);
}

/// A stat of the open file `f` that asks the server (the kernel's cached attributes are
/// trusted for a day otherwise).
fn fstat_sync(f: &fs::File) -> std::io::Result<(u64, u64, u32)> {
    use std::os::fd::AsRawFd;
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let empty = c"";
    let r = unsafe {
        libc::statx(
            f.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_FORCE_SYNC,
            libc::STATX_BASIC_STATS,
            &mut stx,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((stx.stx_ino, stx.stx_size, u32::from(stx.stx_mode)))
}

#[test]
fn a_reader_of_a_file_copied_up_beside_it_keeps_its_attributes_when_a_directory_takes_the_name() {
    // With passthrough, a lower file open for reading is copied up under a new number and
    // the name goes to the copy; the old node kept the name all the same, so once the copy
    // was unlinked and a directory made there, a stat of the reader got the directory's
    // attributes (the kernel's inode went bad: EIO). Without passthrough nothing is renumbered.
    let l = layers(&["d0"], &["d0/a"]);
    let g = l.mount();
    let p = l.mp.join("d0/a");
    let reader = fs::File::open(&p).unwrap();
    let ino = reader.metadata().unwrap().ino();
    {
        use std::io::Write;
        let mut w = fs::OpenOptions::new().append(true).open(&p).unwrap();
        w.write_all(b"+").unwrap();
    }
    fs::remove_file(&p).unwrap();
    fs::create_dir(&p).unwrap();
    let (i, size, mode) = fstat_sync(&reader).unwrap_or_else(|e| panic!("stat of the reader: {e}"));
    assert_eq!(i, ino, "the reader's inode shows another file");
    // The lower file's size with passthrough (the reader keeps it); without, the reader's
    // inode is the copy, written to.
    assert!(size == 5 || size == 6, "size {size}");
    assert_eq!(mode & libc::S_IFMT, libc::S_IFREG);
    assert!(fs::symlink_metadata(&p).unwrap().is_dir());
    drop(reader);
    unmount(g);
}

#[test]
fn a_hard_link_keeps_its_name_when_another_name_moves_and_goes() {
    // What seed 11 without passthrough ran into (read from the node's state at the first
    // failure), as three requests: `link d0/a d1/b`, `rename d1/b d2/c`, `unlink d2/c`. The
    // rename gave the file's node the moved name in place of the one it went by, so once
    // the moved name was unlinked the node had no name left: opens of `d0/a` failed with
    // ENOENT, then reads with EIO.
    let l = layers(&["d0", "d1", "d2"], &[]);
    let g = l.mount();
    fs::write(l.mp.join("d0/a"), "one file").unwrap();
    fs::hard_link(l.mp.join("d0/a"), l.mp.join("d1/b")).unwrap();
    fs::rename(l.mp.join("d1/b"), l.mp.join("d2/c")).unwrap();
    fs::remove_file(l.mp.join("d2/c")).unwrap();
    let p = l.mp.join("d0/a");
    assert_eq!(fs::read_to_string(&p).unwrap(), "one file");
    {
        use std::io::Write;
        let mut w = fs::OpenOptions::new().append(true).open(&p).unwrap();
        w.write_all(b", still").unwrap();
    }
    assert_eq!(fs::read_to_string(&p).unwrap(), "one file, still");
    assert_eq!(ino_nlink(&p).1, 1);
    unmount(g);
}
