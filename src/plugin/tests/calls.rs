//! Each call of the protocol: activation, Init, the layer calls, diffs streamed both ways,
//! and the error paths.

use super::*;

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
