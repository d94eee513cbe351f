//! Restore end to end, on file regions and real PostgreSQL: disaster recovery of every branch at
//! several points onto an empty machine from one region and its recovery kit; failover to
//! another region for missing and corrupt objects; point-in-time restore around a DROP TABLE;
//! refusals that name the problem and write nothing.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn two_regions(env: &Env) {
    env.write_regions(&format!(
        "min_copies = 2\ndeletion_delay = \"0s\"\n{}\n{}",
        env.file_region("region-a"),
        env.file_region("region-b")
    ));
}

/// An LSN as JSON gives it (`"0/3000150"`), as a number.
fn lsn_of(v: &Value) -> u64 {
    let (hi, lo) = v.as_str().unwrap().split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// `pg_dumpall` as `login` (`user:password` of a superuser, see [`login_of`]).
fn pg_dumpall(port: u16, login: &str) -> String {
    let (user, password) = login.split_once(':').unwrap();
    let out = Command::new(pg_bin().join("pg_dumpall"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user])
        .env("PGPASSWORD", password)
        .output()
        .expect("pg_dumpall");
    assert!(
        out.status.success(),
        "pg_dumpall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    strip_restrict(&String::from_utf8(out.stdout).unwrap())
}

struct Point {
    branch: String,
    flag: &'static str,
    value: String,
    checksum: String,
    dump: String,
}

/// Writes a batch on a compute and records the point just after it, by `flag`.
async fn batch_and_point(
    c: &tokio_postgres::Client,
    port: u16,
    password: &str,
    branch: &str,
    k: i32,
    flag: &'static str,
) -> Point {
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.batch_execute(&format!(
        "INSERT INTO t SELECT g, {k}, md5(g::text || '{branch}{k}') FROM generate_series({}, {}) g",
        k * 1000,
        k * 1000 + 299
    ))
    .await
    .unwrap();
    let value = match flag {
        "--at" => scalar(c, "SELECT pg_current_wal_lsn()::text").await,
        "--at-time" => {
            scalar(
                c,
                "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', \
                 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            )
            .await
        }
        _ => {
            let rp = format!("{branch}_after_{k}");
            c.execute("SELECT pg_create_restore_point($1)", &[&rp])
                .await
                .unwrap();
            rp
        }
    };
    let p = Point {
        branch: branch.to_string(),
        flag,
        value,
        checksum: table_checksum(c, "t").await,
        dump: pg_dumpall(port, password),
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Noise after the point, which a restore at the point must not show.
    c.batch_execute(&format!("UPDATE t SET v = 'after {k}' WHERE batch = {k}"))
        .await
        .unwrap();
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn every_branch_at_three_points_comes_back_from_one_region_on_an_empty_machine() {
    let env = Env::new();
    two_regions(&env);
    env.ok(&["cluster", "create", "shop"]);
    // pg_dumpall needs a superuser (one cluster, so the operator may have one).
    let main_url = env.start_superuser("main");
    let password = login_of(&main_url);
    let main = connect(&main_url).await;
    main.batch_execute("CREATE TABLE t (id int PRIMARY KEY, batch int NOT NULL, v text NOT NULL)")
        .await
        .unwrap();
    let mut points = Vec::new();
    let flags = ["--at", "--at-time", "--at-restore-point"];
    for (k, flag) in flags.iter().enumerate() {
        points.push(
            batch_and_point(
                &main,
                port_of(&main_url),
                &password,
                "main",
                k as i32 + 1,
                flag,
            )
            .await,
        );
    }
    // Two more branches with histories of their own.
    env.ok(&["branch", "create", "dev", "--from", "main"]);
    env.ok(&[
        "branch",
        "create",
        "old",
        "--from",
        "main",
        "--at",
        &points[0].value,
    ]);
    for b in ["dev", "old"] {
        let url = env.start_superuser(b);
        let c = connect(&url).await;
        for (k, flag) in flags.iter().enumerate() {
            points
                .push(batch_and_point(&c, port_of(&url), &password, b, k as i32 + 11, flag).await);
        }
    }
    drop(main);
    env.stop_all();
    env.ok(&["backup", "now"]);
    let kit = env.recovery_kit();

    // Disaster: the appliance's disk and region A are gone.
    std::fs::remove_dir_all(&env.home).unwrap();
    std::fs::remove_dir_all(env.dir.path().join("regions/region-a")).unwrap();
    let dr = env.disaster_recovery_from("region-b");
    for (i, p) in points.iter().enumerate() {
        let target = dr.dir.path().join(format!("restored-{i}"));
        let args = [
            "restore",
            "shop",
            "--branch",
            &p.branch,
            p.flag,
            &p.value,
            "--to-datadir",
            target.to_str().unwrap(),
            "--recovery-kit",
            kit.to_str().unwrap(),
        ];
        // A dry run first: the plan, nothing written.
        let plan = dr.json(&[&args[..], &["--dry-run"]].concat());
        assert!(!target.exists(), "a dry run wrote {}", target.display());
        let started = std::time::Instant::now();
        let report = dr.json(&args);
        // The restore did what the dry run said: the same region and image, every planned
        // layer, and the point at or before the planned one (the record boundary).
        assert_eq!(plan["region"], report["region"]);
        assert_eq!(plan["branch"], p.branch.as_str());
        let fetched: Vec<&Value> = report["layers"].as_array().unwrap().iter().collect();
        assert_eq!(&plan["image_layer"], fetched[0], "{plan}");
        for l in plan["layers"].as_array().unwrap() {
            assert!(fetched.contains(&l), "planned {l}, not fetched: {report}");
        }
        assert!(plan["fetch_bytes"].as_u64().unwrap() > 0, "{plan}");
        assert!(
            lsn_of(&report["lsn"]) <= lsn_of(&plan["lsn"]),
            "restored {} after the planned {}",
            report["lsn"],
            plan["lsn"]
        );
        assert_eq!(report["region"], "region-b");
        assert!(report["substitutions"].as_array().unwrap().is_empty());
        // Each phase did work and was timed; together they fit in the time the test saw.
        let wall = started.elapsed().as_secs_f64();
        let mut sum = 0.0;
        for phase in [
            "fetch_index",
            "fetch_layers",
            "write",
            "wal_replay",
            "first_connection",
        ] {
            let secs = report["phases"][phase].as_f64().unwrap_or(-1.0);
            assert!(secs > 0.0, "phase {phase} not timed: {report}");
            sum += secs;
        }
        assert!(
            sum <= wall,
            "phases sum to {sum} s, the command took {wall} s"
        );
        // Recovery started PostgreSQL and replayed: that is not instantaneous.
        assert!(
            report["phases"]["wal_replay"].as_f64().unwrap() > 0.05,
            "{report}"
        );
        let server = Plain::start(&target);
        let c = connect(&server.url_as(&password)).await;
        assert_eq!(
            table_checksum(&c, "t").await,
            p.checksum,
            "branch {} {} {}: the rows of that point",
            p.branch,
            p.flag,
            p.value
        );
        drop(c);
        let dump = pg_dumpall(server.port, &password);
        assert!(
            p.dump.contains("COPY public.t "),
            "the dump holds the table"
        );
        assert!(
            dump == p.dump,
            "branch {} {} {}: pg_dumpall differs from the source's at that point",
            p.branch,
            p.flag,
            p.value
        );
    }
    // The staging areas are gone; every restore is recorded.
    let staged: Vec<_> = std::fs::read_dir(dr.home.join("restore"))
        .unwrap()
        .flatten()
        .collect();
    assert!(staged.is_empty(), "staging left behind: {staged:?}");
    // Every restore is recorded in the catalog, with its point, region and report.
    use sqlx::{Connection, Row};
    let url = format!("sqlite://{}", dr.home.join("catalog.db").display());
    let mut cat = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let rows = sqlx::query(
        "SELECT branch, point, region, ok, report, started_at, finished_at FROM restores \
         ORDER BY started_at",
    )
    .fetch_all(&mut cat)
    .await
    .unwrap();
    assert_eq!(rows.len(), points.len(), "one row per restore");
    for (row, p) in rows.iter().zip(&points) {
        assert_eq!(row.get::<String, _>("branch"), p.branch);
        assert!(
            row.get::<String, _>("point").contains(&p.value),
            "{}",
            p.value
        );
        assert_eq!(row.get::<String, _>("region"), "region-b");
        assert_eq!(row.get::<i64, _>("ok"), 1);
        assert!(row.get::<i64, _>("finished_at") > row.get::<i64, _>("started_at"));
        let report: serde_json::Value =
            serde_json::from_str(&row.get::<String, _>("report")).unwrap();
        assert!(
            report["phases"]["wal_replay"].as_f64().unwrap() > 0.0,
            "{report}"
        );
    }
}

/// A cluster with data, backed up to both regions; returns the table's checksum.
async fn backed_up(env: &Env) -> String {
    env.ok(&["cluster", "create", "shop"]);
    let c = connect(&env.start("main")).await;
    c.batch_execute(
        "CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 50000) g;",
    )
    .await
    .unwrap();
    let sum = table_checksum(&c, "t").await;
    drop(c);
    env.stop_all();
    env.ok(&["backup", "now"]);
    sum
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_missing_or_corrupt_in_the_preferred_region_come_from_the_other() {
    let env = Env::new();
    two_regions(&env);
    let sum = backed_up(&env).await;
    // Which layers the latest point needs, read from an undamaged region A first.
    let probe = env.json(&[
        "restore",
        "shop",
        "--region",
        "region-a",
        "--to-datadir",
        env.dir.path().join("probe").to_str().unwrap(),
        "--no-recover",
    ]);
    assert!(probe["substitutions"].as_array().unwrap().is_empty());
    let needed: Vec<String> = probe["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert!(needed.len() >= 2, "{probe}");
    let unneeded: Vec<String> = env
        .layers()
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .filter(|id| !needed.contains(id))
        .collect();
    assert!(
        !unneeded.is_empty(),
        "a layer the point does not need (WAL before its image)"
    );
    // Damage a strict subset of region A: one needed layer deleted, one corrupted, and one
    // layer the point does not need corrupted too; the rest intact.
    let root = env.region_root("region-a");
    let object_of = |id: &str| {
        env.region_objects("region-a")
            .into_iter()
            .find(|k| k.ends_with(&format!("layers/{id}")))
            .unwrap_or_else(|| panic!("layer {id} in region-a"))
    };
    // `from_end`: a byte that far from the end (in a WAL layer, its metadata), else byte 200.
    let corrupt = |k: &str, from_end: Option<usize>| {
        let p = root.join(k);
        let mut b = std::fs::read(&p).unwrap();
        let at = from_end.map_or(200, |d| b.len() - d);
        b[at] ^= 0x5a;
        std::fs::write(&p, b).unwrap();
    };
    std::fs::remove_file(root.join(object_of(&needed[0]))).unwrap();
    corrupt(&object_of(&needed[1]), Some(100));
    // Its data, not its metadata: the restore reads the tail of every WAL layer on the branch.
    corrupt(&object_of(&unneeded[0]), None);
    let damaged = [needed[0].clone(), needed[1].clone()];
    let target = env.dir.path().join("restored");
    let report = env.json(&[
        "restore",
        "shop",
        "--region",
        "region-a",
        "--to-datadir",
        target.to_str().unwrap(),
    ]);
    assert_eq!(
        report["region"], "region-a",
        "indexes from the preferred region"
    );
    let subs = report["substitutions"].as_array().unwrap();
    for s in subs {
        assert_eq!(s["region"], "region-a", "{s}");
        assert_eq!(s["served_by"], "region-b", "{s}");
    }
    // Exactly the damaged layers the point needs are listed as layers; the damaged layer it
    // does not need only where its metadata was read (a WAL layer's tail, read for every WAL
    // layer on the branch); nothing intact is listed.
    let objects: Vec<&str> = subs.iter().map(|s| s["object"].as_str().unwrap()).collect();
    let ids: std::collections::BTreeSet<&str> = objects
        .iter()
        .map(|o| o.rsplit(' ').next().unwrap())
        .collect();
    let mut expected: std::collections::BTreeSet<&str> =
        damaged.iter().map(String::as_str).collect();
    if objects.iter().any(|o| o.ends_with(unneeded[0].as_str())) {
        expected.insert(unneeded[0].as_str());
    }
    assert_eq!(ids, expected, "substitutions: {report}");
    for d in &damaged {
        assert!(
            objects
                .iter()
                .any(|o| o.ends_with(&format!("layer {d}")) && !o.starts_with("metadata")),
            "{d} listed as a layer: {objects:?}"
        );
    }
    assert!(
        objects
            .iter()
            .filter(|o| o.ends_with(unneeded[0].as_str()))
            .all(|o| o.starts_with("metadata of WAL layer")),
        "the layer the point does not need is never downloaded: {objects:?}"
    );
    let reasons: Vec<&str> = subs.iter().map(|s| s["reason"].as_str().unwrap()).collect();
    assert!(reasons.iter().any(|r| r.contains("missing")), "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("authentication") || r.contains("hash")),
        "{reasons:?}"
    );
    let server = Plain::start(&target);
    let pw = login_of(&env.start("main"));
    env.stop_all();
    let c = connect(&server.url_as(&pw)).await;
    assert_eq!(table_checksum(&c, "t").await, sum);
    drop(c);
    drop(server);

    // The same restore as a branch of this appliance, with a compute on it.
    let out = env.ok(&[
        "restore",
        "shop",
        "--region",
        "region-a",
        "--as-branch",
        "restored",
    ]);
    assert!(out.contains("served by 'region-b'"), "{out}");
    let b = env.branch("restored");
    assert_eq!(b["parent"], "main");
    let list = env.json(&["compute", "list"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|c| c["branch"] == "restored" && c["state"] == "running"),
        "{list}"
    );
    let c = connect(&env.start("restored")).await;
    assert_eq!(table_checksum(&c, "t").await, sum);
    c.batch_execute("INSERT INTO t VALUES (-1, 'written on the restored branch')")
        .await
        .unwrap();
    drop(c);
    env.stop_all();
    let c = connect(&env.start("main")).await;
    assert_eq!(table_checksum(&c, "t").await, sum, "main untouched");
    drop(c);
    env.stop_all();

    // The layer deleted from region A corrupted in region B too: no region has it intact.
    let b_root = env.region_root("region-b");
    let in_b = env
        .region_objects("region-b")
        .into_iter()
        .find(|k| k.ends_with(&format!("layers/{}", needed[0])))
        .unwrap();
    let p = b_root.join(&in_b);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[200] ^= 0x5a;
    std::fs::write(&p, bytes).unwrap();
    let nowhere = env.dir.path().join("nowhere");
    let err = env.fail(&[
        "restore",
        "shop",
        "--region",
        "region-a",
        "--to-datadir",
        nowhere.to_str().unwrap(),
    ]);
    assert!(
        err.contains(needed[0].as_str())
            && err.contains("could not be fetched intact from any region")
            && err.contains("regions repair"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(&nowhere)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "a failed restore leaves no data directory: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_table_is_there_just_before_and_gone_just_after() {
    let env = Env::new();
    two_regions(&env);
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    let password = login_of(&url);
    let c = connect(&url).await;
    c.batch_execute(
        "CREATE TABLE precious AS SELECT g, md5(g::text) AS h FROM generate_series(1, 20000) g;
         CREATE TABLE other (x int);",
    )
    .await
    .unwrap();
    let sum = table_checksum(&c, "precious").await;
    // The times bracket the DROP's commit tightly: one read just before it is sent, one just
    // after it returned, and the next commit (into `other`) follows within milliseconds.
    let now = "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', \
               'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";
    let before = scalar(&c, now).await;
    c.batch_execute("DROP TABLE precious").await.unwrap();
    let after = scalar(&c, now).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.batch_execute("INSERT INTO other VALUES (1)")
        .await
        .unwrap();
    drop(c);
    env.stop_all();
    env.ok(&["backup", "now"]);
    for (name, at, present) in [("before", &before, true), ("after", &after, false)] {
        let target = env.dir.path().join(name);
        let dry = env.ok(&[
            "restore",
            "shop",
            "--at-time",
            at,
            "--to-datadir",
            target.to_str().unwrap(),
            "--dry-run",
        ]);
        assert!(
            dry.contains("would restore cluster 'shop'")
                && dry.contains("nothing was written")
                && !target.exists(),
            "{dry}"
        );
        env.ok(&[
            "restore",
            "shop",
            "--at-time",
            at,
            "--to-datadir",
            target.to_str().unwrap(),
        ]);
        let server = Plain::start(&target);
        let c = connect(&server.url_as(&password)).await;
        let exists = scalar(&c, "SELECT (to_regclass('precious') IS NOT NULL)::text").await;
        assert_eq!(exists, present.to_string(), "{name} the drop");
        if present {
            assert_eq!(table_checksum(&c, "precious").await, sum, "all rows");
        }
        // Recovery stopped at the time, not at the end: the later commit is not there.
        assert_eq!(
            scalar(&c, "SELECT count(*)::text FROM other").await,
            "0",
            "{name}: the insert after the drop"
        );
    }

    // Refusals: nothing written, the reason and the way out named; a dry run refuses alike.
    let used = env.dir.path().join("before");
    let fresh = env.dir.path().join("never");
    for dry in [&[][..], &["--dry-run"][..]] {
        let refused = |args: &[&str]| env.fail(&[args, dry].concat());
        let err = refused(&["restore", "shop", "--to-datadir", used.to_str().unwrap()]);
        assert!(err.contains("not empty"), "{dry:?}: {err}");
        let err = refused(&[
            "restore",
            "shop",
            "--at",
            "0/10",
            "--to-datadir",
            fresh.to_str().unwrap(),
        ]);
        assert!(err.contains("reconstructible:"), "{dry:?}: {err}");
        assert!(!fresh.exists(), "nothing written for a refused restore");
        let err = refused(&["restore", "nosuch", "--to-datadir", fresh.to_str().unwrap()]);
        assert!(
            err.contains("holds no backup of cluster 'nosuch'"),
            "{dry:?}: {err}"
        );
        let err = refused(&[
            "restore",
            "shop",
            "--branch",
            "nosuch",
            "--to-datadir",
            fresh.to_str().unwrap(),
        ]);
        assert!(
            err.contains("branch 'nosuch'") && err.contains("main"),
            "{dry:?}: {err}"
        );
        let err = refused(&["restore", "shop", "--as-branch", "main"]);
        assert!(err.contains("already exists"), "{dry:?}: {err}");
        assert!(!fresh.exists());
    }
}

/// Every regular file below `root` with its contents, by relative path.
fn tree(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(dir: &Path, root: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                out.insert(format!("{rel}/"), vec![]);
                walk(&p, root, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delta_restore_rewrites_a_small_fraction_and_equals_a_fresh_restore() {
    let env = Env::new();
    two_regions(&env);
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    let password = login_of(&url);
    let c = connect(&url).await;
    c.batch_execute(
        "CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 200000) g;",
    )
    .await
    .unwrap();
    // Settle hint bits and the visibility map first: they are changes too.
    c.batch_execute("VACUUM FREEZE t").await.unwrap();
    drop(c);
    env.stop_all();
    env.ok(&["backup", "now"]);
    let d = env.dir.path().join("delta");
    env.ok(&["restore", "shop", "--to-datadir", d.to_str().unwrap()]);
    // A small change, backed up.
    let c = connect(&env.start("main")).await;
    c.batch_execute("UPDATE t SET h = 'changed' WHERE g <= 20")
        .await
        .unwrap();
    let sum = table_checksum(&c, "t").await;
    drop(c);
    env.stop_all();
    env.ok(&["backup", "now"]);
    // Stray files a fresh restore would not have.
    std::fs::write(d.join("stray.txt"), b"not in the image").unwrap();
    // What the delta writes is counted twice: as cairn reports it, and by the kernel (every
    // write system call into the directory, seen by strace).
    let (out, per_file) = env.ok_counting_writes(
        &[
            "restore",
            "shop",
            "--to-datadir",
            d.to_str().unwrap(),
            "--delta",
            "--no-recover",
            "--json",
        ],
        &d,
    );
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (reported, data) = (
        r["written_bytes"].as_u64().unwrap(),
        r["data_bytes"].as_u64().unwrap(),
    );
    let traced: u64 = per_file.values().sum();
    let mut biggest: Vec<_> = per_file.iter().collect();
    biggest.sort_by_key(|(_, n)| std::cmp::Reverse(**n));
    println!("most written: {:?}", &biggest[..biggest.len().min(8)]);
    let ratio = traced as f64 / data as f64;
    println!(
        "delta restore wrote {traced} bytes into the directory (reported {reported}) \
         of {data} bytes of data ({:.2} %)",
        ratio * 100.0
    );
    assert!(data > 10 << 20, "{r}");
    assert!(
        ratio < 0.10,
        "delta wrote {:.1} % of the data into the directory",
        ratio * 100.0
    );
    // The changed pages at least (20 rows: one or two heap pages). Outside pg_wal, what the
    // kernel saw is what cairn reports for the data files plus the few small files a restore
    // always writes (backup_label): the report is checked, not taken on trust.
    assert!(traced >= 8192, "nothing written: {traced}");
    let outside_wal: u64 = per_file
        .iter()
        .filter(|(p, _)| !p.starts_with("pg_wal/"))
        .map(|(_, n)| n)
        .sum();
    assert!(
        reported > 0 && reported <= outside_wal && outside_wal <= reported + (64 << 10),
        "reported {reported} bytes of data files, the kernel saw {outside_wal} outside pg_wal"
    );
    assert!(r["removed"].as_u64().unwrap() >= 1, "{r}");
    let fresh = env.dir.path().join("fresh");
    env.ok(&[
        "restore",
        "shop",
        "--to-datadir",
        fresh.to_str().unwrap(),
        "--no-recover",
    ]);
    let (a, b) = (tree(&d), tree(&fresh));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "same files"
    );
    for (k, v) in &a {
        assert!(v == &b[k], "{k} differs from a fresh restore");
    }
    let server = Plain::start(&d);
    let c = connect(&server.url_as(&password)).await;
    assert_eq!(table_checksum(&c, "t").await, sum);
    drop(c);
    // Not over a running server: refused, and the server keeps serving the same rows.
    let err = env.fail(&[
        "restore",
        "shop",
        "--to-datadir",
        d.to_str().unwrap(),
        "--delta",
        "--no-recover",
    ]);
    assert!(err.contains("running"), "{err}");
    let c = connect(&server.url_as(&password)).await;
    assert_eq!(table_checksum(&c, "t").await, sum);
    drop(c);
    drop(server);
    // Refusals: a running server, a directory of something else.
    let other = env.dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"x").unwrap();
    let err = env.fail(&[
        "restore",
        "shop",
        "--to-datadir",
        other.to_str().unwrap(),
        "--delta",
    ]);
    assert!(err.contains("not a PostgreSQL data directory"), "{err}");
    assert!(other.join("notes.txt").exists(), "left untouched");
}
