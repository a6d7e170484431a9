//! Read-only memory maps of files that are never changed in place (tar indexes: written under
//! a temporary name and renamed into place, so a mapped inode keeps its bytes). Part of `sys`:
//! the crate's `unsafe` stays in `sys`.

use std::fs::File;
use std::io;

/// A read-only, private map of a whole file.
#[derive(Debug)]
pub struct MappedFile(memmap2::Mmap);

impl MappedFile {
    /// Map `file` read-only. The caller promises that nobody writes or truncates the file
    /// while it is mapped (the store only ever replaces such files by rename).
    pub fn map(file: &File) -> io::Result<MappedFile> {
        // SAFETY: the map is read-only and private; the store never writes to or truncates a
        // file it maps (see above), so the bytes do not change under the `&[u8]` this hands
        // out. A file truncated behind the store's back would raise SIGBUS on access, not
        // give wrong bytes.
        let map = unsafe { memmap2::MmapOptions::new().map(file)? };
        Ok(MappedFile(map))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Drop the resident pages of the map (they are read again from the page cache when
    /// touched): after a pass over the whole file, its pages no longer count in the
    /// process's memory.
    pub fn release_pages(&self) {
        if self.0.is_empty() {
            return;
        }
        // SAFETY: MADV_DONTNEED on a private, read-only file map discards nothing that cannot
        // be read again from the file (no page of it was written); later accesses fault the
        // same bytes back in.
        let r = unsafe { self.0.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        if let Err(e) = r {
            tracing::debug!(%e, "madvise(DONTNEED) of a map refused");
        }
    }
}
