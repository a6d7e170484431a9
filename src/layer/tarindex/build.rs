//! One streaming pass over a layer tar (the `tar` crate reads the headers, PAX records and long
//! names) that records every member for [`super::TarIndex`]. A later member of the same path
//! replaces an earlier one, as unpacking does; a directory over a directory keeps its children.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;

use crate::error::{Error, Result};
use crate::layer::whiteout;

use super::{ENTRY, HEADER, MAGIC, XATTR};

fn malformed(entry: &[u8], reason: impl std::fmt::Display) -> Error {
    Error::MalformedArchive {
        entry: Some(String::from_utf8_lossy(entry).into_owned()),
        reason: reason.to_string(),
    }
}

#[derive(Debug, Clone)]
struct Node {
    name: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    size: u64,
    data: u64,
    /// Symlink target.
    target: Vec<u8>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The node whose file this one is another name of (itself when not a hard link).
    file: u32,
    children: Vec<u32>,
    live: bool,
}

/// The members of a tar, ready to be written as an index with [`Built::encode`].
#[derive(Debug)]
pub struct Built {
    nodes: Vec<Node>,
    /// Path (components joined by `/`, no leading `./`) -> node.
    paths: HashMap<Vec<u8>, u32>,
}

/// `file` of a node not placed yet.
const UNSET: u32 = u32::MAX;

fn dir_node(name: Vec<u8>, id: u32) -> Node {
    Node {
        name,
        mode: libc::S_IFDIR | 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        size: 0,
        data: 0,
        target: Vec::new(),
        xattrs: Vec::new(),
        file: id,
        children: Vec::new(),
        live: true,
    }
}

/// `./a//b/` -> components; `..` is refused, as unpacking refuses it.
fn components(raw: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(Error::UnsafeEntry {
                    entry: String::from_utf8_lossy(raw).into_owned(),
                    reason: "a path that climbs out of the layer".into(),
                })
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// Index the tar read from `tar` (stops at its end marker: the caller reads what follows).
pub fn build<R: Read>(tar: R) -> Result<Built> {
    let mut b = Built {
        nodes: vec![dir_node(Vec::new(), 0)],
        paths: HashMap::new(),
    };
    let mut ar = tar::Archive::new(tar);
    let entries = ar
        .entries()
        .map_err(|e| malformed(b"", format!("reading the layer tar: {e}")))?;
    for entry in entries {
        let mut e = entry.map_err(|e| malformed(b"", format!("reading the layer tar: {e}")))?;
        b.add(&mut e)?;
    }
    Ok(b)
}

impl Built {
    fn add<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> Result<()> {
        use tar::EntryType as T;
        let raw = e.path_bytes().into_owned();
        let parts = components(&raw)?;
        let h = e.header();
        let et = h.entry_type();
        let num = |what: &str, v: std::io::Result<u64>| {
            v.map_err(|err| malformed(&raw, format!("bad {what} field: {err}")))
        };
        let perm = num("mode", h.mode().map(u64::from))? as u32 & 0o7777;
        let uid = num("uid", h.uid())?;
        let gid = num("gid", h.gid())?;
        let mtime = num("mtime", h.mtime())? as i64;
        let (uid, gid) = (
            u32::try_from(uid).map_err(|_| malformed(&raw, "uid out of range"))?,
            u32::try_from(gid).map_err(|_| malformed(&raw, "gid out of range"))?,
        );
        let rdev = || -> Result<u64> {
            let maj = num("devmajor", h.device_major().map(|v| v.unwrap_or(0) as u64))?;
            let min = num("devminor", h.device_minor().map(|v| v.unwrap_or(0) as u64))?;
            Ok(libc::makedev(maj as u32, min as u32))
        };
        let (kind, data, size, target) = match et {
            T::Directory => (libc::S_IFDIR, 0, 0, Vec::new()),
            T::Regular | T::Continuous => {
                (libc::S_IFREG, e.raw_file_position(), e.size(), Vec::new())
            }
            T::Symlink => {
                let t = e
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                (libc::S_IFLNK, 0, t.len() as u64, t)
            }
            T::Char => (libc::S_IFCHR, rdev()?, 0, Vec::new()),
            T::Block => (libc::S_IFBLK, rdev()?, 0, Vec::new()),
            T::Fifo => (libc::S_IFIFO, 0, 0, Vec::new()),
            T::Link => {
                let t = e
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                return self.hard_link(&raw, &parts, &t);
            }
            T::GNUSparse => {
                return Err(malformed(
                    &raw,
                    "sparse files cannot be served from the tar (mount with --unpack)",
                ))
            }
            // PAX and GNU long-name records are read by the tar crate itself; anything else
            // (global headers, volume labels) carries no file.
            _ => return Ok(()),
        };
        let mut xattrs = Vec::new();
        if let Ok(Some(exts)) = e.pax_extensions() {
            for ext in exts {
                let ext = ext.map_err(|err| malformed(&raw, format!("bad PAX record: {err}")))?;
                let Some(key) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                    continue;
                };
                if whiteout::is_internal_xattr(key) {
                    continue;
                }
                xattrs.push((key.to_vec(), ext.value_bytes().to_vec()));
            }
        }
        if parts.is_empty() {
            // The layer root itself (`./`): only its attributes.
            if kind == libc::S_IFDIR {
                let r = &mut self.nodes[0];
                (r.mode, r.uid, r.gid, r.mtime, r.xattrs) = (kind | perm, uid, gid, mtime, xattrs);
            }
            return Ok(());
        }
        let node = Node {
            name: parts[parts.len() - 1].to_vec(),
            mode: kind | perm,
            uid,
            gid,
            mtime,
            size,
            data,
            target,
            xattrs,
            file: UNSET,
            children: Vec::new(),
            live: true,
        };
        self.place(&raw, &parts, node)
    }

    /// The directory that holds `parts`' last component, made (as unpacking makes missing
    /// parents) where absent.
    fn parent_of(&mut self, raw: &[u8], parts: &[&[u8]]) -> Result<u32> {
        let mut cur = 0u32;
        for i in 0..parts.len() - 1 {
            let key = parts[..=i].join(&b'/');
            cur = match self.paths.get(&key) {
                Some(&id) if self.nodes[id as usize].mode & libc::S_IFMT == libc::S_IFDIR => id,
                Some(_) => return Err(malformed(raw, "a parent that is not a directory")),
                None => {
                    if matches!(
                        whiteout::classify(std::ffi::OsStr::from_bytes(parts[i])),
                        whiteout::NameKind::Whiteout(_) | whiteout::NameKind::OpaqueMarker
                    ) {
                        return Err(malformed(raw, "a whiteout name used as a directory"));
                    }
                    let id = self.nodes.len() as u32;
                    self.nodes.push(dir_node(parts[i].to_vec(), id));
                    self.nodes[cur as usize].children.push(id);
                    self.paths.insert(key, id);
                    id
                }
            };
        }
        Ok(cur)
    }

    fn place(&mut self, raw: &[u8], parts: &[&[u8]], mut node: Node) -> Result<()> {
        let parent = self.parent_of(raw, parts)?;
        let key = parts.join(&b'/');
        let id = self.nodes.len() as u32;
        if let Some(&old) = self.paths.get(&key) {
            let o = &mut self.nodes[old as usize];
            let both_dirs =
                o.mode & libc::S_IFMT == libc::S_IFDIR && node.mode & libc::S_IFMT == libc::S_IFDIR;
            if both_dirs {
                (o.mode, o.uid, o.gid, o.mtime, o.xattrs) =
                    (node.mode, node.uid, node.gid, node.mtime, node.xattrs);
                return Ok(());
            }
            o.live = false;
            self.nodes[parent as usize].children.retain(|c| *c != old);
            // What was under a replaced directory is gone with it.
            let mut prefix = key.clone();
            prefix.push(b'/');
            self.paths.retain(|k, _| !k.starts_with(&prefix));
        }
        if node.file == UNSET {
            node.file = id;
        }
        self.nodes.push(node);
        self.nodes[parent as usize].children.push(id);
        self.paths.insert(key, id);
        Ok(())
    }

    fn hard_link(&mut self, raw: &[u8], parts: &[&[u8]], target: &[u8]) -> Result<()> {
        let tparts = components(target)?;
        let tkey = tparts.join(&b'/');
        let Some(&t) = self.paths.get(&tkey) else {
            return Err(malformed(raw, "a hard link to a member not in the layer"));
        };
        let mut node = self.nodes[t as usize].clone();
        if node.mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(malformed(raw, "a hard link to a directory"));
        }
        if parts.is_empty() {
            return Err(malformed(raw, "a hard link as the layer root"));
        }
        node.name = parts[parts.len() - 1].to_vec();
        node.children = Vec::new();
        self.place(raw, parts, node)
    }

    /// Number of entries indexed (the root included; replaced entries not counted).
    pub fn len(&self) -> usize {
        self.nodes.iter().filter(|n| n.live).count()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The index bytes, for a tar of `tar_len` bytes.
    pub fn encode(mut self, tar_len: u64) -> Result<Vec<u8>> {
        // Breadth-first order, children sorted by name: each directory's children one range.
        let mut order: Vec<u32> = vec![0];
        let mut first_child: Vec<u32> = Vec::new();
        let mut i = 0;
        while i < order.len() {
            let id = order[i] as usize;
            let mut kids = std::mem::take(&mut self.nodes[id].children);
            kids.sort_by(|a, b| {
                self.nodes[*a as usize]
                    .name
                    .cmp(&self.nodes[*b as usize].name)
            });
            first_child.push(order.len() as u32);
            order.extend(kids.iter().copied());
            self.nodes[id].children = kids;
            i += 1;
        }
        if order.len() > u32::MAX as usize / 2 {
            return Err(malformed(b"", "too many members"));
        }
        // Hard links: every name of one file gets the position of the first as its number.
        let mut number: HashMap<u32, (u32, u32)> = HashMap::new();
        for (pos, &id) in order.iter().enumerate() {
            let n = number
                .entry(self.nodes[id as usize].file)
                .or_insert((pos as u32, 0));
            n.1 += 1;
        }
        let mut arena: Vec<u8> = Vec::new();
        let mut xtab: Vec<u8> = Vec::new();
        let mut table: Vec<u8> = Vec::with_capacity(order.len() * ENTRY);
        let mut xcount = 0u32;
        let put = |arena: &mut Vec<u8>, b: &[u8]| -> Result<u32> {
            let off = u32::try_from(arena.len()).map_err(|_| malformed(b"", "index too large"))?;
            arena.extend_from_slice(b);
            Ok(off)
        };
        for (pos, &id) in order.iter().enumerate() {
            let n = &self.nodes[id as usize];
            if n.name.len() > u16::MAX as usize || n.xattrs.len() > u16::MAX as usize {
                return Err(malformed(&n.name, "name or xattr list too long"));
            }
            let name_off = put(&mut arena, &n.name)?;
            let data = if n.mode & libc::S_IFMT == libc::S_IFLNK {
                put(&mut arena, &n.target)? as u64
            } else {
                n.data
            };
            let x_first = xcount;
            for (k, v) in &n.xattrs {
                let ko = put(&mut arena, k)?;
                let vo = put(&mut arena, v)?;
                for w in [ko, k.len() as u32, vo, v.len() as u32] {
                    xtab.extend_from_slice(&w.to_le_bytes());
                }
                xcount += 1;
            }
            let (ino, nlink) = number.get(&n.file).copied().unwrap_or((pos as u32, 1));
            let is_dir = n.mode & libc::S_IFMT == libc::S_IFDIR;
            let nlink = if is_dir {
                2 + n
                    .children
                    .iter()
                    .filter(|c| self.nodes[**c as usize].mode & libc::S_IFMT == libc::S_IFDIR)
                    .count() as u32
            } else {
                nlink
            };
            let (fc, cc) = if is_dir && !n.children.is_empty() {
                (first_child[pos], n.children.len() as u32)
            } else {
                (0, 0)
            };
            table.extend_from_slice(&fc.to_le_bytes());
            table.extend_from_slice(&cc.to_le_bytes());
            table.extend_from_slice(&name_off.to_le_bytes());
            table.extend_from_slice(&(n.name.len() as u16).to_le_bytes());
            table.extend_from_slice(&(n.xattrs.len() as u16).to_le_bytes());
            for w in [n.mode, n.uid, n.gid, nlink] {
                table.extend_from_slice(&w.to_le_bytes());
            }
            table.extend_from_slice(&n.mtime.to_le_bytes());
            table.extend_from_slice(&n.size.to_le_bytes());
            table.extend_from_slice(&data.to_le_bytes());
            table.extend_from_slice(&ino.to_le_bytes());
            table.extend_from_slice(&x_first.to_le_bytes());
        }
        let mut out = Vec::with_capacity(HEADER + table.len() + xtab.len() + arena.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(order.len() as u32).to_le_bytes());
        out.extend_from_slice(&xcount.to_le_bytes());
        out.extend_from_slice(&(arena.len() as u64).to_le_bytes());
        out.extend_from_slice(&tar_len.to_le_bytes());
        debug_assert_eq!(out.len(), HEADER);
        debug_assert_eq!(xtab.len(), xcount as usize * XATTR);
        out.extend_from_slice(&table);
        out.extend_from_slice(&xtab);
        out.extend_from_slice(&arena);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::TarIndex;
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    fn tar_of(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        f(&mut b);
        b.into_inner().unwrap()
    }

    fn header(t: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(t);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_mode(0o644);
        h.set_size(0);
        h
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
        let mut h = header(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(7);
        h.set_mtime(1234);
        h.set_cksum();
        b.append_data(&mut h, path, data).unwrap();
    }

    #[test]
    fn indexes_members_and_reads_back() {
        let tar = tar_of(|b| {
            let mut h = header(tar::EntryType::Directory);
            h.set_mode(0o750);
            h.set_size(0);
            h.set_cksum();
            b.append_data(&mut h, "./etc/", &b""[..]).unwrap();
            file(b, "etc/passwd", b"root:x:0:0\n", 0o644);
            file(b, "usr/bin/tool", b"#!/bin/sh\n", 0o755);
            file(b, "etc/.wh.gone", b"", 0o644);
            let mut h = header(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_cksum();
            b.append_link(&mut h, "etc/link", "passwd").unwrap();
            let mut h = header(tar::EntryType::Link);
            h.set_size(0);
            h.set_cksum();
            b.append_link(&mut h, "usr/hard", "usr/bin/tool").unwrap();
            b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v"[..])])
                .unwrap();
            file(b, "usr/x", b"", 0o600);
        });
        let built = build(&tar[..]).unwrap();
        let idx = TarIndex::from_bytes(built.encode(tar.len() as u64).unwrap()).unwrap();
        let etc = idx.lookup(Path::new("etc")).unwrap();
        let names: Vec<_> = idx.children(etc).map(|c| idx.name(c).to_owned()).collect();
        assert_eq!(names, [".wh.gone", "link", "passwd"]);
        assert_eq!(idx.meta(etc).mode, libc::S_IFDIR | 0o750);
        let p = idx.lookup(Path::new("etc/passwd")).unwrap();
        let m = idx.meta(p);
        assert_eq!((m.size, m.uid, m.mtime), (11, 7, 1234));
        assert_eq!(&tar[m.data as usize..][..11], b"root:x:0:0\n");
        let l = idx.lookup(Path::new("etc/link")).unwrap();
        assert_eq!(idx.link_target(l), Some(&b"passwd"[..]));
        let (t, h) = (
            idx.lookup(Path::new("usr/bin/tool")).unwrap(),
            idx.lookup(Path::new("usr/hard")).unwrap(),
        );
        assert_eq!(idx.meta(t).ino, idx.meta(h).ino);
        assert_eq!((idx.meta(t).nlink, idx.meta(h).data), (2, idx.meta(t).data));
        let x = idx.lookup(Path::new("usr/x")).unwrap();
        let xs: Vec<_> = idx.xattrs(x).collect();
        assert_eq!(xs, [(&b"user.k"[..], &b"v"[..])]);
        assert!(idx.lookup(Path::new("nope")).is_none());
        // A cut index is refused.
        let raw = build(&tar[..]).unwrap().encode(tar.len() as u64).unwrap();
        assert!(TarIndex::from_bytes(raw[..raw.len() - 1].to_vec()).is_err());
    }

    #[test]
    fn later_members_replace_earlier_ones() {
        let tar = tar_of(|b| {
            file(b, "d/a", b"1", 0o644);
            file(b, "d", b"now a file", 0o644);
            file(b, "f", b"old", 0o644);
            file(b, "f", b"new!", 0o644);
        });
        let idx = TarIndex::from_bytes(build(&tar[..]).unwrap().encode(tar.len() as u64).unwrap())
            .unwrap();
        assert_eq!(idx.children(0).len(), 2);
        assert_eq!(idx.meta(idx.lookup(Path::new("f")).unwrap()).size, 4);
        assert!(idx.lookup(Path::new("d/a")).is_none());
        assert!(components(b"a/../x").is_err());
        assert_eq!(components(b"./a//b/").unwrap(), [&b"a"[..], &b"b"[..]]);
    }

    /// Every accessor on every entry (what a mount may call).
    fn touch_all(idx: &TarIndex) {
        for id in 0..idx.len() as u32 {
            let _ = (
                idx.meta(id),
                idx.name(id),
                idx.stat(id),
                idx.link_target(id),
            );
            let _ = idx.xattrs(id).count();
            for c in idx.children(id) {
                let _ = idx.child(id, idx.name(c).as_bytes());
            }
        }
        let _ = idx.lookup(Path::new("etc/passwd"));
    }

    #[test]
    fn a_corrupt_index_is_an_error_never_a_panic() {
        let tar = tar_of(|b| {
            file(b, "etc/passwd", b"root:x:0:0\n", 0o644);
            b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v"[..])])
                .unwrap();
            file(b, "usr/bin/tool", b"#!/bin/sh\n", 0o755);
            let mut h = header(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_cksum();
            b.append_link(&mut h, "etc/link", "passwd").unwrap();
        });
        let raw = build(&tar[..]).unwrap().encode(tar.len() as u64).unwrap();
        let (mut refused, mut taken) = (0, 0);
        for at in 0..raw.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = raw.clone();
                bad[at] ^= flip;
                match TarIndex::from_bytes(bad) {
                    Ok(idx) => {
                        touch_all(&idx);
                        taken += 1;
                    }
                    Err(_) => refused += 1,
                }
            }
        }
        assert!(refused > 0 && taken > 0, "{refused} refused, {taken} taken");
        for len in 0..raw.len() {
            assert!(
                TarIndex::from_bytes(raw[..len].to_vec()).is_err(),
                "cut at {len}"
            );
        }
        // The same through a mapped file.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.idx");
        std::fs::write(&p, &raw).unwrap();
        touch_all(&TarIndex::open(&p).unwrap());
        let mut bad = raw.clone();
        bad[super::super::HEADER + 4] = 0xff; // a child count past the table
        std::fs::write(&p, &bad).unwrap();
        assert!(TarIndex::open(&p).is_err());
    }
}
