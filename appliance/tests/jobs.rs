//! Scheduled jobs on a real appliance (real PostgreSQL, real catalog) with an injected clock:
//! a run at its fire and none before, no second run for the same fire, one late run standing
//! for the fires missed while no appliance ran, a run whose node died (its lease passed) taken
//! over as a new attempt, and two nodes deciding at once: exactly one claims.

mod common;

use cairn_appliance::jobs::{self, record::Outcome};
use cairn_appliance::{policy, policy_change};
use chrono::{DateTime, Duration, Utc};

fn images(layers: &[cairn_engine::catalog::LayerRow]) -> usize {
    layers
        .iter()
        .filter(|l| l.kind == cairn_engine::layer::file::LayerKind::Image)
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn image_jobs_run_at_their_fire_catch_up_once_and_are_taken_over() {
    let tmp = tempfile::Builder::new()
        .prefix("cairn-test-jobs-")
        .tempdir()
        .unwrap();
    let home = tmp.path().join("home");
    let app = common::open(&home, None).await;
    let (engine, shop, info, _) = common::start_shop(&app).await;
    let (client, conn) = tokio_postgres::connect(&info.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 5000) g")
        .await
        .unwrap();

    // Images every five minutes, no jitter; applied now (nothing in force before: at once).
    let dir = home.join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("shop.toml"),
        "clusters = [\"shop\"]\n[objectives]\nrpo = \"1m\"\nrto = \"1h\"\n\
         [schedules]\nimage = \"*/5 * * * *\"\nverify = \"0 4 * * *\"\n\
         [retention]\npitr = \"1d\"\n[regions]\nuse = [\"region-a\", \"region-b\"]\n\
         min_copies = 2\n",
    )
    .unwrap();
    let ctx = policy::context(&engine, policy::DEFAULT_SHIP_INTERVAL)
        .await
        .unwrap();
    let (set, _) = policy::check(&dir, &ctx).unwrap();
    let (_, change) = policy_change::apply(
        &engine,
        &ctx,
        &dir,
        &set,
        "test",
        false,
        cairn_engine::catalog::now_us(),
    )
    .await
    .unwrap();
    let t0 = DateTime::from_timestamp_micros(change.effective_at_us).unwrap();
    let schedule = &set.policies[0].schedules.image;
    let f1 = schedule.next_after(t0).unwrap();
    let tick = |node: &'static str, at: DateTime<Utc>| {
        let (app, ctx) = (&app, &ctx);
        async move { jobs::tick(app, ctx, node, at).await.unwrap() }
    };

    // Before its first fire nothing is due; at it, one run on time.
    let t = tick("node-a", f1 - Duration::seconds(1)).await;
    assert!(t.claimed.is_empty(), "{t:?}");
    let t = tick("node-a", f1 + Duration::seconds(1)).await;
    assert_eq!(t.claimed.len(), 1, "{t:?}");
    let run = &t.claimed[0];
    assert_eq!(
        (run.key.cluster.as_str(), run.late, run.missed, run.attempt),
        ("shop", false, 0, 1)
    );
    assert_eq!(run.fire_at_us, f1.timestamp_micros());
    assert_eq!(run.policy_change, change.id);
    let before = images(&engine.catalog.layers(shop.id).await.unwrap());
    let (outcome, detail) = jobs::execute(&app, run).await;
    assert_eq!(outcome, Outcome::Succeeded, "{detail}");
    assert!(detail.starts_with("main: image "), "{detail}");
    assert_eq!(
        images(&engine.catalog.layers(shop.id).await.unwrap()),
        before + 1
    );
    // The same fire is not run again.
    let t = tick("node-a", f1 + Duration::seconds(30)).await;
    assert!(t.claimed.is_empty(), "{t:?}");

    // Down for three fires: one late run stands for them; nothing new since the image, so it
    // is skipped and says why.
    let f4 = f1 + Duration::minutes(15);
    let t = tick("node-a", f4 + Duration::seconds(20)).await;
    assert_eq!(t.claimed.len(), 1, "{t:?}");
    let late = &t.claimed[0];
    assert_eq!((late.late, late.missed), (true, 2), "{late:?}");
    assert_eq!(late.fire_at_us, f4.timestamp_micros());
    let (outcome, detail) = jobs::execute(&app, late).await;
    assert_eq!(outcome, Outcome::Skipped, "{detail}");
    assert!(
        detail.contains("nothing new since its newest image"),
        "{detail}"
    );

    // A node claims the next fire and dies: while its lease holds nobody else runs it; once
    // it passed, the run is abandoned and the fire runs again as attempt 2 (late).
    let f5 = f4 + Duration::minutes(5);
    let t = tick("node-a", f5).await;
    assert_eq!(t.claimed.len(), 1);
    let dead = t.claimed[0].clone();
    let t = tick("node-b", f5 + Duration::seconds(10)).await;
    assert!(t.claimed.is_empty() && t.abandoned.is_empty(), "{t:?}");
    let t = tick("node-b", f5 + Duration::seconds(31)).await;
    assert_eq!(t.abandoned.len(), 1, "{t:?}");
    assert_eq!(t.abandoned[0].id, dead.id);
    assert_eq!(t.claimed.len(), 1, "{t:?}");
    let retry = &t.claimed[0];
    assert_eq!(
        (
            retry.fire_at_us,
            retry.attempt,
            retry.late,
            retry.node.as_str()
        ),
        (dead.fire_at_us, 2, true, "node-b")
    );
    client
        .batch_execute("INSERT INTO t SELECT g FROM generate_series(1, 5000) g")
        .await
        .unwrap();
    let (outcome, detail) = jobs::execute(&app, retry).await;
    assert_eq!(outcome, Outcome::Succeeded, "{detail}");
    // The dead node's run cannot end it any more.
    cairn_appliance::jobs::record::finish(&engine.catalog, &dead.id, 0, Outcome::Failed, "late")
        .await
        .unwrap();

    // Two nodes decide at the same moment: exactly one claims the fire.
    let f6 = f5 + Duration::minutes(5);
    let (a, b) = tokio::join!(tick("node-a", f6), tick("node-b", f6));
    assert_eq!(a.claimed.len() + b.claimed.len(), 1, "{a:?} {b:?}");

    // The record: every run with its outcome, newest first.
    let runs = jobs::record::list(&engine.catalog, Some("shop"), 10)
        .await
        .unwrap();
    let outcomes: Vec<Option<Outcome>> = runs.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            None,
            Some(Outcome::Succeeded),
            Some(Outcome::Abandoned),
            Some(Outcome::Skipped),
            Some(Outcome::Succeeded)
        ],
        "{runs:#?}"
    );
    assert!(
        runs[2].detail.contains("stopped renewing its lease"),
        "{}",
        runs[2].detail
    );
    let totals: Vec<(Outcome, u64)> = jobs::record::totals(&engine.catalog)
        .await
        .unwrap()
        .iter()
        .map(|t| (t.outcome, t.runs))
        .collect();
    assert_eq!(
        totals,
        [
            (Outcome::Abandoned, 1),
            (Outcome::Skipped, 1),
            (Outcome::Succeeded, 2)
        ]
    );
    engine.compute_stop(&shop, "main").await.unwrap();
}
