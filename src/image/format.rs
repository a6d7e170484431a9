//! Image archive formats: `docker save` (`manifest.json`) and OCI layouts (`index.json`), and
//! choosing one image of several (`--tag`, `--index`, `--platform`). OCI documents are parsed
//! with `oci-spec`; only docker's `manifest.json`, which it does not define, has its own structs.

use oci_spec::image::{Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, Os};
use serde::Deserialize;

use super::digest::{self, sha256_hex};
use super::source::Source;
use crate::error::{Error, Result};

const DOCKER_MANIFEST: &str = "manifest.json";
const OCI_INDEX: &str = "index.json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";
const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Deepest nesting of indexes followed.
const MAX_INDEX_DEPTH: usize = 4;

/// Which image of an archive to take.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// A repository tag (`name:tag`) or OCI reference name.
    pub tag: Option<String>,
    /// Position in the archive's list of images (`manifest.json` entries, `index.json` manifests).
    pub index: Option<usize>,
    /// `os/arch[/variant]` for a multi-platform index; default: this machine's.
    pub platform: Option<Platform>,
}

/// An `os/arch[/variant]` triple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Parse `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
            return Err(Error::Usage(format!(
                "invalid platform {s:?}: expected os/arch[/variant], e.g. linux/arm64/v8"
            )));
        }
        Ok(Platform {
            os: parts[0].to_string(),
            arch: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }

    /// The platform this program runs on.
    pub fn host() -> Platform {
        Platform {
            os: Os::default().to_string(),
            arch: Arch::default().to_string(),
            variant: None,
        }
    }

    fn matches(&self, p: &oci_spec::image::Platform) -> bool {
        p.os().to_string() == self.os
            && p.architecture().to_string() == self.arch
            && match &self.variant {
                Some(v) => p.variant().as_deref() == Some(v.as_str()),
                None => true,
            }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// One layer of a resolved image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    /// Member name of the blob in the archive.
    pub path: String,
    /// Digest of the blob as stored (compressed), when the archive names it.
    pub blob_digest: Option<String>,
    /// Size of the blob, when a descriptor gives it.
    pub size: Option<u64>,
    pub media_type: String,
    /// Digest of the uncompressed layer tar (from the config's `rootfs.diff_ids`).
    pub diff_id: String,
}

/// The image chosen from an archive: its config (verified) and layers, bottom first.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// `sha256:` digest of the config: the image id.
    pub id: String,
    pub config_raw: Vec<u8>,
    pub config: ImageConfiguration,
    pub manifest_digest: Option<String>,
    pub tags: Vec<String>,
    pub layers: Vec<LayerRef>,
}

/// One entry of docker's `manifest.json`.
#[derive(Debug, Clone, Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// Read the archive's manifests and resolve the image `sel` picks.
pub fn resolve(src: &Source, sel: &Selector) -> Result<ResolvedImage> {
    if src.exists(DOCKER_MANIFEST) {
        resolve_docker(src, sel)
    } else if src.exists(OCI_INDEX) {
        resolve_oci(src, sel)
    } else {
        Err(Error::MalformedArchive {
            entry: None,
            reason: format!(
                "{} has neither manifest.json (docker save) nor index.json (OCI layout)",
                src.describe()
            ),
        })
    }
}

fn json_err(name: &str, e: impl std::fmt::Display) -> Error {
    Error::MalformedArchive {
        entry: Some(name.to_string()),
        reason: format!("invalid JSON: {e}"),
    }
}

/// `docker.io/library/x:latest` and `x` name the same image; a missing tag means `latest`.
pub fn tag_matches(want: &str, have: &str) -> bool {
    fn norm(s: &str) -> String {
        let s = s
            .strip_prefix("docker.io/library/")
            .or_else(|| s.strip_prefix("docker.io/"))
            .unwrap_or(s);
        let last = s.rsplit('/').next().unwrap_or(s);
        if last.contains(':') || last.contains('@') {
            s.to_string()
        } else {
            format!("{s}:latest")
        }
    }
    want == have || norm(want) == norm(have)
}

/// Pick one of `n` candidates described by `names` (tags) per the selector.
fn pick(what: &str, names: &[Vec<String>], sel: &Selector) -> Result<Vec<usize>> {
    if let Some(i) = sel.index {
        if i >= names.len() {
            return Err(Error::ImageNotFound(format!(
                "at index {i}: {what} holds {} image(s)",
                names.len()
            )));
        }
        return Ok(vec![i]);
    }
    if let Some(t) = &sel.tag {
        let hits: Vec<usize> = (0..names.len())
            .filter(|&i| names[i].iter().any(|n| tag_matches(t, n)))
            .collect();
        if hits.is_empty() {
            return Err(Error::ImageNotFound(format!("{t} in {what}")));
        }
        return Ok(hits);
    }
    Ok((0..names.len()).collect())
}

fn ambiguous(what: &str, names: &[Vec<String>], which: &[usize]) -> Error {
    Error::AmbiguousImage {
        what: what.to_string(),
        candidates: which
            .iter()
            .map(|&i| {
                let n = names[i].join(" ");
                if n.is_empty() {
                    format!("#{i}")
                } else {
                    format!("#{i} {n}")
                }
            })
            .collect(),
        hint: "--tag NAME or --index N",
    }
}

fn resolve_docker(src: &Source, sel: &Selector) -> Result<ResolvedImage> {
    let raw = src.read_small(DOCKER_MANIFEST)?;
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(&raw).map_err(|e| json_err(DOCKER_MANIFEST, e))?;
    let names: Vec<Vec<String>> = entries
        .iter()
        .map(|e| e.repo_tags.clone().unwrap_or_default())
        .collect();
    let what = src.describe();
    let hits = pick(&what, &names, sel)?;
    let [i] = hits[..] else {
        return Err(ambiguous(&what, &names, &hits));
    };
    let entry = &entries[i];
    // The config's file name is its digest: `<hex>.json` or `blobs/sha256/<hex>`.
    let expected = digest_in_name(&entry.config);
    let (id, config_raw, config) = read_config(src, &entry.config, expected.as_deref())?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(Error::MalformedArchive {
            entry: Some(DOCKER_MANIFEST.into()),
            reason: format!(
                "{} layers listed but the config has {} diff_ids",
                entry.layers.len(),
                diff_ids.len()
            ),
        });
    }
    let layers = entry
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(path, diff_id)| LayerRef {
            path: path.clone(),
            blob_digest: digest_in_name(path),
            size: None,
            media_type: "application/vnd.docker.image.rootfs.diff.tar".into(),
            diff_id: diff_id.clone(),
        })
        .collect();
    Ok(ResolvedImage {
        id,
        config_raw,
        config,
        manifest_digest: None,
        tags: names[i].clone(),
        layers,
    })
}

/// `blobs/sha256/<hex>` or `<hex>.json` -> `sha256:<hex>`.
fn digest_in_name(path: &str) -> Option<String> {
    let base = path.rsplit('/').next()?;
    let hex = base.strip_suffix(".json").unwrap_or(base);
    let in_blobs = path.contains("sha256/") || base.ends_with(".json");
    (in_blobs && digest::is_hex64(hex)).then(|| format!("sha256:{hex}"))
}

/// Read and verify the config blob; returns (image id, raw bytes, parsed).
fn read_config(
    src: &Source,
    path: &str,
    expected: Option<&str>,
) -> Result<(String, Vec<u8>, ImageConfiguration)> {
    let raw = src.read_small(path)?;
    if let Some(d) = expected {
        digest::verify_bytes(&format!("image config {path}"), &raw, d)?;
    }
    let config = ImageConfiguration::from_reader(&raw[..])
        .map_err(|e| Error::NotAnImage(format!("{path} is not an image configuration: {e}")))?;
    Ok((digest::of_bytes(&raw), raw, config))
}

fn blob_path(d: &Descriptor) -> Result<String> {
    let hex = sha256_hex(d.digest().as_ref())?.to_string();
    Ok(format!("blobs/sha256/{hex}"))
}

/// Read a blob named by a descriptor, checking its size and digest.
fn read_blob(src: &Source, d: &Descriptor) -> Result<Vec<u8>> {
    let path = blob_path(d)?;
    let raw = src.read_small(&path)?;
    if raw.len() as u64 != d.size() {
        return Err(Error::MalformedArchive {
            entry: Some(path),
            reason: format!("{} bytes, but its descriptor says {}", raw.len(), d.size()),
        });
    }
    digest::verify_bytes(&path, &raw, d.digest().as_ref())?;
    Ok(raw)
}

fn ref_names(d: &Descriptor) -> Vec<String> {
    let Some(a) = d.annotations() else {
        return Vec::new();
    };
    [CONTAINERD_NAME, REF_NAME]
        .iter()
        .filter_map(|k| a.get(*k).cloned())
        .collect()
}

fn is_index_type(mt: &str) -> bool {
    mt == oci_spec::image::MediaType::ImageIndex.as_ref() || mt == DOCKER_MANIFEST_LIST
}

fn is_manifest_type(mt: &str) -> bool {
    mt == oci_spec::image::MediaType::ImageManifest.as_ref() || mt == DOCKER_MANIFEST_V2
}

fn resolve_oci(src: &Source, sel: &Selector) -> Result<ResolvedImage> {
    let raw = src.read_small(OCI_INDEX)?;
    let index = ImageIndex::from_reader(&raw[..]).map_err(|e| json_err(OCI_INDEX, e))?;
    let descs = index.manifests();
    let names: Vec<Vec<String>> = descs.iter().map(ref_names).collect();
    let what = src.describe();
    let mut hits = pick(&what, &names, sel)?;
    // Several platform manifests listed directly in index.json: choose by platform.
    if hits.len() > 1 && hits.iter().all(|&i| descs[i].platform().is_some()) {
        let want = sel.platform.clone().unwrap_or_else(Platform::host);
        hits.retain(|&i| {
            descs[i]
                .platform()
                .as_ref()
                .is_some_and(|p| want.matches(p))
        });
        if hits.is_empty() {
            return Err(Error::ImageNotFound(format!(
                "for platform {want} in {what}"
            )));
        }
    }
    let [i] = hits[..] else {
        return Err(ambiguous(&what, &names, &hits));
    };
    let mut image = resolve_descriptor(src, &descs[i], sel, 0)?;
    image.tags = names[i].clone();
    Ok(image)
}

fn resolve_descriptor(
    src: &Source,
    d: &Descriptor,
    sel: &Selector,
    depth: usize,
) -> Result<ResolvedImage> {
    let mt = d.media_type().to_string();
    if is_index_type(&mt) {
        if depth >= MAX_INDEX_DEPTH {
            return Err(Error::MalformedArchive {
                entry: None,
                reason: "image indexes nested too deeply".into(),
            });
        }
        let raw = read_blob(src, d)?;
        let path = blob_path(d)?;
        let index = ImageIndex::from_reader(&raw[..]).map_err(|e| json_err(&path, e))?;
        let want = sel.platform.clone().unwrap_or_else(Platform::host);
        let chosen = index
            .manifests()
            .iter()
            .filter(|m| is_manifest_type(m.media_type().as_ref()))
            .find(|m| m.platform().as_ref().is_some_and(|p| want.matches(p)))
            .ok_or_else(|| {
                let have: Vec<String> = index
                    .manifests()
                    .iter()
                    .filter_map(|m| m.platform().as_ref())
                    .map(|p| {
                        let mut s = format!("{}/{}", p.os(), p.architecture());
                        if let Some(v) = p.variant() {
                            s.push('/');
                            s.push_str(v);
                        }
                        s
                    })
                    .collect();
                Error::ImageNotFound(format!(
                    "for platform {want} (the index has: {})",
                    have.join(", ")
                ))
            })?;
        return resolve_descriptor(src, chosen, sel, depth + 1);
    }
    if !is_manifest_type(&mt) {
        return Err(Error::NotAnImage(format!(
            "{} has media type {mt}, not an image manifest or index",
            d.digest()
        )));
    }
    let raw = read_blob(src, d)?;
    let path = blob_path(d)?;
    let manifest = ImageManifest::from_reader(&raw[..]).map_err(|e| json_err(&path, e))?;
    check_is_image(&manifest)?;
    let cfg_path = blob_path(manifest.config())?;
    let cfg_digest = manifest.config().digest().to_string();
    let (id, config_raw, config) = read_config(src, &cfg_path, Some(&cfg_digest))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(Error::MalformedArchive {
            entry: Some(cfg_path),
            reason: format!(
                "the manifest has {} layers but the config {} diff_ids",
                manifest.layers().len(),
                diff_ids.len()
            ),
        });
    }
    let layers = manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(l, diff_id)| {
            Ok(LayerRef {
                path: blob_path(l)?,
                blob_digest: Some(l.digest().to_string()),
                size: Some(l.size()),
                media_type: l.media_type().to_string(),
                diff_id: diff_id.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ResolvedImage {
        id,
        config_raw,
        config,
        manifest_digest: Some(d.digest().to_string()),
        tags: Vec::new(),
        layers,
    })
}

/// Refuse artifacts (Helm charts, signatures, ...) dressed as manifests.
fn check_is_image(m: &ImageManifest) -> Result<()> {
    if let Some(at) = m.artifact_type() {
        return Err(Error::NotAnImage(format!("an artifact of type {at}")));
    }
    let cmt = m.config().media_type().to_string();
    if cmt != oci_spec::image::MediaType::ImageConfig.as_ref() && cmt != DOCKER_CONFIG {
        return Err(Error::NotAnImage(format!("config media type {cmt}")));
    }
    for l in m.layers() {
        let lmt = l.media_type().to_string();
        let layer_like = lmt.starts_with("application/vnd.oci.image.layer.")
            || lmt.starts_with("application/vnd.docker.image.rootfs.");
        if !layer_like {
            return Err(Error::NotAnImage(format!("layer media type {lmt}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_and_print() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(p.arch, "arm64");
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//v8").is_err());
        assert!(Platform::parse("a/b/c/d").is_err());
    }

    #[test]
    fn tags_match_loosely() {
        assert!(tag_matches("busybox", "busybox:latest"));
        assert!(tag_matches("busybox", "docker.io/library/busybox:latest"));
        assert!(tag_matches("x:1", "x:1"));
        assert!(!tag_matches("x:1", "x:2"));
        assert!(!tag_matches("x", "y:latest"));
    }

    #[test]
    fn digests_in_docker_member_names() {
        let h = "a".repeat(64);
        assert_eq!(
            digest_in_name(&format!("blobs/sha256/{h}")),
            Some(format!("sha256:{h}"))
        );
        assert_eq!(
            digest_in_name(&format!("{h}.json")),
            Some(format!("sha256:{h}"))
        );
        assert_eq!(digest_in_name(&format!("{h}/layer.tar")), None);
    }

    #[test]
    fn selection_by_index_and_tag() {
        let names = vec![vec!["a:1".to_string()], vec!["b:1".to_string(), "c".into()]];
        let all = Selector::default();
        assert_eq!(pick("x", &names, &all).unwrap(), vec![0, 1]);
        let by_tag = Selector {
            tag: Some("c".into()),
            ..Default::default()
        };
        assert_eq!(pick("x", &names, &by_tag).unwrap(), vec![1]);
        let by_index = Selector {
            index: Some(0),
            ..Default::default()
        };
        assert_eq!(pick("x", &names, &by_index).unwrap(), vec![0]);
        let out = Selector {
            index: Some(2),
            ..Default::default()
        };
        assert!(matches!(
            pick("x", &names, &out),
            Err(Error::ImageNotFound(_))
        ));
        let none = Selector {
            tag: Some("z".into()),
            ..Default::default()
        };
        assert!(matches!(
            pick("x", &names, &none),
            Err(Error::ImageNotFound(_))
        ));
        let e = ambiguous("x", &names, &[0, 1]).to_string();
        assert!(e.contains("#1 b:1 c") && e.contains("--tag"), "{e}");
    }
}
