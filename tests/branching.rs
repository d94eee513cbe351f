//! Branching with real PostgreSQL: rows with known contents are written at known LSNs, times
//! and restore points; a branch at each point, by each kind of target, must show exactly the
//! rows of that point, and writes on a branch never show up on its parent or its siblings.

mod common;

use std::time::Duration;

use common::*;

struct Point {
    lsn: String,
    time: String,
    restore_point: String,
    checksum: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn branches_at_lsn_time_and_restore_point_show_exactly_that_point() {
    let env = Env::new();
    env.ok(&["cluster", "create", "shop"]);
    let main_url = env.start("main");
    let main = connect(&main_url).await;
    main.batch_execute("CREATE TABLE t (id int PRIMARY KEY, batch int NOT NULL, v text NOT NULL)")
        .await
        .unwrap();

    let mut points = Vec::new();
    for k in 1..=3 {
        // A second apart, so that time targets fall cleanly between batches.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        main.batch_execute(&format!(
            "INSERT INTO t SELECT g, {k}, md5(g::text || '{k}') FROM generate_series({}, {}) g",
            k * 1000,
            k * 1000 + 199
        ))
        .await
        .unwrap();
        let rp = format!("after_batch_{k}");
        main.execute("SELECT pg_create_restore_point($1)", &[&rp])
            .await
            .unwrap();
        let lsn = scalar(&main, "SELECT pg_current_wal_lsn()::text").await;
        let time = scalar(&main, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')").await;
        let checksum = table_checksum(&main, "t").await;
        points.push(Point {
            lsn,
            time,
            restore_point: rp,
            checksum,
        });
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // Noise after the point that no branch at the point may see.
        main.batch_execute(&format!(
            "UPDATE t SET v = 'changed after {k}' WHERE batch = {k}"
        ))
        .await
        .unwrap();
    }
    let final_main = table_checksum(&main, "t").await;

    for (i, p) in points.iter().enumerate() {
        for (kind, flag, value) in [
            ("lsn", "--at", &p.lsn),
            ("time", "--at-time", &p.time),
            ("rp", "--at-restore-point", &p.restore_point),
        ] {
            let name = format!("b{}-{kind}", i + 1);
            env.ok(&["branch", "create", &name, "--from", "main", flag, value]);
            let url = env.start(&name);
            let c = connect(&url).await;
            assert_eq!(
                table_checksum(&c, "t").await,
                p.checksum,
                "branch {name} ({flag} {value}) does not show exactly point {}",
                i + 1
            );
            drop(c);
            env.ok(&["compute", "stop", &name]);
        }
    }

    // Writes on a branch stay on that branch.
    let a = connect(&env.start("b2-lsn")).await;
    let b = connect(&env.start("b2-time")).await;
    a.batch_execute("INSERT INTO t VALUES (-1, 0, 'only on b2-lsn')")
        .await
        .unwrap();
    b.batch_execute("DELETE FROM t WHERE batch = 1")
        .await
        .unwrap();
    main.batch_execute("INSERT INTO t VALUES (-2, 0, 'only on main')")
        .await
        .unwrap();
    assert_eq!(
        scalar(&a, "SELECT count(*)::text FROM t WHERE id = -1").await,
        "1"
    );
    assert_eq!(
        scalar(&a, "SELECT count(*)::text FROM t WHERE id = -2").await,
        "0"
    );
    assert_eq!(
        scalar(&a, "SELECT count(*)::text FROM t WHERE batch = 1").await,
        "200"
    );
    assert_eq!(
        scalar(&b, "SELECT count(*)::text FROM t WHERE id = -1").await,
        "0"
    );
    assert_eq!(
        scalar(&b, "SELECT count(*)::text FROM t WHERE batch = 1").await,
        "0"
    );
    assert_eq!(
        scalar(&main, "SELECT count(*)::text FROM t WHERE id = -1").await,
        "0"
    );
    assert_eq!(
        scalar(&main, "SELECT count(*)::text FROM t WHERE batch = 1").await,
        "200"
    );

    // What a branch wrote survives a stop and a restart; so does the parent's state.
    let a_sum = table_checksum(&a, "t").await;
    drop(a);
    env.ok(&["compute", "stop", "b2-lsn"]);
    let a = connect(&env.start("b2-lsn")).await;
    assert_eq!(table_checksum(&a, "t").await, a_sum);

    // A branch of a branch, at its head: sees its parent's own write.
    env.ok(&["branch", "create", "b2-child", "--from", "b2-lsn"]);
    let child = connect(&env.start("b2-child")).await;
    assert_eq!(table_checksum(&child, "t").await, a_sum);
    child
        .batch_execute("INSERT INTO t VALUES (-3, 0, 'grandchild')")
        .await
        .unwrap();
    assert_eq!(
        scalar(&a, "SELECT count(*)::text FROM t WHERE id = -3").await,
        "0"
    );

    // Main after its own stop and restart still has everything it wrote.
    let main_sum = table_checksum(&main, "t").await;
    assert_ne!(
        main_sum, final_main,
        "main's last insert is part of its state"
    );
    drop(main);
    env.ok(&["compute", "stop", "main"]);
    let main = connect(&env.start("main")).await;
    assert_eq!(table_checksum(&main, "t").await, main_sum);

    // The tree shows every branch with its parent.
    let list = env.json(&["branch", "list"]);
    let parent_of = |n: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == n)
            .map(|b| b["parent"].clone())
            .unwrap()
    };
    assert_eq!(parent_of("b2-child"), "b2-lsn");
    assert_eq!(parent_of("b3-rp"), "main");
    assert!(parent_of("main").is_null());
    env.stop_all();
    env.ok(&["check", "--full"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_rewinds_and_keeps_a_backup_branch_and_delete_is_guarded() {
    let env = Env::new();
    env.ok(&["cluster", "create", "app"]);
    let url = env.start("main");
    let c = connect(&url).await;
    c.batch_execute("CREATE TABLE t (i int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let before = scalar(&c, "SELECT pg_current_wal_lsn()::text").await;
    c.batch_execute("INSERT INTO t VALUES (2)").await.unwrap();
    drop(c);
    env.ok(&["branch", "create", "dev", "--from", "main"]);
    let dev = connect(&env.start("dev")).await;
    dev.batch_execute("INSERT INTO t VALUES (3)").await.unwrap();
    drop(dev);

    // Reset refuses while a compute runs, then works and keeps the old state.
    let err = env.fail(&["branch", "reset", "dev", "--to", &before]);
    assert!(err.contains("stop it first"), "{err}");
    env.ok(&["compute", "stop", "dev"]);
    let out = env.json(&["branch", "reset", "dev", "--to", &before]);
    let backup = out["backup_branch"].as_str().unwrap().to_string();
    assert!(backup.starts_with("dev-pre-reset-"), "{backup}");
    let dev = connect(&env.start("dev")).await;
    assert_eq!(
        scalar(&dev, "SELECT string_agg(i::text, ',' ORDER BY i) FROM t").await,
        "1"
    );
    let old = connect(&env.start(&backup)).await;
    assert_eq!(
        scalar(&old, "SELECT string_agg(i::text, ',' ORDER BY i) FROM t").await,
        "1,2,3"
    );
    drop((dev, old));
    env.stop_all();

    // Delete: refused for protected branches and for branches with children.
    let err = env.fail(&["branch", "delete", "main"]);
    assert!(err.contains("protected"), "{err}");
    let err = env.fail(&["branch", "delete", &backup]);
    assert!(
        err.contains("child branches") && err.contains("dev"),
        "{err}"
    );
    env.ok(&["branch", "delete", "dev"]);
    env.ok(&["branch", "delete", &backup]);
    let names: Vec<String> = env
        .json(&["branch", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["main"]);
    env.ok(&["check", "--full"]);
}
