//! The snapshotter over its real gRPC transport: a server on a temporary unix socket, driven by
//! the generated tonic client, as containerd would drive it.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::api::snapshots::snapshots_client::SnapshotsClient;
use super::api::snapshots::*;
use super::api::Mount;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Code;

use super::{serve, SnapshotError, FUSE_MOUNT_TYPE};
use crate::store::Store;

/// A running server; stopping it waits until it has shut down and released the root.
struct Server {
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), SnapshotError>>>,
}

impl Server {
    async fn start(root: &Path, socket: &Path) -> Server {
        let (tx, rx) = oneshot::channel::<()>();
        let (root, sock) = (root.to_path_buf(), socket.to_path_buf());
        let task = tokio::spawn(async move {
            serve(&sock, &root, async {
                let _ = rx.await;
            })
            .await
        });
        for _ in 0..500 {
            if socket.exists() {
                break;
            }
            assert!(!task.is_finished(), "server exited before listening");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(socket.exists(), "server did not create its socket");
        Server {
            socket: socket.to_path_buf(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    async fn client(&self) -> SnapshotsClient<Channel> {
        let path = self.socket.clone();
        // The URI is required by the API but unused: the connector dials the unix socket.
        let channel = Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                tokio::net::UnixStream::connect(path.clone())
            }))
            .await
            .expect("connecting to the snapshotter");
        SnapshotsClient::new(channel)
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().expect("server failed");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

const SN: &str = "stratafs";

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn prepare(
    c: &mut SnapshotsClient<Channel>,
    key: &str,
    parent: &str,
) -> Result<Vec<Mount>, Code> {
    c.prepare(PrepareSnapshotRequest {
        snapshotter: SN.into(),
        key: key.into(),
        parent: parent.into(),
        labels: labels(&[("containerd.io/snapshot.ref", key)]),
    })
    .await
    .map(|r| r.into_inner().mounts)
    .map_err(|s| s.code())
}

async fn view(
    c: &mut SnapshotsClient<Channel>,
    key: &str,
    parent: &str,
) -> Result<Vec<Mount>, Code> {
    c.view(ViewSnapshotRequest {
        snapshotter: SN.into(),
        key: key.into(),
        parent: parent.into(),
        labels: HashMap::new(),
    })
    .await
    .map(|r| r.into_inner().mounts)
    .map_err(|s| s.code())
}

async fn commit(c: &mut SnapshotsClient<Channel>, name: &str, key: &str) -> Result<(), Code> {
    c.commit(CommitSnapshotRequest {
        snapshotter: SN.into(),
        name: name.into(),
        key: key.into(),
        labels: labels(&[("committed", name)]),
    })
    .await
    .map(drop)
    .map_err(|s| s.code())
}

async fn stat(c: &mut SnapshotsClient<Channel>, key: &str) -> Result<Info, Code> {
    c.stat(StatSnapshotRequest {
        snapshotter: SN.into(),
        key: key.into(),
    })
    .await
    .map(|r| r.into_inner().info.expect("stat without info"))
    .map_err(|s| s.code())
}

async fn remove(c: &mut SnapshotsClient<Channel>, key: &str) -> Result<(), Code> {
    c.remove(RemoveSnapshotRequest {
        snapshotter: SN.into(),
        key: key.into(),
    })
    .await
    .map(drop)
    .map_err(|s| s.code())
}

async fn usage(c: &mut SnapshotsClient<Channel>, key: &str) -> Result<(i64, i64), Code> {
    c.usage(UsageRequest {
        snapshotter: SN.into(),
        key: key.into(),
    })
    .await
    .map(|r| {
        let r = r.into_inner();
        (r.size, r.inodes)
    })
    .map_err(|s| s.code())
}

async fn update(
    c: &mut SnapshotsClient<Channel>,
    name: &str,
    new_labels: HashMap<String, String>,
    paths: &[&str],
) -> Result<Info, Code> {
    let info = Info {
        name: name.into(),
        labels: new_labels,
        ..Default::default()
    };
    c.update(UpdateSnapshotRequest {
        snapshotter: SN.into(),
        info: Some(info),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    })
    .await
    .map(|r| r.into_inner().info.expect("update without info"))
    .map_err(|s| s.code())
}

async fn list(c: &mut SnapshotsClient<Channel>) -> Vec<Info> {
    let mut stream = c
        .list(ListSnapshotsRequest {
            snapshotter: SN.into(),
            filters: vec![],
        })
        .await
        .expect("list")
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await.expect("list stream") {
        out.extend(msg.info);
    }
    out
}

fn diff_of(m: &Mount) -> PathBuf {
    PathBuf::from(&m.source)
}

fn option<'a>(m: &'a Mount, key: &str) -> Option<&'a str> {
    m.options
        .iter()
        .find_map(|o| o.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_lifecycle_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let server = Server::start(&root, &dir.path().join("s.sock")).await;
    let mut c = server.client().await;

    // A parentless active snapshot is a read-write bind mount of its own directory.
    let m = prepare(&mut c, "default/1/extract-a", "").await.unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].r#type, "bind");
    assert_eq!(m[0].options, ["rw", "rbind"]);
    let base_diff = diff_of(&m[0]);
    assert!(base_diff.is_dir(), "{}", base_diff.display());
    std::fs::write(base_diff.join("hello"), vec![7u8; 10_000]).unwrap();
    assert_eq!(
        prepare(&mut c, "default/1/extract-a", "").await,
        Err(Code::AlreadyExists)
    );
    let info = stat(&mut c, "default/1/extract-a").await.unwrap();
    assert_eq!(info.kind, 2, "active");
    assert_eq!(
        info.labels
            .get("containerd.io/snapshot.ref")
            .map(String::as_str),
        Some("default/1/extract-a")
    );

    // Commit: the key disappears, the name appears, same directory.
    assert_eq!(
        commit(&mut c, "default/2/sha256:base", "nope").await,
        Err(Code::NotFound)
    );
    commit(&mut c, "default/2/sha256:base", "default/1/extract-a")
        .await
        .unwrap();
    assert_eq!(
        stat(&mut c, "default/1/extract-a").await,
        Err(Code::NotFound)
    );
    let base = stat(&mut c, "default/2/sha256:base").await.unwrap();
    assert_eq!(base.kind, 3, "committed");
    assert_eq!(base.parent, "");
    assert_eq!(
        base.labels,
        labels(&[("committed", "default/2/sha256:base")])
    );
    assert!(base.created_at.is_some() && base.updated_at.is_some());
    assert_eq!(
        view(&mut c, "v0", "default/2/sha256:base").await.unwrap()[0].source,
        base_diff.display().to_string()
    );
    // A committed snapshot has no mounts, and cannot be committed again.
    assert_eq!(
        c.mounts(MountsRequest {
            snapshotter: SN.into(),
            key: "default/2/sha256:base".into()
        })
        .await
        .map_err(|s| s.code())
        .err(),
        Some(Code::FailedPrecondition)
    );
    assert_eq!(
        commit(&mut c, "again", "default/2/sha256:base").await,
        Err(Code::FailedPrecondition)
    );

    // An active snapshot with a parent is a fuse3.stratafs overlay mount.
    let m = prepare(&mut c, "default/3/run", "default/2/sha256:base")
        .await
        .unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].r#type, FUSE_MOUNT_TYPE);
    assert_eq!(m[0].source, "overlay");
    assert_eq!(option(&m[0], "lowerdir"), Some(base_diff.to_str().unwrap()));
    let upper = PathBuf::from(option(&m[0], "upperdir").expect("upperdir"));
    let work = PathBuf::from(option(&m[0], "workdir").expect("workdir"));
    assert!(upper.is_dir() && work.is_dir());
    assert_ne!(upper, base_diff);
    std::fs::write(upper.join("mine"), b"x").unwrap();
    // Parents must be committed, and must exist.
    assert_eq!(
        prepare(&mut c, "k2", "default/3/run").await,
        Err(Code::InvalidArgument)
    );
    assert_eq!(prepare(&mut c, "k3", "missing").await, Err(Code::NotFound));
    let again = c
        .mounts(MountsRequest {
            snapshotter: SN.into(),
            key: "default/3/run".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(again, m, "Mounts repeats what Prepare returned");

    // A view over two layers: read-only, lowerdir only, topmost first.
    commit(&mut c, "default/4/top", "default/3/run")
        .await
        .unwrap();
    let v = view(&mut c, "default/5/view", "default/4/top")
        .await
        .unwrap();
    assert_eq!(v[0].r#type, FUSE_MOUNT_TYPE);
    assert_eq!(v[0].options.len(), 1, "{:?}", v[0].options);
    assert_eq!(
        option(&v[0], "lowerdir"),
        Some(format!("{}:{}", upper.display(), base_diff.display()).as_str())
    );
    assert_eq!(stat(&mut c, "default/5/view").await.unwrap().kind, 1);
    assert_eq!(
        commit(&mut c, "x", "default/5/view").await,
        Err(Code::FailedPrecondition),
        "a view cannot be committed"
    );

    // Usage counts the snapshot's own directory only.
    let (size, inodes) = usage(&mut c, "default/2/sha256:base").await.unwrap();
    assert_eq!(inodes, 2, "directory and one file");
    assert!(size >= 10_000, "size {size}");
    let (top_size, top_inodes) = usage(&mut c, "default/4/top").await.unwrap();
    assert_eq!(top_inodes, 2);
    assert!(top_size < size, "{top_size} vs {size}");
    assert_eq!(usage(&mut c, "nope").await, Err(Code::NotFound));

    // Labels: one key, all keys, and refused fields.
    let name = "default/4/top";
    let i = update(&mut c, name, labels(&[("a", "1")]), &["labels.a"])
        .await
        .unwrap();
    assert_eq!(i.labels, labels(&[("committed", name), ("a", "1")]));
    let i = update(&mut c, name, HashMap::new(), &["labels.committed"])
        .await
        .unwrap();
    assert_eq!(i.labels, labels(&[("a", "1")]), "absent label is deleted");
    let i = update(&mut c, name, labels(&[("b", "2")]), &["labels"])
        .await
        .unwrap();
    assert_eq!(i.labels, labels(&[("b", "2")]));
    assert_eq!(
        stat(&mut c, name).await.unwrap().labels,
        labels(&[("b", "2")])
    );
    assert_eq!(
        update(&mut c, name, HashMap::new(), &["parent"]).await,
        Err(Code::InvalidArgument)
    );
    assert_eq!(
        update(&mut c, "nope", HashMap::new(), &["labels"]).await,
        Err(Code::NotFound)
    );

    // List streams every snapshot with its parent.
    let all = list(&mut c).await;
    let names: BTreeSet<&str> = all.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "v0",
            "default/2/sha256:base",
            "default/4/top",
            "default/5/view"
        ])
    );
    let top = all.iter().find(|i| i.name == "default/4/top").unwrap();
    assert_eq!(top.parent, "default/2/sha256:base");

    // Remove refuses while children exist, then frees the directory.
    assert_eq!(
        remove(&mut c, "default/2/sha256:base").await,
        Err(Code::FailedPrecondition)
    );
    assert_eq!(remove(&mut c, "nope").await, Err(Code::NotFound));
    for k in [
        "default/5/view",
        "default/4/top",
        "v0",
        "default/2/sha256:base",
    ] {
        remove(&mut c, k).await.unwrap();
    }
    assert!(!base_diff.exists() && !upper.exists());
    assert!(list(&mut c).await.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_only_orphaned_layers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let server = Server::start(&root, &dir.path().join("s.sock")).await;
    let mut c = server.client().await;
    let kept = diff_of(&prepare(&mut c, "keep", "").await.unwrap()[0]);
    // Orphans as a crash would leave them: layers no snapshot refers to, one a parent.
    let store = Store::open(&root).unwrap();
    let opts = Default::default();
    let maps = Default::default();
    use crate::store::LayerKind::*;
    store
        .create("orphan-a", None, ReadOnly, &opts, &maps)
        .unwrap();
    store
        .create("orphan-b", Some("orphan-a"), ReadWrite, &opts, &maps)
        .unwrap();
    c.cleanup(CleanupRequest {
        snapshotter: SN.into(),
    })
    .await
    .unwrap();
    assert!(!store.exists("orphan-a") && !store.exists("orphan-b"));
    assert!(kept.is_dir(), "a live snapshot survives cleanup");
    assert_eq!(stat(&mut c, "keep").await.unwrap().kind, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let socket = dir.path().join("s.sock");
    let server = Server::start(&root, &socket).await;
    let mut c = server.client().await;
    let m = prepare(&mut c, "ns/1/a", "").await.unwrap();
    std::fs::write(diff_of(&m[0]).join("f"), b"data").unwrap();
    commit(&mut c, "ns/2/base", "ns/1/a").await.unwrap();
    let run = prepare(&mut c, "ns/3/run", "ns/2/base").await.unwrap();
    let before = stat(&mut c, "ns/2/base").await.unwrap();
    // A second server on the same root is refused while the first runs.
    let second = serve(&dir.path().join("t.sock"), &root, async {}).await;
    assert!(
        matches!(second, Err(SnapshotError::FailedPrecondition(_))),
        "{second:?}"
    );
    drop(c);
    server.stop().await;
    assert!(!socket.exists(), "socket removed on shutdown");

    let server = Server::start(&root, &socket).await;
    let mut c = server.client().await;
    assert_eq!(stat(&mut c, "ns/2/base").await.unwrap(), before);
    let again = c
        .mounts(MountsRequest {
            snapshotter: SN.into(),
            key: "ns/3/run".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(again, run);
    // New snapshots get fresh directories, never one in use.
    let fresh = prepare(&mut c, "ns/4/new", "").await.unwrap();
    assert!(!diff_of(&fresh[0]).join("f").exists());
    assert_ne!(fresh[0].source, m[0].source);
    assert_eq!(
        std::fs::read(diff_of(&m[0]).join("f")).unwrap(),
        b"data",
        "committed data is still there"
    );
    assert_eq!(list(&mut c).await.len(), 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_chain_lists_every_parent_topmost_first() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("root"), &dir.path().join("s.sock")).await;
    let mut c = server.client().await;
    let mut parent = String::new();
    let mut diffs = Vec::new();
    for i in 0..40 {
        let m = prepare(&mut c, &format!("x/{i}/extract"), &parent)
            .await
            .unwrap();
        let own = match m[0].r#type.as_str() {
            "bind" => m[0].source.clone(),
            _ => option(&m[0], "upperdir").unwrap().to_string(),
        };
        diffs.push(own);
        let name = format!("x/{i}/sha256:{i:064}");
        commit(&mut c, &name, &format!("x/{i}/extract"))
            .await
            .unwrap();
        parent = name;
    }
    let m = prepare(&mut c, "x/run", &parent).await.unwrap();
    diffs.reverse();
    assert_eq!(option(&m[0], "lowerdir"), Some(diffs.join(":").as_str()));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_unpack_through_an_overlay_mount_containers_through_fuse() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("root"), &dir.path().join("s.sock")).await;
    let mut c = server.client().await;
    let base = diff_of(
        &prepare(&mut c, "k8s.io/1/extract-1-a sha256:a", "")
            .await
            .unwrap()[0],
    );
    commit(&mut c, "k8s.io/2/sha256:a", "k8s.io/1/extract-1-a sha256:a")
        .await
        .unwrap();

    // A layer being unpacked: containerd's applier writes into upperdir, mounting nothing.
    let key = "k8s.io/3/extract-2-b sha256:b";
    let m = prepare(&mut c, key, "k8s.io/2/sha256:a").await.unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(
        (m[0].r#type.as_str(), m[0].source.as_str()),
        ("overlay", "overlay")
    );
    assert_eq!(option(&m[0], "lowerdir"), Some(base.to_str().unwrap()));
    let upper = PathBuf::from(option(&m[0], "upperdir").expect("upperdir"));
    assert!(upper.is_dir() && upper != base);
    assert!(PathBuf::from(option(&m[0], "workdir").expect("workdir")).is_dir());
    let again = c
        .mounts(MountsRequest {
            snapshotter: SN.into(),
            key: key.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(again, m);
    commit(&mut c, "k8s.io/4/sha256:b", key).await.unwrap();

    // A container's snapshot (and any key merely containing the word) is served by stratafs.
    for key in ["k8s.io/5/0123abcd", "k8s.io/6/my-extract-b"] {
        let m = prepare(&mut c, key, "k8s.io/4/sha256:b").await.unwrap();
        assert_eq!(m[0].r#type, FUSE_MOUNT_TYPE, "{key}");
        let lowers = format!("{}:{}", upper.display(), base.display());
        assert_eq!(option(&m[0], "lowerdir"), Some(lowers.as_str()));
    }
    server.stop().await;
}
