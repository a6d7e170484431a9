//! The core driven directly, as a transport would, with no kernel connection.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};

use crate::union::attr::FileKind;
use crate::union::ids::IdView;
use crate::union::layers::Layers;
use crate::union::options::MountOptions;
use crate::union::tree::{Tree, ROOT_INO};
use crate::union::view::types::{
    Backing, Caller, Errno, OpenFlags, OpenReply, Opened, Registrar, Reply, SetAttrReq, Xattr,
};
use crate::union::view::View;

const ROOT: Caller = Caller {
    uid: 0,
    gid: 0,
    pid: 1,
};

fn view(lower: &[PathBuf], upper: Option<(PathBuf, PathBuf)>) -> View {
    let layers = Layers::open(upper.as_ref().map(|(u, _)| u.as_path()), lower).unwrap();
    let tree = Tree::new(layers, IdView::default()).unwrap();
    let opts = MountOptions {
        lowerdirs: lower.to_vec(),
        upperdir: upper.as_ref().map(|(u, _)| u.clone()),
        workdir: upper.map(|(_, w)| w),
        ..Default::default()
    };
    View::new(tree, opts)
}

/// An open reply that refuses passthrough and hands the answer back.
struct Answer(mpsc::Sender<Reply<Opened>>);

impl Registrar for Answer {
    fn open_backing(&self, _fd: BorrowedFd<'_>) -> io::Result<Arc<dyn Backing>> {
        Err(io::Error::from_raw_os_error(libc::EPERM))
    }
}

impl OpenReply for Answer {
    fn reply(self, r: Reply<Opened>) {
        let _ = self.0.send(r);
    }
}

fn open(v: &View, ino: u64, flags: i32) -> Reply<Opened> {
    let (tx, rx) = mpsc::channel();
    v.open(ROOT, ino, flags, Answer(tx));
    rx.recv().unwrap()
}

#[test]
fn listings_fill_the_sink_until_it_is_full() {
    let low = tempfile::tempdir().unwrap();
    for n in ["a", "b", "c", "d"] {
        fs::write(low.path().join(n), n).unwrap();
    }
    let v = view(&[low.path().to_path_buf()], None);
    let dir = v.opendir(ROOT_INO).unwrap();
    assert!(dir
        .flags
        .contains(OpenFlags::CACHE_DIR | OpenFlags::KEEP_CACHE));
    // READDIR: ".", "..", then the names; a sink full after three takes three.
    let mut got = Vec::new();
    v.readdir(ROOT_INO, dir.fh, 0, &mut |ino, off, kind, name| {
        if got.len() == 3 {
            return true;
        }
        got.push((ino, off, kind, name.to_owned()));
        false
    })
    .unwrap();
    assert_eq!(
        got[0],
        (ROOT_INO, 1, FileKind::Directory, OsString::from("."))
    );
    assert_eq!(got[1].1, 2);
    assert_eq!(got[2].1, 3);
    // READDIRPLUS from there: each entry sent holds a lookup, the one refused holds none.
    let before = v.tree.node_count();
    let mut plus = Vec::new();
    v.readdirplus(ROOT_INO, dir.fh, 3, &mut |name, off, e| {
        if plus.len() == 2 {
            return true;
        }
        plus.push((name.to_owned(), off, e.attr.size, e.attr.kind));
        false
    })
    .unwrap();
    assert_eq!(plus.len(), 2);
    assert_eq!(plus[0].1, 4);
    assert!(plus
        .iter()
        .all(|p| p.2 == 1 && p.3 == FileKind::RegularFile));
    assert_eq!(v.tree.node_count(), before + 2);
    v.releasedir(dir.fh);
    let stale = v.readdir(ROOT_INO, dir.fh, 0, &mut |_, _, _, _| false);
    assert_eq!(stale, Err(Errno::EBADF));
}

#[test]
fn lookups_reads_and_refusals_of_a_read_only_view() {
    let low = tempfile::tempdir().unwrap();
    fs::write(low.path().join("f"), "hello").unwrap();
    let v = view(&[low.path().to_path_buf()], None);
    let f = v.lookup(ROOT_INO, OsStr::new("f")).unwrap();
    assert_eq!((f.attr.size, f.attr.kind), (5, FileKind::RegularFile));
    // A missing name is a negative entry the kernel may keep (number 0), not an error.
    assert_eq!(v.lookup(ROOT_INO, OsStr::new("none")).unwrap().attr.ino, 0);
    let long = OsString::from("x".repeat(256));
    assert_eq!(v.lookup(ROOT_INO, &long).unwrap_err(), Errno::ENAMETOOLONG);
    let o = open(&v, f.attr.ino, libc::O_RDONLY).unwrap();
    assert!(o.backing.is_none() && o.flags.contains(OpenFlags::KEEP_CACHE));
    assert_eq!(v.read(o.fh, 1, 100).unwrap(), b"ello");
    v.release(o.fh);
    assert_eq!(v.read(o.fh, 0, 1).unwrap_err(), Errno::EBADF);
    assert_eq!(
        open(&v, f.attr.ino, libc::O_WRONLY).unwrap_err(),
        Errno::EROFS
    );
    let (tx, rx) = mpsc::channel();
    v.setattr(ROOT, f.attr.ino, SetAttrReq::default(), move |r| {
        let _ = tx.send(r.map(|a| a.attr.size));
    });
    assert_eq!(rx.recv().unwrap(), Err(Errno::EROFS));
    assert_eq!(v.access(&ROOT, f.attr.ino, libc::W_OK), Err(Errno::EROFS));
}

#[test]
fn writes_go_to_the_upper_and_show_at_once() {
    let (low, up, work) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    fs::write(low.path().join("f"), "lower").unwrap();
    let v = view(
        &[low.path().to_path_buf()],
        Some((up.path().to_path_buf(), work.path().to_path_buf())),
    );
    let f = v.lookup(ROOT_INO, OsStr::new("f")).unwrap();
    let o = open(&v, f.attr.ino, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    assert_eq!(v.write(&ROOT, o.fh, 0, b"upper!", false).unwrap(), 6);
    v.release(o.fh);
    assert_eq!(fs::read(up.path().join("f")).unwrap(), b"upper!");
    assert_eq!(fs::read(low.path().join("f")).unwrap(), b"lower");
    assert_eq!(v.getattr(f.attr.ino, None).unwrap().attr.size, 6);
    let d = v
        .mkdir(&ROOT, ROOT_INO, OsStr::new("d"), 0o755, 0o022)
        .unwrap();
    assert_eq!(d.attr.kind, FileKind::Directory);
    assert_eq!(d.attr.perm, 0o755);
    assert_eq!(v.unlink(ROOT_INO, OsStr::new("f")), Ok(()));
    assert_eq!(v.lookup(ROOT_INO, OsStr::new("f")).unwrap().attr.ino, 0);
    let probe = up.path().join("probe");
    fs::write(&probe, "").unwrap();
    if crate::sys::lsetxattr(&probe, "user.probe", b"").is_err() {
        return; // no user xattrs on this filesystem: nothing more to check
    }
    let (tx, rx) = mpsc::channel();
    v.setxattr(d.attr.ino, OsStr::new("user.k"), b"v", 0, move |r| {
        let _ = tx.send(r);
    });
    rx.recv().unwrap().unwrap();
    let size = v.getxattr(d.attr.ino, OsStr::new("user.k"), 0);
    assert_eq!(size, Ok(Xattr::Size(1)));
    let value = v.getxattr(d.attr.ino, OsStr::new("user.k"), 8);
    assert_eq!(value, Ok(Xattr::Data(b"v".to_vec())));
}

#[test]
fn xattr_answers_probe_the_size_or_fit_the_room() {
    assert_eq!(Xattr::fit(b"abc".to_vec(), 0), Ok(Xattr::Size(3)));
    assert_eq!(Xattr::fit(b"abc".to_vec(), 2), Err(Errno::ERANGE));
    assert_eq!(
        Xattr::fit(b"abc".to_vec(), 3),
        Ok(Xattr::Data(b"abc".to_vec()))
    );
}
