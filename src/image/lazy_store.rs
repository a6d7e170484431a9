//! The lazily indexed images: a record per image mounted lazily (`index/images/<hex>.json`,
//! the same shape as an unpacked image's record, sizes in tar bytes), listed by `image ls`,
//! removed by `image rm`; `image prune` deletes the indexes, sources and decompressed copies
//! that no lazy record names.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::store::write_json_atomic;

use super::{key, read_json, ImageLayer, ImageRecord, ImageStore, ResolvedImage};

impl ImageStore {
    fn lazy_dir(&self) -> PathBuf {
        self.index_dir().join("images")
    }

    /// Record that `img` (from `archive`) is indexed; `sizes`: each layer's tar bytes, bottom
    /// first.
    pub(super) fn record_lazy(
        &self,
        img: &ResolvedImage,
        archive: &Path,
        sizes: &[u64],
    ) -> Result<ImageRecord> {
        let dir = self.lazy_dir();
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{}.json", key(&img.id)?));
        let old: Option<ImageRecord> = read_json(&path)?;
        let layers = img
            .layers
            .iter()
            .zip(sizes)
            .map(|(l, size)| ImageLayer::of(l, *size))
            .collect();
        let source = fs::canonicalize(archive)
            .unwrap_or_else(|_| archive.to_path_buf())
            .display()
            .to_string();
        let record = ImageRecord::of(img, old, source, layers);
        write_json_atomic(&path, &record)?;
        Ok(record)
    }

    /// The lazily indexed images.
    pub fn list_lazy(&self) -> Result<Vec<ImageRecord>> {
        let dir = self.lazy_dir();
        let mut out = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
        };
        for e in entries {
            let p = e.ctx(|| format!("reading {}", dir.display()))?.path();
            if p.extension().map_or(true, |x| x != "json") {
                continue;
            }
            match read_json::<ImageRecord>(&p) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(err) => tracing::warn!(path = %p.display(), %err, "skipping unreadable record"),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Remove the record of the lazily indexed image `reference` (id, id prefix or tag),
    /// refused while it is mounted. `None`: no lazy image is called so.
    pub(super) fn remove_lazy_record(&self, reference: &str) -> Result<Option<ImageRecord>> {
        let all = self.list_lazy()?;
        // The same matcher as `ImageStore::find`, so `image rm NAME` takes the image that
        // `image mount NAME` would.
        let rec = match super::reference::pick(&all, reference) {
            Ok(one) => one.clone(),
            Err(Error::ImageNotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if let Some(m) = self.mounts()?.into_iter().find(|m| m.image == rec.id) {
            return Err(Error::ImageMounted {
                id: rec.short_id().to_string(),
                path: m.dir,
            });
        }
        let path = self.lazy_dir().join(format!("{}.json", key(&rec.id)?));
        fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))?;
        Ok(Some(rec))
    }

    /// Delete the indexes (with their sources and decompressed copies) that no lazily indexed
    /// image names and no live mount uses. Returns their diff ids.
    pub(super) fn prune_indexes(&self) -> Result<Vec<String>> {
        let mut used: BTreeSet<String> = BTreeSet::new();
        for r in self.list_lazy()? {
            for l in &r.layers {
                used.insert(key(&l.diff_id)?);
            }
        }
        let mounted: Vec<String> = self
            .mounts()?
            .iter()
            .filter_map(|m| fs::read_to_string(self.mount_paths(&m.dir).1).ok())
            .collect();
        let dir = self.index_dir();
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut removed = Vec::new();
        for e in entries {
            let p = e.ctx(|| format!("reading {}", dir.display()))?.path();
            let Some(stem) = p.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let is_layer_file = p
                .extension()
                .is_some_and(|x| x == "idx" || x == "src" || x == "tar");
            // Names are the diff id's hex; anything else (records, temporaries) is left.
            if !is_layer_file || stem.len() != 64 || used.contains(stem) {
                continue;
            }
            let idx = p.with_extension("idx");
            if mounted.iter().any(|l| l.contains(&*idx.to_string_lossy())) {
                continue;
            }
            fs::remove_file(&p).ctx(|| format!("removing {}", p.display()))?;
            if p.extension().is_some_and(|x| x == "idx") {
                removed.push(format!("sha256:{stem}"));
            }
        }
        removed.sort();
        Ok(removed)
    }
}
