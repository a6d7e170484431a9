//! The built `stratafs` binary against temporary roots: store-level commands (no mounts), exit
//! codes, JSON output and error messages.

use std::path::Path;
use std::process::{Command, Output, Stdio};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn stratafs(root: &Path, args: &[&str]) -> Run {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_stratafs"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("STRATAFS_DRIVER")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("running the stratafs binary");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run with `--driver stratafs` and require success.
fn ok(root: &Path, args: &[&str]) -> String {
    let mut all = vec!["--driver", "stratafs"];
    all.extend_from_slice(args);
    let r = stratafs(root, &all);
    assert_eq!(r.code, 0, "stratafs {args:?} failed: {}", r.stderr);
    r.stdout
}

/// Run with `--driver stratafs` and require failure; returns stderr.
fn fails(root: &Path, args: &[&str]) -> String {
    let mut all = vec!["--driver", "stratafs"];
    all.extend_from_slice(args);
    let r = stratafs(root, &all);
    assert_ne!(r.code, 0, "stratafs {args:?} succeeded: {}", r.stdout);
    assert!(
        !r.stderr.contains("panicked") && !r.stderr.contains("RUST_BACKTRACE"),
        "{}",
        r.stderr
    );
    r.stderr
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn create_ls_exists_inspect_rm() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();

    assert_eq!(ok(r, &["create", "base"]).trim(), "base");
    ok(
        r,
        &[
            "create-rw",
            "--parent",
            "base",
            "--storage-opt",
            "size=10M",
            "--label",
            "system_u:object_r:container_file_t:s0",
            "top",
        ],
    );
    assert!(r.join("stratafs/layers/top/diff").is_dir());

    let human = ok(r, &["ls", "--no-size"]);
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(lines.len(), 3, "{human}");
    assert!(lines[0].starts_with("ID"), "{human}");
    assert!(
        lines[1].starts_with("base ") && lines[1].contains("read-only"),
        "{human}"
    );
    assert!(
        lines[2].starts_with("top ")
            && lines[2].contains("base")
            && lines[2].contains("read-write"),
        "{human}"
    );

    let listed = json(&ok(r, &["--json", "ls"]));
    let layers = listed.as_array().expect("ls --json gives an array");
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[1]["id"], "top");
    assert_eq!(layers[1]["parent"], "base");
    assert_eq!(layers[1]["kind"], "read-write");
    assert_eq!(layers[0]["parent"], serde_json::Value::Null);
    assert_eq!(layers[1]["mounted_at"], serde_json::Value::Null);

    assert_eq!(
        stratafs(r, &["--driver", "stratafs", "exists", "top"]).code,
        0
    );
    assert_eq!(
        stratafs(r, &["--driver", "stratafs", "exists", "nope"]).code,
        1
    );
    let missing = stratafs(r, &["--driver", "stratafs", "--json", "exists", "nope"]);
    assert_eq!(missing.code, 1);
    assert_eq!(json(&missing.stdout)["exists"], false);

    let meta = json(&ok(r, &["--json", "inspect", "top"]));
    assert_eq!(meta["Parents"], "base");
    assert_eq!(meta["Quota"], "10485760");
    assert!(meta["UpperDir"]
        .as_str()
        .is_some_and(|p| p.ends_with("layers/top/diff")));

    // A parent with children cannot go; the error names the child.
    let err = fails(r, &["rm", "base"]);
    assert!(err.contains("top"), "{err}");
    assert!(err.starts_with("stratafs: "), "{err}");

    ok(r, &["rm", "top"]);
    ok(r, &["rm", "base"]);
    assert_eq!(
        stratafs(r, &["--driver", "stratafs", "exists", "base"]).code,
        1
    );
    assert_eq!(json(&ok(r, &["--json", "ls"])), serde_json::json!([]));
}

#[test]
fn refusals_are_clear() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();

    let err = fails(r, &["create", "../escape"]);
    assert!(err.contains("invalid layer id"), "{err}");
    assert!(!r.join("escape").exists());

    let err = fails(r, &["create", "--storage-opt", "quota=1G", "x"]);
    assert!(err.contains("quota"), "{err}");

    let err = fails(r, &["create", "--parent", "missing", "x"]);
    assert!(err.contains("missing"), "{err}");

    ok(r, &["create", "x"]);
    let err = fails(r, &["create", "x"]);
    assert!(err.contains("already exists"), "{err}");

    let err = fails(r, &["rm", "ghost"]);
    assert!(err.contains("ghost"), "{err}");

    let err = fails(r, &["inspect", "ghost"]);
    assert!(err.contains("ghost"), "{err}");
}

#[test]
fn driver_selection_through_the_registry() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();

    let bad = stratafs(r, &["--driver", "nonesuch", "ls"]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("nonesuch"), "{}", bad.stderr);

    // Automatic choice with state of stratafs present picks stratafs.
    ok(r, &["create", "layer"]);
    let auto = stratafs(r, &["--json", "status"]);
    assert_eq!(auto.code, 0, "{}", auto.stderr);
    assert_eq!(json(&auto.stdout)["driver"], "stratafs");

    // vfs state beside it never counts as a second prior driver.
    std::fs::create_dir_all(r.join("vfs/layers")).unwrap();
    assert_eq!(stratafs(r, &["status"]).code, 0);
}

#[test]
fn diff_to_a_file_leaves_no_partial_tar() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    ok(r, &["create", "l"]);
    let out = r.join("l.tar");
    let out_s = out.to_str().unwrap();
    // Whether or not diff is implemented yet, a failed diff leaves no file behind, and a
    // successful one writes a tar there.
    let run = stratafs(r, &["--driver", "stratafs", "diff", "-o", out_s, "l"]);
    if run.code == 0 {
        assert!(out.is_file());
    } else {
        assert!(!out.exists(), "partial tar left behind: {}", run.stderr);
    }
}

#[test]
fn demo_runs_in_a_given_root_and_cleans_up() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let demo = stratafs(r, &["demo"]);
    assert_eq!(demo.code, 0, "{}{}", demo.stdout, demo.stderr);
    for expected in [
        "== layer demo-base",
        "/etc/.wh.motd",
        "whiteout: hides /etc/motd",
        "/var/cache/app/.wh..wh..opq",
        "/home/user/notes.txt",
        "== merged view of demo-top",
    ] {
        assert!(
            demo.stdout.contains(expected),
            "missing {expected:?}:\n{}",
            demo.stdout
        );
    }
    // The merged view: the whiteout hides /etc/motd, markers never show, the top's file is there.
    let merged = demo
        .stdout
        .split("== merged view of demo-top")
        .nth(1)
        .and_then(|rest| rest.split("== changes").next())
        .unwrap_or_default();
    assert!(merged.contains("mounted at"), "{merged}");
    assert!(merged.contains("/home/user/notes.txt"), "{merged}");
    assert!(merged.contains("/usr/bin/hello"), "{merged}");
    assert!(!merged.contains("/etc/motd"), "{merged}");
    assert!(!merged.contains(".wh."), "{merged}");
    assert!(
        demo.stdout.contains("A /home/user/notes.txt"),
        "{}",
        demo.stdout
    );
    // The layers were removed again.
    assert_eq!(json(&ok(r, &["--json", "ls"])), serde_json::json!([]));
}

#[test]
fn id_maps_give_the_layer_root_to_the_mapped_root() {
    use std::os::unix::fs::MetadataExt;
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    // Giving a directory to another uid needs root; the suite runs as root (scripts/test.sh).
    if !stratafs::sys::is_root() {
        eprintln!("skipped: needs root to chown");
        return;
    }
    ok(
        r,
        &[
            "--uidmap",
            "0:100000:65536",
            "--gidmap",
            "0:200000:65536",
            "create",
            "mapped",
        ],
    );
    let meta = std::fs::metadata(r.join("stratafs/layers/mapped/diff")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (100000, 200000));

    let err = fails(r, &["--uidmap", "1:100000:10", "create", "unmapped-root"]);
    assert!(err.contains("container root"), "{err}");
    assert_eq!(
        stratafs(r, &["--driver", "stratafs", "exists", "unmapped-root"]).code,
        1
    );
}

#[test]
fn diff_refuses_to_write_a_tar_to_a_terminal() {
    // `script` (util-linux) gives the command a pseudo-terminal as stdout.
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: `script` is not installed");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    ok(r, &["create", "l"]);
    for extra in ["", " -o -"] {
        let cmd = format!(
            "{} --root '{}' --driver stratafs diff{extra} l",
            env!("CARGO_BIN_EXE_stratafs"),
            r.display()
        );
        let out = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success(),
            "diff{extra} wrote to a terminal: {text}"
        );
        assert!(
            text.contains("refusing to write a tar archive to a terminal"),
            "{text}"
        );
    }
}
