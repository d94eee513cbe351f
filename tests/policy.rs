//! `cairn policy check` on a real appliance: the example policies pass against regions tagged
//! as they expect and govern the clusters they name; broken files are refused with every
//! problem located (file, line, column) and a suggestion, and nothing else is printed as valid.

mod common;

use common::*;

/// Three file regions tagged by tier and provider, as the example policies expect.
fn tagged_regions(env: &Env) {
    let mut toml = String::from("min_copies = 2\n");
    for (name, tier, provider) in [
        ("eu-1", "hot", "aws"),
        ("eu-2", "hot", "gcp"),
        ("us-1", "cold", "aws"),
    ] {
        toml.push_str(&env.file_region(name));
        toml.push_str(&format!(
            "tags = {{ tier = \"{tier}\", provider = \"{provider}\" }}\n"
        ));
    }
    env.write_regions(&toml);
}

fn copy_examples(env: &Env) -> std::path::PathBuf {
    let dir = env.home.join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/examples");
    let mut n = 0;
    for e in std::fs::read_dir(examples).unwrap().flatten() {
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        n += 1;
    }
    assert!(n >= 4, "{n} example policies");
    dir
}

#[test]
fn every_example_policy_passes_and_governs_the_clusters_it_names() {
    let env = Env::new();
    tagged_regions(&env);
    env.ok(&["cluster", "create", "prod-eu"]);
    copy_examples(&env);
    let report = env.json(&["policy", "check"]);
    let policies = report["policies"].as_array().unwrap();
    let names: Vec<&str> = policies
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["analytics-warehouse", "finance", "dev", "production"],
        "{report}"
    );
    // Patterns that govern nothing here are warned about, not refused.
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains("analytics.toml:4:13: warning: `analytics-*` matches no cluster"),
        "{warnings}"
    );
    let production = &policies[3];
    assert_eq!(production["governs"], serde_json::json!(["prod-eu"]));
    assert_eq!(production["rpo_seconds"], 30);
    // `tag:tier=hot` and `us-1`, in the order of regions.toml.
    assert_eq!(
        production["regions"],
        serde_json::json!(["eu-1", "eu-2", "us-1"])
    );
    assert_eq!(production["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(report["unprotected"], serde_json::json!([]));
    let text = env.ok(&["policy", "check"]);
    assert!(
        text.contains("4 policies in") && text.contains("governs prod-eu"),
        "{text}"
    );
    // A cluster no policy names is reported as unprotected.
    env.ok(&["cluster", "create", "orphan"]);
    let report = env.json(&["policy", "check"]);
    assert_eq!(report["unprotected"], serde_json::json!(["orphan"]));
}

#[test]
fn broken_policies_are_refused_with_every_problem_located() {
    let env = Env::new();
    tagged_regions(&env);
    let dir = copy_examples(&env);
    std::fs::write(
        dir.join("typo.toml"),
        "clusters = [\"ops\"]\n[objectives]\nrpo = \"1m\"\nrto = \"1h\"\n[regions]\nuse = [\"eu-9\"]\nmin_copy = 1\n",
    )
    .unwrap();
    let err = env.fail(&["policy", "check"]);
    let path = dir.join("typo.toml");
    let path = path.display();
    assert!(
        err.contains(&format!(
            "2 problem(s) in the policies of {}",
            dir.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{path}:7:1: unknown key `min_copy` in [regions] (did you mean `min_copies`?)"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{path}:6:8: ")) && err.contains("eu-9"),
        "{err}"
    );
    // Fixed, the set passes again; an empty directory is an empty set, not an error.
    std::fs::remove_file(dir.join("typo.toml")).unwrap();
    env.ok(&["policy", "check"]);
    let empty = env.dir.path().join("no-policies");
    let text = env.ok(&["policy", "check", "--policies", empty.to_str().unwrap()]);
    assert!(text.contains("0 policies in"), "{text}");
}

fn write_policy(dir: &std::path::Path, pitr: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("keep.toml"),
        format!(
            "clusters = [\"shop\"]\n[objectives]\nrpo = \"1m\"\nrto = \"1h\"\n\
             [schedules]\nimage = \"0 3 * * *\"\n\
             [retention]\npitr = \"{pitr}\"\nmin_retention = \"1h\"\n\
             [regions]\nuse = [\"eu-1\", \"eu-2\"]\nmin_copies = 2\n"
        ),
    )
    .unwrap();
}

#[tokio::test]
async fn a_destructive_change_waits_for_its_cooling_off_and_the_audit_log_has_every_step() {
    let env = Env::new();
    tagged_regions(&env);
    env.ok(&["cluster", "create", "shop"]);
    // Two images with WAL before and after the second.
    let url = env.start("main");
    let c = connect(&url).await;
    c.batch_execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
        .await
        .unwrap();
    env.ok(&["image", "create", "main"]);
    c.batch_execute("INSERT INTO t SELECT g FROM generate_series(1, 1000) g")
        .await
        .unwrap();
    drop(c);
    env.stop_all();
    let dir = env.home.join("policies");

    // First apply: nothing was in force, nothing is deleted: in force at once.
    write_policy(&dir, "30d");
    let first = env.json(&["policy", "apply", "--by", "alice"]);
    assert_eq!(first["destructive"], false, "{first}");
    assert_eq!(first["effective_at_us"], first["requested_at_us"]);
    assert_eq!(first["files"][0]["name"], "keep");

    // A one-day window, planned as of a week from now: the older image and the WAL before the
    // newer one would go, which the 30-day window keeps.
    write_policy(&dir, "1d");
    let week = (chrono::Utc::now() + chrono::Duration::days(7))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let plan = env.json(&["policy", "plan", "--as-of", &week]);
    assert_eq!(plan["destructive"], true, "{plan}");
    assert_eq!(plan["in_force"], first["id"]);
    assert_eq!(plan["policies"][0]["delta"], "changed");
    let shop = &plan["clusters"][0];
    assert_eq!(shop["cluster"], "shop");
    assert!(
        shop["newly_deleted_layers"].as_u64().unwrap() >= 2,
        "{plan}"
    );
    assert!(!shop["windows"].as_array().unwrap().is_empty(), "{plan}");
    let reasons = plan["reasons"].to_string();
    assert!(
        reasons.contains("PITR window shortened from 30d to 1d")
            && reasons.contains("cluster shop: retention would delete"),
        "{reasons}"
    );
    let text = env.ok(&["policy", "plan", "--as-of", &week]);
    assert!(
        text.contains("DESTRUCTIVE") && text.contains("restorable: main"),
        "{text}"
    );

    // Applied without confirmation it waits 24 hours; the first change stays in force.
    let second = env.json(&["policy", "apply", "--by", "bob"]);
    assert_eq!(
        (&second["destructive"], &second["confirmed"]),
        (&serde_json::json!(true), &serde_json::json!(false))
    );
    let wait =
        second["effective_at_us"].as_i64().unwrap() - second["requested_at_us"].as_i64().unwrap();
    assert_eq!(wait, 24 * 3600 * 1_000_000);
    let plan = env.json(&["policy", "plan"]);
    assert_eq!(
        plan["in_force"], first["id"],
        "the waiting change is not in force"
    );
    let statuses = |env: &Env| -> Vec<String> {
        env.json(&["policy", "log"])
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["status"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(statuses(&env), ["in_force", "pending"]);

    // Cancelled, then applied with confirmation: in force at once, and the log has it all.
    let id = second["id"].as_str().unwrap();
    env.ok(&["policy", "cancel", id, "--by", "carol"]);
    let err = env.fail(&["policy", "cancel", id]);
    assert!(err.contains("already cancelled"), "{err}");
    let third = env.json(&["policy", "apply", "--confirm-destructive", "--by", "dave"]);
    assert_eq!(third["confirmed"], true);
    assert_eq!(third["effective_at_us"], third["requested_at_us"]);
    assert_eq!(statuses(&env), ["replaced", "cancelled", "in_force"]);
    let log = env.json(&["policy", "log"]);
    let by: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["change"]["requested_by"].as_str().unwrap())
        .collect();
    assert_eq!(by, ["alice", "bob", "dave"]);
    assert_eq!(log[1]["change"]["cancelled_by"], "carol");
    assert_eq!(
        log[2]["change"]["files"][0]["sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    let text = env.ok(&["policy", "log"]);
    assert!(
        text.contains("destructive, confirmed") && text.contains("cancelled by carol"),
        "{text}"
    );
}

/// `cairn up` runs the image schedule of the policies in force: the run is recorded (`cairn
/// jobs`, `/api/jobs`), a new image layer exists, and `/metrics` counts it.
#[tokio::test(flavor = "multi_thread")]
async fn cairn_up_runs_the_image_schedule_in_force_and_records_the_run() {
    let env = Env::new();
    tagged_regions(&env);
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    let c = connect(&url).await;
    c.batch_execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
        .await
        .unwrap();
    drop(c);
    // Once a minute, at a second 12 s from now (a seconds field must be a single value).
    let second = (chrono::Utc::now().timestamp() + 12) % 60;
    let dir = env.home.join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("keep.toml"),
        format!(
            "clusters = [\"shop\"]\n[objectives]\nrpo = \"1m\"\nrto = \"1h\"\n\
             [schedules]\nimage = \"{second} * * * * *\"\n\
             [retention]\npitr = \"1d\"\n\
             [regions]\nuse = [\"eu-1\", \"eu-2\"]\nmin_copies = 2\n"
        ),
    )
    .unwrap();
    let applied = env.json(&["policy", "apply", "--by", "alice"]);
    let images = |env: &Env| env.layers().iter().filter(|l| l["kind"] == "image").count();
    let before = images(&env);
    let (up, port) = env.spawn_up(&[]);
    let _up = KillOnDrop(up);
    let runs = wait_for("a scheduled image run", 90, || {
        let runs = api(port, "/api/jobs")?;
        (runs[0]["outcome"] == "succeeded").then_some(runs)
    });
    let run = &runs[0];
    assert_eq!(
        (
            &run["key"]["cluster"],
            &run["key"]["policy"],
            &run["key"]["kind"]
        ),
        (
            &serde_json::json!("shop"),
            &serde_json::json!("keep"),
            &serde_json::json!("image")
        ),
        "{runs}"
    );
    assert_eq!(run["policy_change"], applied["id"]);
    assert_eq!(run["late"], false, "{run}");
    assert!(
        run["detail"].as_str().unwrap().starts_with("main: image "),
        "{run}"
    );
    assert_eq!(images(&env), before + 1);
    let listed = env.json(&["jobs", "--cluster", "shop"]);
    assert_eq!(listed[0]["id"], run["id"]);
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    assert!(
        metrics.contains(
            "cairn_job_runs_total{cluster=\"shop\",kind=\"image\",outcome=\"succeeded\"} 1\n"
        ),
        "{metrics}"
    );
    drop(_up);
    env.stop_all();
}

/// A one-shot HTTP receiver of webhook posts: every body it was sent, in order.
fn webhook_receiver() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    use std::io::{BufRead, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/hook?token=secret",
        listener.local_addr().unwrap()
    );
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut r = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_ok() {
                if let Ok(v) = serde_json::from_slice(&body) {
                    store.lock().unwrap().push(v);
                }
            }
            let mut w = conn;
            let _ =
                w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, got)
}

/// RPO under load with real regions: exposure stays under the RPO while pgbench writes and
/// WAL compaction merges the stored layers; a
/// region that stops taking writes raises the alert (log, API, /metrics, webhook) within about
/// one RPO, naming the region; a restart of the appliance carries the alert on (not raised
/// twice); it clears once the region is back.
#[tokio::test(flavor = "multi_thread")]
async fn rpo_exposure_stays_under_the_rpo_and_a_stopped_region_raises_then_clears_the_alert() {
    let env = Env::new();
    env.two_file_regions();
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    let bench = |args: &[&str]| {
        let mut c = std::process::Command::new(pg_bin().join("pgbench"));
        c.args(args)
            .arg(&url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    assert!(bench(&["-i", "-s", "1", "-q"])
        .output()
        .unwrap()
        .status
        .success());
    let dir = env.home.join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("shop.toml"),
        "clusters = [\"shop\"]\n[objectives]\nrpo = \"30s\"\nrto = \"1h\"\n\
         [schedules]\nimage = \"@daily\"\n[retention]\npitr = \"1d\"\n\
         [regions]\nuse = [\"region-a\", \"region-b\"]\nmin_copies = 2\n",
    )
    .unwrap();
    env.ok(&["policy", "apply", "--by", "alice"]);
    let (hook, posts) = webhook_receiver();
    // WAL compaction as soon as layers are in both regions: it must not move the exposure.
    let (up, port) = env.spawn_up(&["--alert-webhook", &hook, "--compact-after", "0s"]);
    let _up = KillOnDrop(up);
    let exposure =
        || -> Option<f64> { api(port, "/api/objectives")?["rpo"][0]["exposure_seconds"].as_f64() };
    let log = env.dir.path().join("up.log");
    let compacted = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("compaction: cluster 'shop'")
    };

    // 30 s of pgbench, and on until a compaction merged layers (housekeeping runs every
    // 30 s): exposure stays under the RPO (the cadence follows it: stores every 5 s).
    let mut load = bench(&["-T", "120", "-R", "50", "-n"]).spawn().unwrap();
    let started = std::time::Instant::now();
    let mut worst: f64 = 0.0;
    while started.elapsed().as_secs() < 30 || (!compacted() && started.elapsed().as_secs() < 75) {
        std::thread::sleep(std::time::Duration::from_secs(2));
        if let Some(e) = exposure() {
            worst = worst.max(e);
        }
    }
    assert!(compacted(), "no WAL compaction within 75 s of load");
    println!("worst exposure under load, compaction included: {worst:.1}s (RPO 30s)");
    assert!(worst > 0.0 && worst < 30.0, "exposure {worst}");
    assert!(api(port, "/api/alerts")
        .unwrap()
        .as_array()
        .unwrap()
        .is_empty());

    // Region-b stops taking writes (its directory becomes a file).
    let b = env.dir.path().join("regions/region-b");
    let parked = env.dir.path().join("regions/region-b.parked");
    std::fs::rename(&b, &parked).unwrap();
    std::fs::write(&b, b"not a directory").unwrap();
    let broke = std::time::Instant::now();
    let alerts = wait_for("the RPO alert", 60, || {
        let a = api(port, "/api/alerts")?;
        (!a.as_array()?.is_empty()).then_some(a)
    });
    let took = broke.elapsed().as_secs_f64();
    println!("alert raised {took:.1}s after region-b stopped taking writes");
    assert!(took <= 30.0 + 6.0, "alert after {took}s");
    let a = &alerts[0];
    assert_eq!(
        (&a["kind"], &a["cluster"], &a["policy"]),
        (
            &serde_json::json!("rpo_exceeded"),
            &serde_json::json!("shop"),
            &serde_json::json!("shop")
        )
    );
    assert!(a["reason"].as_str().unwrap().contains("region-b"), "{a}");
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    assert!(
        metrics.contains("cairn_alert_since_timestamp_seconds{alert=\"rpo_exceeded\",cluster=\"shop\",policy=\"shop\"}")
            && metrics.contains("cairn_rpo_target_seconds{cluster=\"shop\",policy=\"shop\"} 30"),
        "{metrics}"
    );
    // Per region: region-b is the one behind; region-a keeps up.
    let lag = |region: &str| -> f64 {
        let prefix = format!(
            "cairn_region_lag_seconds{{cluster=\"shop\",policy=\"shop\",region=\"{region}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no lag of {region}: {metrics}"))
            .parse()
            .unwrap()
    };
    let (lag_a, lag_b) = (lag("region-a"), lag("region-b"));
    println!("lag: region-a {lag_a:.1}s, region-b {lag_b:.1}s");
    assert!(lag_b > 30.0 && lag_a < 30.0, "a {lag_a}, b {lag_b}");
    let regions = &api(port, "/api/objectives").unwrap()["rpo"][0]["regions"];
    assert_eq!(regions[1]["region"], "region-b", "{regions}");
    assert!(
        regions[1]["lag_seconds"].as_f64().unwrap() > 30.0,
        "{regions}"
    );

    // The appliance restarts with region-b still down: the alert carries on (same since, not
    // raised again), and the exposure still counts from before the restart.
    let _ = load.kill();
    let _ = load.wait();
    drop(_up);
    let (up, port) = env.spawn_up(&["--alert-webhook", &hook]);
    let _up = KillOnDrop(up);
    let again = wait_for("the alert after the restart", 30, || {
        let a = api(port, "/api/alerts")?;
        a.as_array()?.first().cloned()
    });
    assert_eq!(
        (&again["kind"], &again["since_us"]),
        (&a["kind"], &a["since_us"]),
        "{again}"
    );
    let after_restart = wait_for("the exposure after the restart", 30, || {
        api(port, "/api/objectives")?["rpo"][0]["exposure_seconds"].as_f64()
    });
    assert!(
        after_restart > 30.0,
        "exposure {after_restart} after the restart"
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(posts.lock().unwrap().len(), 1, "raised once only");

    // Back: the backlog ships and the alert clears.
    std::fs::remove_file(&b).unwrap();
    std::fs::rename(&parked, &b).unwrap();
    wait_for("the alert to clear", 60, || {
        api(port, "/api/alerts")?
            .as_array()?
            .is_empty()
            .then_some(())
    });
    let exposure =
        || -> Option<f64> { api(port, "/api/objectives")?["rpo"][0]["exposure_seconds"].as_f64() };
    assert!(exposure().unwrap() < 30.0);
    let events: Vec<String> = wait_for("both webhook posts", 20, || {
        let p = posts.lock().unwrap().clone();
        (p.len() >= 2).then_some(p)
    })
    .iter()
    .map(|p| format!("{}/{}", p["event"].as_str().unwrap(), p["alert"]["cluster"]))
    .collect();
    assert_eq!(events, ["raised/\"shop\"", "cleared/\"shop\""]);
    drop(_up);
    env.stop_all();
}
