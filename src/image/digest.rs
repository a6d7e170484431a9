//! sha256 digests: parsing `sha256:<hex>` names and hashing streams as they are read.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// `sha256:<64 lowercase hex>` -> the hex; anything else (another algorithm, bad hex) is refused.
pub fn sha256_hex(digest: &str) -> Result<&str> {
    let hex = digest.strip_prefix("sha256:").ok_or_else(|| {
        Error::NotSupported(format!(
            "digest {digest:?}: only sha256 digests are supported"
        ))
    })?;
    if is_hex64(hex) {
        Ok(hex)
    } else {
        Err(Error::MalformedArchive {
            entry: None,
            reason: format!("invalid digest {digest:?}"),
        })
    }
}

/// Whether `s` is 64 lowercase hex digits (a sha256 in hex).
pub fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:<hex>` of a byte slice.
pub fn of_bytes(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

/// Check `data` against `expected` (`sha256:<hex>`).
pub fn verify_bytes(what: &str, data: &[u8], expected: &str) -> Result<()> {
    let actual = of_bytes(data);
    if actual == expected {
        Ok(())
    } else {
        Err(Error::DigestMismatch {
            what: what.to_string(),
            expected: expected.to_string(),
            actual,
        })
    }
}

/// A reader that hashes (and counts) what passes through it.
pub struct Hashing<'a, R> {
    inner: R,
    /// `None`: only counting (see [`Hashing::counting`]).
    hasher: Option<Sha256>,
    count: u64,
    on_read: Option<Box<dyn FnMut(u64) + 'a>>,
}

impl<'a, R: Read> Hashing<'a, R> {
    pub fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Some(Sha256::new()),
            count: 0,
            on_read: None,
        }
    }

    /// Count (and report progress) without hashing: for a stream whose digest another
    /// [`Hashing`] computes from the same bytes.
    pub fn counting(inner: R) -> Self {
        Hashing {
            hasher: None,
            ..Hashing::new(inner)
        }
    }

    /// Call `f(n)` after each read of `n` bytes (progress reporting).
    pub fn with_progress(mut self, f: Box<dyn FnMut(u64) + 'a>) -> Self {
        self.on_read = Some(f);
        self
    }

    /// Read the rest of the stream (trailing padding a tar reader leaves), then return
    /// `sha256:<hex>` and the byte count of everything read.
    pub fn finish(self) -> io::Result<(String, u64)> {
        let (digest, count) = self.finish_counting()?;
        let digest = digest.ok_or_else(|| io::Error::other("a counting reader has no digest"))?;
        Ok((digest, count))
    }

    /// [`Hashing::finish`] of a reader that may only be counting (`None` digest then).
    pub fn finish_counting(mut self) -> io::Result<(Option<String>, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        let digest = self
            .hasher
            .take()
            .map(|h| format!("sha256:{}", hex(&h.finalize())));
        Ok((digest, self.count))
    }
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        if let Some(f) = self.on_read.as_mut() {
            f(n as u64);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_of_known_values() {
        // sha256 of the empty string.
        let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(of_bytes(b""), empty);
        verify_bytes("x", b"", empty).unwrap();
        assert!(matches!(
            verify_bytes("x", b"a", empty),
            Err(Error::DigestMismatch { .. })
        ));
        let mut h = Hashing::new(&b"abc"[..]);
        let mut one = [0u8; 1];
        h.read_exact(&mut one).unwrap();
        let (d, n) = h.finish().unwrap();
        assert_eq!(n, 3);
        assert_eq!(d, of_bytes(b"abc"));
    }

    #[test]
    fn parses_only_sha256() {
        assert!(sha256_hex(&of_bytes(b"")).is_ok());
        assert!(sha256_hex("sha512:abcd").is_err());
        assert!(sha256_hex("sha256:ABCD").is_err());
        assert!(sha256_hex("sha256:../../etc").is_err());
    }
}
