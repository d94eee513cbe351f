//! The whole engine on a PostgreSQL catalog (`--catalog postgres://...`) instead of the embedded
//! SQLite one: the catalog server is a real PostgreSQL started for the test.

mod common;

use cairn_engine::pg::scratch::ScratchServer;
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn cluster_branch_and_compute_on_a_postgres_catalog() {
    let mut env = Env::new();
    let catalog = ScratchServer::start(&env.dir.path().join("catalog-server"), &[])
        .expect("start the catalog server");
    env.extra_env
        .push(("CAIRN_CATALOG".into(), catalog.url("postgres")));
    env.ok(&["cluster", "create", "shop"]);
    let c = connect(&env.start("main")).await;
    c.batch_execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
        .await
        .unwrap();
    let lsn = scalar(&c, "SELECT pg_current_wal_lsn()::text").await;
    c.batch_execute("DELETE FROM t WHERE g > 10").await.unwrap();
    env.ok(&[
        "branch",
        "create",
        "before-delete",
        "--from",
        "main",
        "--at",
        &lsn,
    ]);
    let b = connect(&env.start("before-delete")).await;
    assert_eq!(scalar(&b, "SELECT count(*)::text FROM t").await, "1000");
    assert_eq!(scalar(&c, "SELECT count(*)::text FROM t").await, "10");
    drop((b, c));
    env.stop_all();
    env.ok(&["check", "--full"]);
    // The rows really are in the PostgreSQL catalog, not in a SQLite file.
    assert!(!env.home.join("catalog.db").exists());
    let cat = catalog.connect("postgres").await.unwrap();
    assert_eq!(
        scalar(&cat, "SELECT count(*)::text FROM branches").await,
        "2"
    );
    // A password in the catalog URL never shows in errors.
    let bad = format!(
        "postgresql://postgres:wrongpw@127.0.0.1:{}/postgres",
        catalog.port()
    );
    let out = env
        .command(&["cluster", "list"])
        .env("CAIRN_CATALOG", &bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open catalog") && !err.contains("wrongpw"),
        "{err}"
    );
}
