//! Compressed layer streams: gzip and zstd detected from their magic bytes, anything else
//! passed through as an uncompressed tar.

use std::io::{self, Cursor, Read};

use crate::error::{Error, Result};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The compression a stream starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Detect the compression from the first bytes of a stream.
pub fn detect(head: &[u8]) -> Compression {
    if head.starts_with(&ZSTD_MAGIC) {
        Compression::Zstd
    } else if head.starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else {
        Compression::None
    }
}

/// Wrap `reader` in the decompressor its first bytes call for (none for a plain tar).
pub fn auto<'a, R: Read + 'a>(mut reader: R) -> Result<Box<dyn Read + 'a>> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match reader.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading the layer stream", e)),
        }
    }
    let whole = Cursor::new(head[..got].to_vec()).chain(reader);
    Ok(match detect(&head[..got]) {
        Compression::None => Box::new(whole),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(whole)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(whole)
                .map_err(|e| Error::io("starting the zstd decoder", e))?,
        ),
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
}
