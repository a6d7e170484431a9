//! The server as a process: concurrent requests, shutdown, restarts, sockets, the store's home.

use super::*;

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
