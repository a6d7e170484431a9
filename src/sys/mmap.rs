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

/// A read-only, shared map of a whole file, made to hand its bytes to the kernel (replies
/// written to /dev/fuse): the kernel copies straight from the page cache, without a copy into
/// a buffer first.
#[derive(Debug)]
pub struct ReadMap(memmap2::Mmap);

impl ReadMap {
    /// Map `file` (its length now) read-only and shared.
    pub fn map(file: &File) -> io::Result<ReadMap> {
        // SAFETY: the map is read-only; its bytes are only passed to system calls (writev),
        // never read by this process. Should the file shrink under it, the kernel's copy from
        // it fails with EFAULT (the reader gets EIO) rather than this process taking SIGBUS.
        let map = unsafe { memmap2::MmapOptions::new().map(file)? };
        // Faults on the map read ahead as a sequential read(2) of the file would; without
        // it the kernel reads around each fault, and stops reading ahead after enough misses.
        if let Err(e) = map.advise(memmap2::Advice::Sequential) {
            tracing::debug!(%e, "madvise(SEQUENTIAL) of a read map refused");
        }
        Ok(ReadMap(map))
    }

    /// The mapped bytes: to be handed to the kernel only (see [`ReadMap::map`]).
    pub fn for_kernel(&self) -> &[u8] {
        &self.0
    }

    /// Unmap the pages of `len` bytes at `offset` from this process (the page cache keeps
    /// them): a long sequential read does not leave the whole file counted in the process's
    /// memory.
    pub fn release_pages(&self, offset: usize, len: usize) {
        // SAFETY: MADV_DONTNEED on a read-only shared file map only drops page table entries;
        // the next access maps the same page-cache pages again.
        let r = unsafe {
            self.0
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
        };
        if let Err(e) = r {
            tracing::debug!(%e, "madvise(DONTNEED) of a read map refused");
        }
    }
}
