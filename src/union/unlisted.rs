//! Look-ups in a directory the server may search but not list (mode `0711` to a rootless
//! server's user): the kernel finds a known name there, so the view does too, by asking each
//! of the directory's layers for that one name instead of merging their listings. Listing the
//! directory, and whatever needs its listing (`rmdir`, `rename` of it), stays refused with
//! `EACCES`.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::layer::whiteout;
use crate::sys;
use crate::union::attr::{Attr, FileKind};
use crate::union::listing::DirEntry;
use crate::union::tree::{Node, Tree};

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl Tree {
    /// [`Tree::lookup`] of `name` in `parent`, whose listing failed with `EACCES`.
    pub fn lookup_unlisted(&self, parent: u64, name: &OsStr) -> io::Result<(Arc<Node>, Attr)> {
        let layers = {
            let p = self.node(parent)?;
            let st = p.state.read();
            st.dir
                .as_ref()
                .ok_or_else(|| errno(libc::ENOTDIR))?
                .layers
                .clone()
        };
        let dir_rel = self.path_of(parent)?;
        let rel = dir_rel.join(name);
        let mut found: Option<DirEntry> = None;
        for li in layers {
            let layer = self.layers.get(li);
            let at = layer.at(&rel)?;
            match sys::fstatat(at.dir(), at.name()) {
                Ok(st) if whiteout::is_whiteout_device(&st) => break,
                Ok(st) => {
                    let kind = FileKind::of_mode(st.st_mode);
                    let is_dir = kind == FileKind::Directory;
                    match &mut found {
                        None => {
                            found = Some(DirEntry::of_layer(
                                Arc::from(name),
                                self.layers.ino_for(li, st.st_ino),
                                kind,
                                li,
                            ))
                        }
                        // A directory above merges with a directory below; anything else
                        // ends the name.
                        Some(f) if f.kind == FileKind::Directory && is_dir => {
                            let mut v = std::mem::take(&mut f.dir_layers).into_vec();
                            v.push(li);
                            f.dir_layers = v.into_boxed_slice();
                        }
                        Some(_) => break,
                    }
                    if !is_dir {
                        break;
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
            // A `.wh.NAME` marker or an opaque marker ends the name for the layers below.
            let marker = |m: &OsStr| {
                layer
                    .at(&dir_rel.join(m))
                    .is_ok_and(|a| sys::fstatat(a.dir(), a.name()).is_ok())
            };
            let wh = whiteout::marker_fits(name) && marker(&whiteout::whiteout_name(name));
            if wh || marker(OsStr::new(whiteout::OPAQUE_MARKER)) {
                break;
            }
        }
        let e = found.ok_or_else(|| errno(libc::ENOENT))?;
        let at = self.layers.get(e.layer).at(Path::new(&rel))?;
        let st = sys::fstatat(at.dir(), at.name())?;
        let node = self.get_or_insert(parent, &e)?;
        let attr = self.attr_from_stat_at(&node, e.layer, at.dir(), at.name(), st);
        Ok((node, attr))
    }
}
