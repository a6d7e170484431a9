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

mod calls;
mod lifecycle;
