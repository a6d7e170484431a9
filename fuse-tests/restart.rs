//! The Docker plugin killed (SIGKILL) or stopped (SIGTERM) while a container runs, then
//! started again under the same dockerd (this test, which sends Init): the new process must
//! answer at once and keep the running container's mount (same server, same reference count)
//! until dockerd puts it.
//!
//! The "container" is a process in a mount namespace of its own, made while the view was
//! mounted: like a container's root, its copy of the mount keeps the FUSE connection (and the
//! server) alive whatever is unmounted in the host's namespace.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{stratafs_bin, MountGuard, OneLower};
use stratafs::union::mountinfo;

/// A child process killed and reaped when dropped, even when the test fails.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_plugin(socket: &Path, state: &Path) -> Proc {
    let child = Command::new(stratafs_bin())
        .args(["plugin", "--driver", "stratafs", "--socket"])
        .arg(socket)
        .arg("--state")
        .arg(state)
        .env("STRATAFS_BIN", stratafs_bin())
        .env_remove("STRATAFS_DRIVER")
        .stdin(Stdio::null())
        .spawn()
        .expect("starting stratafs plugin");
    let p = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(socket).is_err() {
        assert!(Instant::now() < deadline, "plugin never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    p
}

/// One plugin call (HTTP/1.1, one connection per call); returns the JSON reply.
fn call(socket: &Path, method: &str, body: Value) -> Value {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let body = body.to_string();
    write!(
        s,
        "POST /GraphDriver.{method} HTTP/1.1\r\nHost: plugin\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("request");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("reply");
    let (_, json) = reply.split_once("\r\n\r\n").expect("HTTP reply");
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{method}: {e}: {reply}"))
}

fn ok(socket: &Path, method: &str, body: Value) -> Value {
    let v = call(socket, method, body);
    assert!(v.get("Err").is_none(), "{method}: {v}");
    v
}

fn mount_state(layer: &Path) -> Value {
    let raw = std::fs::read(layer.join("mount.json")).expect("mount.json");
    serde_json::from_slice(&raw).expect("mount.json is JSON")
}

fn alive(pid: i64) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty()
        && stat
            .rsplit_once(") ")
            .is_some_and(|(_, r)| !r.starts_with('Z'))
}

#[test]
fn a_killed_plugin_restarted_serves_at_once_and_keeps_a_running_containers_mount() {
    restart_under_a_running_container("KILL");
}

#[test]
fn a_plugin_stopped_under_a_running_dockerd_leaves_its_mounts_to_the_next() {
    restart_under_a_running_container("TERM");
}

fn signal(p: &mut Proc, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(p.0.id().to_string())
        .status()
        .expect("kill");
    assert!(st.success());
    p.0.wait().expect("wait");
}

fn restart_under_a_running_container(sig: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let socket = tmp.path().join("plugins/stratafs.sock");
    let state = tmp.path().join("state/init.json");
    let home = tmp.path().join("data/stratafs");
    let mut plugin = start_plugin(&socket, &state);
    ok(&socket, "Init", json!({"Home": home}));
    ok(&socket, "Create", json!({"ID": "base"}));
    ok(
        &socket,
        "CreateReadWrite",
        json!({"ID": "ctr", "Parent": "base"}),
    );
    let dir = PathBuf::from(
        ok(&socket, "Get", json!({"ID": "ctr"}))["Dir"]
            .as_str()
            .expect("Dir"),
    );
    let _guard = MountGuard::new(&dir);
    std::fs::write(dir.join("hello"), "from the container\n").expect("write");
    let layer = home.join("layers/ctr");
    let server = mount_state(&layer)["pid"].as_i64().expect("pid");

    // The running container: its own mount namespace holds a copy of the view.
    let mut holder = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "cat {}/hello >/dev/null && echo ready && exec sleep 600",
            dir.display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .expect("unshare");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready");
    assert_eq!(line, "ready\n");
    let holder = Proc(holder);

    // Killed or stopped, and started again; dockerd sends no new Init.
    signal(&mut plugin, sig);
    assert!(
        alive(server),
        "SIG{sig} of the plugin stopped the container's server"
    );
    assert!(
        stratafs::union::mount::fuse_mounted(&dir),
        "SIG{sig} unmounted the view"
    );
    let mut plugin = start_plugin(&socket, &state);
    let asked = Instant::now();
    let v = ok(&socket, "Exists", json!({"ID": "ctr"}));
    let first = asked.elapsed();
    assert_eq!(v, json!({"Exists": true}));
    assert!(
        first < Duration::from_secs(5),
        "the restarted plugin answered after {first:?}"
    );

    // The container's mount is untouched: same server, same view, same count.
    assert!(alive(server), "the running container's server was stopped");
    assert!(stratafs::union::mount::fuse_mounted(&dir), "view unmounted");
    assert_eq!(
        std::fs::read_to_string(dir.join("hello")).expect("read through the view"),
        "from the container\n"
    );
    assert_eq!(mount_state(&layer)["refs"], json!(1));
    // A second Get (docker cp, exec) shares that server instead of mounting a second one
    // over the same upper layer.
    let again = ok(&socket, "Get", json!({"ID": "ctr"}));
    assert_eq!(again["Dir"], json!(dir.display().to_string()));
    assert_eq!(mount_state(&layer)["pid"].as_i64(), Some(server));
    ok(&socket, "Put", json!({"ID": "ctr"}));

    // dockerd's Put when the container stops: unmounted here at once, while the container's
    // namespace still holds the view, its server serves on.
    let asked = Instant::now();
    ok(&socket, "Put", json!({"ID": "ctr"}));
    let put = asked.elapsed();
    assert!(put < Duration::from_secs(5), "Put took {put:?}");
    assert!(!stratafs::union::mount::fuse_mounted(&dir));
    assert!(alive(server));
    // The container goes: so does the server.
    drop(holder);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(server) {
        assert!(Instant::now() < deadline, "server outlived its last mount");
        std::thread::sleep(Duration::from_millis(20));
    }
    ok(&socket, "Remove", json!({"ID": "ctr"}));
    signal(&mut plugin, "TERM");
}

/// Without fusectl mounted (containers, minimal CI hosts), whether a view unmounted here is
/// still mounted in a container's namespace is read from the namespaces' mount tables; before,
/// every such Put waited 30 s for a server that could not exit.
#[test]
fn a_view_held_only_by_another_mount_namespace_is_found_there() {
    let l = OneLower::new();
    let guard = l.mount();
    let dev = mountinfo::fuse_mount_device(&l.mp).expect("the view is in mountinfo");
    let mut holder = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            "echo ready && exec sleep 600",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("unshare");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready");
    assert_eq!(line, "ready\n");
    let holder = Proc(holder);
    l.unmount(guard);
    assert!(!stratafs::union::mount::fuse_mounted(&l.mp));
    assert!(
        mountinfo::mounted_in_some_namespace(&dev),
        "the holder's namespace still has {dev}"
    );
    assert!(mountinfo::still_mounted_anywhere(&dev));
    drop(holder);
    let deadline = Instant::now() + Duration::from_secs(10);
    while mountinfo::mounted_in_some_namespace(&dev) {
        assert!(
            Instant::now() < deadline,
            "{dev} outlived the holder's namespace"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
