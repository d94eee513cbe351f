//! `cairn report`: reports appended to the catalog's chain by the appliance's signing key and
//! copied to two file regions are listed, shown (text, JSON, HTML) and verified; then an
//! attacker edits a byte in one region, removes a report from the other, and rewrites a row of
//! the catalog: `cairn report verify` exits 1 naming each place and the first broken link,
//! while the untouched places still verify.

mod common;

use std::collections::BTreeMap;

use cairn_appliance::{Appliance, ApplianceOptions};
use cairn_verifier::report::{CheckResult, Outcome, Phase, PointRef, Report};
use cairn_verifier::store;
use common::*;

fn draft(i: u64, failing: bool) -> Report {
    let checks = vec![CheckResult {
        name: "sql_probes".into(),
        outcome: if failing {
            Outcome::Failed
        } else {
            Outcome::Passed
        },
        duration_ms: 9,
        counts: BTreeMap::from([("probes".into(), 1)]),
        details: if failing {
            vec!["probe <orders> returned false".into()]
        } else {
            vec![]
        },
    }];
    Report {
        format: 1,
        sequence: 0,
        previous: None,
        id: format!("vr-test-{i}"),
        appliance_version: env!("CARGO_PKG_VERSION").into(),
        requested_by: "cli:test".into(),
        cluster: "shop".into(),
        cluster_id: "c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0".into(),
        policy: None,
        region: "region-a".into(),
        point: PointRef {
            branch: "main".into(),
            selection: "latest".into(),
            lsn: "0/3000060".into(),
            time_us: None,
        },
        started_at_us: 1_796_534_157_000_000 + i as i64,
        ended_at_us: 1_796_534_160_000_000 + i as i64,
        outcome: Report::outcome_of(&checks),
        checks,
        phases: vec![Phase {
            name: "restore".into(),
            duration_ms: 2_000,
        }],
        measured_rto_ms: 2_500,
        achieved_rpo_ms: Some(3_000),
        repairs: vec![],
        teardown: "removed".into(),
    }
}

/// Runs cairn, insisting on exit code 1; returns stdout and stderr together.
fn broken(env: &Env, args: &[&str]) -> String {
    let out = env.run(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "cairn {args:?}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_are_listed_shown_and_their_chain_verified_where_it_is_kept() {
    let env = Env::new();
    env.two_file_regions();
    env.ok(&["cluster", "list"]); // creates the home, keys and catalog
    {
        let (app, _) = Appliance::open(&ApplianceOptions {
            home: env.home.clone(),
            catalog_url: None,
            pg_bin: None,
        })
        .await
        .unwrap();
        let p = app.protection();
        for i in 1..=3 {
            store::append(&app.engine().catalog, p.signer(), &draft(i, i == 2))
                .await
                .unwrap();
        }
        for r in &p.regions.regions {
            assert_eq!(store::publish(&app.engine().catalog, r).await.unwrap(), 3);
        }
    }

    let list = env.ok(&["report", "list"]);
    assert!(
        list.contains("vr-test-3") && list.contains("failed"),
        "{list}"
    );
    let rows = env.json(&["report", "list"]);
    assert_eq!(rows.as_array().unwrap().len(), 3);
    assert_eq!(rows[0]["sequence"], 3, "newest first: {rows}");
    let shown = env.ok(&["report", "show", "2"]);
    assert!(
        shown.contains("report 2 (vr-test-2): FAILED") && shown.contains("probe <orders>"),
        "{shown}"
    );
    let by_id = env.json(&["report", "show", "vr-test-3"]);
    assert_eq!(by_id["sequence"], 3);
    let page = env.ok(&["report", "show", "2", "--html"]);
    assert!(page.contains("probe &lt;orders&gt;") && !page.contains("<orders>"));
    let e = env.fail(&["report", "show", "9"]);
    assert!(e.contains("no verification report '9'"), "{e}");
    let ok = env.ok(&["report", "verify"]);
    for place in ["catalog", "region region-a", "region region-b"] {
        assert!(
            ok.contains(&format!("{place}: 3 report(s), chain intact")),
            "{ok}"
        );
    }

    // An attacker edits one byte of report 2 in region-b.
    let b2 = env
        .region_root("region-b")
        .join("reports/report-0000000002.json");
    let mut bytes = std::fs::read(&b2).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x01;
    std::fs::write(&b2, &bytes).unwrap();
    let e = broken(&env, &["report", "verify"]);
    assert!(
        e.contains("region region-b: BROKEN at report-0000000002.json"),
        "{e}"
    );
    assert!(
        e.contains("region region-a: 3 report(s), chain intact"),
        "{e}"
    );
    assert!(
        e.contains("broken or unreadable in: region region-b"),
        "{e}"
    );
    env.ok(&["report", "verify", "--region", "region-a"]);

    // ... removes report 2 from region-a.
    std::fs::remove_file(
        env.region_root("region-a")
            .join("reports/report-0000000002.json"),
    )
    .unwrap();
    let e = broken(&env, &["report", "verify", "--region", "region-a"]);
    assert!(
        e.contains("BROKEN at report-0000000003.json: follows report 1: reports 2..=2 are missing"),
        "{e}"
    );

    // ... and rewrites report 1's row in the catalog: the run now "passed" nothing failed.
    let url = format!("sqlite://{}?mode=rw", env.home.join("catalog.db").display());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let body: String =
        sqlx::query_scalar("SELECT body FROM verification_reports WHERE sequence = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    let edited = body.replace("\"measured_rto_ms\":2500", "\"measured_rto_ms\":1500");
    assert_ne!(edited, body);
    sqlx::query("UPDATE verification_reports SET body = $1 WHERE sequence = 1")
        .bind(&edited)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let e = env.fail(&["report", "show", "1"]);
    assert!(
        e.contains("report 1 does not verify: its signature does not match its content"),
        "{e}"
    );
    let e = env.fail(&["report", "verify", "--json"]);
    assert!(e.contains("broken or unreadable in: catalog"), "{e}");
    let out = env.run(&["report", "verify", "--json"]);
    let places: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        places[0]["status"]["broken"]["at"], "report-0000000001.json",
        "{places}"
    );
}
