//! Retention soak (slow, not part of the test command): `cairn up` under a steady pgbench load
//! with a short PITR window and an image every minute, for `CAIRN_SOAK_SECONDS` (default 300).
//! Local layers, region objects and the catalog's layer rows are sampled every 15 s; once the
//! window has filled (the second half of the run) none of them grows beyond what it was in the
//! first half of that half, and the window's start, a point in it and the head restore from a
//! region.
//!
//! Run: `cargo test --release --test retention_soak -- --ignored --nocapture`
//! (`CAIRN_SOAK_SECONDS=3600 CAIRN_SOAK_PITR=15m` for the hour-long run with a 15-minute window).

mod common;

use common::*;

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    secs: u64,
    layers: usize,
    layer_bytes: u64,
    region_objects: usize,
    catalog_rows: i64,
    /// The job history (one run per image here): kept as a record, not pruned with the layers.
    job_runs: i64,
}

async fn catalog_rows(home: &std::path::Path) -> i64 {
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}?mode=ro", home.join("catalog.db").display());
    let pool = sqlx::AnyPool::connect(&url)
        .await
        .expect("open the catalog");
    let mut n = 0;
    for table in [
        "layers",
        "layer_refs",
        "wal_layer_txns",
        "wal_markers",
        "shipments",
        "layer_keys",
        "deletions",
    ] {
        let c: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("count {table}: {e}"));
        n += c;
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
    while started.elapsed().as_secs() < seconds {
        std::thread::sleep(std::time::Duration::from_secs(15));
        let layers = env.layers();
        let s = Sample {
            secs: started.elapsed().as_secs(),
            layers: layers.len(),
            layer_bytes: layers
                .iter()
                .map(|l| l["file_size"].as_u64().unwrap())
                .sum(),
            region_objects: env.region_objects("region-a").len(),
            catalog_rows: catalog_rows(&env.home).await,
            job_runs: job_runs(&env.home).await,
        };
        println!("{s:?}");
        samples.push(s);
    }
    let out = load.join().expect("pgbench thread");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(up);

    // The second half against the first half of it: no store keeps growing.
    let half = samples.len() / 2;
    let tail = &samples[half..];
    let (early, late) = tail.split_at(tail.len() / 2);
    let max = |s: &[Sample], f: fn(&Sample) -> f64| s.iter().map(f).fold(0.0, f64::max);
    type Measure = (&'static str, fn(&Sample) -> f64);
    let measures: [Measure; 4] = [
        ("local layers", |s| s.layers as f64),
        ("local layer bytes", |s| s.layer_bytes as f64),
        ("region objects", |s| s.region_objects as f64),
        ("catalog rows", |s| s.catalog_rows as f64),
    ];
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

    // The window's start (plus a few seconds: the clock moved since the last retention run
    // left it), a point inside the window (20 s ago) and the latest point restore from a region.
    let window = pitr_seconds(&pitr);
    let start = (chrono::Utc::now() - chrono::Duration::seconds(window - 5))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    env.ok(&[
        "restore",
        "shop",
        "--at-time",
        &start,
        "--region",
        "region-a",
        "--as-branch",
        "soak-start",
    ]);
    env.ok(&[
        "restore",
        "shop",
        "--latest",
        "--region",
        "region-b",
        "--as-branch",
        "soak-head",
    ]);
    let inside = (chrono::Utc::now() - chrono::Duration::seconds(20))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    env.ok(&[
        "restore",
        "shop",
        "--at-time",
        &inside,
        "--region",
        "region-a",
        "--as-branch",
        "soak-inside",
    ]);
    env.stop_all();
}
