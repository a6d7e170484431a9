//! Which stored image a reference (`image rm NAME`, `image mount NAME`) names: one matcher for
//! unpacked and lazily indexed records alike, so a name means the same image everywhere.

use crate::error::{Error, Result};

use super::{format, ImageRecord};

/// The one record of `all` that `reference` names: a tag (or OCI reference name) first, else an
/// id or id prefix (hex, `sha256:` optional). Several hits of the kind that matched are an
/// error, never a guess.
pub fn pick<'a>(all: &'a [ImageRecord], reference: &str) -> Result<&'a ImageRecord> {
    let by_tag: Vec<&ImageRecord> = all
        .iter()
        .filter(|r| r.tags.iter().any(|t| format::tag_matches(reference, t)))
        .collect();
    match by_tag[..] {
        [one] => return Ok(one),
        [] => {}
        _ => return Err(ambiguous(format!("tag {reference}"), &by_tag, "an id")),
    }
    let hex_ref = reference.strip_prefix("sha256:").unwrap_or(reference);
    let is_hex = !hex_ref.is_empty() && hex_ref.bytes().all(|b| b.is_ascii_hexdigit());
    let by_id: Vec<&ImageRecord> = all
        .iter()
        .filter(|r| is_hex && r.id.trim_start_matches("sha256:").starts_with(hex_ref))
        .collect();
    match by_id[..] {
        [one] => Ok(one),
        [] => Err(Error::ImageNotFound(reference.to_string())),
        _ => Err(ambiguous(
            format!("id prefix {reference}"),
            &by_id,
            "a longer id",
        )),
    }
}

fn ambiguous(what: String, hits: &[&ImageRecord], hint: &'static str) -> Error {
    Error::AmbiguousImage {
        what,
        candidates: hits.iter().map(|r| r.id.clone()).collect(),
        hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id_hex: &str, tags: &[&str]) -> ImageRecord {
        ImageRecord {
            id: format!("sha256:{id_hex}"),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            manifest_digest: None,
            os: "linux".into(),
            architecture: "amd64".into(),
            source: String::new(),
            loaded: 0,
            layers: Vec::new(),
        }
    }

    fn picked(all: &[ImageRecord], reference: &str) -> std::result::Result<String, String> {
        pick(all, reference)
            .map(|r| r.id.clone())
            .map_err(|e| match e {
                Error::ImageNotFound(_) => "not found".into(),
                Error::AmbiguousImage { .. } => "ambiguous".into(),
                other => other.to_string(),
            })
    }

    #[test]
    fn tags_first_then_unique_id_prefixes() {
        let all = [
            rec("abc123", &["web:1"]),
            rec("abd456", &["web:2", "abc"]),
            rec("ff0000", &["dup:1"]),
            rec("ff0001", &["dup:1"]),
        ];
        assert_eq!(picked(&all, "web:1").unwrap(), "sha256:abc123");
        // A tag wins over an id prefix that spells the same.
        assert_eq!(picked(&all, "abc").unwrap(), "sha256:abd456");
        assert_eq!(picked(&all, "abc1").unwrap(), "sha256:abc123");
        assert_eq!(picked(&all, "sha256:abd").unwrap(), "sha256:abd456");
        assert_eq!(picked(&all, "ab").unwrap_err(), "ambiguous");
        assert_eq!(picked(&all, "dup:1").unwrap_err(), "ambiguous");
        for missing in ["", "sha256:", "web:3", "zz", "abc1234"] {
            assert_eq!(
                picked(&all, missing).unwrap_err(),
                "not found",
                "{missing:?}"
            );
        }
    }
}
