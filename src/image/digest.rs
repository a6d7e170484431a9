//! sha256 digests: parsing `sha256:<hex>` names and hashing streams as they are read.

use std::io::{self, Read};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use sha2::{Digest as _, Sha256};

use crate::archive::decompress::read_up_to;
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

/// Bytes read from the stream at a time when hashing: big enough that handing a block to the
/// hashing thread costs little next to hashing it.
const BLOCK: usize = 1 << 20;
/// Blocks read ahead of the hashing thread: bounds the memory while the reader runs ahead.
const BLOCKS_AHEAD: usize = 4;

/// A reader that hashes (and counts) what passes through it.
///
/// The sha256 runs on a thread of its own, fed blocks the reader has already read, so hashing
/// (most of the CPU time of indexing a big layer) overlaps reading, decompressing and parsing
/// the stream on the calling thread. The digest is only known at [`Hashing::finish`], after
/// every byte has been hashed.
pub struct Hashing<'a, R> {
    inner: R,
    /// `None`: only counting (see [`Hashing::counting`]).
    hashing: Option<Blocks>,
    count: u64,
    on_read: Option<Box<dyn FnMut(u64) + 'a>>,
}

/// The block being served to the reader and the thread that hashes every block.
struct Blocks {
    current: Arc<Vec<u8>>,
    served: usize,
    /// Started at the first read (so a failure to start is an I/O error, not a panic).
    thread: Option<HashThread>,
}

struct HashThread {
    to_hash: SyncSender<Arc<Vec<u8>>>,
    /// Blocks the thread is done with, for reuse (no fresh pages to fault in per block).
    hashed: Receiver<Arc<Vec<u8>>>,
    digest: JoinHandle<[u8; 32]>,
}

impl HashThread {
    fn start() -> io::Result<HashThread> {
        let (to_hash, blocks) = sync_channel::<Arc<Vec<u8>>>(BLOCKS_AHEAD);
        let (give_back, hashed) = channel();
        let digest = std::thread::Builder::new()
            .name("sha256".into())
            .spawn(move || {
                let mut h = Sha256::new();
                for b in blocks {
                    h.update(b.as_slice());
                    // The reader may be gone (an error upstream): then the block just drops.
                    let _ = give_back.send(b);
                }
                h.finalize().into()
            })?;
        Ok(HashThread {
            to_hash,
            hashed,
            digest,
        })
    }

    /// A buffer for the next block: one the thread has hashed if it is free, else new.
    fn spare(&self) -> Vec<u8> {
        while let Ok(b) = self.hashed.try_recv() {
            // Its old bytes are overwritten by the next read (no zeroing of full blocks).
            if let Ok(v) = Arc::try_unwrap(b) {
                return v;
            }
        }
        Vec::with_capacity(BLOCK)
    }

    fn hash(&self, block: Arc<Vec<u8>>) -> io::Result<()> {
        self.to_hash
            .send(block)
            .map_err(|_| io::Error::other("the hashing thread stopped"))
    }

    fn finish(self) -> io::Result<[u8; 32]> {
        drop(self.to_hash);
        self.digest
            .join()
            .map_err(|_| io::Error::other("the hashing thread panicked"))
    }
}

impl Blocks {
    /// Read the next block of `inner` and hand it to the hashing thread; `false` at the end.
    fn refill(&mut self, inner: &mut impl Read) -> io::Result<bool> {
        let thread = match &mut self.thread {
            Some(t) => t,
            None => self.thread.insert(HashThread::start()?),
        };
        // Drop our share of the served block first, so the thread's copy can be reused.
        self.current = Arc::new(Vec::new());
        self.served = 0;
        let mut block = thread.spare();
        block.resize(BLOCK, 0);
        let got = read_up_to(inner, &mut block)?;
        block.truncate(got);
        if got == 0 {
            return Ok(false);
        }
        let block = Arc::new(block);
        thread.hash(Arc::clone(&block))?;
        self.current = block;
        Ok(true)
    }

    fn digest(self) -> io::Result<String> {
        let bytes = match self.thread {
            Some(t) => t.finish()?,
            None => Sha256::digest([]).into(),
        };
        Ok(format!("sha256:{}", hex(&bytes)))
    }
}

impl<'a, R: Read> Hashing<'a, R> {
    pub fn new(inner: R) -> Self {
        Hashing {
            inner,
            hashing: Some(Blocks {
                current: Arc::new(Vec::new()),
                served: 0,
                thread: None,
            }),
            count: 0,
            on_read: None,
        }
    }

    /// Count (and report progress) without hashing: for a stream whose digest another
    /// [`Hashing`] computes from the same bytes.
    pub fn counting(inner: R) -> Self {
        Hashing {
            hashing: None,
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
        let digest = self.hashing.take().map(Blocks::digest).transpose()?;
        Ok((digest, self.count))
    }
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.hashing.as_mut() {
            None => self.inner.read(buf)?,
            Some(b) => {
                if b.served == b.current.len() && !b.refill(&mut self.inner)? {
                    return Ok(0);
                }
                let n = buf.len().min(b.current.len() - b.served);
                buf[..n].copy_from_slice(&b.current[b.served..b.served + n]);
                b.served += n;
                n
            }
        };
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
    fn a_stream_of_many_blocks_hashes_as_one() {
        // Past several blocks and the read-ahead bound, ending mid-block, read in odd sizes.
        let data: Vec<u8> = (0..(BLOCK * (BLOCKS_AHEAD + 3) + 777))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let mut h = Hashing::new(&data[..]);
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 123_457];
        loop {
            let n = h.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        assert!(
            seen == data,
            "the reader must pass the bytes through unchanged"
        );
        let (d, n) = h.finish().unwrap();
        assert_eq!((d, n), (of_bytes(&data), data.len() as u64));
        let (d, n) = Hashing::new(&b""[..]).finish().unwrap();
        assert_eq!((d, n), (of_bytes(b""), 0));
    }

    #[test]
    fn parses_only_sha256() {
        assert!(sha256_hex(&of_bytes(b"")).is_ok());
        assert!(sha256_hex("sha512:abcd").is_err());
        assert!(sha256_hex("sha256:ABCD").is_err());
        assert!(sha256_hex("sha256:../../etc").is_err());
    }
}
