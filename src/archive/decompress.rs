//! Compressed layer streams: gzip and zstd detected from their magic bytes, anything else
//! passed through as an uncompressed tar.

use std::io::{self, Cursor, Read};

use crate::error::{Error, Result};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0];
const BZIP2_MAGIC: &[u8] = b"BZh";

/// The compression a stream starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    /// Refused: not a layer format engines produce; the user should decompress first.
    Xz,
    /// Refused, as `Xz`.
    Bzip2,
}

/// Detect the compression from the first bytes of a stream.
pub fn detect(head: &[u8]) -> Compression {
    if head.starts_with(&ZSTD_MAGIC) {
        Compression::Zstd
    } else if head.starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else if head.starts_with(&XZ_MAGIC) {
        Compression::Xz
    } else if head.starts_with(BZIP2_MAGIC) {
        Compression::Bzip2
    } else {
        Compression::None
    }
}

/// Fill `buf` from `r` as far as `r` goes (a short read is not its end): the bytes read.
pub fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A stream whose first bytes, read to tell its compression, are put back in front.
pub type Sniffed<R> = io::Chain<Cursor<Vec<u8>>, R>;

/// The compression `reader` starts with, and a reader of the whole stream.
pub fn sniff<R: Read>(mut reader: R) -> io::Result<(Compression, Sniffed<R>)> {
    let mut head = [0u8; 6];
    let got = read_up_to(&mut reader, &mut head)?;
    let kind = detect(&head[..got]);
    Ok((kind, Cursor::new(head[..got].to_vec()).chain(reader)))
}

/// Wrap `reader` in the decompressor its first bytes call for (none for a plain tar).
pub fn auto<'a, R: Read + 'a>(reader: R) -> Result<Box<dyn Read + 'a>> {
    let (kind, whole) = sniff(reader).map_err(|e| Error::io("reading the layer stream", e))?;
    Ok(match kind {
        Compression::None => Box::new(whole),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(whole)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(whole)
                .map_err(|e| Error::io("starting the zstd decoder", e))?,
        ),
        Compression::Xz | Compression::Bzip2 => {
            return Err(Error::Usage(
                "xz and bzip2 layers are not supported; decompress the archive first".into(),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn roundtrip(data: &[u8], packed: Vec<u8>) {
        let mut out = Vec::new();
        auto(Cursor::new(packed))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn detects_gzip_zstd_and_plain() {
        let data = b"hello layer".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(detect(&gz), Compression::Gzip);
        roundtrip(&data, gz);
        let zs = zstd::encode_all(Cursor::new(&data), 3).unwrap();
        assert_eq!(detect(&zs), Compression::Zstd);
        roundtrip(&data, zs);
        roundtrip(&data, data.clone());
        roundtrip(b"ab", b"ab".to_vec());
    }

    #[test]
    fn refuses_xz_and_bzip2() {
        for head in [
            &b"BZh91AY&SY"[..],
            &[0xfd, b'7', b'z', b'X', b'Z', 0, 0, 4][..],
        ] {
            assert!(matches!(
                auto(Cursor::new(head.to_vec())),
                Err(Error::Usage(_))
            ));
        }
    }

    /// A reader that hands out one byte per call, like a slow pipe.
    struct Trickle(Cursor<Vec<u8>>);
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn magic_number_split_across_reads() {
        let payload = b"hello through a trickle".to_vec();
        let zs = zstd::encode_all(Cursor::new(&payload), 1).unwrap();
        let mut out = Vec::new();
        auto(Trickle(Cursor::new(zs)))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, payload);
    }
}
