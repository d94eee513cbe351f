//! Crash safety: `kill -9` of cairn at named points (mid layer write, before the rename, between
//! the layer write and the catalog commit, after the commit but before the slot advances, ...)
//! and at random moments. After a restart the catalog and the layer files agree, and every point
//! that was reported durable is still there with exactly its data.

mod common;

use std::time::Duration;

use common::*;
use rand::Rng;

struct Durable {
    lsn: String,
    checksum: String,
}

/// Ingests main and returns the reported durable point with the table's contents at it.
async fn make_durable(env: &Env, c: &tokio_postgres::Client) -> Durable {
    let checksum = table_checksum(c, "t").await;
    let out = env.json(&["compute", "sync", "main"]);
    Durable {
        lsn: out["to"].as_str().unwrap().to_string(),
        checksum,
    }
}

/// Every durable point must still hold exactly what it held.
async fn verify_durable(env: &Env, points: &[Durable], tag: &str) {
    for (i, d) in points.iter().enumerate() {
        let name = format!("v-{tag}-{i}");
        env.ok(&["branch", "create", &name, "--from", "main", "--at", &d.lsn]);
        let url = env.start(&name);
        let c = connect(&url).await;
        assert_eq!(
            table_checksum(&c, "t").await,
            d.checksum,
            "durable point {} lost its data after {tag}",
            d.lsn
        );
        drop(c);
        env.ok(&["compute", "stop", &name]);
        env.ok(&["branch", "delete", &name]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_at_every_failpoint_keeps_catalog_and_files_in_agreement() {
    let env = Env::new();
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    let c = connect(&url).await;
    c.batch_execute("CREATE TABLE t (i int, v text)")
        .await
        .unwrap();
    let mut durable = vec![make_durable(&env, &c).await];
    let cases: &[(&str, &[&str])] = &[
        ("image-mid-write", &["image", "create", "main"]),
        ("layer-before-rename", &["image", "create", "main"]),
        ("image-before-finish", &["image", "create", "main"]),
        ("image-before-commit", &["image", "create", "main"]),
        ("wal-layer-mid-write", &["compute", "sync", "main"]),
        ("layers-before-commit", &["compute", "sync", "main"]),
        ("layers-after-commit", &["compute", "sync", "main"]),
        ("layers-before-commit", &["image", "create", "main"]),
        // The catalog's own commit, reached by every transaction.
        ("catalog-before-commit", &["compute", "sync", "main"]),
        ("catalog-before-commit", &["image", "create", "main"]),
    ];
    for (i, (fp, args)) in cases.iter().enumerate() {
        c.batch_execute(&format!(
            "INSERT INTO t SELECT g, '{fp}' FROM generate_series({}, {}) g",
            i * 1000,
            i * 1000 + 499
        ))
        .await
        .unwrap();
        durable.push(make_durable(&env, &c).await);
        // More WAL, so that the killed command has something to write.
        c.batch_execute(&format!(
            "INSERT INTO t VALUES ({}, 'pending')",
            -(i as i64)
        ))
        .await
        .unwrap();
        env.killed_at(args, fp);
        // Restart: the next command under the same lock cleans up and catches up.
        env.ok(&["compute", "sync", "main"]);
        env.ok(&["check", "--full"]);
        let head = env.head("main");
        let (h, d) = (lsn(&head), lsn(&durable.last().unwrap().lsn));
        assert!(
            h >= d,
            "head {head} went back before a durable point after {fp}"
        );
    }
    // The last commit before the crashes is in main too (the slot kept its WAL).
    let all = table_checksum(&c, "t").await;
    drop(c);
    env.ok(&["compute", "stop", "main"]);
    let c = connect(&env.start("main")).await;
    assert_eq!(table_checksum(&c, "t").await, all);
    drop(c);

    // A stop killed after its final ingest: the branch keeps what it had, and starts again.
    env.killed_at(&["compute", "stop", "main"], "stop-before-cleanup");
    let c = connect(&env.start("main")).await;
    assert_eq!(table_checksum(&c, "t").await, all);
    drop(c);
    env.ok(&["check", "--full"]);
    verify_durable(&env, &durable, "failpoints").await;
    env.stop_all();
}

#[test]
fn killed_cluster_creation_leaves_nothing_behind() {
    let env = Env::new();
    for fp in ["image-mid-write", "create-before-commit"] {
        env.killed_at(&["cluster", "create", "shop"], fp);
        assert_eq!(env.json(&["cluster", "list"]), serde_json::json!([]));
    }
    // The next creation removes the debris (and any server the dead process left running).
    env.ok(&["cluster", "create", "shop"]);
    let computes: Vec<_> = std::fs::read_dir(env.home.join("computes"))
        .unwrap()
        .collect();
    assert!(computes.is_empty(), "no compute directory is left");
    let clusters: Vec<_> = std::fs::read_dir(env.home.join("layers"))
        .unwrap()
        .collect();
    assert_eq!(clusters.len(), 1, "only the committed cluster has layers");
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let home = env.home.to_string_lossy().to_string();
    let stray = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.contains(&home) && l.contains("postgres"))
        .count();
    assert_eq!(
        stray, 0,
        "no PostgreSQL from a killed creation is still running"
    );
    env.ok(&["check", "--full"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_at_random_moments_loses_nothing_durable() {
    let env = Env::new();
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    let c = connect(&url).await;
    c.batch_execute("CREATE TABLE t (i int, v text)")
        .await
        .unwrap();
    let mut durable = Vec::new();
    let mut rng = seeded_rng("kill_at_random_moments_loses_nothing_durable");
    let mut killed = 0;
    // How long each command takes here, uninterrupted: kills are drawn within that time, so
    // that they land while it works (on a slow machine as on a fast one).
    let timed = |args: &[&str]| {
        let t = std::time::Instant::now();
        env.ok(args);
        t.elapsed().as_millis() as u64
    };
    let took = [
        timed(&["image", "create", "main"]),
        timed(&["compute", "sync", "main"]),
    ];
    for round in 0..6 {
        c.batch_execute(&format!(
            "INSERT INTO t SELECT g, md5(g::text) FROM generate_series({}, {}) g",
            round * 20_000,
            round * 20_000 + 19_999
        ))
        .await
        .unwrap();
        durable.push(make_durable(&env, &c).await);
        c.batch_execute(&format!(
            "UPDATE t SET v = 'round {round}' WHERE i % 7 = {round}"
        ))
        .await
        .unwrap();
        let args: &[&str] = if round % 2 == 0 {
            &["image", "create", "main"]
        } else {
            &["compute", "sync", "main"]
        };
        let layers_before = env.layers().len();
        let trace = env.dir.path().join(format!("failpoints-{round}"));
        let mut child = env
            .command(args)
            .env("CAIRN_FAILPOINT_TRACE", &trace)
            .spawn()
            .unwrap();
        let delay = Duration::from_millis(rng.random_range(0..took[round % 2].max(20) * 9 / 10));
        let hit = kill_after(&mut child, delay);
        // The failpoints the command passed say where the kill landed.
        let passed = std::fs::read_to_string(&trace).unwrap_or_default();
        let passed: Vec<&str> = passed.lines().collect();
        let phase = passed
            .last()
            .copied()
            .unwrap_or("before the first failpoint");
        eprintln!(
            "round {round}: {args:?} after {delay:?}: {}",
            if hit {
                format!("killed after '{phase}' ({} points passed)", passed.len())
            } else {
                "had finished".to_string()
            }
        );
        let layers_after = env.layers().len();
        if !passed.contains(&"catalog-before-commit") {
            assert_eq!(
                layers_after, layers_before,
                "round {round}: killed before any commit ('{phase}'), yet the catalog changed"
            );
        }
        if !hit {
            assert!(
                layers_after > layers_before,
                "round {round}: {args:?} finished without a new layer"
            );
        }
        killed += hit as u32;
        env.ok(&["compute", "sync", "main"]);
        env.ok(&["check", "--full"]);
    }
    assert!(
        killed >= 3,
        "only {killed} of 6 kills landed while the command ran"
    );
    verify_durable(&env, &durable, "random").await;
    env.stop_all();
}

fn lsn(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}
