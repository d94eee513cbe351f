//! Retention soak (slow, not part of the test command): `cairn up` under a steady pgbench load
//! with a short PITR window, an image every minute and WAL compaction of layers 30 s old, for
//! `CAIRN_SOAK_SECONDS` (default 300).
//! Local layers (count, and bytes per byte of the database, which grows), region objects and
//! the catalog's layer rows are sampled every 15 s; once the window has filled (the second
//! half of the run) none of them grows beyond what it was in the first half of that half. Then the window's start, four points spread over it and the head
//! restore from the regions, each with the pgbench history rows main had at that time.
//!
//! Run: `cargo test --release --test retention_soak -- --ignored --nocapture`
//! (`CAIRN_SOAK_SECONDS=3600 CAIRN_SOAK_PITR=15m` for the hour-long run with a 15-minute window).

mod common;

use common::*;

/// The catalog tables that hold one row per layer, shipment or queued deletion.
const TABLES: [&str; 7] = [
    "layers",
    "layer_refs",
    "wal_layer_txns",
    "wal_markers",
    "shipments",
    "layer_keys",
    "deletions",
];

/// Main's pgbench history rows, counted between two instants.
#[derive(Debug)]
struct Counted {
    before: chrono::DateTime<chrono::Utc>,
    after: chrono::DateTime<chrono::Utc>,
    rows: i64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    secs: u64,
    layers: usize,
    layer_bytes: u64,
    /// The database's size: the logical size of the newest image (it grows with
    /// pgbench_history, and the images with it).
    db_bytes: u64,
    region_objects: usize,
    catalog_rows: i64,
    /// The same rows table by table (for telling which one grows).
    tables: [i64; TABLES.len()],
    /// The job history (one run per image here): kept as a record, not pruned with the layers.
    job_runs: i64,
}

async fn catalog_rows(home: &std::path::Path) -> [i64; TABLES.len()] {
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}?mode=ro", home.join("catalog.db").display());
    let pool = sqlx::AnyPool::connect(&url)
        .await
        .expect("open the catalog");
    let mut n = [0; TABLES.len()];
    for (i, table) in TABLES.iter().enumerate() {
        let c: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("count {table}: {e}"));
        n[i] = c;
    }
    pool.close().await;
    n
}

/// Seconds in a soak window such as `90s`, `1m` or `15m`.
fn pitr_seconds(s: &str) -> i64 {
    let (n, unit) = s.split_at(s.len() - 1);
    let n: i64 = n.parse().expect("CAIRN_SOAK_PITR: a number and s, m or h");
    n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => panic!("CAIRN_SOAK_PITR: a number and s, m or h, not {s}"),
    }
}

async fn job_runs(home: &std::path::Path) -> i64 {
    let url = format!("sqlite://{}?mode=ro", home.join("catalog.db").display());
    let pool = sqlx::AnyPool::connect(&url)
        .await
        .expect("open the catalog");
    let n = sqlx::query_scalar("SELECT COUNT(*) FROM job_runs")
        .fetch_one(&pool)
        .await
        .expect("count job_runs");
    pool.close().await;
    n
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "slow soak: run with --ignored (see the header)"]
async fn stores_stop_growing_once_retention_is_in_force() {
    let seconds: u64 = std::env::var("CAIRN_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let pitr = std::env::var("CAIRN_SOAK_PITR").unwrap_or_else(|_| "1m".into());
    let env = Env::new();
    env.write_regions(&format!(
        "min_copies = 2\ndeletion_delay = \"0s\"\n{}\n{}",
        env.file_region("region-a"),
        env.file_region("region-b")
    ));
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    let bench = |args: &[&str]| {
        let out = std::process::Command::new(pg_bin().join("pgbench"))
            .args(args)
            .arg(&url)
            .output()
            .expect("run pgbench");
        assert!(
            out.status.success(),
            "pgbench {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    bench(&["-i", "-s", "2", "-q"]);
    let dir = env.home.join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("soak.toml"),
        format!(
            "clusters = [\"shop\"]\n[objectives]\nrpo = \"1m\"\nrto = \"1h\"\n\
             [schedules]\nimage = \"0 * * * * *\"\n\
             [retention]\npitr = \"{pitr}\"\nmin_retention = \"0s\"\n\
             [regions]\nuse = [\"region-a\", \"region-b\"]\nmin_copies = 2\n"
        ),
    )
    .unwrap();
    env.ok(&["policy", "apply", "--by", "soak"]);
    let (up, _port) = env.spawn_up(&[
        "--sync-interval",
        "2",
        "--image-after",
        "100GiB",
        "--ship-interval",
        "2",
        "--compact-after",
        "30s",
    ]);
    let up = KillOnDrop(up);
    let load = {
        let url = url.clone();
        let secs = seconds.to_string();
        std::thread::spawn(move || {
            std::process::Command::new(pg_bin().join("pgbench"))
                .args(["-T", &secs, "-R", "100", "-c", "2", "-n"])
                .arg(&url)
                .output()
                .expect("run pgbench")
        })
    };
    let started = std::time::Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let main = connect(&url).await;
    let mut counts: Vec<Counted> = Vec::new();
    while started.elapsed().as_secs() < seconds {
        std::thread::sleep(std::time::Duration::from_secs(15));
        let before = chrono::Utc::now();
        let rows: i64 = main
            .query_one("SELECT count(*) FROM pgbench_history", &[])
            .await
            .expect("count pgbench_history on main")
            .get(0);
        counts.push(Counted {
            before,
            after: chrono::Utc::now(),
            rows,
        });
        let layers = env.layers();
        let tables = catalog_rows(&env.home).await;
        let s = Sample {
            secs: started.elapsed().as_secs(),
            layers: layers.len(),
            layer_bytes: layers
                .iter()
                .map(|l| l["file_size"].as_u64().unwrap())
                .sum(),
            db_bytes: layers
                .iter()
                .filter(|l| l["kind"] == "image")
                .max_by_key(|l| l["created_at_us"].as_i64())
                .and_then(|l| l["logical_size"].as_u64())
                .unwrap_or(0),
            region_objects: env.region_objects("region-a").len(),
            catalog_rows: tables.iter().sum(),
            tables,
            job_runs: job_runs(&env.home).await,
        };
        println!("{s:?}");
        samples.push(s);
    }
    drop(main);
    let out = load.join().expect("pgbench thread");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(up);

    // Retention, WAL compaction, the deletion queue and shipping ran without failing (a
    // failed pass is only logged: retention, compaction and the queue change nothing,
    // shipping leaves the regions behind); compaction merged layers.
    let log = std::fs::read_to_string(env.dir.path().join("up.log")).expect("cairn up's log");
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("WARN")
                && [
                    "retention",
                    "WAL compaction",
                    "deletion queue",
                    "shipping failed",
                ]
                .iter()
                .any(|w| l.contains(w))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "failed in cairn up:\n{}",
        failed.join("\n")
    );
    let compactions: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("compaction: cluster 'shop'"))
        .collect();
    println!(
        "{} compaction pass(es), the last: {}",
        compactions.len(),
        compactions.last().unwrap_or(&"none")
    );
    assert!(!compactions.is_empty(), "cairn up never compacted WAL");

    // The second half against the first half of it: no store keeps growing.
    let half = samples.len() / 2;
    let tail = &samples[half..];
    let (early, late) = tail.split_at(tail.len() / 2);
    let max = |s: &[Sample], f: fn(&Sample) -> f64| s.iter().map(f).fold(0.0, f64::max);
    type Measure = (&'static str, fn(&Sample) -> f64);
    // Layer bytes against the database's size: the database grows (pgbench_history gains a
    // row per transaction) and every image holds all of it, so the bytes alone grow with it.
    println!(
        "local layer bytes: max {} then {} (raw), database {} then {}",
        max(early, |s| s.layer_bytes as f64),
        max(late, |s| s.layer_bytes as f64),
        max(early, |s| s.db_bytes as f64),
        max(late, |s| s.db_bytes as f64)
    );
    let measures: [Measure; 4] = [
        ("local layers", |s| s.layers as f64),
        ("local layer bytes per database byte", |s| {
            s.layer_bytes as f64 / s.db_bytes.max(1) as f64
        }),
        ("region objects", |s| s.region_objects as f64),
        ("catalog rows", |s| s.catalog_rows as f64),
    ];
    for (i, table) in TABLES.iter().enumerate() {
        let m = |s: &[Sample]| s.iter().map(|s| s.tables[i]).max().unwrap_or(0);
        println!("  {table}: max {} then {}", m(early), m(late));
    }
    for (what, f) in measures {
        let (e, l) = (max(early, f), max(late, f));
        println!(
            "{what}: max {e} in [{}s, {}s], {l} after",
            early[0].secs, late[0].secs
        );
        assert!(
            l <= e * 1.25 + 4.0,
            "{what} keeps growing: {e} then {l}\n{samples:#?}"
        );
    }

    // The job history grows by one run per image: a record kept for its own sake (reported,
    // not held to the layers' bound).
    println!(
        "job runs: {} at {}s, {} at {}s",
        early[0].job_runs,
        early[0].secs,
        late[late.len() - 1].job_runs,
        late[late.len() - 1].secs
    );

    // Points across the window restore from a region, regions taken in turn: its start (plus
    // a few seconds: the clock moved since the last retention run left it), four points
    // spread over it up to 20 s ago, and the latest. Each restored branch starts, and its
    // history table (one row per pgbench transaction) has as many rows as main had then (between
    // main's counts just before and after) and never fewer than the point before.
    let window = pitr_seconds(&pitr);
    let now = chrono::Utc::now();
    let from = window - 5;
    let mut rows_before = 0i64;
    let counts = &counts;
    for (i, back) in (0..5).map(|k| from - (from - 20) * k / 4).enumerate() {
        let at = (now - chrono::Duration::seconds(back))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let branch = format!("soak-{i}");
        let region = ["region-a", "region-b"][i % 2];
        env.ok(&[
            "restore",
            "shop",
            "--at-time",
            &at,
            "--region",
            region,
            "--as-branch",
            &branch,
        ]);
        rows_before = history_rows(&env, &branch, rows_before, &at).await;
        let at = chrono::DateTime::parse_from_rfc3339(&at).unwrap().to_utc();
        for c in counts {
            // Commit times and the restore target have a second's play either way.
            if c.after + chrono::Duration::seconds(1) < at {
                assert!(
                    rows_before >= c.rows,
                    "{at}: {rows_before} rows, main had {c:?}"
                );
            }
            if c.before > at + chrono::Duration::seconds(1) {
                assert!(
                    rows_before <= c.rows,
                    "{at}: {rows_before} rows, main had {c:?}"
                );
            }
        }
    }
    env.ok(&[
        "restore",
        "shop",
        "--latest",
        "--region",
        "region-b",
        "--as-branch",
        "soak-head",
    ]);
    history_rows(&env, "soak-head", rows_before, "the latest point").await;
    env.stop_all();
}

/// Starts `branch`, counts its pgbench history rows, stops it; the count must be at least
/// `before` (the point before it).
async fn history_rows(env: &Env, branch: &str, before: i64, at: &str) -> i64 {
    let c = connect(&env.start(branch)).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .expect("count pgbench_history")
        .get(0);
    drop(c);
    env.stop_all();
    println!("{at} ({branch}): {n} history rows");
    assert!(
        n >= before,
        "{at}: {n} history rows, fewer than the point before ({before})"
    );
    n
}
