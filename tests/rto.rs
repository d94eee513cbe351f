//! RTO end to end: `cairn up` predicts each cluster's restore time from measured restores and
//! the layers its policy's regions hold; with an RTO tighter than the prediction it takes an
//! image layer, the prediction drops below the target, and a real restore is compared with the
//! prediction (the factor is printed).

mod common;

use common::*;
use serde_json::Value;

fn objectives_rto(port: u16) -> Option<Value> {
    let s = api(port, "/api/objectives")?["rto"][0].clone();
    (!s.is_null()).then_some(s)
}

fn write_policy(env: &Env, rto: &str) {
    let dir = env.home.join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("shop.toml"),
        format!(
            "clusters = [\"shop\"]\n[objectives]\nrpo = \"30s\"\nrto = \"{rto}\"\n\
             [schedules]\nimage = \"@daily\"\n[retention]\npitr = \"1d\"\n\
             [regions]\nuse = [\"region-a\", \"region-b\"]\nmin_copies = 1\n"
        ),
    )
    .unwrap();
    env.ok(&["policy", "apply", "--by", "alice"]);
}

/// Restores the cluster's head from region-a into a new directory, removed afterwards (only
/// the timings count); the report.
fn restore(env: &Env, name: &str) -> Value {
    let target = env.dir.path().join(name);
    let report = env.json(&[
        "restore",
        "shop",
        "--region",
        "region-a",
        "--to-datadir",
        target.to_str().unwrap(),
    ]);
    std::fs::remove_dir_all(&target).unwrap();
    report
}

fn lsn(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// WAL without growing the disk: `passes` updates of every account, each followed by a vacuum
/// (the next pass reuses the space, so the table and the images stay near twice their size)
/// and a checkpoint (the compute recycles its WAL segments instead of keeping up to
/// `max_wal_size` of them). The test must fit on CI machines with little free disk.
async fn churn(c: &tokio_postgres::Client, passes: usize) {
    for _ in 0..passes {
        for sql in [
            "UPDATE pgbench_accounts SET abalance = abalance + 1",
            "VACUUM pgbench_accounts",
            "CHECKPOINT",
        ] {
            c.batch_execute(sql).await.unwrap();
        }
    }
}

/// The plan of a dry-run restore of `main` from region-a, or None while region-a cannot
/// restore it yet.
fn dry_run(env: &Env) -> Option<Value> {
    let target = env.dir.path().join("dry-run");
    let out = env
        .command(&[
            "restore",
            "shop",
            "--region",
            "region-a",
            "--to-datadir",
            target.to_str().unwrap(),
            "--dry-run",
            "--json",
        ])
        .output()
        .ok()?;
    let plan = serde_json::from_slice::<Value>(&out.stdout);
    if plan.is_err() {
        eprintln!("dry run: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    plan.ok()
}

/// Waits until region-a can restore `main` up to everything written so far (a dry run of the
/// restore plans a point at or after the compute's current WAL position).
async fn wait_shipped(env: &Env, c: &tokio_postgres::Client) {
    let want = lsn(&scalar(c, "SELECT pg_current_wal_lsn()::text").await);
    wait_for("the WAL to reach the regions", 120, || {
        let got = lsn(dry_run(env)?["lsn"].as_str()?);
        if got < want {
            eprintln!("dry run: the region holds up to {got:X}, not yet {want:X}");
        }
        (got >= want).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tight_rto_takes_an_image_and_the_prediction_matches_a_real_restore() {
    let env = Env::new();
    env.two_file_regions();
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    let init = std::process::Command::new(pg_bin().join("pgbench"))
        .args(["-i", "-s", "5", "-q", &url])
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    env.ok(&["image", "create", "main"]);
    write_policy(&env, "1h");
    // Images come only from the schedule and the RTO here, not from the WAL volume.
    let (up, port) = env.spawn_up(&["--image-after", "100GiB"]);
    let _up = KillOnDrop(up);

    // No restore measured: no prediction, and the status says how to get one.
    let s = wait_for("the RTO status", 30, || objectives_rto(port));
    assert!(s["predicted_seconds"].is_null(), "{s}");
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("no restore has been measured"),
        "{s}"
    );

    // Two measured restores of different sizes: just after the image, and after WAL.
    let c = connect(&url).await;
    wait_shipped(&env, &c).await;
    let small = restore(&env, "measure-small");
    churn(&c, 1).await;
    wait_shipped(&env, &c).await;
    let big = restore(&env, "measure-big");
    println!(
        "measured: {:.2}s replaying {} bytes, {:.2}s replaying {} bytes",
        small["total_seconds"], small["replay_bytes"], big["total_seconds"], big["replay_bytes"]
    );
    assert!(big["replay_bytes"].as_u64().unwrap() > 2 * small["replay_bytes"].as_u64().unwrap());

    // More WAL since the image than the measured restores replayed: the prediction grows.
    churn(&c, 1).await;
    let head = lsn(&scalar(&c, "SELECT pg_current_wal_lsn()::text").await);
    wait_shipped(&env, &c).await;
    let before = wait_for("a prediction of the head", 30, || {
        let s = objectives_rto(port)?;
        (s["restores_measured"].as_u64()? >= 2
            && s["predicted_seconds"].is_f64()
            && lsn(s["point"].as_str()?) >= head)
            .then_some(s)
    });
    let predicted = before["predicted_seconds"].as_f64().unwrap();
    let wal = before["prediction"]["wal_seconds"].as_f64().unwrap();
    println!("prediction before the image: {predicted:.2}s, of which WAL {wal:.2}s: {before}");

    // An RTO tighter than the prediction, but above what the image alone takes (with a second
    // to spare: RTOs are whole seconds): the whole second nearest the middle of that range.
    let (above, below) = (predicted - wal + 1.0, predicted);
    let rto = ((above + below) / 2.0)
        .round()
        .max(above.floor() + 1.0)
        .min(below.ceil() - 1.0)
        .max(1.0);
    assert!(
        rto < below && above < rto,
        "the WAL part ({wal:.2}s of {predicted:.2}s) is too small to test with whole seconds"
    );
    write_policy(&env, &format!("{rto}s"));
    let alert = wait_for("the rto_exceeded alert", 30, || {
        let a = api(port, "/api/alerts")?;
        a.as_array()?
            .iter()
            .find(|a| a["kind"] == "rto_exceeded")
            .cloned()
    });
    println!("alert: {alert}");
    assert!(
        alert["reason"]
            .as_str()
            .unwrap()
            .contains("an image layer is being taken"),
        "{alert}"
    );

    // The RTO's image is taken (once, recorded as a job run), shipped, and the prediction
    // drops below the target; the alert clears.
    let after = wait_for("the prediction under the RTO", 120, || {
        let s = objectives_rto(port)?;
        (s["predicted_seconds"].as_f64()? < rto && s["image"] != before["image"]).then_some(s)
    });
    let predicted_after = after["predicted_seconds"].as_f64().unwrap();
    println!("prediction after the image: {predicted_after:.2}s (RTO {rto}s): {after}");
    wait_for("the alert to clear", 30, || {
        let a = api(port, "/api/alerts")?;
        (!a.as_array()?.iter().any(|a| a["kind"] == "rto_exceeded")).then_some(())
    });
    let jobs = env.json(&["jobs", "--cluster", "shop"]);
    let rto_runs: Vec<&Value> = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["key"]["kind"] == "rto_image")
        .collect();
    assert_eq!(rto_runs.len(), 1, "{jobs}");
    assert_eq!(rto_runs[0]["outcome"], "succeeded", "{jobs}");
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    assert!(
        metrics.contains(&format!(
            "cairn_rto_target_seconds{{cluster=\"shop\",policy=\"shop\"}} {rto}"
        )) && metrics.contains("cairn_rto_predicted_seconds{cluster=\"shop\",policy=\"shop\"}"),
        "{metrics}"
    );

    // A real restore from region-a now, against the prediction (which counts the image once
    // any of the policy's regions holds it: wait until region-a does too).
    wait_for("the image to reach region-a", 120, || {
        let plan = dry_run(&env)?;
        (plan["image_layer"] == after["image"]).then_some(())
    });
    let real = restore(&env, "real");
    println!("real restore: {real}");
    let took = real["total_seconds"].as_f64().unwrap();
    let factor = took / predicted_after;
    println!(
        "RTO prediction {predicted_after:.2}s, real restore {took:.2}s: factor {factor:.2} \
         (before the image the prediction was {predicted:.2}s)"
    );
    assert_eq!(
        real["layers"].as_array().unwrap()[0],
        after["image"],
        "{real}"
    );
    // A prediction is an estimate; an order of magnitude off would make it useless.
    assert!((0.25..4.0).contains(&factor), "factor {factor}");
    drop(c);
    drop(_up);
    env.stop_all();
}
