//! Target `mount_options`: the mount program's command line (`server::parse_args`, the form
//! Podman and mount.fuse3 use) and its `-o` option string (`MountOptions::parse`).
//!
//! Input: arguments separated by NUL bytes. Invariants: no panic; what parses has its own
//! constraints (layers given, upper and work together, valid id maps, threads > 0); lower
//! directories written back with the documented escapes (`\:`, `\,`, `\\`) parse to the same
//! list.

use crate::layer::idmap;
use crate::union::options::MountOptions;
use crate::union::server::parse_args;

fn escape(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for c in p.chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn check(o: &MountOptions) {
    assert!(
        !o.lowerdirs.is_empty() || o.upperdir.is_some(),
        "parsed without layers: {o:?}"
    );
    assert_eq!(o.upperdir.is_some(), o.workdir.is_some(), "{o:?}");
    assert!(o.threads != Some(0), "{o:?}");
    assert!(idmap::validate(&o.uid_map).is_ok(), "{o:?}");
    assert!(idmap::validate(&o.gid_map).is_ok(), "{o:?}");
    if !o.lowerdirs.is_empty() {
        let list: Vec<String> = o
            .lowerdirs
            .iter()
            .map(|p| escape(&p.to_string_lossy()))
            .collect();
        let again = MountOptions::parse(&format!("lowerdir={}", list.join(":")))
            .expect("escaped lower directories parse");
        assert_eq!(again.lowerdirs, o.lowerdirs, "escaped lowerdir round trip");
    }
}

pub fn mount_options(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(o) = MountOptions::parse(&text) {
        check(&o);
    }
    let args: Vec<String> = text.split('\0').map(str::to_string).collect();
    if let Ok(a) = parse_args(&args) {
        check(&a.options);
    }
}
