//! The job history's pruning on SQLite and on PostgreSQL catalogs, with an injected clock:
//! runs that ended before the cut are deleted except each job's newest, going runs and recent
//! ones stay, the outcome totals `/metrics` reports do not change (and keep adding up over
//! several prunes), and the scheduler's view of each job (its last fire) is the same after.

use cairn_appliance::jobs::{history, record};
use cairn_appliance::CATALOG_COMPONENTS;
use cairn_engine::catalog::Catalog;
use cairn_engine::pg::scratch::ScratchServer;
use cairn_scheduler::due::{DueRun, JobKey, JobKind};
use chrono::{DateTime, Duration, TimeZone, Utc};
use record::Outcome;

fn key(cluster: &str, kind: JobKind) -> JobKey {
    JobKey {
        policy: "p".into(),
        cluster: cluster.into(),
        kind,
    }
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap()
}

/// Claims a run of `key` for the fire `minute` minutes after [`t0`]; ends it a minute later
/// with `outcome` unless `None` (going).
async fn run(cat: &Catalog, key: &JobKey, minute: i64, outcome: Option<Outcome>) -> String {
    let fire = t0() + Duration::minutes(minute);
    let due = DueRun {
        key: key.clone(),
        fire,
        start_at: fire,
        missed: 0,
        late: false,
    };
    let lease = std::time::Duration::from_secs(3600 * 24 * 365);
    let r = record::claim(cat, &due, "change", "node-a", fire, lease)
        .await
        .unwrap()
        .expect("claimed");
    if let Some(o) = outcome {
        let end = (fire + Duration::minutes(1)).timestamp_micros();
        record::finish(cat, &r.id, end, o, "done").await.unwrap();
    }
    r.id
}

type Totals = Vec<(String, JobKind, Outcome, u64, i64)>;

async fn totals(cat: &Catalog) -> Totals {
    record::totals(cat)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.cluster, t.kind, t.outcome, t.runs, t.last_ended_at_us))
        .collect()
}

async fn ids(cat: &Catalog) -> Vec<String> {
    let mut ids: Vec<String> = record::list(cat, None, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    ids.sort();
    ids
}

async fn scenario(url: &str) {
    let cat = Catalog::connect(url).await.unwrap();
    for c in CATALOG_COMPONENTS {
        cat.migrate(c).await.unwrap();
    }
    let shop = key("shop", JobKind::Image);
    let rto = key("shop", JobKind::RtoImage);
    let mill = key("mill", JobKind::Image);
    // shop's images: ten minutes of runs, one failed, one abandoned (its retry succeeded).
    let mut shop_ids = Vec::new();
    for m in 0..10 {
        let o = match m {
            3 => Outcome::Failed,
            5 => Outcome::Abandoned,
            _ => Outcome::Succeeded,
        };
        shop_ids.push(run(&cat, &shop, m, Some(o)).await);
    }
    // An RTO image long ago, alone: the newest of its job, kept however old.
    let rto_only = run(&cat, &rto, 0, Some(Outcome::Succeeded)).await;
    // mill: an old run, then one still going (no end: never pruned).
    let mill_old = run(&cat, &mill, 1, Some(Outcome::Succeeded)).await;
    let mill_going = run(&cat, &mill, 8, None).await;
    let before_totals = totals(&cat).await;
    let before_states = record::states(&cat, t0() + Duration::minutes(20))
        .await
        .unwrap();

    // Cut at minute 6: runs that ended before it (fires 0 to 4) go, except each job's newest.
    let cut = (t0() + Duration::minutes(6)).timestamp_micros();
    let pruned = history::prune(&cat, cut).await.unwrap();
    let mut kept: Vec<String> = shop_ids[5..].to_vec();
    kept.extend([rto_only.clone(), mill_going.clone()]);
    kept.sort();
    assert_eq!(ids(&cat).await, kept);
    // shop 0..=4 and mill's old run.
    assert_eq!(pruned, 6);
    assert!(!ids(&cat).await.contains(&mill_old));
    assert_eq!(totals(&cat).await, before_totals);
    assert_eq!(
        record::states(&cat, t0() + Duration::minutes(20))
            .await
            .unwrap(),
        before_states
    );
    // Nothing more to prune at the same cut.
    assert_eq!(history::prune(&cat, cut).await.unwrap(), 0);
    assert_eq!(totals(&cat).await, before_totals);

    // More runs, then a later cut: the folded totals add up with what was folded before.
    for m in 10..13 {
        run(&cat, &shop, m, Some(Outcome::Succeeded)).await;
    }
    let grown = totals(&cat).await;
    let cut = (t0() + Duration::minutes(60)).timestamp_micros();
    let pruned = history::prune(&cat, cut).await.unwrap();
    // shop 5..=11 (7 runs; 12 is the newest), mill has nothing ended left, rto's only run stays.
    assert_eq!(pruned, 7);
    let left = record::list(&cat, None, 1000).await.unwrap();
    let mut left_fires: Vec<(JobKind, String, i64)> = left
        .iter()
        .map(|r| {
            (
                r.key.kind,
                r.key.cluster.clone(),
                (r.fire_at_us - t0().timestamp_micros()) / 60_000_000,
            )
        })
        .collect();
    left_fires.sort_by_key(|(k, c, m)| (record::kind_str(*k), c.clone(), *m));
    assert_eq!(
        left_fires,
        [
            (JobKind::Image, "mill".to_string(), 8),
            (JobKind::Image, "shop".to_string(), 12),
            (JobKind::RtoImage, "shop".to_string(), 0),
        ]
    );
    assert_eq!(totals(&cat).await, grown);
    let succeeded = grown
        .iter()
        .find(|t| t.0 == "shop" && t.1 == JobKind::Image && t.2 == Outcome::Succeeded)
        .unwrap();
    // Fires 0..=12 but 3 (failed) and 5 (abandoned).
    assert_eq!(succeeded.3, 11);
    assert_eq!(
        succeeded.4,
        (t0() + Duration::minutes(13)).timestamp_micros()
    );
    cat.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_job_history_is_pruned_on_sqlite_and_the_totals_stay() {
    let dir = tempfile::tempdir().unwrap();
    scenario(&Catalog::sqlite_url(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_job_history_is_pruned_on_postgres_and_the_totals_stay() {
    let dir = tempfile::tempdir().unwrap();
    let server = ScratchServer::start(&dir.path().join("pg"), &[]).expect("start PostgreSQL");
    scenario(&server.url("postgres")).await;
}
