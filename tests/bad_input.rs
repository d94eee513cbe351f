//! Bad input gets a clear error that names the thing, a non-zero exit, and no partial state.

mod common;

use std::os::unix::fs::FileExt;

use common::*;
use serde_json::Value;

/// Everything a failed command must leave unchanged.
fn state(env: &Env) -> (Value, Value, Value) {
    (
        env.json(&["cluster", "list"]),
        env.json(&["branch", "list"]),
        env.json(&["layer", "list"]),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_page_on_ingest_names_relation_block_and_lsn() {
    let env = Env::new();
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    let c = connect(&url).await;
    c.batch_execute(
        "CREATE TABLE orders (id int, note text);
         INSERT INTO orders SELECT g, repeat('x', 100) FROM generate_series(1, 2000) g;
         CHECKPOINT;",
    )
    .await
    .unwrap();
    let rel = scalar(&c, "SELECT pg_relation_filepath('orders')").await;
    // Damage block 1 on disk, behind the server's back (the buffer cache holds a clean copy).
    let datadir = env.json(&["compute", "list"])[0]["timeline"]
        .as_str()
        .unwrap()
        .to_string();
    let path = env
        .home
        .join("computes")
        .join(&datadir)
        .join("pgdata")
        .join(&rel);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut hdr = [0u8; 8];
    f.read_exact_at(&mut hdr, 8192).unwrap();
    let page_lsn = format!(
        "{:X}/{:X}",
        u32::from_le_bytes(hdr[0..4].try_into().unwrap()),
        u32::from_le_bytes(hdr[4..8].try_into().unwrap())
    );
    f.write_all_at(b"garbage!", 8192 + 4000).unwrap();
    drop(f);

    let images = |env: &Env| {
        env.layers()
            .into_iter()
            .filter(|l| l["kind"] == "image")
            .collect::<Vec<_>>()
    };
    let before = images(&env);
    let err = env.fail(&["image", "create", "main"]);
    assert!(err.contains("public.orders"), "{err}");
    assert!(err.contains("block 1"), "{err}");
    assert!(err.contains(&page_lsn), "{err}");
    assert!(err.contains("checksum"), "{err}");
    assert_eq!(images(&env), before, "a failed image leaves no image layer");
    // ... and no file behind: catalog and layer files agree.
    env.ok(&["check"]);
    env.stop_all();
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_gap_is_refused_and_nothing_is_ingested() {
    let env = Env::new();
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    let c = connect(&url).await;
    env.ok(&["compute", "sync", "main"]);
    let head = env.head("main");
    c.batch_execute("CREATE TABLE t (i int)").await.unwrap();
    let mut segments = Vec::new();
    for i in 0..3 {
        c.batch_execute(&format!("INSERT INTO t VALUES ({i})"))
            .await
            .unwrap();
        segments.push(scalar(&c, "SELECT pg_walfile_name(pg_current_wal_lsn())").await);
        c.batch_execute("SELECT pg_switch_wal()").await.unwrap();
    }
    c.batch_execute("INSERT INTO t VALUES (99)").await.unwrap();
    let tl = env.json(&["compute", "list"])[0]["timeline"]
        .as_str()
        .unwrap()
        .to_string();
    let victim = env
        .home
        .join("computes")
        .join(&tl)
        .join("pgdata/pg_wal")
        .join(&segments[1]);
    std::fs::remove_file(&victim).unwrap();

    let before = state(&env);
    let err = env.fail(&["compute", "sync", "main"]);
    assert!(
        err.contains(&segments[1]),
        "the error names the missing segment: {err}"
    );
    assert!(err.contains("gap"), "{err}");
    assert!(err.contains("Nothing was ingested"), "{err}");
    assert_eq!(state(&env), before);
    assert_eq!(env.head("main"), head);
    env.ok(&["check"]);
    drop(c);
    // Stopping must not paper over the gap either.
    let err = env.fail(&["compute", "stop", "main"]);
    assert!(err.contains(&segments[1]) || err.contains("gap"), "{err}");
}

#[test]
fn unknown_names_out_of_range_points_and_early_times() {
    let env = Env::new();
    env.ok(&["cluster", "create", "shop"]);
    let before = state(&env);

    let err = env.fail(&["compute", "start", "nope"]);
    assert!(
        err.contains("branch 'nope' in cluster 'shop' not found"),
        "{err}"
    );
    assert!(err.contains("main"), "lists the branches that exist: {err}");
    let err = env.fail(&["branch", "create", "x", "--from", "nope"]);
    assert!(
        err.contains("branch 'nope' in cluster 'shop' not found"),
        "{err}"
    );
    let err = env.fail(&["branch", "list", "--cluster", "nope"]);
    assert!(err.contains("cluster 'nope' not found"), "{err}");

    let err = env.fail(&[
        "branch", "create", "early", "--from", "main", "--at", "0/10",
    ]);
    assert!(err.contains("0/10"), "{err}");
    assert!(err.contains("reconstructible"), "{err}");
    let err = env.fail(&["branch", "create", "late", "--from", "main", "--at", "FF/0"]);
    assert!(err.contains("FF/0") && err.contains("beyond"), "{err}");
    let err = env.fail(&[
        "branch",
        "create",
        "old",
        "--from",
        "main",
        "--at-time",
        "2001-01-01T00:00:00Z",
    ]);
    assert!(err.contains("before cluster 'shop' existed"), "{err}");
    let err = env.fail(&[
        "branch",
        "create",
        "future",
        "--from",
        "main",
        "--at-time",
        "2999-01-01T00:00:00Z",
    ]);
    assert!(err.contains("in the future"), "{err}");
    let err = env.fail(&[
        "branch",
        "create",
        "rp",
        "--from",
        "main",
        "--at-restore-point",
        "nope",
    ]);
    assert!(err.contains("restore point 'nope'"), "{err}");
    let err = env.fail(&["branch", "create", "bad", "--from", "main", "--at", "12345"]);
    assert!(err.contains("not an LSN"), "{err}");
    let err = env.fail(&["branch", "create", "Bad Name", "--from", "main"]);
    assert!(err.contains("not a valid branch name"), "{err}");
    let err = env.fail(&["cluster", "create", "shop"]);
    assert!(err.contains("already exists"), "{err}");
    // Usage errors (exit 2), before anything opens.
    for (args, want) in [
        (
            ["verify", "shop", "--time-limit", "0s"],
            "'0s': a time limit must be greater than 0",
        ),
        (
            ["verify", "shop", "--keep", "forever"],
            "'forever' is not a duration",
        ),
    ] {
        let out = env.run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(want), "{err}");
    }
    assert_eq!(state(&env), before, "failed commands change nothing");
    env.ok(&["check"]);
}

#[test]
fn port_in_use_is_reported_with_the_fix() {
    let env = Env::new();
    env.ok(&["cluster", "create", "shop"]);
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let before = state(&env);
    let err = env.fail(&["compute", "start", "main", "--port", &port]);
    assert!(
        err.contains(&format!("port {port}")) && err.contains("in use"),
        "{err}"
    );
    assert!(err.contains("--port"), "{err}");
    assert_eq!(state(&env), before);
    assert_eq!(env.json(&["compute", "list"]), serde_json::json!([]));
    let err = env.fail(&[
        "up",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--exit-after",
        "1",
    ]);
    assert!(err.contains(&port) && err.contains("--listen"), "{err}");
}

#[test]
fn missing_postgres_binaries_are_named_and_nothing_is_created() {
    let env = Env::new();
    let err = env.fail(&[
        "--pg-bin",
        "/nonexistent/pg/bin",
        "cluster",
        "create",
        "shop",
    ]);
    assert!(err.contains("/nonexistent/pg/bin"), "{err}");
    assert!(err.contains("--pg-bin"), "{err}");
    assert_eq!(env.json(&["cluster", "list"]), serde_json::json!([]));
    let leftovers: Vec<_> = std::fs::read_dir(env.home.join("computes"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(env.home.join("layers"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_delete_asks_for_yes_waits_for_stopped_computes_and_removes_only_its_cluster() {
    let env = Env::new();
    let start_in = |branch: &str, cluster: &str| {
        env.ok(&[
            "compute",
            "start",
            branch,
            "--cluster",
            cluster,
            "--url-only",
        ])
        .trim()
        .to_string()
    };
    let state = |env: &Env| {
        (
            env.json(&["cluster", "list"]),
            env.json(&["branch", "list", "--cluster", "shop"]),
            env.json(&["layer", "list", "--cluster", "shop"]),
        )
    };
    env.ok(&["cluster", "create", "shop"]);
    env.ok(&["cluster", "create", "other"]);
    let c = connect(&start_in("main", "other")).await;
    c.batch_execute("CREATE TABLE kept AS SELECT generate_series(1, 100) g")
        .await
        .unwrap();
    let kept = table_checksum(&c, "kept").await;
    drop(c);
    env.ok(&["compute", "stop", "main", "--cluster", "other"]);
    let clusters = env.json(&["cluster", "list"]);
    let id = clusters
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "shop")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    start_in("main", "shop");
    let before = state(&env);

    let err = env.fail(&["cluster", "delete", "shop"]);
    assert!(err.contains("--yes") && err.contains("'shop'"), "{err}");
    let err = env.fail(&["cluster", "delete", "shop", "--yes"]);
    assert!(
        err.contains("1 compute(s)") && err.contains("cairn compute stop"),
        "{err}"
    );
    let err = env.fail(&["cluster", "delete", "nope", "--yes"]);
    assert!(err.contains("nope"), "{err}");
    assert_eq!(state(&env), before, "refused deletions change nothing");

    env.ok(&["compute", "stop", "main", "--cluster", "shop"]);
    env.ok(&["cluster", "delete", "shop", "--yes"]);
    let names: Vec<String> = env
        .json(&["cluster", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["other"]);
    assert!(
        !env.home.join("layers").join(&id).exists(),
        "its layers are gone"
    );
    let secrets: Vec<String> = std::fs::read_dir(env.home.join("secrets"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !secrets.iter().any(|s| s.contains(&id)),
        "its secrets are gone: {secrets:?}"
    );
    // The other cluster is untouched.
    let c = connect(&start_in("main", "other")).await;
    assert_eq!(table_checksum(&c, "kept").await, kept);
    drop(c);
    env.ok(&["check", "--full"]);
    env.stop_all();
}
