//! WAL compaction on a real appliance (real PostgreSQL, a file region): the scheduler's plan
//! over a branch's small WAL layers, carried out by the engine, leaves fewer layers holding the
//! same WAL: every point recorded before restores locally (a branch at it) with its rows, the
//! transaction summaries still resolve a time, the new layer ships, the old copies leave the
//! region through the deletion queue, and a point inside the merged range restores from the
//! region. A compaction of layers that are not adjacent is refused, changing nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cairn_appliance::{compaction_run, Appliance};
use cairn_engine::branch::PointSpec;
use cairn_engine::catalog::{ClusterRow, LayerRow};
use cairn_engine::layer::LayerKind;
use cairn_engine::layer_map::WalDesc;
use cairn_engine::progress::Progress;
use cairn_engine::Lsn;
use cairn_restore::{RestoreRequest, Target};
use cairn_scheduler::compaction::{plan_compaction, CompactWal, CompactionRules};
use common::{file_region, region_files, sql};

fn wal_layers(layers: &[LayerRow]) -> Vec<&LayerRow> {
    layers.iter().filter(|l| l.kind == LayerKind::Wal).collect()
}

/// An appliance over `regions` (regions.toml lines), with cluster 'shop' whose branch 'main'
/// got six small stores: (appliance, cluster, the compute's URL, a point (LSN, rows) after
/// each store, and the time of each). The compute is left running.
async fn shop_with_small_stores(
    home: &Path,
    regions: &str,
) -> (Appliance, ClusterRow, String, Vec<(Lsn, i64)>, Vec<i64>) {
    let app = common::open(home, Some(regions)).await;
    let (engine, shop, info, _) = common::start_shop(&app).await;
    // Six stores of a few rows each: six small WAL layers, with a point after each.
    let mut points: Vec<(Lsn, i64)> = Vec::new();
    let mut times: Vec<i64> = Vec::new();
    for i in 1..=6 {
        let n = sql(
            &info.url,
            &format!(
                "CREATE TABLE IF NOT EXISTS t (g int); INSERT INTO t SELECT generate_series(1, {}); \
                 SELECT count(*) FROM t",
                100 * i
            ),
        )
        .await;
        let lsn: Lsn = {
            let (c, conn) = tokio_postgres::connect(&info.url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let r = c
                .query_one("SELECT pg_current_wal_lsn()::text", &[])
                .await
                .unwrap();
            r.get::<_, String>(0).parse().unwrap()
        };
        points.push((lsn, n));
        times.push(chrono::Utc::now().timestamp_micros());
        engine.compute_sync(&shop, info.timeline).await.unwrap();
    }
    (app, shop, info.url, points, times)
}

#[tokio::test(flavor = "multi_thread")]
async fn compacted_wal_restores_every_point_it_held_locally_and_from_a_region() {
    let tmp = tempfile::Builder::new()
        .prefix("cairn-test-compaction-")
        .tempdir()
        .unwrap();
    let home = tmp.path().join("home");
    let region = tmp.path().join("region");
    let (app, shop, _, points, times) = shop_with_small_stores(
        &home,
        &format!(
            "min_copies = 1\ndeletion_delay = \"0s\"\n{}",
            file_region("region-a", &region)
        ),
    )
    .await;
    let engine = app.engine().clone();
    let progress = Arc::new(Progress::new());
    engine.compute_stop(&shop, "main").await.unwrap();
    app.backup_now(&shop, true, &progress)
        .await
        .unwrap()
        .require_durable()
        .unwrap();
    let before = engine.catalog.layers(shop.id).await.unwrap();
    let wal_before = wal_layers(&before);
    assert!(wal_before.len() >= 6, "{before:#?}");

    // Refused: two layers that are not adjacent.
    let apart: BTreeSet<_> = [wal_before[0].id, wal_before[2].id].into();
    let e = engine.compact_wal(&shop, &apart).await.unwrap_err();
    assert!(e.to_string().contains("but the next one starts at"), "{e}");
    let ids = |ls: &[LayerRow]| ls.iter().map(|l| l.id).collect::<Vec<_>>();
    assert_eq!(
        ids(&engine.catalog.layers(shop.id).await.unwrap()),
        ids(&before)
    );

    // The plan: every settled WAL layer under 64 MiB together, not across an image start.
    let wals: Vec<CompactWal> = wal_before
        .iter()
        .map(|l| CompactWal {
            desc: WalDesc {
                id: l.id,
                timeline: l.timeline_id,
                start: l.start,
                end: l.end,
            },
            bytes: l.file_size,
            created_us: l.created_at_us,
            settled: true,
        })
        .collect();
    let mut starts: BTreeMap<_, Vec<Lsn>> = BTreeMap::new();
    for l in before.iter().filter(|l| l.kind == LayerKind::Image) {
        starts.entry(l.timeline_id).or_default().push(l.start);
    }
    let rules = CompactionRules {
        target_bytes: 64 << 20,
        min_age_us: 0,
    };
    let now = cairn_engine::catalog::now_us();
    let groups = plan_compaction(&wals, &starts, rules, now);
    assert!(!groups.is_empty(), "{wals:#?}");
    let mut merged = 0;
    for g in &groups {
        let ids: BTreeSet<_> = g.layers.iter().copied().collect();
        let done = engine.compact_wal(&shop, &ids).await.unwrap();
        assert_eq!(
            (done.start, done.end, done.replaced),
            (g.start, g.end, g.layers.len())
        );
        println!(
            "{} layers ({} bytes) became one ({} bytes)",
            done.replaced, done.bytes_before, done.bytes_after
        );
        merged += done.replaced - 1;
    }
    let after = engine.catalog.layers(shop.id).await.unwrap();
    assert_eq!(wal_layers(&after).len(), wal_before.len() - merged);
    for l in wal_before
        .iter()
        .filter(|l| !after.iter().any(|a| a.id == l.id))
    {
        assert!(
            !engine.layer_path(l).exists(),
            "old file of {} removed",
            l.id
        );
    }

    // Every recorded point, locally: a branch at it holds its rows.
    for (k, (lsn, n)) in points.iter().enumerate() {
        let name = format!("at-{k}");
        engine
            .branch_create(&shop, &name, "main", &PointSpec::Lsn(*lsn))
            .await
            .unwrap();
        let b = engine
            .compute_start(&shop, &name, None, &progress)
            .await
            .unwrap();
        assert_eq!(sql(&b.url, "SELECT count(*) FROM t").await, *n, "at {lsn}");
        engine.compute_stop(&shop, &name).await.unwrap();
    }

    // A time inside the merged range resolves through the new layer's transaction summary.
    engine
        .branch_create(&shop, "at-time", "main", &PointSpec::Time(times[2]))
        .await
        .unwrap();
    let b = engine
        .compute_start(&shop, "at-time", None, &progress)
        .await
        .unwrap();
    assert_eq!(sql(&b.url, "SELECT count(*) FROM t").await, points[2].1);
    engine.compute_stop(&shop, "at-time").await.unwrap();

    // The region: the new layers shipped, the old copies deleted, a middle point restores.
    let p = app.protection();
    p.ship_all(Some(shop.id)).await;
    p.queue_garbage().await.unwrap();
    let done = p.process_deletions().await.unwrap();
    assert!(done.failed.is_empty(), "{:?}", done.failed);
    let files = region_files(&region);
    for l in &wal_before {
        let kept = after.iter().any(|a| a.id == l.id);
        assert_eq!(
            files.iter().any(|f| f.contains(&l.id.to_string())),
            kept,
            "{}",
            l.id
        );
    }
    for l in wal_layers(&after) {
        assert!(
            files.iter().any(|f| f.contains(&l.id.to_string())),
            "{} shipped",
            l.id
        );
    }
    let (mid, n) = points[points.len() / 2];
    let req = RestoreRequest {
        cluster: "shop".into(),
        branch: "main".into(),
        point: PointSpec::Lsn(mid),
        target: Target::Branch("from-region".into()),
        region: Some("region-a".into()),
        cluster_id: None,
        identity: None,
        signers: Vec::new(),
        parallel: 4,
    };
    cairn_restore::restore(p, &req, &progress).await.unwrap();
    let r = engine
        .compute_start(&shop, "from-region", None, &progress)
        .await
        .unwrap();
    assert_eq!(sql(&r.url, "SELECT count(*) FROM t").await, n);
    engine.compute_stop(&shop, "from-region").await.unwrap();
}

/// Layer ids whose objects a file region holds.
fn region_layers(dir: &Path) -> BTreeSet<String> {
    region_files(dir)
        .iter()
        .filter_map(|f| f.split("/layers/").nth(1).map(str::to_string))
        .collect()
}

/// Compaction as `cairn up` runs it (`compaction_run`): only layers every region holds are
/// merged; the merged layer is in every region before the catalog names it, so the durable
/// prefix (the RPO exposure) does not move and every index names only what its region holds;
/// a region that cannot take the merged layer leaves the catalog as it was, and the copy the
/// other region got is removed as garbage (merging the same layers again gives the same
/// layer); a file a killed pass left staged is swept; a point
/// inside a merged range restores from the region that failed before.
#[tokio::test(flavor = "multi_thread")]
async fn cairn_up_compaction_ships_the_merged_layer_everywhere_before_it_swaps_it_in() {
    let tmp = tempfile::Builder::new()
        .prefix("cairn-test-compaction-run-")
        .tempdir()
        .unwrap();
    let home = tmp.path().join("home");
    let (ra, rb) = (tmp.path().join("region-a"), tmp.path().join("region-b"));
    let (app, shop, url, points, _) = shop_with_small_stores(
        &home,
        &format!(
            "min_copies = 2\ndeletion_delay = \"0s\"\n{}{}",
            file_region("region-a", &ra),
            file_region("region-b", &rb)
        ),
    )
    .await;
    let engine = app.engine().clone();
    let p = app.protection().clone();
    let progress = Arc::new(Progress::new());
    app.backup_now(&shop, true, &progress)
        .await
        .unwrap()
        .require_durable()
        .unwrap();
    // One more store that no region holds yet: not settled, so never merged.
    sql(&url, "INSERT INTO t SELECT generate_series(1, 700)").await;
    engine.compute_stop(&shop, "main").await.unwrap();
    let before = engine.catalog.layers(shop.id).await.unwrap();
    let copies = p.copies().await.unwrap();
    let unsettled: Vec<&LayerRow> = wal_layers(&before)
        .into_iter()
        .filter(|l| !copies.contains_key(&l.id.to_string()))
        .collect();
    assert!(!unsettled.is_empty(), "a store after the backup");
    let regions = ["region-a".to_string(), "region-b".to_string()];
    let durable = |layers: &[LayerRow], copies: &std::collections::HashMap<_, _>| -> Lsn {
        cairn_appliance::objectives::durable_to(layers, copies, &regions, 2)
    };
    let durable_before = durable(&before, &copies);
    assert_eq!(durable_before, unsettled[0].start);
    let rules = CompactionRules {
        target_bytes: 64 << 20,
        min_age_us: 0,
    };
    let now = cairn_engine::catalog::now_us;
    let ids = |ls: &[LayerRow]| ls.iter().map(|l| l.id).collect::<BTreeSet<_>>();
    let catalog_ids: BTreeSet<String> = before.iter().map(|l| l.id.to_string()).collect();

    // No time budget: nothing starts; what a killed pass left staged is swept.
    std::fs::create_dir_all(engine.compacting_dir()).unwrap();
    let left = engine
        .compacting_dir()
        .join(format!("{}.wal", "ab".repeat(32)));
    std::fs::write(&left, b"a merged layer a killed pass left").unwrap();
    let none = compaction_run::run(&app, rules, now(), Duration::ZERO)
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    assert!(!left.exists(), "swept");
    assert_eq!(
        ids(&engine.catalog.layers(shop.id).await.unwrap()),
        ids(&before)
    );

    // Region-b stops taking writes (its directory becomes a file): the merged layer cannot be
    // everywhere, so it does not go in; the catalog and the files stay as they were.
    let parked = tmp.path().join("region-b.parked");
    std::fs::rename(&rb, &parked).unwrap();
    std::fs::write(&rb, b"not a directory").unwrap();
    let failed = compaction_run::run(&app, rules, now(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let (cluster, e) = failed[0].as_ref().unwrap_err();
    assert_eq!(cluster, "shop");
    assert!(e.to_string().contains("region-b"), "{e}");
    assert_eq!(
        ids(&engine.catalog.layers(shop.id).await.unwrap()),
        ids(&before)
    );
    for l in &before {
        assert!(engine.layer_path(l).exists(), "{} kept", l.id);
    }
    assert_eq!(
        std::fs::read_dir(engine.compacting_dir()).unwrap().count(),
        0,
        "the staged layer removed"
    );
    let orphans: Vec<String> = region_layers(&ra)
        .into_iter()
        .filter(|id| !catalog_ids.contains(id))
        .collect();
    assert_eq!(
        orphans.len(),
        1,
        "region-a got the merged layer: {orphans:?}"
    );
    std::fs::remove_file(&rb).unwrap();
    std::fs::rename(&parked, &rb).unwrap();

    // Both regions take writes: the settled layers merge, the unsettled ones stay.
    let done = compaction_run::run(&app, rules, now(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    let done = done[0].as_ref().unwrap();
    assert!(done.merged >= 1 && done.replaced >= 2, "{done:?}");
    let after = engine.catalog.layers(shop.id).await.unwrap();
    assert_eq!(
        wal_layers(&after).len(),
        wal_layers(&before).len() - done.replaced + done.merged
    );
    for l in &unsettled {
        assert!(after.iter().any(|a| a.id == l.id), "{} not merged", l.id);
    }
    let merged: Vec<&LayerRow> = after
        .iter()
        .filter(|l| !before.iter().any(|b| b.id == l.id))
        .collect();
    assert_eq!(merged.len(), done.merged);
    // The same layers merge into the same layer: the first group is the failed attempt's.
    assert!(merged.iter().any(|m| m.id.to_string() == orphans[0]));
    for (m, l) in merged.iter().map(|m| {
        let newest = before
            .iter()
            .filter(|b| b.kind == LayerKind::Wal && m.start <= b.start && b.end <= m.end)
            .map(|b| b.created_at_us)
            .max();
        (m, newest)
    }) {
        assert_eq!(
            Some(m.created_at_us),
            l,
            "written when its newest WAL was stored"
        );
    }
    // Already in both regions as the catalog names it: the durable prefix did not move.
    let copies = p.copies().await.unwrap();
    for l in &merged {
        assert_eq!(
            copies.get(&l.id.to_string()).map(|r| r.len()),
            Some(2),
            "{} held by both regions",
            l.id
        );
        for dir in [&ra, &rb] {
            assert!(region_layers(dir).contains(&l.id.to_string()));
        }
    }
    assert_eq!(durable(&after, &copies), durable_before);
    // The old copies stay until the indexes stop naming them, then the deletion queue takes
    // them.
    let replaced: Vec<String> = before
        .iter()
        .filter(|l| !after.iter().any(|a| a.id == l.id))
        .map(|l| l.id.to_string())
        .collect();
    assert_eq!(replaced.len(), done.replaced);
    for id in &replaced {
        assert!(region_layers(&rb).contains(id), "{id} kept while named");
    }
    for (r, res) in p.ship_all(Some(shop.id)).await {
        res.unwrap_or_else(|e| panic!("{r}: {e}"));
    }
    p.queue_garbage().await.unwrap();
    let gc = p.process_deletions().await.unwrap();
    assert!(gc.failed.is_empty(), "{:?}", gc.failed);
    for dir in [&ra, &rb] {
        let held = region_layers(dir);
        for id in &replaced {
            assert!(!held.contains(id), "{id} deleted from {}", dir.display());
        }
        for l in &after {
            assert!(
                held.contains(&l.id.to_string()),
                "{} in {}",
                l.id,
                dir.display()
            );
        }
    }

    // A point inside a merged range, from region-b (the one that failed before).
    let (mid, n) = points
        .iter()
        .copied()
        .find(|(lsn, _)| merged.iter().any(|m| m.start < *lsn && *lsn < m.end))
        .expect("a point inside a merged layer");
    let req = RestoreRequest {
        cluster: "shop".into(),
        branch: "main".into(),
        point: PointSpec::Lsn(mid),
        target: Target::Branch("from-region-b".into()),
        region: Some("region-b".into()),
        cluster_id: None,
        identity: None,
        signers: Vec::new(),
        parallel: 4,
    };
    cairn_restore::restore(&p, &req, &progress).await.unwrap();
    let r = engine
        .compute_start(&shop, "from-region-b", None, &progress)
        .await
        .unwrap();
    assert_eq!(sql(&r.url, "SELECT count(*) FROM t").await, n);
    engine.compute_stop(&shop, "from-region-b").await.unwrap();
}
