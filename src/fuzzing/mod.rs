//! The bodies of the coverage-guided fuzz targets (`fuzz/`, run by `scripts/fuzz.sh`). They live
//! in the library so that `tests/fuzz_corpus.rs` replays every kept input (the corpus and every
//! crash found) through the same code without instrumentation, in the normal test run.
//!
//! Each target takes arbitrary bytes, must never panic on them, and panics (a crash for the
//! fuzzer, a failure for the replay test) when an invariant of the code under test breaks.
//! Scratch state goes into temporary directories under `$TMPDIR`.

mod image;
mod options;
mod plugin;
mod snapshotter;
mod tar;
mod tree;

pub use self::image::image_archive;
pub use self::options::mount_options;
pub use self::plugin::plugin_json;
pub use self::snapshotter::snapshotter;
pub use self::tar::tar_apply;

/// Names of the targets, as `fuzz/fuzz_targets/NAME.rs` and the corpus directories spell them.
pub const TARGETS: &[&str] = &[
    "tar_apply",
    "image_archive",
    "mount_options",
    "plugin_json",
    "snapshotter",
];

/// Run target `name` on `data`; `false` for an unknown name.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "tar_apply" => tar_apply(data),
        "image_archive" => image_archive(data),
        "mount_options" => mount_options(data),
        "plugin_json" => plugin_json(data),
        "snapshotter" => snapshotter(data),
        _ => return false,
    }
    true
}

/// A cursor over fuzzer bytes: small numbers and short strings, with defaults once it runs out.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// A string of length given by one byte (at most 63 bytes), lossily decoded.
    pub(crate) fn string(&mut self) -> String {
        let len = (self.byte() & 63) as usize;
        let len = len.min(self.data.len());
        let (s, rest) = self.data.split_at(len);
        self.data = rest;
        String::from_utf8_lossy(s).into_owned()
    }
}

/// A scratch directory for one input; removed on drop.
pub(crate) fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("stratafs-fuzz.")
        .tempdir()
        .expect("creating a scratch directory in $TMPDIR")
}

/// Rewrite the checksum of every tar header reachable from the start (following each header's
/// size), so that mutated headers reach the code under test instead of the tar crate's checksum
/// check. Stops at the first block that is not a plausible header.
pub(crate) fn fix_tar_checksums(tar: &mut [u8]) {
    let mut at = 0usize;
    while at + 512 <= tar.len() {
        let block = &mut tar[at..at + 512];
        if block.iter().all(|b| *b == 0) {
            break;
        }
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|b| u32::from(*b)).sum();
        let field = format!("{sum:06o}\0 ");
        block[148..156].copy_from_slice(field.as_bytes());
        let size = parse_octal(&block[124..136]).unwrap_or(0);
        let data_blocks = size.div_ceil(512);
        match data_blocks
            .checked_mul(512)
            .and_then(|d| d.checked_add(512))
            .and_then(|d| usize::try_from(d).ok())
            .and_then(|d| at.checked_add(d))
        {
            Some(next) => at = next,
            None => break,
        }
    }
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_rewritten() {
        let mut tar = crate::archive::files_tar(&[("a", b"hello"), ("b", b"x")]);
        tar[0] = b'z';
        fix_tar_checksums(&mut tar);
        let mut ar = ::tar::Archive::new(&tar[..]);
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["z", "b"]);
    }

    #[test]
    fn every_target_runs_on_nothing() {
        for t in TARGETS {
            assert!(run(t, b""));
        }
        assert!(!run("nope", b""));
    }
}
