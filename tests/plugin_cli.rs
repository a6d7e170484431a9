//! The `stratafs plugin` process: it answers on its socket, SIGTERM ends it cleanly (socket
//! removed), and after a SIGKILL a new process replaces the stale socket and resumes the last
//! Init, so a dockerd that is still running keeps working. No mounts are made here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

struct Plugin {
    child: Child,
}

impl Plugin {
    fn start(socket: &Path, state: &Path) -> Plugin {
        let child = Command::new(env!("CARGO_BIN_EXE_stratafs"))
            .args(["plugin", "--driver", "stratafs", "--socket"])
            .arg(socket)
            .arg("--state")
            .arg(state)
            .env_remove("STRATAFS_DRIVER")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("starting stratafs plugin");
        let p = Plugin { child };
        wait_for(|| socket.exists() && std::os::unix::net::UnixStream::connect(socket).is_ok());
        p
    }

    fn signal(&mut self, sig: &str) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "plugin ignored SIG{sig}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One plugin call through a real HTTP client; returns the JSON reply.
fn call(socket: &Path, path: &str, body: Value) -> Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::post(path)
            .header("Content-Type", "application/vnd.docker.plugins.v1.2+json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        serde_json::from_slice(&bytes).expect("JSON reply")
    })
}

fn paths(tmp: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        tmp.join("plugins/stratafs.sock"),
        tmp.join("state/init.json"),
        tmp.join("data/stratafs"),
    )
}

#[test]
fn sigterm_cleans_up_and_removes_the_socket() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (socket, state, home) = paths(tmp.path());
    let mut p = Plugin::start(&socket, &state);
    assert_eq!(
        call(&socket, "/Plugin.Activate", json!({})),
        json!({"Implements": ["GraphDriver"]})
    );
    let v = call(
        &socket,
        "/GraphDriver.Init",
        json!({"Home": home, "Opts": []}),
    );
    assert!(v.get("Err").is_none(), "{v}");
    let v = call(&socket, "/GraphDriver.Create", json!({"ID": "base"}));
    assert!(v.get("Err").is_none(), "{v}");
    // Docker's Home is the store itself.
    assert!(home.join("layers/base").exists());
    let status = p.signal("TERM");
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "socket left behind");
}

#[test]
fn after_sigkill_a_new_plugin_replaces_the_socket_and_resumes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (socket, state, home) = paths(tmp.path());
    let mut p = Plugin::start(&socket, &state);
    let v = call(&socket, "/GraphDriver.Init", json!({"Home": home}));
    assert!(v.get("Err").is_none(), "{v}");
    call(&socket, "/GraphDriver.Create", json!({"ID": "base"}));
    p.signal("KILL");
    assert!(socket.exists(), "SIGKILL leaves the socket file");

    let mut p = Plugin::start(&socket, &state);
    // No Init: the running dockerd would not send one.
    let v = call(&socket, "/GraphDriver.Exists", json!({"ID": "base"}));
    assert_eq!(v, json!({"Exists": true}));
    let v = call(
        &socket,
        "/GraphDriver.CreateReadWrite",
        json!({"ID": "ctr", "Parent": "base"}),
    );
    assert!(v.get("Err").is_none(), "{v}");
    assert!(p.signal("INT").success());
}
