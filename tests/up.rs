//! `cairn up`: the demo on an empty data directory, the JSON API, continuous ingest, images
//! after a WAL threshold, restart of computes, clean stop on SIGTERM. And the help texts.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn up_demo_serves_the_api_ingests_and_stops_cleanly() {
    let env = Env::new();
    let port = free_port();
    let up = env
        .command(&[
            "up",
            "--demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--sync-interval",
            "0.2",
            "--image-after",
            "1MiB",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let health = wait_for("the API", 120, || api(port, "/api/health"));
    assert_eq!(health["status"], "ok", "{health}");
    let clusters = api(port, "/api/clusters").unwrap();
    assert_eq!(clusters[0]["name"], "demo");
    let branches = api(port, "/api/branches").unwrap();
    assert_eq!(branches[0]["name"], "main");
    let computes = api(port, "/api/computes").unwrap();
    assert_eq!(computes[0]["state"], "running");
    assert!(
        !computes.to_string().contains("postgresql://"),
        "no URL (password) in the API"
    );
    let images_before = env.layers().iter().filter(|l| l["kind"] == "image").count();

    // Writes on the demo compute reach the branch without any command, and past --image-after
    // a new image layer appears.
    let url = env.start("main");
    let c = connect(&url).await;
    assert_eq!(
        scalar(&c, "SELECT count(*)::text FROM accounts").await,
        "10000"
    );
    c.batch_execute(
        "CREATE TABLE big AS SELECT g, md5(g::text) AS h FROM generate_series(1, 40000) g",
    )
    .await
    .unwrap();
    let target = scalar(&c, "SELECT pg_current_wal_lsn()::text").await;
    wait_for("continuous ingest", 60, || {
        (lsn(&env.head("main")) >= lsn(&target)).then_some(())
    });
    wait_for("an image after --image-after", 60, || {
        (env.layers().iter().filter(|l| l["kind"] == "image").count() > images_before).then_some(())
    });
    let sum = table_checksum(&c, "big").await;
    drop(c);

    // /metrics: Prometheus text with the run's rounds, the regions and the demo cluster's bytes
    // (between what the layer list says just before and just after: ingest goes on).
    let on_disk = |env: &Env| -> u64 {
        env.layers()
            .iter()
            .map(|l| l["file_size"].as_u64().unwrap())
            .sum()
    };
    let before = on_disk(&env);
    let (status, metrics) = http_get(port, "/metrics").expect("GET /metrics");
    let after = on_disk(&env);
    assert_eq!(status, 200, "{metrics}");
    let sample = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
    };
    assert!(sample("cairn_up_rounds_total ") >= 1.0, "{metrics}");
    assert_eq!(sample("cairn_fenced "), 0.0);
    let stored = sample("cairn_cluster_stored_bytes{cluster=\"demo\"} ") as u64;
    assert!(
        before <= stored && stored <= after && stored > 0,
        "{before} <= {stored} <= {after}\n{metrics}"
    );
    assert!(
        metrics.contains("# TYPE cairn_region_pending_bytes gauge"),
        "{metrics}"
    );

    // SIGTERM: final ingest, computes stopped cleanly, exit 0.
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(up.id() as i32, libc::SIGTERM);
    }
    let out = up.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("demo cluster ready"), "{stdout}");
    assert!(
        stdout.contains("cairn branch create"),
        "prints what to try next: {stdout}"
    );
    let computes = env.json(&["compute", "list"]);
    assert_eq!(computes[0]["state"], "stopped");

    // The next `up` restarts the compute it stopped, with everything written before.
    let port = free_port();
    let mut up = env
        .command(&[
            "up",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--sync-interval",
            "0.2",
        ])
        .spawn()
        .unwrap();
    let computes = wait_for("the restarted compute", 120, || {
        api(port, "/api/computes").filter(|v| v[0]["state"] == "running")
    });
    assert_eq!(computes[0]["branch"], "main");
    let c = connect(&env.start("main")).await;
    assert_eq!(table_checksum(&c, "big").await, sum);
    drop(c);
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(up.id() as i32, libc::SIGINT);
    }
    assert!(up.wait().unwrap().success());
    env.stop_all();
    env.ok(&["check", "--full"]);
}

/// The subcommands a `--help` text lists under "Commands:" (`help` itself left out; wrapped
/// descriptions are indented deeper than the names).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// Whether a `--help` text is of a command that runs by itself (a usage line that does not
/// end in `<COMMAND>`), not only a group of subcommands.
fn runnable(help: &str) -> bool {
    help.lines()
        .skip_while(|l| !l.starts_with("Usage:"))
        .take_while(|l| !l.trim().is_empty())
        .any(|l| !l.trim_end().ends_with("<COMMAND>"))
}

#[test]
fn every_command_has_help_with_an_example() {
    let env = Env::new();
    // Every command the help texts list, found by walking them (none can be forgotten here).
    let mut pending: Vec<Vec<String>> = vec![vec![]];
    let mut leaves = Vec::new();
    while let Some(cmd) = pending.pop() {
        let mut args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        args.push("--help");
        let out = env.ok(&args);
        let subs = subcommands(&out);
        if runnable(&out) {
            assert!(
                out.contains("Examples:"),
                "cairn {} --help has examples:\n{out}",
                cmd.join(" ")
            );
            assert!(
                out.contains(&format!("cairn {}", cmd.join(" "))),
                "cairn {} --help shows the command itself:\n{out}",
                cmd.join(" ")
            );
            leaves.push(cmd.join(" "));
        }
        for sub in subs {
            let mut next = cmd.clone();
            next.push(sub);
            pending.push(next);
        }
    }
    for known in [
        "up",
        "cluster adopt",
        "branch create",
        "compute start",
        "backup now",
        "restore",
        "export",
        "regions check",
        "key rotate",
        "catalog rebuild",
        "check",
    ] {
        assert!(leaves.iter().any(|l| l == known), "{known} in {leaves:?}");
    }
    let adopt = env.ok(&["cluster", "adopt", "--help"]);
    for need in ["REPLICATION", "wal_level", "pg_hba.conf"] {
        assert!(
            adopt.contains(need),
            "adopt --help says the source needs {need}"
        );
    }
}

fn lsn(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_home_the_postgres_user_cannot_reach_still_runs_computes() {
    // Only root runs PostgreSQL as another OS user: without root there is nothing to test, and
    // passing silently would claim otherwise (CI runs as root; docs/TESTING.md).
    assert!(
        is_root(),
        "this test needs root; run the suite as root, or leave it out with \
         `-- --skip a_home_the_postgres_user_cannot_reach_still_runs_computes`"
    );
    let outer = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        outer.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let mut env = Env::new();
    env.home = outer.path().join("home");
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start_superuser("main");
    let c = connect(&url).await;
    assert_eq!(scalar(&c, "SELECT 'reachable'").await, "reachable");
    let dir = scalar(&c, "SHOW data_directory").await;
    assert!(dir.starts_with("/var/lib/cairn/computes/"), "{dir}");
    drop(c);
    env.ok(&["compute", "stop", "main"]);
    assert!(
        !std::path::Path::new(&dir).exists(),
        "the compute directory is removed on stop"
    );
}

/// The status of GET /api/health sent with the given Host and Authorization headers.
fn get_status(port: u16, host: &str, auth: Option<&str>) -> Option<u16> {
    let mut headers = vec![("Host", host)];
    if let Some(a) = auth {
        headers.push(("Authorization", a));
    }
    http_get_with(port, "/api/health", &headers).map(|(status, _)| status)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_needs_a_token_beyond_loopback_and_its_own_host_name() {
    let env = Env::new();
    let port = free_port();
    // Beyond loopback without a token: refused before anything starts.
    let err = env.fail(&["up", "--listen", &format!("0.0.0.0:{port}")]);
    assert!(err.contains("--api-token-file"), "{err}");
    let token = env.dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let err = env.fail(&[
        "up",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--api-token-file",
        token.to_str().unwrap(),
    ]);
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (mut up, port) = env.spawn_up(&["--api-token-file", token.to_str().unwrap()]);
    let here = format!("127.0.0.1:{port}");
    let bearer = "Bearer 0123456789abcdef0123456789abcdef";
    wait_for("the API", 60, || {
        (get_status(port, &here, Some(bearer)) == Some(200)).then_some(())
    });
    assert_eq!(get_status(port, &here, None), Some(401), "no token");
    assert_eq!(
        get_status(port, &here, Some("Bearer 0123456789abcdef0123456789abcdee")),
        Some(401),
        "wrong token"
    );
    // DNS rebinding: a page of evil.example resolving to 127.0.0.1 names its own host.
    assert_eq!(get_status(port, "evil.example", Some(bearer)), Some(421));
    assert_eq!(
        get_status(port, &format!("localhost:{port}"), Some(bearer)),
        Some(200)
    );
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(up.id() as i32, libc::SIGTERM);
    }
    assert!(up.wait().unwrap().success());
}

#[test]
fn logs_are_json_lines_with_log_format_json() {
    let env = Env::new();
    let out = env.run(&["--log-format", "json", "-vv", "cluster", "list"]);
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let created = lines
        .iter()
        .find(|l| l["fields"]["message"] == "created data directory")
        .unwrap_or_else(|| panic!("no 'created data directory' line: {stderr}"));
    assert_eq!(created["level"], "DEBUG");
    assert_eq!(
        created["fields"]["home"],
        env.home.display().to_string().as_str()
    );
    assert!(created["timestamp"].as_str().unwrap().ends_with('Z'));
    // Text by default.
    let out = env.run(&["-v", "-v", "cluster", "list"]);
    let text = String::from_utf8(out.stderr).unwrap();
    assert!(
        !text.is_empty() && !text.trim_start().starts_with('{'),
        "{text}"
    );
}
