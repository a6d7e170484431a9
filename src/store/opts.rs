//! Storage options given to `create` (`size=50M`). Unknown keys are errors naming the key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Parsed storage options of one layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageOpts {
    /// Quota in bytes on what the layer itself may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl StorageOpts {
    /// Parse the raw options; keys are matched case-insensitively, as Docker does.
    pub fn parse(raw: &BTreeMap<String, String>) -> Result<Self> {
        let mut opts = StorageOpts::default();
        for (key, value) in raw {
            match key.to_ascii_lowercase().as_str() {
                "size" => {
                    let bytes = parse_size(value).map_err(|reason| Error::InvalidStorageOpt {
                        key: key.clone(),
                        value: value.clone(),
                        reason,
                    })?;
                    opts.size = Some(bytes);
                }
                _ => return Err(Error::UnknownStorageOpt(key.clone())),
            }
        }
        Ok(opts)
    }
}

/// Parse a byte size: a number with an optional K/M/G/T suffix (binary multiples, as Docker's
/// `units.RAMInBytes`), optionally followed by `B`/`iB`; case-insensitive.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let digits_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return Err("expected a number of bytes, with an optional K, M, G or T suffix".into());
    }
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size suffix {other:?}")),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{num:?} is not a number"))?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err("size out of range".into());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("50M").unwrap(), 50 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("2KiB").unwrap(), 2048);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert!(parse_size("").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn parse_known_and_unknown() {
        assert_eq!(
            StorageOpts::parse(&opts(&[("size", "10M")])).unwrap().size,
            Some(10 << 20)
        );
        assert_eq!(StorageOpts::parse(&opts(&[])).unwrap().size, None);
        match StorageOpts::parse(&opts(&[("inodes", "5")])) {
            Err(Error::UnknownStorageOpt(k)) => assert_eq!(k, "inodes"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            StorageOpts::parse(&opts(&[("size", "lots")])),
            Err(Error::InvalidStorageOpt { .. })
        ));
    }
}
