//! Target `plugin_json`: Docker graph driver plugin calls (their JSON bodies and `ApplyDiff`'s
//! query and tar) against the copying (vfs) driver in a scratch home, through the plugin
//! server's own body parser and dispatcher. (The union driver's `Get` would mount FUSE.)
//!
//! Input: calls separated by `\n%%\n`, each `METHOD[?QUERY]\nBODY` (`Create`, `Remove`,
//! `ApplyDiff?id=a&parent=b` with a tar body, `Init`, ...). Invariants: no panic; nothing outside
//! the driver's home changes whatever ids, parents and options a body names.

use std::path::Path;

use super::tree::{assert_same, picture};
use crate::driver::vfs::VfsDriver;
use crate::driver::{Driver, DriverConfig, IdMappings};
use crate::plugin::proto::{InitRequest, LayerRequest};
use crate::plugin::server::{apply_diff_query, dispatch, parse_body};

fn call(driver: &VfsDriver, method: &str, query: &str, body: &[u8]) {
    match method {
        "Plugin.Activate" => {}
        "Init" => {
            // The home a fuzzer names is never used: only the body and its id maps are checked.
            if let Ok(req) = parse_body::<InitRequest>(body) {
                let _ = IdMappings::new(
                    req.uid_maps.unwrap_or_default(),
                    req.gid_maps.unwrap_or_default(),
                );
            }
        }
        "ApplyDiff" => {
            let (id, parent) = apply_diff_query(query);
            let mut tar = body.to_vec();
            super::fix_tar_checksums(&mut tar);
            let parent = (!parent.is_empty()).then_some(parent.as_str());
            let _ = driver.apply_diff(&id, parent, &mut &tar[..]);
        }
        "Diff" => {
            if let Ok(req) = parse_body::<LayerRequest>(body) {
                let _ = driver.diff(req.id(), req.parent(), &mut std::io::sink());
            }
        }
        other => {
            if let Ok(req) = parse_body::<LayerRequest>(body) {
                let _ = dispatch(driver, other, &req);
            }
        }
    }
}

pub fn plugin_json(data: &[u8]) {
    let scratch = super::scratch();
    let root = scratch.path();
    std::fs::create_dir(root.join("outside")).expect("scratch dir");
    std::fs::write(root.join("outside/canary"), b"canary").expect("scratch file");
    let home = root.join("home");
    let driver = VfsDriver::new(&DriverConfig {
        root: home.clone(),
        ..Default::default()
    })
    .expect("opening a scratch vfs driver");
    let before = picture(root, &[Path::new("home")], true);
    for c in super::image::split(data, b"\n%%\n") {
        let (head, body) = match c.iter().position(|b| *b == b'\n') {
            Some(at) => (&c[..at], &c[at + 1..]),
            None => (c, &[][..]),
        };
        let head = String::from_utf8_lossy(head);
        let head = head
            .trim_start_matches('/')
            .trim_start_matches("GraphDriver.");
        let (method, query) = head.split_once('?').unwrap_or((head, ""));
        call(&driver, method, query, body);
    }
    let _ = driver.cleanup();
    assert_same(
        "outside the driver's home",
        &before,
        &picture(root, &[Path::new("home")], true),
    );
}
