//! Branching with real PostgreSQL: rows with known contents are written at known LSNs, times
//! and restore points; a branch at each point, by each kind of target, must show exactly the
//! rows of that point, and writes on a branch never show up on its parent or its siblings.

mod common;

use std::time::Duration;

use common::*;

struct Point {
    lsn: String,
    time: String,
    /// The same instant as `time`, written with another UTC offset.
    time_elsewhere: String,
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
        // Milliseconds apart: time targets resolve to the microsecond, not to a second.
        tokio::time::sleep(Duration::from_millis(20)).await;
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
        // One instant, in UTC and elsewhere: RFC 3339 at +05:30, PostgreSQL's format at -03.
        let (zone, format) = if k % 2 == 0 {
            ("05:30", "YYYY-MM-DD\"T\"HH24:MI:SS.US\"+05:30\"")
        } else {
            ("-03:00", "YYYY-MM-DD HH24:MI:SS.US\"-03\"")
        };
        let row = main
            .query_one(
                &format!(
                    "SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                            to_char(t AT TIME ZONE INTERVAL '{zone}', '{format}') \
                     FROM (SELECT clock_timestamp() AS t) s"
                ),
                &[],
            )
            .await
            .unwrap();
        let (time, time_elsewhere): (String, String) = (row.get(0), row.get(1));
        let checksum = table_checksum(&main, "t").await;
        points.push(Point {
            lsn,
            time,
            time_elsewhere,
            restore_point: rp,
            checksum,
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
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
            ("zone", "--at-time", &p.time_elsewhere),
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

/// One commit record as `pg_waldump` describes it: (start, position after its last byte, its
/// end as PostgreSQL counts it (MAXALIGNed), commit time as RFC 3339).
fn commit_record(
    pg_wal: &std::path::Path,
    from: &str,
    to: &str,
    xid: &str,
) -> (u64, u64, u64, String) {
    let out = std::process::Command::new(pg_bin().join("pg_waldump"))
        .arg("-p")
        .arg(pg_wal)
        .args(["-s", from, "-e", to, "-r", "Transaction"])
        .env("TZ", "UTC")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| {
            l.split("tx:")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .is_some_and(|t| t.trim() == xid)
                && l.contains("desc: COMMIT")
        })
        .unwrap_or_else(|| {
            panic!(
                "no commit of {xid} in:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let tot: u64 = line
        .split("len (rec/tot):")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.split('/').nth(1))
        .map(|s| s.trim().parse().unwrap())
        .unwrap();
    let start = lsn(line
        .split("lsn: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap());
    let ts = line.split("desc: COMMIT ").nth(1).unwrap();
    // "2026-11-28 13:05:01.123456 UTC" (microseconds may be absent when zero).
    let ts = ts
        .split(';')
        .next()
        .unwrap()
        .trim()
        .trim_end_matches(" UTC");
    let t = chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%d %H:%M:%S%.f").unwrap();
    let end = (start + tot).div_ceil(8) * 8;
    (
        start,
        start + tot,
        end,
        t.and_utc()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    )
}

fn fmt_lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xFFFF_FFFF)
}

fn minus_micro(t: &str) -> String {
    (chrono::DateTime::parse_from_rfc3339(t).unwrap() - chrono::Duration::microseconds(1))
        .to_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The edges of "exactly that point": a branch at a commit record's end includes it (also in
/// the alignment padding after its last byte), at its last byte or its start does not; a time equal to a commit's timestamp
/// includes it, a microsecond earlier does not. Commits are milliseconds apart, not seconds.
#[tokio::test(flavor = "multi_thread")]
async fn branch_points_are_exact_to_the_record_and_the_microsecond() {
    let env = Env::new();
    env.ok(&["cluster", "create", "shop"]);
    let c = connect(&env.start("main")).await;
    c.batch_execute("CREATE TABLE t (i int)").await.unwrap();
    let before = scalar(&c, "SELECT pg_current_wal_insert_lsn()::text").await;
    let xid_a = scalar(
        &c,
        "INSERT INTO t VALUES (1) RETURNING pg_current_xact_id()::text",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(3)).await;
    let xid_b = scalar(
        &c,
        "INSERT INTO t VALUES (2) RETURNING pg_current_xact_id()::text",
    )
    .await;
    let after = scalar(&c, "SELECT pg_current_wal_insert_lsn()::text").await;
    c.batch_execute("INSERT INTO t VALUES (3)").await.unwrap();
    drop(c);
    let datadir = env.json(&["compute", "start", "main"])["datadir"]
        .as_str()
        .unwrap()
        .to_string();
    let pg_wal = std::path::Path::new(&datadir).join("pg_wal");
    let (start_a, last_a, end_a, time_a) = commit_record(&pg_wal, &before, &after, &xid_a);
    let (_, _, end_b, time_b) = commit_record(&pg_wal, &before, &after, &xid_b);
    assert!(time_a < time_b, "{time_a} {time_b}");
    env.ok(&["compute", "stop", "main"]);

    let cases: Vec<(&str, String, &str)> = vec![
        ("--at", fmt_lsn(end_a), "1"),
        ("--at", fmt_lsn(last_a), "1"),
        ("--at", fmt_lsn(last_a - 1), ""),
        ("--at", fmt_lsn(start_a + 8), ""),
        ("--at", fmt_lsn(start_a), ""),
        ("--at", fmt_lsn(end_b), "1,2"),
        ("--at-time", time_a.clone(), "1"),
        ("--at-time", minus_micro(&time_a), ""),
        ("--at-time", minus_micro(&time_b), "1"),
        ("--at-time", time_b.clone(), "1,2"),
    ];
    for (i, (flag, value, rows)) in cases.iter().enumerate() {
        let name = format!("edge{i}");
        env.ok(&["branch", "create", &name, "--from", "main", flag, value]);
        let c = connect(&env.start(&name)).await;
        let got = scalar(
            &c,
            "SELECT coalesce(string_agg(i::text, ',' ORDER BY i), '') FROM t",
        )
        .await;
        assert_eq!(&got, rows, "branch {flag} {value}");
        drop(c);
        env.ok(&["compute", "stop", &name]);
    }
}

fn lsn(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}
