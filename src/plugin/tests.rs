//! The server driven through a real unix socket by a real HTTP client (hyper), over a small
//! plain-directory driver that lets the tests observe streaming, concurrency and cleanup.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::{Condvar, Mutex};
use serde_json::{json, Value};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;
use crate::archive::files_tar;
use crate::driver::{Capabilities, Change, ChangeKind, CreateOpts, FileGetter, IdMap};

const BIG: u64 = 64 << 20;

/// A driver whose layers are plain directories (no union); special ids trigger test behaviour:
/// `slow` blocks `get` until the gate opens, `big` diffs to BIG zero bytes, `broken-early` /
/// `broken-late` fail `diff` before / after writing, `count*` layers count what `apply_diff`
/// reads instead of unpacking it.
#[derive(Default)]
struct DirDriver {
    root: PathBuf,
    parents: Mutex<BTreeMap<String, Option<String>>>,
    mounts: Mutex<HashMap<String, usize>>,
    cleanups: AtomicUsize,
    stale_releases: AtomicUsize,
    gate: (Mutex<bool>, Condvar),
    diff_written: AtomicU64,
    apply_read: AtomicU64,
}

impl DirDriver {
    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn open_gate(&self) {
        *self.gate.0.lock() = true;
        self.gate.1.notify_all();
    }

    fn must_exist(&self, id: &str) -> crate::Result<()> {
        if self.parents.lock().contains_key(id) {
            Ok(())
        } else {
            Err(Error::LayerNotFound(id.to_string()))
        }
    }

    fn files(&self, id: &str) -> crate::Result<Vec<(String, u64)>> {
        self.must_exist(id)?;
        let dir = self.dir(id);
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).ctx(|| format!("reading {}", dir.display()))? {
            let e = e.ctx(|| "reading entry")?;
            let len = e.metadata().ctx(|| "stat")?.len();
            out.push((e.file_name().to_string_lossy().into_owned(), len));
        }
        out.sort();
        Ok(out)
    }

    fn make(&self, id: &str, parent: Option<&str>, opts: &CreateOpts) -> crate::Result<()> {
        if let Some(k) = opts.storage_opt.keys().next() {
            return Err(Error::UnknownStorageOpt(k.clone()));
        }
        let mut parents = self.parents.lock();
        if parents.contains_key(id) {
            return Err(Error::LayerExists(id.into()));
        }
        if let Some(p) = parent {
            if !parents.contains_key(p) {
                return Err(Error::ParentNotFound {
                    id: id.into(),
                    parent: p.into(),
                });
            }
        }
        std::fs::create_dir(self.dir(id)).ctx(|| "mkdir")?;
        parents.insert(id.into(), parent.map(str::to_string));
        Ok(())
    }
}

impl Driver for DirDriver {
    fn name(&self) -> &'static str {
        "dirs"
    }
    fn create(&self, id: &str, parent: Option<&str>, opts: &CreateOpts) -> crate::Result<()> {
        self.make(id, parent, opts)
    }
    fn create_read_write(
        &self,
        id: &str,
        parent: Option<&str>,
        opts: &CreateOpts,
    ) -> crate::Result<()> {
        self.make(id, parent, opts)
    }
    fn remove(&self, id: &str) -> crate::Result<()> {
        self.must_exist(id)?;
        if self.mounts.lock().get(id).copied().unwrap_or(0) > 0 {
            return Err(Error::Mounted {
                id: id.into(),
                path: self.dir(id),
            });
        }
        let mut parents = self.parents.lock();
        let children: Vec<String> = parents
            .iter()
            .filter(|(_, p)| p.as_deref() == Some(id))
            .map(|(c, _)| c.clone())
            .collect();
        if !children.is_empty() {
            return Err(Error::HasChildren {
                id: id.into(),
                children,
            });
        }
        parents.remove(id);
        std::fs::remove_dir_all(self.dir(id)).ctx(|| "rm")
    }
    fn get(&self, id: &str, _mount_label: &str) -> crate::Result<PathBuf> {
        if id == "slow" {
            // Bounded, so a server that runs driver calls on its async worker fails the test
            // (the gate is never opened in time) instead of hanging it.
            let mut open = self.gate.0.lock();
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while !*open && !self.gate.1.wait_until(&mut open, deadline).timed_out() {}
            if !*open {
                return Err(Error::NotSupported("gate never opened".into()));
            }
        }
        self.must_exist(id)?;
        *self.mounts.lock().entry(id.into()).or_default() += 1;
        Ok(self.dir(id))
    }
    fn put(&self, id: &str) -> crate::Result<()> {
        if let Some(n) = self.mounts.lock().get_mut(id) {
            *n = n.saturating_sub(1);
        }
        Ok(())
    }
    fn exists(&self, id: &str) -> bool {
        self.parents.lock().contains_key(id)
    }
    fn status(&self) -> Vec<(String, String)> {
        vec![("Layers".into(), self.parents.lock().len().to_string())]
    }
    fn get_metadata(&self, id: &str) -> crate::Result<BTreeMap<String, String>> {
        self.must_exist(id)?;
        Ok([("Dir".to_string(), self.dir(id).display().to_string())].into())
    }
    fn cleanup(&self) -> crate::Result<()> {
        self.cleanups.fetch_add(1, Ordering::SeqCst);
        self.mounts.lock().clear();
        Ok(())
    }
    fn release_stale(&self) -> crate::Result<()> {
        self.stale_releases.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn diff(&self, id: &str, _parent: Option<&str>, out: &mut dyn Write) -> crate::Result<()> {
        let chunk = [0u8; 8192];
        match id {
            "broken-early" => Err(Error::CorruptLayer {
                id: id.into(),
                reason: "broken before writing".into(),
            }),
            "broken-late" | "big" => {
                let total = if id == "big" { BIG } else { 1 << 20 };
                while self.diff_written.load(Ordering::SeqCst) < total {
                    out.write_all(&chunk).ctx(|| "writing diff")?;
                    self.diff_written
                        .fetch_add(chunk.len() as u64, Ordering::SeqCst);
                }
                if id == "big" {
                    out.flush().ctx(|| "flushing diff")
                } else {
                    Err(Error::CorruptLayer {
                        id: id.into(),
                        reason: "broken halfway".into(),
                    })
                }
            }
            _ => {
                self.must_exist(id)?;
                let mut b = tar::Builder::new(out);
                b.append_dir_all(".", self.dir(id)).ctx(|| "tar")?;
                b.finish().ctx(|| "tar")
            }
        }
    }
    fn changes(&self, id: &str, _parent: Option<&str>) -> crate::Result<Vec<Change>> {
        Ok(self
            .files(id)?
            .into_iter()
            .map(|(name, _)| Change {
                kind: if name.starts_with("mod-") {
                    ChangeKind::Modify
                } else if name.starts_with("del-") {
                    ChangeKind::Delete
                } else {
                    ChangeKind::Add
                },
                path: format!("/{name}"),
            })
            .collect())
    }
    fn apply_diff(
        &self,
        id: &str,
        _parent: Option<&str>,
        diff: &mut dyn Read,
    ) -> crate::Result<u64> {
        self.must_exist(id)?;
        if id.starts_with("count") {
            let mut buf = [0u8; 4096];
            loop {
                let n = diff.read(&mut buf).ctx(|| "reading diff")?;
                if n == 0 {
                    return Ok(self.apply_read.load(Ordering::SeqCst));
                }
                self.apply_read.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
        tar::Archive::new(diff)
            .unpack(self.dir(id))
            .map_err(|e| Error::MalformedArchive {
                entry: None,
                reason: e.to_string(),
            })?;
        self.diff_size(id, None)
    }
    fn diff_size(&self, id: &str, _parent: Option<&str>) -> crate::Result<u64> {
        Ok(self.files(id)?.iter().map(|(_, n)| n).sum())
    }
    fn diff_getter(&self, _id: &str) -> crate::Result<Box<dyn FileGetter>> {
        Err(Error::NotSupported("no getter".into()))
    }
    fn is_mounted(&self, _path: &Path) -> bool {
        false
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            deterministic_diffs: true,
            reproduces_exact_diffs: false,
        }
    }
}

/// A running server on a socket in a temporary directory.
struct Harness {
    _tmp: tempfile::TempDir,
    socket: PathBuf,
    driver: Arc<DirDriver>,
    inits: Arc<Mutex<Vec<InitParams>>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<crate::Result<()>>,
    server: Arc<Server>,
}

impl Harness {
    async fn start() -> Harness {
        Self::start_with(None).await
    }

    /// A server with a state file; it resumes the Init kept there before serving.
    async fn start_with(state_file: Option<PathBuf>) -> Harness {
        let tmp = tempfile::tempdir().expect("tempdir");
        let socket = tmp.path().join("run/plugins/test.sock");
        let layers = tmp.path().join("layers");
        std::fs::create_dir(&layers).expect("mkdir");
        let driver = Arc::new(DirDriver {
            root: layers,
            ..Default::default()
        });
        let inits = Arc::new(Mutex::new(Vec::new()));
        let (d, i) = (driver.clone(), inits.clone());
        let factory: DriverFactory = Arc::new(move |p: &InitParams| {
            i.lock().push(p.clone());
            if p.home.ends_with("refuse") {
                return Err(Error::NotSupported("refused by test".into()));
            }
            let driver: Arc<dyn Driver> = d.clone();
            Ok(driver)
        });
        let listener = bind(&socket).expect("bind");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = Server::with_state_file(factory, state_file);
        server.resume().await;
        let task = tokio::spawn(server.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        Harness {
            _tmp: tmp,
            socket,
            driver,
            inits,
            stop: Some(stop),
            task,
            server,
        }
    }

    async fn send<B>(&self, path: &str, body: B) -> Response<Incoming>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = UnixStream::connect(&self.socket).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::post(path)
            .header("Host", "plugin")
            .header("Content-Type", proto::MEDIA_TYPE)
            .body(body)
            .expect("request");
        sender.send_request(req).await.expect("response")
    }

    async fn post(&self, path: &str, body: impl Into<Bytes>) -> (StatusCode, Bytes) {
        let resp = self.send(path, Full::new(body.into())).await;
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, body)
    }

    /// A JSON call; returns the status and the parsed reply.
    async fn call(&self, method: &str, args: Value) -> (StatusCode, Value) {
        let (status, body) = self
            .post(&format!("/GraphDriver.{method}"), args.to_string())
            .await;
        let v = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{method}: reply {body:?} is not JSON: {e}"));
        (status, v)
    }

    /// A call that must succeed (200, no Err).
    async fn ok(&self, method: &str, args: Value) -> Value {
        let (status, v) = self.call(method, args).await;
        assert_eq!(status, StatusCode::OK, "{method}: {v}");
        assert!(v.get("Err").is_none(), "{method} failed: {v}");
        v
    }

    /// A call that must fail with `Err` containing `needle`.
    async fn fails(&self, method: &str, args: Value, needle: &str) {
        let (_, v) = self.call(method, args).await;
        let err = v["Err"].as_str().unwrap_or_default();
        assert!(
            err.contains(needle),
            "{method}: expected {needle:?}, got {v}"
        );
    }

    async fn init(&self) {
        self.ok("Init", json!({"Home": "/var/lib/docker/stratafs"}))
            .await;
    }

    async fn alive(&self) {
        let (status, body) = self.post("/Plugin.Activate", "").await;
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v, json!({"Implements": ["GraphDriver"]}));
    }

    async fn stop(mut self) -> Arc<DirDriver> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = &mut self.task;
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("server did not stop")
            .expect("server task panicked")
            .expect("serve failed");
        self.driver.clone()
    }
}

fn tar_names(data: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(data);
    let mut names: Vec<String> = a
        .entries()
        .expect("entries")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .display()
                .to_string()
        })
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn activate_init_capabilities_status() {
    let h = Harness::start().await;
    h.alive().await;
    // Before Init there is no driver; the server says so and keeps running.
    h.fails("Exists", json!({"ID": "a"}), "Init").await;
    h.alive().await;

    let maps = json!([{"container_id": 0, "host_id": 100000, "size": 65536}]);
    h.ok(
        "Init",
        json!({"Home": "/var/lib/docker/stratafs", "Opts": ["a=b"], "UIDMaps": maps, "GIDMaps": null}),
    )
    .await;
    {
        let inits = h.inits.lock();
        assert_eq!(inits.len(), 1);
        assert_eq!(inits[0].home, Path::new("/var/lib/docker/stratafs"));
        assert_eq!(inits[0].options, vec!["a=b".to_string()]);
        assert_eq!(
            inits[0].id_mappings.uids,
            vec![IdMap {
                container_id: 0,
                host_id: 100000,
                size: 65536
            }]
        );
        assert!(inits[0].id_mappings.gids.is_empty());
    }
    // Stale mounts of an earlier run are released right after constructing; live ones kept.
    assert_eq!(h.driver.stale_releases.load(Ordering::SeqCst), 1);
    assert_eq!(h.driver.cleanups.load(Ordering::SeqCst), 0);

    // The fake's diff is deterministic, but it cannot give back an imported tar byte for byte,
    // which is what Docker's flag promises (it would skip tar-split and fail `docker save`).
    assert!(h.driver.capabilities().deterministic_diffs);
    let v = h.ok("Capabilities", json!({})).await;
    assert_eq!(v, json!({"Capabilities": {"ReproducesExactDiffs": false}}));
    // Docker sends parameterless calls with an empty body.
    let (status, body) = h.post("/GraphDriver.Status", "").await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v, json!({"Status": [["Layers", "0"]]}));

    // A second Init of the same home (dockerd restarted) hands the mounts over to the new
    // driver: nothing is unmounted, only the dead ones released.
    h.init().await;
    assert_eq!(h.driver.cleanups.load(Ordering::SeqCst), 0);
    assert_eq!(h.driver.stale_releases.load(Ordering::SeqCst), 2);
    // One of another home releases everything the old driver holds.
    h.ok("Init", json!({"Home": "/var/lib/docker2/stratafs"}))
        .await;
    assert_eq!(h.driver.cleanups.load(Ordering::SeqCst), 1);
    assert_eq!(h.driver.stale_releases.load(Ordering::SeqCst), 3);
    h.stop().await;
}

#[tokio::test]
async fn init_errors_are_reported() {
    let h = Harness::start().await;
    h.fails("Init", json!({"Home": "/x/refuse"}), "refused by test")
        .await;
    h.fails(
        "Init",
        json!({"Home": "/x/stratafs", "UIDMaps": [{"container_id": 0, "host_id": 1, "size": 0}]}),
        "size 0",
    )
    .await;
    // Neither failure left a driver behind.
    h.fails("Exists", json!({"ID": "a"}), "Init").await;
    h.alive().await;
    h.stop().await;
}

#[tokio::test]
async fn layer_lifecycle_and_error_paths() {
    let h = Harness::start().await;
    h.init().await;
    h.ok(
        "Create",
        json!({"ID": "base", "Parent": "", "MountLabel": ""}),
    )
    .await;
    h.fails("Create", json!({"ID": "base"}), "already exists")
        .await;
    h.fails("Create", json!({"ID": "x", "Parent": "nope"}), "nope")
        .await;
    h.fails(
        "Create",
        json!({"ID": "x", "StorageOpt": {"size": "1G"}}),
        "size",
    )
    .await;
    h.ok(
        "CreateReadWrite",
        json!({"ID": "ctr", "Parent": "base", "StorageOpt": null}),
    )
    .await;
    assert_eq!(
        h.ok("Exists", json!({"ID": "ctr"})).await,
        json!({"Exists": true})
    );
    assert_eq!(
        h.ok("Exists", json!({"ID": "zz"})).await,
        json!({"Exists": false})
    );

    let v = h.ok("Get", json!({"ID": "ctr", "MountLabel": ""})).await;
    let dir = PathBuf::from(v["Dir"].as_str().expect("Dir"));
    assert_eq!(dir, h.driver.dir("ctr"));
    h.fails("Get", json!({"ID": "zz"}), "does not exist").await;
    h.fails("Remove", json!({"ID": "ctr"}), "mounted").await;
    h.fails("Remove", json!({"ID": "base"}), "children").await;

    std::fs::write(dir.join("added"), b"12345").expect("write");
    std::fs::write(dir.join("mod-etc"), b"1").expect("write");
    std::fs::write(dir.join("del-gone"), b"").expect("write");
    let v = h
        .ok("Changes", json!({"ID": "ctr", "Parent": "base"}))
        .await;
    assert_eq!(
        v,
        json!({"Changes": [
            {"Path": "/added", "Kind": 1},
            {"Path": "/del-gone", "Kind": 2},
            {"Path": "/mod-etc", "Kind": 0},
        ]})
    );
    assert_eq!(
        h.ok("DiffSize", json!({"ID": "ctr", "Parent": "base"}))
            .await,
        json!({"Size": 6})
    );
    h.fails("DiffSize", json!({"ID": "zz"}), "zz").await;
    let v = h.ok("GetMetadata", json!({"ID": "ctr"})).await;
    assert_eq!(v["Metadata"]["Dir"], json!(dir.display().to_string()));
    h.fails("GetMetadata", json!({"ID": "zz"}), "zz").await;

    h.ok("Put", json!({"ID": "ctr"})).await;
    h.ok("Remove", json!({"ID": "ctr"})).await;
    h.ok("Remove", json!({"ID": "base"})).await;
    assert_eq!(
        h.ok("Exists", json!({"ID": "base"})).await,
        json!({"Exists": false})
    );
    h.ok("Cleanup", json!({})).await;
    assert_eq!(h.driver.cleanups.load(Ordering::SeqCst), 1);
    h.alive().await;
    h.stop().await;
}

#[tokio::test]
async fn protocol_errors_keep_the_server_up() {
    let h = Harness::start().await;
    h.init().await;
    let (status, body) = h.post("/GraphDriver.Create", "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("parsing request body"));
    let (status, _) = h.post("/GraphDriver.Frobnicate", "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h.post("/Nothing", "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    h.alive().await;
    h.stop().await;
}

#[tokio::test]
async fn apply_diff_then_diff_round_trip() {
    let h = Harness::start().await;
    h.init().await;
    h.ok("Create", json!({"ID": "l1"})).await;
    let tar = files_tar(&[("etc/hostname", b"box\n"), ("bin/sh", b"#!")]);
    let (status, body) = h.post("/GraphDriver.ApplyDiff?id=l1&parent=", tar).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).expect("json");
    // The fake counts top-level entries' sizes: two directories.
    assert!(v.get("Err").is_none(), "{v}");
    assert!(v["Size"].is_u64(), "{v}");
    assert_eq!(
        std::fs::read(h.driver.dir("l1").join("etc/hostname")).expect("unpacked"),
        b"box\n"
    );

    let resp = h
        .send(
            "/GraphDriver.Diff",
            Full::new(Bytes::from(json!({"ID": "l1"}).to_string())),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let data = resp.into_body().collect().await.expect("body").to_bytes();
    let names = tar_names(&data);
    assert!(
        names.iter().any(|n| n.ends_with("etc/hostname")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.ends_with("bin/sh")), "{names:?}");

    // A query with percent-encoding is decoded.
    h.ok("Create", json!({"ID": "l 2", "Parent": "l1"})).await;
    let (status, body) = h
        .post(
            "/GraphDriver.ApplyDiff?id=l%202&parent=l1",
            files_tar(&[("x", b"1")]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert!(h.driver.dir("l 2").join("x").exists());
    h.stop().await;
}

#[tokio::test]
async fn apply_diff_errors() {
    let h = Harness::start().await;
    let (_, body) = h.post("/GraphDriver.ApplyDiff?id=a", "x").await;
    assert!(String::from_utf8_lossy(&body).contains("Init"));
    h.init().await;
    // Unknown layer: the body is refused but drained, the reply says why.
    let (status, body) = h
        .post("/GraphDriver.ApplyDiff?id=ghost", vec![7u8; 300_000])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("ghost"), "{body:?}");
    // A corrupt archive.
    h.ok("Create", json!({"ID": "l1"})).await;
    let mut bad = files_tar(&[("a", b"hello")]);
    bad[148..156].copy_from_slice(b"9999999\0"); // break the header checksum
    let (_, body) = h.post("/GraphDriver.ApplyDiff?id=l1", bad).await;
    assert!(
        String::from_utf8_lossy(&body).contains("malformed archive"),
        "{body:?}"
    );
    h.alive().await;
    h.stop().await;
}

#[tokio::test]
async fn diff_streams_with_back_pressure() {
    let h = Harness::start().await;
    h.init().await;
    let resp = h
        .send(
            "/GraphDriver.Diff",
            Full::new(Bytes::from(r#"{"ID":"big"}"#)),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = body
        .frame()
        .await
        .expect("a frame")
        .expect("frame ok")
        .into_data()
        .expect("data");
    let mut total = first.len() as u64;
    // While the client does not read, the driver must stall: only a few chunks are buffered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = h.driver.diff_written.load(Ordering::SeqCst);
    assert!(written < 8 << 20, "driver ran ahead by {written} bytes");
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            assert!(data.iter().all(|&b| b == 0));
            total += data.len() as u64;
        }
    }
    assert_eq!(total, BIG);
    h.stop().await;
}

#[tokio::test]
async fn apply_diff_consumes_the_body_as_it_arrives() {
    let h = Harness::start().await;
    h.init().await;
    h.ok("Create", json!({"ID": "count"})).await;
    let (mut tx, body) = Channel::<Bytes, std::convert::Infallible>::new(2);
    let request = h.send("/GraphDriver.ApplyDiff?id=count&parent=", body);
    let driver = h.driver.clone();
    let feeder = async move {
        tx.send_data(Bytes::from(vec![1u8; 1 << 20]))
            .await
            .expect("send");
        // The driver sees the first MiB before the upload is complete.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while driver.apply_read.load(Ordering::SeqCst) < 1 << 20 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "driver saw nothing yet"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for _ in 0..3 {
            tx.send_data(Bytes::from(vec![2u8; 1 << 20]))
                .await
                .expect("send");
        }
        drop(tx);
    };
    let (resp, ()) = tokio::join!(request, feeder);
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v, json!({"Size": 4 << 20}));
    h.stop().await;
}

#[tokio::test]
async fn diff_failures() {
    let h = Harness::start().await;
    h.init().await;
    // Failing before any byte: an error reply, not an empty tar.
    let resp = h
        .send(
            "/GraphDriver.Diff",
            Full::new(Bytes::from(r#"{"ID":"broken-early"}"#)),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("broken before writing"));
    // Failing halfway: the stream breaks instead of ending like a complete tar.
    let resp = h
        .send(
            "/GraphDriver.Diff",
            Full::new(Bytes::from(r#"{"ID":"broken-late"}"#)),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.into_body().collect().await.is_err(),
        "a broken diff must not look complete"
    );
    h.alive().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn requests_are_served_concurrently() {
    let h = Harness::start().await;
    h.init().await;
    h.ok("Create", json!({"ID": "slow"})).await;
    let socket = h.socket.clone();
    // A Get that blocks inside the driver...
    let slow = tokio::spawn(async move {
        let stream = UnixStream::connect(&socket).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::post("/GraphDriver.Get")
            .body(Full::new(Bytes::from(r#"{"ID":"slow"}"#)))
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        resp.into_body().collect().await.expect("body").to_bytes()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...does not keep other calls waiting, even with one async worker.
    let quick = tokio::time::timeout(
        Duration::from_secs(5),
        h.ok("Exists", json!({"ID": "slow"})),
    )
    .await
    .expect("a blocked driver call stalled the server");
    assert_eq!(quick, json!({"Exists": true}));
    assert!(!slow.is_finished());
    h.driver.open_gate();
    let body = tokio::time::timeout(Duration::from_secs(5), slow)
        .await
        .expect("slow call never finished")
        .expect("task");
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert!(
        v["Dir"].as_str().is_some_and(|d| d.ends_with("slow")),
        "{v}"
    );
    h.stop().await;
}

#[tokio::test]
async fn shutdown_keeps_a_running_dockerds_mounts_and_cleans_up_after_a_gone_one() {
    // Init from this test process, a dockerd that still runs when the plugin stops: its
    // containers' mounts stay for the next plugin process.
    let h = Harness::start().await;
    h.init().await;
    h.ok("Create", json!({"ID": "a"})).await;
    h.ok("Get", json!({"ID": "a"})).await;
    let driver = h.stop().await;
    assert_eq!(driver.stale_releases.load(Ordering::SeqCst), 1);
    assert_eq!(driver.cleanups.load(Ordering::SeqCst), 0);
    assert_eq!(driver.mounts.lock().len(), 1);

    // Init from a dockerd that is gone by then: everything is unmounted.
    let h = Harness::start().await;
    let me = state::Peer::of(std::process::id() as i32).expect("own pid");
    let gone = state::Peer {
        start: me.start + 1,
        ..me
    };
    let req = proto::InitRequest {
        home: "/var/lib/docker/stratafs".into(),
        ..Default::default()
    };
    h.server.init_driver(req, Some(gone)).await.expect("init");
    h.ok("Create", json!({"ID": "a"})).await;
    h.ok("Get", json!({"ID": "a"})).await;
    let driver = h.stop().await;
    assert_eq!(driver.cleanups.load(Ordering::SeqCst), 1);
    assert!(driver.mounts.lock().is_empty());
}

#[tokio::test]
async fn a_restarted_plugin_resumes_the_last_init() {
    let state_dir = tempfile::tempdir().expect("tempdir");
    let state = state_dir.path().join("run/plugin-init.json");
    let home = state_dir.path().join("data/stratafs");
    std::fs::create_dir_all(&home).expect("mkdir");
    let h = Harness::start_with(Some(state.clone())).await;
    let maps = json!([{"container_id": 0, "host_id": 1000, "size": 10}]);
    h.ok(
        "Init",
        json!({"Home": home, "UIDMaps": maps, "GIDMaps": maps}),
    )
    .await;
    h.stop().await;
    assert!(state.exists());
    let mode = |p: &Path| {
        std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(p).expect("stat")) & 0o7777
    };
    assert_eq!(mode(&state), 0o600, "state file mode");
    assert_eq!(
        mode(state.parent().expect("dir")),
        0o700,
        "state directory mode"
    );
    // It names who sent the Init (this test, as dockerd).
    let kept: Value = serde_json::from_slice(&std::fs::read(&state).expect("read")).expect("json");
    assert_eq!(kept["Dockerd"]["Pid"], json!(std::process::id()));

    // The next run serves at once, without an Init from Docker, and has already released what
    // was stale (and nothing else).
    let h = Harness::start_with(Some(state.clone())).await;
    assert_eq!(h.driver.stale_releases.load(Ordering::SeqCst), 1);
    assert_eq!(h.driver.cleanups.load(Ordering::SeqCst), 0);
    {
        let inits = h.inits.lock();
        assert_eq!(inits.len(), 1);
        assert_eq!(inits[0].home, home);
        assert_eq!(inits[0].id_mappings.gids[0].host_id, 1000);
    }
    h.ok("Create", json!({"ID": "a"})).await;
    h.stop().await;

    // A saved Init of a dockerd that is gone or of a deleted home is not resumed: see
    // state.rs and tests/plugin_cli.rs.

    // An unreadable state file is ignored: the plugin waits for Docker's Init.
    std::fs::write(&state, b"{broken").expect("write");
    let h = Harness::start_with(Some(state.clone())).await;
    h.fails("Exists", json!({"ID": "a"}), "Init").await;
    h.init().await;
    h.ok("Create", json!({"ID": "a"})).await;
    h.stop().await;
    // A successful Init rewrote it.
    let kept: Value = serde_json::from_slice(&std::fs::read(&state).expect("read")).expect("json");
    assert_eq!(kept["Home"], json!("/var/lib/docker/stratafs"));
}

#[tokio::test]
async fn bind_replaces_only_stale_sockets() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("a/b/p.sock");
    // Directory created.
    let live = bind(&path).expect("bind");
    // Root-only: whoever connects commands a storage driver running as root.
    let mode = |p: &Path| {
        std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(p).expect("stat")) & 0o7777
    };
    assert_eq!(mode(&path), 0o600, "socket mode");
    assert_eq!(mode(&tmp.path().join("a")), 0o700, "created directory mode");
    assert_eq!(
        mode(&tmp.path().join("a/b")),
        0o700,
        "created directory mode"
    );
    // A live socket is not stolen.
    let err = bind(&path).expect_err("bound over a live socket");
    assert!(err.to_string().contains("listening"), "{err}");
    drop(live);
    // The file left behind is stale now and gets replaced.
    assert!(path.exists());
    let _again = bind(&path).expect("rebind over a stale socket");
    // A regular file is never removed.
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").expect("write");
    assert!(bind(&file).is_err());
    assert!(file.exists());
}

#[test]
fn store_lives_at_docker_home() {
    let p = |home: &str| InitParams {
        home: home.into(),
        ..Default::default()
    };
    let cfg = driver_config(&p("/var/lib/docker/stratafs"), "stratafs").expect("cfg");
    assert_eq!(cfg.root, Path::new("/var/lib/docker"));
    // Another driver behind the plugin keeps its state inside Home.
    let cfg = driver_config(&p("/var/lib/docker/stratafs"), "vfs").expect("cfg");
    assert_eq!(cfg.root, Path::new("/var/lib/docker/stratafs"));
    assert!(driver_config(&p("relative/stratafs"), "stratafs").is_err());
    assert!(factory_for("zfs").is_err());
}
