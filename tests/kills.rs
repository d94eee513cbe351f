//! kill -9 in the middle of the protection and restore commands: key rotation, garbage
//! collection, repair, catalog rebuild, restore, export and the `cairn up` daemon. Each is
//! killed at a failpoint (SIGKILL asserted, so the kill really landed there), and then the
//! next run of the same command finishes the job with nothing lost, no object unreadable and no
//! plaintext left behind.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use common::*;

fn regions(env: &Env) {
    env.write_regions(&format!(
        "min_copies = 2\ndeletion_delay = \"0s\"\n{}\n{}",
        env.file_region("region-a"),
        env.file_region("region-b")
    ));
}

/// A backed-up cluster with a branch of its own; returns main's checksum.
async fn backed_up(env: &Env) -> String {
    env.ok(&["cluster", "create", "shop"]);
    let c = connect(&env.start("main")).await;
    c.batch_execute("CREATE TABLE t AS SELECT g, md5(g::text) h FROM generate_series(1, 20000) g")
        .await
        .unwrap();
    let sum = table_checksum(&c, "t").await;
    drop(c);
    env.ok(&["branch", "create", "dev", "--from", "main"]);
    let d = connect(&env.start("dev")).await;
    d.batch_execute("CREATE TABLE d AS SELECT generate_series(1, 5000) g")
        .await
        .unwrap();
    drop(d);
    env.stop_all();
    env.ok(&["backup", "now"]);
    sum
}

/// A new appliance with only region-b and `kit` restores main with `sum`.
async fn restores_from_region_b(env: &Env, kit: &Path, sum: &str) {
    let dr = env.disaster_recovery_from("region-b");
    let target = dr.dir.path().join("restored");
    dr.ok(&[
        "restore",
        "shop",
        "--to-datadir",
        target.to_str().unwrap(),
        "--recovery-kit",
        kit.to_str().unwrap(),
    ]);
    has_main(&target, env, sum).await;
}

/// The restored data directory `dir` starts and holds main's table with `sum`; `env` is an
/// appliance that holds the cluster (it gives the superuser's password).
async fn has_main(dir: &Path, env: &Env, sum: &str) {
    let server = Plain::start(dir);
    let pw = env
        .ok(&["cluster", "password", "shop", "--superuser"])
        .trim()
        .to_string();
    let c = connect(&server.url(&pw)).await;
    assert_eq!(table_checksum(&c, "t").await, sum);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_rotation_killed_midway_finishes_on_the_next_run() {
    let env = Env::new();
    regions(&env);
    let sum = backed_up(&env).await;
    env.killed_at(&["key", "rotate"], "rewrap-key@2");
    // Keys not yet re-wrapped still open with the retired identity the appliance keeps.
    env.ok(&["regions", "check", "--full"]);
    env.ok(&["key", "rotate"]);
    env.ok(&["regions", "check", "--full"]);
    // A recovery kit written now (the newest identity only) opens everything.
    restores_from_region_b(&env, &env.recovery_kit(), &sum).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_garbage_collection_killed_midway_finishes_on_the_next_run() {
    let env = Env::new();
    regions(&env);
    let sum = backed_up(&env).await;
    let dev_tl = env.branch("dev")["timeline"].as_str().unwrap().to_string();
    let dev_layers: Vec<String> = env
        .layers()
        .iter()
        .filter(|l| l["timeline_id"] == dev_tl.as_str())
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!dev_layers.is_empty());
    env.ok(&["branch", "delete", "dev"]);
    env.killed_at(&["regions", "gc"], "gc-deleted@2");
    env.ok(&["regions", "check", "--full"]);
    env.ok(&["regions", "gc"]);
    for r in ["region-a", "region-b"] {
        let objects = env.region_objects(r);
        for id in &dev_layers {
            assert!(
                !objects.iter().any(|k| k.contains(id.as_str())),
                "{id} left in {r}"
            );
        }
    }
    env.ok(&["regions", "check", "--full"]);
    restores_from_region_b(&env, &env.recovery_kit(), &sum).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repair_killed_midway_finishes_on_the_next_run() {
    let env = Env::new();
    regions(&env);
    let sum = backed_up(&env).await;
    let root = env.region_root("region-b");
    let lost: Vec<String> = env
        .region_objects("region-b")
        .into_iter()
        .filter(|k| k.contains("/layers/"))
        .take(3)
        .collect();
    assert_eq!(lost.len(), 3);
    for k in &lost {
        std::fs::remove_file(root.join(k)).unwrap();
    }
    let out = env.run(&["regions", "check", "--region", "region-b"]);
    assert_eq!(out.status.code(), Some(1));
    env.killed_at(&["regions", "repair"], "repair-copied@2");
    env.ok(&["regions", "repair"]);
    env.ok(&["regions", "check", "--full"]);
    for k in &lost {
        assert!(root.join(k).is_file(), "{k} repaired");
    }
    restores_from_region_b(&env, &env.recovery_kit(), &sum).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuild_and_a_restore_killed_midway_succeed_on_the_next_run() {
    let env = Env::new();
    regions(&env);
    let sum = backed_up(&env).await;
    let kit = env.recovery_kit();
    let dr = env.disaster_recovery_from("region-b");
    let rebuild = [
        "catalog",
        "rebuild",
        "--from-region",
        "region-b",
        "--recovery-kit",
        kit.to_str().unwrap(),
    ];
    dr.killed_at(&rebuild, "rebuild-before-insert");
    dr.ok(&rebuild);
    assert_eq!(dr.json(&["cluster", "list"])[0]["name"], "shop");

    // A restore killed while writing the data directory leaves its staging behind; the next
    // restore sweeps it and succeeds.
    let first = dr.dir.path().join("first");
    let restore = |to: &Path| {
        vec![
            "restore".to_string(),
            "shop".into(),
            "--to-datadir".into(),
            to.display().to_string(),
        ]
    };
    let args = restore(&first);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    dr.killed_at(&args, "materialise-files-created");
    let staged = || {
        std::fs::read_dir(dr.home.join("restore"))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    assert!(staged() > 0, "the killed restore left its staging");
    let err = dr.fail(&args);
    assert!(err.contains("not empty"), "{err}");
    let second = dr.dir.path().join("second");
    let args = restore(&second);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    dr.ok(&args);
    assert_eq!(staged(), 0, "staging swept");
    has_main(&second, &dr, &sum).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_killed_before_sealing_leaves_no_plaintext_after_the_next_run() {
    let env = Env::new();
    regions(&env);
    backed_up(&env).await;
    let file = env.dir.path().join("shop.export");
    let f = file.to_str().unwrap();
    env.killed_at(
        &["export", "shop", "--from-regions", "--to", f],
        "export-before-seal",
    );
    assert!(!file.exists(), "nothing half-written at the destination");
    assert!(
        !env.export_leftovers().is_empty(),
        "the killed export's plaintext is still on disk"
    );
    env.ok(&["export", "shop", "--from-regions", "--to", f]);
    let left = env.export_leftovers();
    assert!(left.is_empty(), "plaintext left: {left:?}");
    assert_eq!(&std::fs::read(&file).unwrap()[..8], b"CAIRNEXP");
}

#[tokio::test(flavor = "multi_thread")]
async fn cairn_up_killed_with_a_compute_running_restarts_and_loses_nothing() {
    let env = Env::new();
    regions(&env);
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    let (up, _) = env.spawn_up(&["--sync-interval", "0.2", "--ship-interval", "0.2"]);
    let mut up = KillOnDrop(up);
    let c = connect(&url).await;
    c.batch_execute("CREATE TABLE t AS SELECT generate_series(1, 10000) g")
        .await
        .unwrap();
    let sum = table_checksum(&c, "t").await;
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(up.0.id() as i32, libc::SIGKILL);
    }
    assert_eq!(up.0.wait().unwrap().signal(), Some(9));
    // The compute kept running; a new daemon takes over.
    assert_eq!(table_checksum(&c, "t").await, sum);
    drop(c);
    let (up2, _) = env.spawn_up(&["--sync-interval", "0.2", "--ship-interval", "0.2"]);
    let _up2 = KillOnDrop(up2);
    env.ok(&["backup", "now", "--no-image"]);
    env.stop_all();
    env.ok(&["check", "--full"]);
    env.ok(&["regions", "check", "--full"]);
    env.ok(&["branch", "create", "after", "--from", "main"]);
    let c = connect(&env.start("after")).await;
    assert_eq!(table_checksum(&c, "t").await, sum);
}
