//! Lazy image mounts: each layer is indexed (not unpacked) in one streaming pass that also
//! verifies its digests, and the union view serves files straight from the tar.
//!
//! ```text
//! <root>/images/index/<hex of diff_id>.idx   the tar index (layer::tarindex), written last
//!                     <hex of diff_id>.src   where the tar's bytes are (JSON DataSource)
//!                     <hex of diff_id>.tar   the decompressed tar of a compressed layer
//! ```
//!
//! An uncompressed layer that is a plain byte range of the archive file is served from the
//! archive itself (nothing copied). A compressed layer is decompressed once into `.tar`
//! beside its index: restart-point (zran-style) indexes need a decompressor whose state can be
//! saved and resumed, which neither flate2 nor zstd offers. An index is reused while its
//! `.src` still names the same unchanged file; otherwise the layer is indexed again (and its
//! digests checked again), so bytes served are always bytes that were verified.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::archive::decompress;
use crate::error::{Error, IoContext, Result};
use crate::layer::tarindex::{self, DataSource};
use crate::store::write_atomic;

use super::{digest, format, key, ImageStore, Progress, Selector, Source};

/// What a lazy load made: the image and its layers' index files, topmost first.
#[derive(Debug, Clone)]
pub struct LazyImage {
    pub id: String,
    pub short_id: String,
    pub indexes: Vec<PathBuf>,
    /// diff_ids indexed now (the others were indexed before).
    pub indexed: Vec<String>,
}

/// A reader that copies what it reads into `out` (the decompressed cache file).
struct Tee<R> {
    inner: R,
    out: Option<File>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(o) = self.out.as_mut() {
            o.write_all(&buf[..n])?;
        }
        Ok(n)
    }
}

impl ImageStore {
    /// Where tar indexes (and decompressed layers) live.
    pub fn index_dir(&self) -> PathBuf {
        self.home.join("index")
    }

    /// Index every layer of the image `sel` picks from `archive` (reusing valid indexes).
    pub fn load_lazy(
        &self,
        archive: &Path,
        sel: &Selector,
        progress: &dyn Progress,
    ) -> Result<LazyImage> {
        let src = self.open_archive(archive)?;
        let img = format::resolve(&src, sel)?;
        let dir = self.index_dir();
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        for l in &img.layers {
            if !src.exists(&l.path) {
                return Err(Error::MissingBlob {
                    archive: src.describe(),
                    blob: l.path.clone(),
                });
            }
        }
        let total = img.layers.len();
        let (mut indexes, mut indexed, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
        for (i, l) in img.layers.iter().enumerate() {
            let idx = dir.join(format!("{}.idx", key(&l.diff_id)?));
            let fresh = idx.is_file() && DataSource::load(&idx).is_ok_and(|s| s.still_valid());
            progress.layer(i, total, &l.diff_id, l.size, fresh);
            if !fresh {
                self.index_layer(&src, l, &idx, progress)?;
                indexed.push(l.diff_id.clone());
            }
            progress.layer_done();
            sizes.push(tarindex::tar_len_of(&idx).ctx(|| format!("reading {}", idx.display()))?);
            indexes.push(idx);
        }
        indexes.reverse();
        self.record_lazy(&img, archive, &sizes)?;
        let short = img.id.trim_start_matches("sha256:");
        Ok(LazyImage {
            short_id: short[..short.len().min(12)].to_string(),
            id: img.id.clone(),
            indexes,
            indexed,
        })
    }

    /// One pass over layer `l`: digests, index and (compressed) the decompressed copy.
    fn index_layer(
        &self,
        src: &Source,
        l: &format::LayerRef,
        idx: &Path,
        progress: &dyn Progress,
    ) -> Result<()> {
        let (mut head_r, _) = src.open_file(&l.path)?;
        let mut head = [0u8; 6];
        let n =
            decompress::read_up_to(&mut head_r, &mut head).ctx(|| format!("reading {}", l.path))?;
        drop(head_r);
        let compressed = decompress::detect(&head[..n]) != decompress::Compression::None;
        // An uncompressed layer that is a byte range of a file that stays is served in place.
        let in_place = if compressed {
            None
        } else {
            src.region(&l.path)
        };
        let cache = idx.with_extension("tar");
        let mut tmp = match in_place {
            Some(_) => None,
            None => Some(
                tempfile::NamedTempFile::new_in(self.index_dir())
                    .ctx(|| "creating a file for the decompressed layer")?,
            ),
        };
        let (blob, len) = src.open_file(&l.path)?;
        if let Some(want) = l.size {
            if want != len {
                return Err(Error::MalformedArchive {
                    entry: Some(l.path.clone()),
                    reason: format!("{len} bytes, but its descriptor says {want}"),
                });
            }
        }
        // An uncompressed blob is the tar itself: one digest serves as both (hashing it twice
        // was half of the index pass of a big docker-save layer).
        let mut raw = match compressed {
            true => digest::Hashing::new(blob),
            false => digest::Hashing::counting(blob),
        }
        .with_progress(Box::new(|n| progress.advance(n)));
        let (built, tar_len, tar_digest) = {
            let dec = decompress::auto(&mut raw)?;
            let out = match &tmp {
                Some(t) => Some(t.as_file().try_clone().ctx(|| "opening the layer copy")?),
                None => None,
            };
            let mut tee = Tee {
                inner: digest::Hashing::new(dec),
                out,
            };
            let built = tarindex::build(&mut tee);
            // What the tar reader left (end padding) counts for the digest and the copy.
            let rest = io::copy(&mut tee, &mut io::sink());
            let built = built?;
            rest.map_err(|e| l.read_error(e))?;
            let (actual, count) = tee.inner.finish().map_err(|e| l.read_error(e))?;
            l.check_diff_id(actual.clone())?;
            (built, count, actual)
        };
        let (blob_digest, _) = raw
            .finish_counting()
            .ctx(|| format!("reading {}", l.path))?;
        l.check_blob_digest(blob_digest.unwrap_or(tar_digest))?;
        let entries = built.len();
        let body = built.encode(tar_len)?;
        let source = match (in_place, tmp.take()) {
            (Some((path, offset)), _) => {
                DataSource::of(&path, offset).ctx(|| format!("stat {}", path.display()))?
            }
            (None, Some(t)) => {
                t.as_file()
                    .sync_all()
                    .ctx(|| format!("writing {}", cache.display()))?;
                t.persist(&cache)
                    .map_err(|e| Error::io(format!("writing {}", cache.display()), e.error))?;
                DataSource::of(&cache, 0).ctx(|| format!("stat {}", cache.display()))?
            }
            (None, None) => unreachable_source()?,
        };
        let side = serde_json::to_vec(&source).map_err(|e| Error::io("encoding", e.into()))?;
        write_atomic(&DataSource::sidecar(idx), &side)?;
        write_atomic(idx, &body)?;
        tracing::info!(layer = %l.diff_id, entries, in_place = source.path != cache, "layer indexed");
        Ok(())
    }
}

fn unreachable_source() -> Result<DataSource> {
    Err(Error::io(
        "indexing a layer",
        io::Error::other("no place for the layer's bytes"),
    ))
}
