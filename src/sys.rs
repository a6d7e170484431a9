//! Thin, safe wrappers over the raw syscalls stratafs needs. All of the crate's `unsafe` lives
//! here (this file and `src/sys/`, one module per concern); callers get `io::Result`s, and each
//! wrapper states once why its `unsafe` is sound. `#![deny(unsafe_code)]` in `lib.rs` and the
//! test at the end of this file keep it so.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;

mod dirent;
mod host;
mod long;
mod mmap;
mod mutate;
mod open;
mod process;
mod uring;
mod xattr;

pub use dirent::*;
pub use host::*;
pub use long::{is_long, NAME_LIMIT, PATH_LIMIT};
pub use mmap::{MappedFile, ReadMap};
pub use mutate::*;
pub use open::*;
pub use process::*;
pub use uring::*;
pub use xattr::*;

/// A path or name as a C string; an interior NUL is `EINVAL`.
pub fn cstr(p: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(p.as_ref().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `*at` flags for a call on `name` in a directory that follows no final symlink; an empty
/// `name` means the directory fd itself (`AT_EMPTY_PATH`).
fn nofollow_flags(name: &OsStr) -> libc::c_int {
    if name.is_empty() {
        libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// Every `.rs` file below `dir`.
    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("listing src") {
            let path = entry.expect("listing src").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// What `unsafe` code (or a lint exception for it) looks like, after whitespace runs are
    /// collapsed: prose and names such as `unsafe_entry` do not match.
    fn unsafe_uses(text: &str) -> Vec<String> {
        const MARKS: [&str; 8] = [
            "unsafe {",
            "unsafe{",
            "unsafe fn",
            "unsafe impl",
            "unsafe trait",
            "unsafe extern",
            "#[unsafe(",
            "(unsafe_code)",
        ];
        let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut found = Vec::new();
        for mark in MARKS {
            for (at, _) in flat.match_indices(mark) {
                // From the start of the word holding the mark (`#![deny(unsafe_code)]`), which
                // the allowed list matches, plus a little context for the report.
                let start = flat[..at].rfind(' ').map_or(0, |i| i + 1);
                let len = flat[start..at].chars().count() + mark.len() + 20;
                found.push(flat[start..].chars().take(len).collect());
            }
        }
        found
    }

    /// All `unsafe` stays in `sys`: nowhere else in src/ may a file contain an unsafe block, fn,
    /// impl or trait, or switch the `unsafe_code` lint off (lib.rs may do so only for `sys`).
    #[test]
    fn unsafe_only_in_sys() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut bad = Vec::new();
        for file in files {
            let rel = file.strip_prefix(&src).expect("below src");
            if rel == Path::new("sys.rs") || rel.starts_with("sys") {
                continue;
            }
            let text = std::fs::read_to_string(&file).expect("reading a source file");
            let mut uses = unsafe_uses(&text);
            let allowed: &[&str] = match rel.to_str() {
                Some("lib.rs") => &[
                    "#![deny(unsafe_code)]",
                    "#[allow(unsafe_code)] pub mod sys;",
                ],
                Some("main.rs") => &["#![deny(unsafe_code)]"],
                _ => &[],
            };
            uses.retain(|u| !allowed.iter().any(|a| u.starts_with(a)));
            bad.extend(uses.into_iter().map(|u| format!("{}: {u}", rel.display())));
        }
        assert!(bad.is_empty(), "unsafe outside src/sys*: {bad:#?}");
    }

    #[test]
    fn finds_unsafe_forms() {
        assert_eq!(unsafe_uses("let x = unsafe\n  { f() };").len(), 1);
        assert_eq!(unsafe_uses("pub unsafe fn f() {}").len(), 1);
        assert_eq!(unsafe_uses("unsafe impl Send for X {}").len(), 1);
        assert_eq!(unsafe_uses("#[allow(unsafe_code)]\nmod m;").len(), 1);
        assert!(unsafe_uses("// not unsafe: unsafe_entry(name, r)").is_empty());
        // The report cuts by characters, never inside one.
        assert_eq!(unsafe_uses("unsafe { \"ééééééééééééééééééééé\" }").len(), 1);
    }
}
