//! Replays every kept fuzz input (fuzz/corpus/TARGET/* and the crashes found,
//! fuzz/regressions/TARGET/*) through the same target bodies the fuzzers run
//! (`stratafs::fuzzing`), without instrumentation: a fixed bug stays fixed.

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(rd) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        for e in rd {
            let p = e.expect("listing fuzz inputs").path();
            if p.is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn replay(target: &str) {
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no inputs for {target}: fuzz/corpus/{target} holds the seeds"
    );
    let mut failed = Vec::new();
    for f in &files {
        let data = std::fs::read(f).expect("reading a fuzz input");
        let res = std::panic::catch_unwind(|| stratafs::fuzzing::run(target, &data));
        match res {
            Ok(true) => {}
            Ok(false) => panic!("unknown target {target}"),
            Err(_) => failed.push(f.display().to_string()),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} {target} inputs fail:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn every_target_has_a_replay() {
    assert_eq!(
        stratafs::fuzzing::TARGETS,
        [
            "tar_apply",
            "image_archive",
            "mount_options",
            "plugin_json",
            "snapshotter"
        ]
    );
}

#[test]
fn tar_apply() {
    replay("tar_apply");
}

#[test]
fn image_archive() {
    replay("image_archive");
}

#[test]
fn mount_options() {
    replay("mount_options");
}

#[test]
fn plugin_json() {
    replay("plugin_json");
}

#[test]
fn snapshotter() {
    replay("snapshotter");
}
