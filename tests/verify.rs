//! `cairn verify` on a real cluster and real (file) regions: a clean cluster passes every
//! check, the report's measured RTO and phases agree with what the test observed, the next run
//! reads the other region and chains to the first, a probe that is false fails its check (exit
//! 1, the report kept and signed), and nothing of a run is left behind: no scratch directory,
//! no server, no scratch branch.

mod common;

use std::time::Instant;

use common::*;

fn postgres_processes_on(dir: &std::path::Path) -> usize {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            let c = String::from_utf8_lossy(c);
            c.contains("postgres") && c.contains(&needle)
        })
        .count()
}

/// Nothing of a verification run is left: scratch directories, servers, scratch branches.
fn assert_nothing_left(env: &Env) {
    let area = env.home.join("verify");
    let left: Vec<_> = std::fs::read_dir(&area)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", area.display());
    assert_eq!(postgres_processes_on(&area), 0, "a server still runs there");
    let branches = env.ok(&["branch", "list"]);
    assert!(!branches.contains("verify-"), "{branches}");
}

/// Cluster 'shop' with pgbench's tables (scale 1) on a running main, backed up to both
/// regions.
fn pgbench_shop_backed_up() -> Env {
    let env = Env::new();
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    let out = std::process::Command::new(pg_bin().join("pgbench"))
        .args(["-i", "-s", "1", "-q"])
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.ok(&["backup", "now"]);
    env
}

#[test]
fn a_clean_cluster_passes_every_check_and_each_run_is_signed_chained_and_cleaned_up() {
    let env = pgbench_shop_backed_up();

    let t = Instant::now();
    let r = env.json(&[
        "verify",
        "shop",
        "--probe",
        "accounts=SELECT count(*) = 100000 FROM pgbench_accounts",
    ]);
    let wall_ms = t.elapsed().as_millis() as u64;
    assert_eq!(r["outcome"], "passed", "{r:#}");
    assert_eq!(r["sequence"], 1);
    assert_eq!(r["region"], "region-a", "never verified: the first region");
    let names = report_check_names(&r);
    assert_eq!(
        names,
        [
            "object_integrity",
            "wal_continuity",
            "page_checksums",
            "recovery_target",
            "amcheck",
            "fingerprint",
            "probes"
        ]
    );
    for c in r["checks"].as_array().unwrap() {
        assert_eq!(c["outcome"], "passed", "{c:#}");
    }
    let check = |name: &str| report_check(&r, name).clone();
    // What the checks counted is the data the test wrote.
    let fp = check("fingerprint");
    assert!(fp["counts"]["rows"].as_u64().unwrap() >= 100_000, "{fp}");
    assert!(fp["counts"]["tables"].as_u64().unwrap() >= 4, "{fp}");
    let pc = check("page_checksums");
    assert!(pc["counts"]["blocks"].as_u64().unwrap() > 1_000, "{pc}");
    assert_eq!(pc["counts"]["bad_checksums"], 0);
    assert!(
        check("object_integrity")["counts"]["layers_fetched"]
            .as_u64()
            .unwrap()
            >= 1
    );
    // The timings agree with the clock: the RTO (restore to first answer) and the phases fit
    // in the run, which fits in what the test measured around the command.
    let rto = r["measured_rto_ms"].as_u64().unwrap();
    let span_ms =
        (r["ended_at_us"].as_i64().unwrap() - r["started_at_us"].as_i64().unwrap()) / 1000;
    let phases: u64 = r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["duration_ms"].as_u64().unwrap())
        .sum();
    let restore = r["phases"][0]["duration_ms"].as_u64().unwrap();
    println!("measured RTO {rto} ms (restore {restore} ms), phases {phases} ms, run {span_ms} ms, command {wall_ms} ms");
    assert!(restore > 0 && restore <= rto, "{r:#}");
    assert!(
        rto <= span_ms as u64 && phases <= span_ms as u64 + 5,
        "{r:#}"
    );
    assert!((span_ms as u64) < wall_ms, "{r:#}");
    assert_nothing_left(&env);

    // The next run reads the other region and names the first report's digest.
    let first = env.ok(&["report", "verify"]);
    assert!(
        first.contains("catalog: 1 report(s), chain intact"),
        "{first}"
    );
    let r2 = env.json(&["verify", "shop", "--check", "recovery_target"]);
    assert_eq!(
        (r2["sequence"].as_u64(), r2["region"].as_str()),
        (Some(2), Some("region-b"))
    );
    let digest = env.json(&["report", "list"])[1]["digest"].clone();
    assert_eq!(r2["previous"], digest);

    // A probe that is false: the run fails (exit 1), its report is kept and signed.
    let out = env.run(&[
        "verify",
        "shop",
        "--check",
        "probes",
        "--probe",
        "ghosts=SELECT count(*) = 7 FROM pgbench_branches",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}{err}");
    assert!(err.contains("FAILED: probes (report 3"), "{err}");
    assert!(
        text.contains("probe 'ghosts' (SELECT count(*) = 7 FROM pgbench_branches) returned 'f'"),
        "{text}"
    );
    let shown = env.json(&["report", "show", "3"]);
    assert_eq!(shown["outcome"], "failed");
    assert_eq!(shown["region"], "region-a", "rotation goes on");
    let all = env.ok(&["report", "verify"]);
    for place in ["catalog", "region region-a", "region region-b"] {
        assert!(
            all.contains(&format!("{place}: 3 report(s), chain intact")),
            "{all}"
        );
    }
    assert_nothing_left(&env);

    // A bad check name is refused with the list of names.
    let out = env.run(&["verify", "shop", "--check", "everything"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error: {e}");
    assert!(
        e.contains("unknown check 'everything': one of object_integrity"),
        "{e}"
    );
    env.stop_all();
}

/// `cairn up` runs the verify schedule of the policy in force: the run restores from a region,
/// runs the policy's checks and probes, succeeds, names its report (which names the policy,
/// its file's SHA-256 and the job run that asked for it), and `/metrics` has the time of the
/// last successful verification.
#[test]
fn cairn_up_runs_the_verify_schedule_and_metrics_show_the_last_success() {
    let env = Env::new();
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    // (Asked for before the regions and policies exist in HOME: a compute's superuser could
    // read them, and the superuser URL is refused then.)
    let su = env.start_superuser("main");
    psql(
        &url,
        "CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 500) g",
    );
    env.ok(&["backup", "now"]);
    // Once a minute, at a second 15 s from now (a seconds field must be a single value).
    let second = (chrono::Utc::now().timestamp() + 15) % 60;
    let dir = env.home.join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    let policy = format!(
        "clusters = [\"shop\"]\n[objectives]\nrpo = \"5m\"\nrto = \"1h\"\n\
         [schedules]\nimage = \"@daily\"\nverify = \"{second} * * * * *\"\n\
         [retention]\npitr = \"1d\"\n\
         [regions]\nuse = [\"region-a\", \"region-b\"]\nmin_copies = 2\n\
         [verification]\nchecks = [\"object_integrity\", \"recovery_target\", \"heartbeat\", \"fingerprint\", \"probes\"]\n\
         [[verification.probes]]\nname = \"orders\"\nsql = \"SELECT count(*) = 500 FROM orders\"\n"
    );
    std::fs::write(dir.join("keep.toml"), &policy).unwrap();
    env.ok(&["policy", "apply", "--by", "alice"]);
    let (up, port) = env.spawn_up(&["--heartbeat-every", "1s"]);
    let _up = KillOnDrop(up);
    // The heartbeats `cairn up` writes, as the superuser sees them while the test waits.
    let mut seen = std::collections::BTreeSet::new();
    let run = wait_for("a scheduled verification", 120, || {
        // (An error until the first heartbeat made the table.)
        if let Some(at) = try_psql(&su, "SELECT at_us FROM cairn_heartbeat.beat")
            .ok()
            .and_then(|o| o.parse::<i64>().ok())
        {
            seen.insert(at);
        }
        let runs = api(port, "/api/jobs")?;
        runs.as_array()?
            .iter()
            .find(|r| r["key"]["kind"] == "verify" && r["outcome"].is_string())
            .cloned()
    });
    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert!(
        run["detail"]
            .as_str()
            .unwrap()
            .starts_with("passed: report 1 from region-a"),
        "{run}"
    );
    let r = env.json(&["report", "show", "1"]);
    assert_eq!(
        r["requested_by"],
        format!("schedule:keep/{}", run["id"].as_str().unwrap()),
        "{r:#}"
    );
    assert_eq!(r["policy"]["name"], "keep");
    assert_eq!(
        r["policy"]["file_sha256"],
        hex_sha256(policy.as_bytes()),
        "{r:#}"
    );
    assert_eq!(r["policy"]["rpo_ms"], 300_000);
    let names = report_check_names(&r);
    assert_eq!(
        names,
        [
            "object_integrity",
            "recovery_target",
            "heartbeat",
            "fingerprint",
            "probes"
        ]
    );
    // The achieved RPO is the age of a heartbeat the test saw, when the run started.
    let hb = report_check(&r, "heartbeat");
    assert_eq!(hb["outcome"], "passed", "{hb:#}");
    let at = hb["counts"]["newest_at_us"].as_i64().unwrap();
    assert!(seen.len() >= 3, "heartbeats every second: {seen:?}");
    assert!(seen.contains(&at), "{at} is not among {seen:?}");
    assert!(hb["counts"]["beats"].as_u64().unwrap() >= 1, "{hb:#}");
    let achieved = r["achieved_rpo_ms"].as_i64().unwrap();
    assert_eq!(achieved, (r["started_at_us"].as_i64().unwrap() - at) / 1000);
    assert_eq!(hb["counts"]["achieved_rpo_ms"], achieved);
    assert!(achieved < 300_000, "within the policy's RPO: {r:#}");
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    assert!(
        metrics
            .contains("cairn_job_last_success_timestamp_seconds{cluster=\"shop\",kind=\"verify\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "cairn_job_runs_total{cluster=\"shop\",kind=\"verify\",outcome=\"succeeded\"} 1"
        ),
        "{metrics}"
    );
    drop(_up);
    // The policy's verification.window (default 1h): the restored copy is kept, stopped; no
    // server, no scratch branch.
    let teardown = r["teardown"].as_str().unwrap();
    assert!(teardown.starts_with("kept until"), "{teardown}");
    assert_eq!(scratch_dirs(&env).len(), 2, "{teardown}");
    assert_eq!(postgres_processes_on(&env.home.join("verify")), 0);
    assert!(!env.ok(&["branch", "list"]).contains("verify-"));
    env.stop_all();
}

fn hex_sha256(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// `cairn verify shop --json ARGS` that fails (exit 1), with `CAIRN_STALL=stall` (`""`: none);
/// the report, and how many seconds it took.
fn verify_failing(env: &Env, stall: &str, args: &[&str]) -> (serde_json::Value, u64) {
    let mut all = vec!["verify", "shop", "--json"];
    all.extend_from_slice(args);
    let t = Instant::now();
    let out = env
        .command(&all)
        .env("CAIRN_STALL", stall)
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    (serde_json::from_slice(&out.stdout).unwrap(), secs)
}

/// A B-tree index entry corrupted in the source before the backup, with a valid page checksum
/// (so the image takes it, and PostgreSQL reads it without complaint): the restored copy's
/// page checksums pass and its tables match the appliance's own copy, but `amcheck` finds the
/// broken order and names the index; the run fails.
#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_index_entry_with_a_valid_checksum_is_found_by_amcheck() {
    let env = Env::new();
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start_superuser("main");
    let c = connect(&url).await;
    c.batch_execute(
        "CREATE TABLE t (g int); INSERT INTO t SELECT generate_series(1, 200);
         CREATE INDEX t_g ON t (g); CHECKPOINT",
    )
    .await
    .unwrap();
    let file: String = c
        .query_one(
            "SELECT current_setting('data_directory') || '/' || pg_relation_filepath('t_g')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    drop(c);

    // On disk, under the running server (its buffer of the page is clean, so never written
    // back; the image reads the file): block 1 is the only leaf (block 0 the metapage). Its
    // first item's key becomes larger than every other, so the leaf is out of order; then the
    // page checksum is made valid again.
    let mut bytes = std::fs::read(&file).unwrap();
    let page = &mut bytes[8192..16384];
    let lp = u32::from_le_bytes(page[24..28].try_into().unwrap());
    let (off, len) = ((lp & 0x7fff) as usize, (lp >> 17) as usize);
    assert_eq!(len, 16, "an index tuple of one int4 key");
    let key = i32::from_le_bytes(page[off + 8..off + 12].try_into().unwrap());
    assert_eq!(key, 1, "the smallest key first");
    page[off + 8..off + 12].copy_from_slice(&1_000_000i32.to_le_bytes());
    let sum = cairn_engine::pg::checksum::page_checksum(page, 1);
    page[8..10].copy_from_slice(&sum.to_le_bytes());
    std::fs::write(&file, &bytes).unwrap();
    env.ok(&["backup", "now"]);
    let (r, _) = verify_failing(
        &env,
        "",
        &[
            "--check",
            "page_checksums",
            "--check",
            "amcheck",
            "--check",
            "fingerprint",
        ],
    );
    let outcome = |name: &str| report_check(&r, name).clone();
    assert_eq!(outcome("page_checksums")["outcome"], "passed", "{r:#}");
    assert_eq!(outcome("fingerprint")["outcome"], "passed", "{r:#}");
    let a = outcome("amcheck");
    assert_eq!(a["outcome"], "failed", "{r:#}");
    let details = a["details"].to_string();
    assert!(details.contains("t_g"), "the index is named: {details}");
    assert!(a["counts"]["problems"].as_u64().unwrap() >= 1, "{a}");
    assert_nothing_left(&env);
    env.stop_all();
}

/// A heap page corrupted in the source before the backup, its header LSN garbled past the
/// backup's start: the image takes it as a page PostgreSQL was writing (a torn page that WAL
/// replay repairs, as `pg_basebackup` does), so the layers and their AEAD are valid. No WAL
/// touches the page afterwards, so the restored copy still holds it: the page checksum check
/// fails and names the relation's file and the block; recovery itself succeeded.
#[tokio::test(flavor = "multi_thread")]
async fn a_page_corrupted_in_the_source_is_found_by_the_page_checksums_check() {
    let env = Env::new();
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start_superuser("main");
    let c = connect(&url).await;
    c.batch_execute(
        "CREATE TABLE t (g int, s text);
         INSERT INTO t SELECT g, repeat('x', 20) FROM generate_series(1, 100) g; CHECKPOINT",
    )
    .await
    .unwrap();
    let (datadir, file): (String, String) = {
        let row = c
            .query_one(
                "SELECT current_setting('data_directory'), pg_relation_filepath('t')",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    drop(c);

    // Under the running server (its buffer of the page is clean, so never written back): one
    // byte of a tuple changed, the page LSN set far ahead, the stored checksum left as it was.
    let path = std::path::Path::new(&datadir).join(&file);
    let mut bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 8192, "one block");
    let page = &mut bytes[..8192];
    assert_eq!(
        cairn_engine::pg::checksum::verify_page(page, 0),
        cairn_engine::pg::checksum::PageCheck::Ok
    );
    page[8000] ^= 0x01;
    page[0..4].copy_from_slice(&0x7000u32.to_le_bytes());
    assert!(matches!(
        cairn_engine::pg::checksum::verify_page(page, 0),
        cairn_engine::pg::checksum::PageCheck::Mismatch { .. }
    ));
    std::fs::write(&path, &bytes).unwrap();
    env.ok(&["backup", "now"]);

    let (r, _) = verify_failing(
        &env,
        "",
        &[
            "--check",
            "object_integrity",
            "--check",
            "recovery_target",
            "--check",
            "page_checksums",
        ],
    );
    assert_eq!(
        report_check(&r, "object_integrity")["outcome"],
        "passed",
        "{r:#}"
    );
    assert_eq!(
        report_check(&r, "recovery_target")["outcome"],
        "passed",
        "{r:#}"
    );
    let p = report_check(&r, "page_checksums");
    assert_eq!(p["outcome"], "failed", "{r:#}");
    assert_eq!(p["counts"]["bad_checksums"], 1, "{p}");
    let details = p["details"].to_string();
    assert!(
        details.contains(&file)
            && details.contains("block 0")
            && details.contains("relation public.t in database postgres"),
        "the file {file}, the block and the relation are named: {details}"
    );
    assert!(
        !details.contains(&env.home.join("verify").display().to_string()),
        "named inside the data directory, not by a scratch path that is gone: {details}"
    );
    assert_nothing_left(&env);
    env.stop_all();
}

/// The directories in HOME/verify (not the markers).
fn scratch_dirs(env: &Env) -> Vec<std::path::PathBuf> {
    let mut d: Vec<_> = std::fs::read_dir(env.home.join("verify"))
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    d.sort();
    d
}

/// Time limits and kept copies. A clean run keeps its restored copy (stopped) for `--keep`;
/// a run cut off by its time limit in the restore (a server recovering on the copy) and one
/// cut off in the fingerprint check (a scratch branch with a running compute) fail the check
/// they were at, saying so, skip the rest, and leave nothing behind at once, without a
/// restart; a newer run replaces the kept copy; a copy past its deadline is removed by
/// `cairn up`.
#[test]
fn runs_past_their_time_limit_leave_nothing_and_kept_copies_last_their_window() {
    let env = pgbench_shop_backed_up();
    let area = env.home.join("verify");

    // 1. Kept for an hour: the data directory and its tablespace root stay, nothing runs.
    let t = Instant::now();
    let r = env.json(&[
        "verify",
        "shop",
        "--keep",
        "1h",
        "--check",
        "recovery_target",
        "--check",
        "fingerprint",
    ]);
    let clean_secs = t.elapsed().as_secs();
    assert_eq!(r["outcome"], "passed", "{r:#}");
    let teardown = r["teardown"].as_str().unwrap();
    let kept = scratch_dirs(&env);
    assert_eq!(kept.len(), 2, "data and tablespaces: {kept:?}");
    let data = kept
        .iter()
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("data-")
        })
        .unwrap();
    assert!(
        teardown.starts_with("kept until") && teardown.contains(&data.display().to_string()),
        "{teardown}"
    );
    assert!(data.join("PG_VERSION").exists());
    assert!(!data.join("postmaster.pid").exists(), "stopped");
    assert_eq!(postgres_processes_on(&area), 0);
    assert!(!env.ok(&["branch", "list"]).contains("verify-"));

    // 2. Cut off in the restore, while the server recovers on the copy.
    let (r, secs) = verify_failing(&env, "restore-recovering", &["--time-limit", "3s"]);
    assert!(secs < 60, "the limit holds: {secs} s");
    assert_eq!(r["outcome"], "failed", "{r:#}");
    let c = report_check(&r, "object_integrity");
    assert_eq!(c["outcome"], "failed", "{r:#}");
    assert!(
        c["details"].to_string().contains(
            "did not finish within the run's time limit of 3s (the restore was still running)"
        ),
        "{c}"
    );
    for name in [
        "wal_continuity",
        "page_checksums",
        "recovery_target",
        "amcheck",
    ] {
        let c = report_check(&r, name);
        assert_eq!(c["outcome"], "skipped", "{name}: {r:#}");
        assert!(
            c["details"]
                .to_string()
                .contains("not reached: the run hit its time limit of 3s"),
            "{c}"
        );
    }
    assert_eq!(r["teardown"], "removed", "{r:#}");
    // The copy kept by run 1 made way for this run's; nothing of either is left.
    assert_nothing_left(&env);

    // 3. Cut off in the fingerprint check, its scratch branch and compute up.
    let limit = format!("{}s", clean_secs * 2 + 10);
    let (r, _) = verify_failing(
        &env,
        "verify-fingerprint-compute",
        &[
            "--time-limit",
            &limit,
            "--check",
            "recovery_target",
            "--check",
            "fingerprint",
            "--check",
            "amcheck",
        ],
    );
    assert_eq!(
        report_check(&r, "recovery_target")["outcome"],
        "passed",
        "{r:#}"
    );
    let f = report_check(&r, "fingerprint");
    assert_eq!(f["outcome"], "failed", "{r:#}");
    assert!(
        f["details"].to_string().contains(&format!(
            "did not finish within the run's time limit of {limit} (the check was still running)"
        )),
        "{f}"
    );
    assert_eq!(report_check(&r, "amcheck")["outcome"], "skipped", "{r:#}");
    assert_nothing_left(&env);
    let computes = env.ok(&["compute", "list"]);
    assert!(!computes.contains("verify-"), "{computes}");

    // 4. Kept for 2 s: still there right after, removed by `cairn up` once past its deadline.
    let r = env.json(&[
        "verify",
        "shop",
        "--keep",
        "2s",
        "--check",
        "recovery_target",
    ]);
    assert!(
        r["teardown"].as_str().unwrap().starts_with("kept until"),
        "{r:#}"
    );
    assert_eq!(scratch_dirs(&env).len(), 2);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let (up, _port) = env.spawn_up(&[]);
    let _up = KillOnDrop(up);
    wait_for("the expired copy removed", 30, || {
        scratch_dirs(&env).is_empty().then_some(())
    });
    drop(_up);
    let markers: Vec<_> = std::fs::read_dir(&area).unwrap().flatten().collect();
    assert!(
        markers.is_empty(),
        "markers go with their copies: {markers:?}"
    );
    assert_nothing_left(&env);
    env.stop_all();
}

/// Starts `cairn verify shop`, waits until `ready` holds, kills it (SIGKILL); returns whether
/// `ready` was seen before the run ended on its own.
fn kill_verify_when(env: &Env, ready: impl Fn() -> bool) -> bool {
    let mut child = env
        .command(&["verify", "shop"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if ready() {
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        if child.try_wait().unwrap().is_some() || started.elapsed().as_secs() > 120 {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A verification killed (SIGKILL) while its server runs on the restored copy, and one killed
/// while its scratch branch and compute exist: before the appliance restarts both are left
/// behind (a server, a directory, a branch); once `cairn up` has started, nothing is.
#[test]
fn a_killed_verification_leaves_nothing_once_the_appliance_restarts() {
    let env = pgbench_shop_backed_up();
    let area = env.home.join("verify");

    // 1. While a server runs on the restored data directory.
    let server_up = || postgres_processes_on(&area) > 0;
    assert!(
        kill_verify_when(&env, server_up),
        "the server never started"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        postgres_processes_on(&area) > 0,
        "the killed run left its server"
    );
    // Its private socket directory, as the server's command line recorded it.
    let socket_dir = std::fs::read_dir(&area)
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("postmaster.opts")).ok())
        .find_map(|o| {
            let at = o.rfind("unix_socket_directories=")? + "unix_socket_directories=".len();
            o[at..]
                .split(['"', ' ', '\n'])
                .next()
                .map(std::path::PathBuf::from)
        })
        .expect("the server's options name its socket directory");
    assert!(socket_dir.exists(), "{}", socket_dir.display());

    // 2. While the fingerprint's scratch branch exists (its compute starting or running).
    let branch_up = || env.ok(&["branch", "list"]).contains("verify-");
    assert!(kill_verify_when(&env, branch_up), "no scratch branch seen");
    assert!(env.ok(&["branch", "list"]).contains("verify-"));

    // The appliance restarts: what the killed runs left is swept.
    let (up, _port) = env.spawn_up(&[]);
    let _up = KillOnDrop(up);
    wait_for("the sweep", 30, || {
        let left = std::fs::read_dir(&area).map_or(0, |d| d.count());
        (left == 0 && postgres_processes_on(&area) == 0).then_some(())
    });
    drop(_up);
    assert_nothing_left(&env);
    assert!(!socket_dir.exists(), "{} left", socket_dir.display());
    env.stop_all();
}
