//! The `stratafs plugin` process: it answers on its socket, SIGTERM ends it cleanly (socket
//! removed), and after a SIGKILL a new process replaces the stale socket and resumes the last
//! Init, so a dockerd that is still running keeps working; what it logs by default. The
//! `stratafs snapshotter` process: its socket and state are root-only, and it says at start
//! what containerd's mounts will lack. No mounts are made here.

use std::os::unix::fs::MetadataExt;
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
fn sigterm_ends_it_and_removes_the_socket() {
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

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").mode() & 0o7777
}

/// Run `cmd` (a server) until `socket` answers, then SIGTERM it; returns its stderr.
fn serve_then_stop(mut cmd: Command, socket: &Path, while_up: impl FnOnce()) -> String {
    let child = cmd
        .env_remove("RUST_LOG")
        .env_remove("STRATAFS_DRIVER")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting stratafs");
    let mut p = Plugin { child };
    wait_for(|| std::os::unix::net::UnixStream::connect(socket).is_ok());
    while_up();
    assert!(p.signal("TERM").success());
    let mut err = String::new();
    if let Some(mut e) = p.child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).expect("stderr");
    }
    err
}

#[test]
fn the_plugin_says_where_it_listens_and_each_init_by_default() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (socket, state, home) = paths(tmp.path());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stratafs"));
    cmd.args(["plugin", "--driver", "stratafs", "--socket"])
        .arg(&socket)
        .arg("--state")
        .arg(&state);
    let err = serve_then_stop(cmd, &socket, || {
        for _ in 0..2 {
            let v = call(&socket, "/GraphDriver.Init", json!({"Home": home}));
            assert!(v.get("Err").is_none(), "{v}");
        }
        // Root-only: whoever connects commands a storage driver running as root.
        assert_eq!(mode(&socket), 0o600, "socket");
        assert_eq!(
            mode(socket.parent().expect("dir")),
            0o700,
            "socket directory"
        );
        assert_eq!(mode(&state), 0o600, "state file");
        assert_eq!(mode(state.parent().expect("dir")), 0o700, "state directory");
    });
    let lines = |what: &str| err.lines().filter(|l| l.contains(what)).count();
    let listening: Vec<&str> = err.lines().filter(|l| l.contains("listening")).collect();
    assert_eq!(listening.len(), 1, "{err}");
    assert!(
        listening[0].contains(&socket.display().to_string()),
        "{err}"
    );
    assert_eq!(lines("initialised"), 2, "{err}");
    assert!(err.contains(&home.display().to_string()), "{err}");
}

#[test]
fn a_plugin_does_not_resume_the_init_of_a_gone_dockerd_or_data_root() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (socket, state, _) = paths(tmp.path());
    std::fs::create_dir_all(state.parent().expect("dir")).expect("mkdir");
    let deleted = tmp.path().join("deleted-root/stratafs");
    let alive_home = tmp.path().join("data/stratafs");
    std::fs::create_dir_all(&alive_home).expect("mkdir");
    // A pid that is gone: a child that has exited and been reaped.
    let mut gone = Command::new("true").spawn().expect("true");
    let gone_pid = gone.id();
    gone.wait().expect("wait");
    for (home, dockerd, why) in [
        (&deleted, json!(null), "no longer exists"),
        (&alive_home, json!({"Pid": gone_pid, "Start": 1}), "is gone"),
    ] {
        let mut saved = json!({"Home": home, "Opts": []});
        if !dockerd.is_null() {
            saved["Dockerd"] = dockerd;
        }
        std::fs::write(&state, saved.to_string()).expect("write");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stratafs"));
        cmd.args(["plugin", "--driver", "stratafs", "--socket"])
            .arg(&socket)
            .arg("--state")
            .arg(&state);
        let err = serve_then_stop(cmd, &socket, || {
            let v = call(&socket, "/GraphDriver.Exists", json!({"ID": "x"}));
            assert!(v["Err"].as_str().is_some_and(|e| e.contains("Init")), "{v}");
        });
        assert!(err.contains("not resuming") && err.contains(why), "{err}");
        assert!(
            !tmp.path().join("deleted-root").exists(),
            "created the deleted root"
        );
        assert!(
            std::fs::read_dir(&alive_home).expect("ls").next().is_none(),
            "opened a store for a gone dockerd"
        );
    }
}

#[test]
fn the_snapshotter_is_root_only_and_says_what_containerds_mounts_lack() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let socket = tmp.path().join("run/snapshotter.sock");
    let root = tmp.path().join("state");
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_stratafs"), bin.join("stratafs"))
        .expect("symlink");
    let run = |path: String| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stratafs"));
        cmd.arg("--root")
            .arg(&root)
            .args(["snapshotter", "--socket"])
            .arg(&socket)
            .env("PATH", path);
        serve_then_stop(cmd, &socket, || {
            assert_eq!(mode(&socket), 0o600, "socket");
            assert_eq!(
                mode(socket.parent().expect("dir")),
                0o700,
                "socket directory"
            );
            assert_eq!(mode(&root), 0o700, "state directory");
        })
    };
    // No stratafs on the PATH containerd inherits: said at start.
    let err = run("/usr/sbin:/usr/bin:/sbin:/bin".into());
    assert!(err.contains("stratafs is not on the PATH"), "{err}");
    assert!(!err.contains("mount.fuse3 is not"), "{err}");
    assert!(err.contains("snapshotter listening"), "{err}");
    // With it there, nothing to say.
    let err = run(format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()));
    assert!(!err.contains("not on the PATH"), "{err}");
}
