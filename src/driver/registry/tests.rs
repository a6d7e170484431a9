//! Every branch of driver selection, with fake drivers in temporary roots.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::*;
use crate::driver::{Capabilities, Change, CreateOpts, FileGetter};

/// A driver that only knows its name; every operation is refused.
struct Fake(&'static str);

fn refused<T>() -> Result<T> {
    Err(Error::NotSupported("fake driver".into()))
}

impl Driver for Fake {
    fn name(&self) -> &'static str {
        self.0
    }
    fn create(&self, _: &str, _: Option<&str>, _: &CreateOpts) -> Result<()> {
        refused()
    }
    fn create_read_write(&self, _: &str, _: Option<&str>, _: &CreateOpts) -> Result<()> {
        refused()
    }
    fn remove(&self, _: &str) -> Result<()> {
        refused()
    }
    fn get(&self, _: &str, _: &str) -> Result<PathBuf> {
        refused()
    }
    fn put(&self, _: &str) -> Result<()> {
        refused()
    }
    fn exists(&self, _: &str) -> bool {
        false
    }
    fn status(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    fn get_metadata(&self, _: &str) -> Result<BTreeMap<String, String>> {
        refused()
    }
    fn cleanup(&self) -> Result<()> {
        Ok(())
    }
    fn diff(&self, _: &str, _: Option<&str>, _: &mut dyn Write) -> Result<()> {
        refused()
    }
    fn changes(&self, _: &str, _: Option<&str>) -> Result<Vec<Change>> {
        refused()
    }
    fn apply_diff(&self, _: &str, _: Option<&str>, _: &mut dyn Read) -> Result<u64> {
        refused()
    }
    fn diff_size(&self, _: &str, _: Option<&str>) -> Result<u64> {
        refused()
    }
    fn diff_getter(&self, _: &str) -> Result<Box<dyn FileGetter>> {
        refused()
    }
    fn is_mounted(&self, _: &Path) -> bool {
        false
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
}

/// How a fake constructor behaves.
#[derive(Clone, Copy)]
enum Outcome {
    Works,
    NotSupported,
    Prerequisites,
    BackingFs,
    /// An error that is not one of the three "unavailable" kinds.
    Broken,
}

impl Outcome {
    fn result(self, name: &'static str) -> Result<Box<dyn Driver>> {
        match self {
            Outcome::Works => Ok(Box::new(Fake(name))),
            Outcome::NotSupported => Err(Error::NotSupported(name.into())),
            Outcome::Prerequisites => Err(Error::PrerequisitesNotSatisfied(name.into())),
            Outcome::BackingFs => Err(Error::BackingFsUnsupported(name.into())),
            Outcome::Broken => Err(Error::io(
                name,
                std::io::Error::from_raw_os_error(libc::EACCES),
            )),
        }
    }
}

/// A registry of fakes that records which constructors ran, in order.
struct Harness {
    reg: Registry,
    calls: Arc<Mutex<Vec<&'static str>>>,
    root: tempfile::TempDir,
}

impl Harness {
    fn new(drivers: &[(&'static str, u32, Outcome)]) -> Self {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut reg = Registry::new();
        for &(name, prio, outcome) in drivers {
            let calls = calls.clone();
            reg.register(name, prio, move |_cfg| {
                calls.lock().unwrap().push(name);
                outcome.result(name)
            })
            .unwrap();
        }
        Harness {
            reg,
            calls,
            root: tempfile::tempdir().unwrap(),
        }
    }

    fn cfg(&self) -> DriverConfig {
        DriverConfig {
            root: self.root.path().to_path_buf(),
            ..Default::default()
        }
    }

    /// Leave state of driver `name` in the root: a non-empty `<root>/<name>`.
    fn state(&self, name: &str) {
        let d = self.root.path().join(name);
        std::fs::create_dir_all(d.join("layers")).unwrap();
    }

    fn auto(&self) -> Result<Box<dyn Driver>> {
        self.reg.new_driver(None, &self.cfg())
    }

    fn calls(&self) -> Vec<&'static str> {
        self.calls.lock().unwrap().clone()
    }
}

fn name_of(r: Result<Box<dyn Driver>>) -> &'static str {
    match r {
        Ok(d) => d.name(),
        Err(e) => panic!("expected a driver, got error: {e}"),
    }
}

#[test]
fn duplicate_registration_is_refused() {
    let mut h = Harness::new(&[("a", 1, Outcome::Works)]);
    let err = h.reg.register("a", 2, |_| Outcome::Works.result("a"));
    assert!(matches!(err, Err(Error::DuplicateDriver(ref n)) if n == "a"));
    assert_eq!(h.reg.names(), ["a"]);
}

#[test]
fn get_by_name_gives_that_driver() {
    let h = Harness::new(&[("a", 1, Outcome::Works), ("b", 2, Outcome::Works)]);
    assert_eq!(name_of(h.reg.get("b", &h.cfg())), "b");
    assert_eq!(h.calls(), ["b"]);
}

#[test]
fn get_by_name_returns_the_drivers_own_error() {
    let h = Harness::new(&[("a", 1, Outcome::Prerequisites)]);
    assert!(matches!(
        h.reg.get("a", &h.cfg()),
        Err(Error::PrerequisitesNotSatisfied(_))
    ));
}

#[test]
fn unknown_name_without_plugin_is_unknown_driver() {
    let h = Harness::new(&[("a", 1, Outcome::Works)]);
    assert!(matches!(h.reg.get("zfs", &h.cfg()), Err(Error::UnknownDriver(ref n)) if n == "zfs"));
}

#[test]
fn unknown_name_falls_back_to_plugin_lookup() {
    let mut h = Harness::new(&[("a", 1, Outcome::Works)]);
    h.reg
        .set_plugin_lookup(|name, _| (name == "plug").then(|| Outcome::Works.result("plug")));
    assert_eq!(name_of(h.reg.get("plug", &h.cfg())), "plug");
    assert!(matches!(
        h.reg.get("other", &h.cfg()),
        Err(Error::UnknownDriver(_))
    ));
    // A registered name wins over a plugin of the same name.
    h.reg
        .set_plugin_lookup(|_, _| Some(Err(Error::NotSupported("plugin".into()))));
    assert_eq!(name_of(h.reg.get("a", &h.cfg())), "a");
}

#[test]
fn docker_plugin_socket_is_reported_as_not_supported() {
    let plugins = tempfile::tempdir().unwrap();
    std::fs::write(plugins.path().join("myplug.sock"), b"").unwrap();
    let mut h = Harness::new(&[]);
    h.reg
        .set_plugin_lookup(docker_plugin_lookup(plugins.path().to_path_buf()));
    match h.reg.get("myplug", &h.cfg()) {
        Err(Error::NotSupported(msg)) => {
            assert!(msg.contains("dockerd"), "{msg}");
            assert!(msg.contains("myplug.sock"), "{msg}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a plugin must not load"),
    }
    assert!(matches!(
        h.reg.get("nosock", &h.cfg()),
        Err(Error::UnknownDriver(_))
    ));
    // A name that is not a path component never looks outside the plugin directory.
    assert!(matches!(
        h.reg.get("../myplug", &h.cfg()),
        Err(Error::UnknownDriver(_))
    ));
}

#[test]
fn explicit_name_skips_automatic_choice() {
    let h = Harness::new(&[("a", 1, Outcome::Works), ("b", 2, Outcome::Works)]);
    h.state("a");
    assert_eq!(name_of(h.reg.new_driver(Some("b"), &h.cfg())), "b");
    assert_eq!(h.calls(), ["b"]);
    // An empty name means "choose".
    assert_eq!(name_of(h.reg.new_driver(Some(""), &h.cfg())), "a");
}

#[test]
fn single_prior_state_wins_over_priority() {
    let h = Harness::new(&[("first", 1, Outcome::Works), ("second", 2, Outcome::Works)]);
    h.state("second");
    assert_eq!(name_of(h.auto()), "second");
    assert_eq!(h.calls(), ["second"]);
}

#[test]
fn prior_state_that_fails_is_a_loud_error() {
    // Even an "unavailable" kind must not silently fall through to another driver.
    let h = Harness::new(&[
        ("first", 1, Outcome::Works),
        ("second", 2, Outcome::NotSupported),
    ]);
    h.state("second");
    match h.auto() {
        Err(Error::PriorDriverFailed { name, source, root }) => {
            assert_eq!(name, "second");
            assert_eq!(root, h.root.path());
            assert!(matches!(*source, Error::NotSupported(_)));
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(d) => panic!("fell through to {}", d.name()),
    }
    assert_eq!(h.calls(), ["second"]);
}

#[test]
fn several_prior_states_are_refused() {
    let h = Harness::new(&[
        ("a", 1, Outcome::Works),
        ("b", 2, Outcome::Works),
        ("c", 3, Outcome::Works),
    ]);
    h.state("a");
    h.state("c");
    match h.auto() {
        Err(Error::MultipleDriverState { drivers, .. }) => assert_eq!(drivers, ["a", "c"]),
        Err(other) => panic!("wrong error: {other}"),
        Ok(d) => panic!("chose {}", d.name()),
    }
    assert!(h.calls().is_empty(), "no driver may start: {:?}", h.calls());
}

#[test]
fn vfs_empty_dirs_and_files_are_not_prior_state() {
    let h = Harness::new(&[
        ("a", 1, Outcome::NotSupported),
        ("b", 2, Outcome::Works),
        ("vfs", 3, Outcome::Works),
        ("c", 4, Outcome::Works),
    ]);
    h.state("vfs");
    std::fs::create_dir(h.root.path().join("a")).unwrap(); // empty
    std::fs::write(h.root.path().join("c"), b"not a directory").unwrap();
    std::fs::create_dir_all(h.root.path().join("unregistered/x")).unwrap();
    assert!(h.reg.prior_drivers(h.root.path()).is_empty());
    assert_eq!(name_of(h.auto()), "b");
    assert_eq!(h.calls(), ["a", "b"]);
}

#[test]
fn priority_order_skips_the_three_unavailable_kinds() {
    // Registered out of priority order on purpose.
    let h = Harness::new(&[
        ("last", 40, Outcome::Works),
        ("backing", 30, Outcome::BackingFs),
        ("nosup", 10, Outcome::NotSupported),
        ("prereq", 20, Outcome::Prerequisites),
    ]);
    assert_eq!(h.reg.names(), ["nosup", "prereq", "backing", "last"]);
    assert_eq!(name_of(h.auto()), "last");
    assert_eq!(h.calls(), ["nosup", "prereq", "backing", "last"]);
}

#[test]
fn equal_priorities_keep_registration_order() {
    let h = Harness::new(&[("x", 5, Outcome::Works), ("y", 5, Outcome::Works)]);
    assert_eq!(name_of(h.auto()), "x");
}

#[test]
fn other_errors_stop_the_search() {
    let h = Harness::new(&[
        ("nosup", 1, Outcome::NotSupported),
        ("broken", 2, Outcome::Broken),
        ("fine", 3, Outcome::Works),
    ]);
    assert!(matches!(h.auto(), Err(Error::Io { .. })));
    assert_eq!(h.calls(), ["nosup", "broken"]);
}

#[test]
fn nothing_works_is_no_supported_backend() {
    let h = Harness::new(&[
        ("a", 1, Outcome::NotSupported),
        ("b", 2, Outcome::Prerequisites),
        ("c", 3, Outcome::BackingFs),
    ]);
    assert!(matches!(h.auto(), Err(Error::NoSupportedBackend)));
    assert_eq!(h.calls(), ["a", "b", "c"]);
    assert!(matches!(
        Harness::new(&[]).auto(),
        Err(Error::NoSupportedBackend)
    ));
}

#[test]
fn missing_root_has_no_prior_state() {
    let h = Harness::new(&[("a", 1, Outcome::Works)]);
    let cfg = DriverConfig {
        root: h.root.path().join("does/not/exist"),
        ..Default::default()
    };
    assert_eq!(name_of(h.reg.new_driver(None, &cfg)), "a");
}

#[test]
fn default_registry_order() {
    let r = default_registry();
    assert_eq!(r.names(), ["stratafs", "vfs"]);
    let root = tempfile::tempdir().unwrap();
    let cfg = DriverConfig {
        root: root.path().to_path_buf(),
        ..Default::default()
    };
    assert!(matches!(
        r.get("nonesuch", &cfg),
        Err(Error::UnknownDriver(_))
    ));
}
