//! New files as `tar -x` makes them: created, written, then given their owner, mode and times
//! through the still-open descriptor. The view makes a file that no lower layer has directly
//! under its name (no staging) and applies those changes through its open file; these tests
//! check that what the view shows, what the upper layer holds and what a fresh mount shows all
//! agree, in a new directory, in a lower directory and over a deleted lower file.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::common::OneLower;

const MTIME: i64 = 1_500_000_000;

/// What `tar -x` does for one file: create it exclusively, write, then fchown, fchmod and
/// futimens on the open descriptor, then close.
fn untar_one(path: &Path, data: &[u8]) {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(data).unwrap();
    let fd = f.as_raw_fd();
    // SAFETY: a valid open descriptor; plain syscalls.
    unsafe {
        assert_eq!(libc::fchown(fd, 1234, 5678), 0, "fchown {}", path.display());
        assert_eq!(libc::fchmod(fd, 0o640), 0, "fchmod {}", path.display());
        let times = [
            libc::timespec {
                tv_sec: MTIME - 10,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: MTIME,
                tv_nsec: 0,
            },
        ];
        assert_eq!(libc::futimens(fd, times.as_ptr()), 0);
    }
}

fn assert_untarred(path: &Path, data: &[u8]) {
    let md = fs::symlink_metadata(path).unwrap();
    let shown = (md.uid(), md.gid(), md.mode() & 0o7777, md.mtime(), md.len());
    let want = (1234, 5678, 0o640, MTIME, data.len() as u64);
    assert_eq!(shown, want, "{}", path.display());
    assert_eq!(fs::read(path).unwrap(), data, "{}", path.display());
}

/// Nothing but the whiteout base is left in the work directory's staging area.
fn assert_staging_empty(work: &Path) {
    let staging = work.join("stratafs-staging");
    let mut left: Vec<String> = fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "whiteout")
        .collect();
    left.sort();
    assert!(left.is_empty(), "left in staging: {left:?}");
}

#[test]
fn files_made_as_tar_x_makes_them_get_owner_mode_and_times_in_every_kind_of_directory() {
    let l = OneLower::new();
    fs::create_dir(l.lower.join("old")).unwrap();
    fs::write(l.lower.join("old/kept"), b"lower").unwrap();
    fs::write(l.lower.join("old/gone"), b"lower").unwrap();
    let g = l.mount();
    let m = &l.mp;
    fs::create_dir_all(m.join("new/sub")).unwrap();
    fs::remove_file(m.join("old/gone")).unwrap();
    let files = [
        ("new/sub/a", &b"in a new directory"[..]),
        ("old/b", b"in a lower directory, a name no lower has"),
        ("old/gone", b"over a deleted lower file"),
        ("c", b"at the root"),
    ];
    for (rel, data) in files {
        untar_one(&m.join(rel), data);
    }
    for (rel, data) in files {
        assert_untarred(&m.join(rel), data);
        assert_untarred(&l.upper.join(rel), data);
    }
    assert_eq!(fs::read(m.join("old/kept")).unwrap(), b"lower");
    l.unmount(g);
    for dir in ["new/sub", "old", ""] {
        let names: Vec<String> = fs::read_dir(l.upper.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".wh."))
            .collect();
        assert!(names.is_empty(), "whiteouts left in upper/{dir}: {names:?}");
    }
    assert_staging_empty(&l.work);
    let g = l.mount();
    for (rel, data) in files {
        assert_untarred(&l.mp.join(rel), data);
    }
    l.unmount(g);
}

#[test]
fn a_new_file_gets_the_mode_asked_for_whatever_the_servers_umask() {
    let l = OneLower::new();
    let g = l.mount();
    fs::create_dir(l.mp.join("d")).unwrap();
    // The creating process has umask 0: the mode asked for is 0666, wider than the 022 the
    // server usually runs with.
    let target = l.mp.join("d/wide");
    let script = format!("umask 0; : > '{}'", target.display());
    let st = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(st.success());
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&target), 0o666);
    assert_eq!(mode(&l.upper.join("d/wide")), 0o666);
    l.unmount(g);
}

#[test]
fn a_stale_whiteout_marker_for_a_name_no_lower_has_goes_when_the_name_is_made() {
    let l = OneLower::new();
    fs::create_dir(l.lower.join("d")).unwrap();
    fs::create_dir(l.upper.join("d")).unwrap();
    // Left by an earlier mount over other lower layers: no lower layer of this one has d/f.
    fs::write(l.upper.join("d/.wh.f"), b"").unwrap();
    let g = l.mount();
    untar_one(&l.mp.join("d/f"), b"new");
    assert_untarred(&l.mp.join("d/f"), b"new");
    l.unmount(g);
    assert!(!l.upper.join("d/.wh.f").exists(), "the stale marker stayed");
    assert_untarred(&l.upper.join("d/f"), b"new");
}
