//! Image archives (`docker save`, OCI archives and layouts) unpacked into a layer store, for
//! inspection without a daemon: load, list, remove, prune, compare, read the config.
//!
//! ```text
//! <root>/images/               a layer Store (layers/<hex of diff_id>/diff, tmp/, store.lock)
//!   images.lock                flock: held while images or layers are added or removed
//!   images/<hex of config>/    image.json (the record), config.json (the raw config blob)
//!   mounts/<hash of dir>.json  which image is mounted where (plus lowers file and log)
//!   spool/                     decompressed copies of compressed archives, while read
//! ```
//!
//! A layer is keyed by its `diff_id` (the digest of its uncompressed tar), so images that share
//! a layer share its files whatever the compression or position. Store layers have no parent:
//! the chain lives in the image record. A layer counts as unpacked only once its
//! `image-layer.json` is written, after both digests were verified; anything else found under
//! `layers/` is a leftover and is removed before reuse and by `prune`.

pub mod diff;
pub mod digest;
pub mod format;
pub mod lazy;
mod lazy_store;
pub mod reference;
pub mod source;
pub mod writable;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

use crate::archive::Change;
use crate::driver::{CreateOpts, IdMappings};
use crate::error::{Error, IoContext, Result};
use crate::store::{write_atomic, write_json_atomic, LayerKind, Store};
use crate::sys::FileLock;

use format::LayerRef;
pub use format::{Platform, ResolvedImage, Selector};
pub use source::Source;

/// The store directory under the engine root.
pub const DIR: &str = "images";
const LAYER_META: &str = "image-layer.json";

/// One layer of a stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLayer {
    pub diff_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_digest: Option<String>,
    pub media_type: String,
    /// Bytes of the unpacked files.
    pub size: u64,
}

/// A stored (unpacked) image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:` digest of the config.
    pub id: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    pub os: String,
    pub architecture: String,
    /// The archive it was loaded from (last time).
    pub source: String,
    /// Seconds since the epoch.
    pub loaded: u64,
    /// Bottom first.
    pub layers: Vec<ImageLayer>,
}

impl ImageLayer {
    /// The record of layer `l` whose files take `size` bytes.
    fn of(l: &LayerRef, size: u64) -> ImageLayer {
        ImageLayer {
            diff_id: l.diff_id.clone(),
            blob_digest: l.blob_digest.clone(),
            media_type: l.media_type.clone(),
            size,
        }
    }
}

impl ImageRecord {
    /// The record of `img` loaded now from `source`, keeping the tags of its `old` record.
    fn of(
        img: &ResolvedImage,
        old: Option<ImageRecord>,
        source: String,
        layers: Vec<ImageLayer>,
    ) -> ImageRecord {
        let mut tags: BTreeSet<String> = old
            .map(|o| o.tags.into_iter().collect())
            .unwrap_or_default();
        tags.extend(img.tags.iter().cloned());
        ImageRecord {
            id: img.id.clone(),
            tags: tags.into_iter().collect(),
            manifest_digest: img.manifest_digest.clone(),
            os: img.config.os().to_string(),
            architecture: img.config.architecture().to_string(),
            source,
            loaded: now(),
            layers,
        }
    }

    /// The first 12 hex digits of the id, as `docker images` shows.
    pub fn short_id(&self) -> &str {
        let hex = self.id.strip_prefix("sha256:").unwrap_or(&self.id);
        &hex[..hex.len().min(12)]
    }

    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// Facts kept beside an unpacked layer; its presence marks the layer complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    pub diff_id: String,
    /// Every blob digest this layer was unpacked or reused from.
    #[serde(default)]
    pub blob_digests: Vec<String>,
    pub size: u64,
}

/// Where an image is mounted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    pub dir: PathBuf,
    pub image: String,
    /// The upper directory of a writable mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<PathBuf>,
}

/// Unpacking progress, reported by [`ImageStore::load`].
pub trait Progress {
    /// Layer `index` of `total` starts: `bytes` to read (when known), or it is reused.
    fn layer(
        &self,
        _index: usize,
        _total: usize,
        _diff_id: &str,
        _bytes: Option<u64>,
        _reused: bool,
    ) {
    }
    /// `n` more bytes of the current layer were read.
    fn advance(&self, _n: u64) {}
    /// The current layer is done.
    fn layer_done(&self) {}
}

/// No progress reporting.
pub struct Quiet;
impl Progress for Quiet {}

/// What a load did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub image: ImageRecord,
    /// diff_ids unpacked now.
    pub unpacked: Vec<String>,
    /// diff_ids found already unpacked.
    pub reused: Vec<String>,
}

/// The image store of one engine root.
#[derive(Debug, Clone)]
pub struct ImageStore {
    home: PathBuf,
    layers: Store,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(raw) => serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| Error::CorruptLayer {
                id: path.display().to_string(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// Maps for a new layer's root directory: owned by whoever unpacks. Without root, files keep
/// the archive's ids through `override_stat` (identity maps at apply time); only the layer's
/// own directory, which no archive entry owns, must be ours.
fn root_owner() -> IdMappings {
    if crate::sys::is_root() {
        return IdMappings::default();
    }
    let (uid, gid) = crate::sys::effective_ids();
    let one = |host_id| {
        vec![crate::driver::IdMap {
            container_id: 0,
            host_id,
            size: 1,
        }]
    };
    IdMappings {
        uids: one(uid),
        gids: one(gid),
    }
}

/// The hex of a `sha256:` digest, used as a directory name.
fn key(digest: &str) -> Result<String> {
    Ok(digest::sha256_hex(digest)?.to_string())
}

impl ImageStore {
    /// Open (creating) the image store under the engine root.
    pub fn open(engine_root: &Path) -> Result<ImageStore> {
        let home = engine_root.join(DIR);
        let layers = Store::open(&home)?;
        let home = layers.home().to_path_buf();
        for d in ["images", "mounts", "spool"] {
            let p = home.join(d);
            fs::create_dir_all(&p).ctx(|| format!("creating {}", p.display()))?;
        }
        Ok(ImageStore { home, layers })
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The layer store holding unpacked layers.
    pub fn layers(&self) -> &Store {
        &self.layers
    }

    fn lock(&self) -> Result<FileLock> {
        let p = self.home.join("images.lock");
        FileLock::exclusive(&p).ctx(|| format!("locking {}", p.display()))
    }

    /// Held by `image mount` from making its lowers list and upper until its mount is
    /// recorded, so a concurrent prune never takes what a starting mount is about to use.
    pub fn mount_lock(&self) -> Result<FileLock> {
        self.lock()
    }

    fn image_dir(&self, id: &str) -> Result<PathBuf> {
        Ok(self.home.join("images").join(key(id)?))
    }

    /// The unpacked files of a layer, by diff_id.
    pub fn layer_diff_dir(&self, diff_id: &str) -> Result<PathBuf> {
        Ok(self.layers.diff_dir(&key(diff_id)?))
    }

    /// The meta of a completely unpacked layer (`None`: absent or unfinished).
    pub fn layer_meta(&self, diff_id: &str) -> Result<Option<LayerMeta>> {
        let id = key(diff_id)?;
        if !self.layers.exists(&id) {
            return Ok(None);
        }
        read_json(&self.layers.layer_dir(&id).join(LAYER_META))
    }

    /// Open an archive (a file or a layout directory) for reading.
    pub fn open_archive(&self, archive: &Path) -> Result<Source> {
        Source::open(archive, &self.home.join("spool"))
    }

    /// Unpack the image `sel` picks from `archive` (layers already present are reused) and
    /// record it.
    pub fn load(
        &self,
        archive: &Path,
        sel: &Selector,
        progress: &dyn Progress,
    ) -> Result<LoadReport> {
        let src = self.open_archive(archive)?;
        let resolved = format::resolve(&src, sel)?;
        self.load_resolved(&src, &resolved, &archive.display().to_string(), progress)
    }

    /// Unpack and record an image already resolved from `src`.
    pub fn load_resolved(
        &self,
        src: &Source,
        img: &ResolvedImage,
        source_name: &str,
        progress: &dyn Progress,
    ) -> Result<LoadReport> {
        let _guard = self.lock()?;
        // Every blob still to unpack must be there before anything is unpacked.
        for l in &img.layers {
            if self.layer_meta(&l.diff_id)?.is_none() && !src.exists(&l.path) {
                return Err(Error::MissingBlob {
                    archive: src.describe(),
                    blob: l.path.clone(),
                });
            }
        }
        let mut layers = Vec::new();
        let (mut unpacked, mut reused) = (Vec::new(), Vec::new());
        let total = img.layers.len();
        for (i, l) in img.layers.iter().enumerate() {
            let (meta, fresh) = self.ensure_layer(src, l, i, total, progress)?;
            if fresh {
                unpacked.push(l.diff_id.clone());
            } else {
                reused.push(l.diff_id.clone());
            }
            layers.push(ImageLayer::of(l, meta.size));
        }
        let dir = self.image_dir(&img.id)?;
        let old: Option<ImageRecord> = read_json(&dir.join("image.json"))?;
        let record = ImageRecord::of(img, old, source_name.to_string(), layers);
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        write_atomic(&dir.join("config.json"), &img.config_raw)?;
        write_json_atomic(&dir.join("image.json"), &record)?;
        tracing::info!(id = %record.id, unpacked = unpacked.len(), reused = reused.len(), "image loaded");
        Ok(LoadReport {
            image: record,
            unpacked,
            reused,
        })
    }

    /// Make sure layer `l` is unpacked; returns its meta and whether it was unpacked now.
    fn ensure_layer(
        &self,
        src: &Source,
        l: &format::LayerRef,
        index: usize,
        total: usize,
        progress: &dyn Progress,
    ) -> Result<(LayerMeta, bool)> {
        let id = key(&l.diff_id)?;
        if let Some(mut meta) = self.layer_meta(&l.diff_id)? {
            progress.layer(index, total, &l.diff_id, l.size, true);
            if let Some(b) = &l.blob_digest {
                if !meta.blob_digests.contains(b) {
                    meta.blob_digests.push(b.clone());
                    write_json_atomic(&self.layers.layer_dir(&id).join(LAYER_META), &meta)?;
                }
            }
            progress.layer_done();
            return Ok((meta, false));
        }
        if self.layers.exists(&id) {
            tracing::warn!(layer = %id, "removing an unfinished layer left by an earlier run");
            self.layers.remove(&id)?;
        }
        let (blob, len) = src.open_file(&l.path)?;
        if let Some(want) = l.size {
            if want != len {
                return Err(Error::MalformedArchive {
                    entry: Some(l.path.clone()),
                    reason: format!("{len} bytes, but its descriptor says {want}"),
                });
            }
        }
        progress.layer(index, total, &l.diff_id, Some(len), false);
        self.layers.create(
            &id,
            None,
            LayerKind::ReadOnly,
            &CreateOpts::default(),
            &root_owner(),
        )?;
        let res = self.unpack_verified(&id, blob, l, progress);
        progress.layer_done();
        match res {
            Ok(size) => {
                let meta = LayerMeta {
                    diff_id: l.diff_id.clone(),
                    blob_digests: l.blob_digest.iter().cloned().collect(),
                    size,
                };
                let written =
                    write_json_atomic(&self.layers.layer_dir(&id).join(LAYER_META), &meta);
                if let Err(e) = written {
                    let _ = self.layers.remove(&id);
                    return Err(e);
                }
                Ok((meta, true))
            }
            Err(e) => {
                if let Err(rm) = self.layers.remove(&id) {
                    tracing::error!(layer = %id, %rm, "could not remove a failed layer");
                }
                Err(e)
            }
        }
    }

    /// Unpack `blob` into layer `id`, hashing the compressed and uncompressed streams (an
    /// uncompressed blob is the tar itself, so it is hashed once: its digest serves as both).
    fn unpack_verified(
        &self,
        id: &str,
        blob: Box<dyn std::io::Read + Send>,
        l: &format::LayerRef,
        progress: &dyn Progress,
    ) -> Result<u64> {
        use crate::archive::decompress;
        let (kind, blob) = decompress::sniff(blob).ctx(|| format!("reading {}", l.path))?;
        let mut raw = match kind != decompress::Compression::None {
            true => digest::Hashing::new(blob),
            false => digest::Hashing::counting(blob),
        }
        .with_progress(Box::new(|n| progress.advance(n)));
        let (size, tar_digest) = {
            let dec = decompress::auto(&mut raw)?;
            let mut plain = digest::Hashing::new(dec);
            let size =
                crate::archive::apply_layer(&self.layers, id, &mut plain, &IdMappings::default())?;
            let (actual, _) = plain.finish().map_err(|e| l.read_error(e))?;
            l.check_diff_id(actual.clone())?;
            (size, actual)
        };
        let (actual, _) = raw
            .finish_counting()
            .ctx(|| format!("reading {}", l.path))?;
        l.check_blob_digest(actual.unwrap_or(tar_digest))?;
        Ok(size)
    }

    /// Every stored image, sorted by id.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let dir = self.home.join("images");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).ctx(|| format!("reading {}", dir.display()))? {
            let p = e.ctx(|| format!("reading {}", dir.display()))?.path();
            match read_json::<ImageRecord>(&p.join("image.json")) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(err) => tracing::warn!(path = %p.display(), %err, "skipping unreadable image"),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// A stored image by full id, `sha256:`-less id, unique id prefix, or tag.
    pub fn find(&self, reference: &str) -> Result<ImageRecord> {
        reference::pick(&self.list()?, reference).cloned()
    }

    /// The stored config of an image.
    pub fn config(&self, rec: &ImageRecord) -> Result<ImageConfiguration> {
        let p = self.image_dir(&rec.id)?.join("config.json");
        let raw = fs::read(&p).ctx(|| format!("reading {}", p.display()))?;
        ImageConfiguration::from_reader(&raw[..])
            .map_err(|e| Error::NotAnImage(format!("{}: {e}", p.display())))
    }

    /// What changes from image `old` to image `new` (`docker diff` of their root filesystems),
    /// sorted by path. A path both take from the same layer is not compared.
    pub fn diff(&self, old: &ImageRecord, new: &ImageRecord) -> Result<Vec<Change>> {
        let (old_dirs, new_dirs) = (self.lower_dirs(old)?, self.lower_dirs(new)?);
        let diff_ids = |r: &ImageRecord| -> Vec<String> {
            r.layers.iter().rev().map(|l| l.diff_id.clone()).collect()
        };
        let (old_ids, new_ids) = (diff_ids(old), diff_ids(new));
        diff::compare_chains(
            &diff::Chain {
                dirs: &old_dirs,
                diff_ids: &old_ids,
            },
            &diff::Chain {
                dirs: &new_dirs,
                diff_ids: &new_ids,
            },
        )
    }

    /// The layer directories of an image, topmost first (the order `lowerdir=` wants).
    pub fn lower_dirs(&self, rec: &ImageRecord) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for l in rec.layers.iter().rev() {
            if self.layer_meta(&l.diff_id)?.is_none() {
                return Err(Error::LayerNotFound(format!(
                    "{} (of image {}; load the image again)",
                    l.diff_id,
                    rec.short_id()
                )));
            }
            out.push(self.layer_diff_dir(&l.diff_id)?);
        }
        Ok(out)
    }

    fn mount_file(&self, dir: &Path) -> PathBuf {
        let d = digest::of_bytes(dir.as_os_str().as_encoded_bytes());
        let hex = d.trim_start_matches("sha256:");
        self.home.join("mounts").join(&hex[..16])
    }

    /// Files for a mount at `dir`: (record path, lowerdir list path, log path).
    pub fn mount_paths(&self, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let base = self.mount_file(dir);
        (
            base.with_extension("json"),
            base.with_extension("lowers"),
            base.with_extension("log"),
        )
    }

    pub fn record_mount(&self, rec: &MountRecord) -> Result<()> {
        write_json_atomic(&self.mount_paths(&rec.dir).0, rec)
    }

    pub fn forget_mount(&self, dir: &Path) -> Result<()> {
        let (json, lowers, _) = self.mount_paths(dir);
        for p in [json, lowers] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("removing {}", p.display()), e)),
            }
        }
        Ok(())
    }

    /// Recorded mounts that are still live; stale records are dropped.
    pub fn mounts(&self) -> Result<Vec<MountRecord>> {
        let dir = self.home.join("mounts");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).ctx(|| format!("reading {}", dir.display()))? {
            let p = e.ctx(|| format!("reading {}", dir.display()))?.path();
            if p.extension().map_or(true, |x| x != "json") {
                continue;
            }
            let Some(rec) = read_json::<MountRecord>(&p)? else {
                continue;
            };
            if crate::union::mount::fuse_mounted(&rec.dir) {
                out.push(rec);
            } else {
                self.forget_mount(&rec.dir)?;
            }
        }
        Ok(out)
    }

    /// Remove an image record (refused while it is mounted); unless `keep_layers`, also the
    /// layers no other image uses. Returns the record and the removed layers' diff_ids.
    /// A lazily indexed image of that name goes too (its indexes, unless `keep_layers`).
    pub fn remove(&self, reference: &str, keep_layers: bool) -> Result<(ImageRecord, Vec<String>)> {
        let found = self.find(reference);
        let _guard = self.lock()?;
        let lazy = self.remove_lazy_record(reference)?;
        let mut removed = match (&lazy, keep_layers) {
            (Some(_), false) => self.prune_indexes()?,
            _ => Vec::new(),
        };
        let rec = match (found, lazy) {
            (Ok(rec), _) => rec,
            (Err(_), Some(lazy)) => return Ok((lazy, removed)),
            (Err(e), None) => return Err(e),
        };
        if let Some(m) = self.mounts()?.into_iter().find(|m| m.image == rec.id) {
            return Err(Error::ImageMounted {
                id: rec.short_id().to_string(),
                path: m.dir,
            });
        }
        let dir = self.image_dir(&rec.id)?;
        fs::remove_dir_all(&dir).ctx(|| format!("removing {}", dir.display()))?;
        if !keep_layers {
            removed.extend(self.prune_locked()?);
        }
        Ok((rec, removed))
    }

    /// Remove every layer no stored image uses (and unfinished leftovers), and every tar
    /// index no lazily indexed image names. Returns their diff ids.
    pub fn prune(&self) -> Result<Vec<String>> {
        let _guard = self.lock()?;
        let mut removed = self.prune_locked()?;
        removed.extend(self.prune_indexes()?);
        removed.extend(
            self.prune_uppers()?
                .iter()
                .map(|p| format!("upper {}", p.display())),
        );
        Ok(removed)
    }

    fn prune_locked(&self) -> Result<Vec<String>> {
        let used: BTreeSet<String> = self
            .list()?
            .iter()
            .flat_map(|r| {
                r.layers
                    .iter()
                    .map(|l| l.diff_id.trim_start_matches("sha256:").to_string())
            })
            .collect();
        let mut removed = Vec::new();
        for l in self.layers.list()? {
            if !used.contains(&l.id) {
                self.layers.remove(&l.id)?;
                removed.push(format!("sha256:{}", l.id));
            }
        }
        Ok(removed)
    }

    /// Every unpacked layer with the images using it.
    pub fn layer_usage(&self) -> Result<Vec<(LayerMeta, Vec<String>)>> {
        let images = self.list()?;
        let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in &images {
            for l in &r.layers {
                users
                    .entry(l.diff_id.clone())
                    .or_default()
                    .push(r.id.clone());
            }
        }
        let mut out = Vec::new();
        for l in self.layers.list()? {
            let diff_id = format!("sha256:{}", l.id);
            if let Some(meta) = self.layer_meta(&diff_id)? {
                let u = users.remove(&diff_id).unwrap_or_default();
                out.push((meta, u));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;

/// The checks every reader of a layer blob makes once it has read it all.
impl format::LayerRef {
    /// A read of the layer's tar that failed.
    pub(crate) fn read_error(&self, e: std::io::Error) -> Error {
        Error::MalformedArchive {
            entry: Some(self.path.clone()),
            reason: format!("reading the layer: {e}"),
        }
    }

    /// `actual`, the digest of the uncompressed tar, must be the layer's diff id.
    pub(crate) fn check_diff_id(&self, actual: String) -> Result<()> {
        if actual != self.diff_id {
            return Err(Error::DigestMismatch {
                what: format!("uncompressed layer {}", self.path),
                expected: self.diff_id.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// `actual`, the digest of the blob as stored, must be the one the archive names (if any).
    pub(crate) fn check_blob_digest(&self, actual: String) -> Result<()> {
        match &self.blob_digest {
            Some(want) if &actual != want => Err(Error::DigestMismatch {
                what: format!("layer blob {}", self.path),
                expected: want.clone(),
                actual,
            }),
            _ => Ok(()),
        }
    }
}
