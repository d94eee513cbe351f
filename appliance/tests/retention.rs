//! Retention carried out on a real appliance (real PostgreSQL, two file regions) with an
//! injected clock: a destructive change deletes nothing while it cools off; once in force the
//! layers no point needs leave the catalog, the disk and (through the deletion queue) both
//! regions, while every branch head, the child branch's point in its parent's past and the
//! PITR window still restore from a region; a point in the retired span no longer does.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod common;

use cairn_appliance::{policy, policy_change, retention_run, Appliance};
use cairn_engine::branch::PointSpec;
use cairn_engine::catalog::{ClusterRow, LayerRow};
use cairn_engine::layer::LayerKind;
use cairn_engine::progress::Progress;
use cairn_engine::{LayerId, Lsn};
use cairn_restore::{RestoreRequest, Target};
use common::{region_files, sql};

const HOUR_US: i64 = 3_600_000_000;

/// An appliance under `dir` (embedded regions) with cluster shop and main's compute running.
async fn shop_running(
    dir: &Path,
) -> (
    Appliance,
    Arc<cairn_engine::Engine>,
    ClusterRow,
    cairn_engine::compute::ComputeInfo,
    Arc<Progress>,
) {
    let app = common::open(&dir.join("home"), None).await;
    let (engine, shop, info, progress) = common::start_shop(&app).await;
    (app, engine, shop, info, progress)
}

fn write_policy(dir: &Path, pitr: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("shop.toml"),
        format!(
            "clusters = [\"shop\"]\n[objectives]\nrpo = \"1m\"\nrto = \"1h\"\n\
             [schedules]\nimage = \"@hourly\"\nverify = \"0 4 * * *\"\n\
             [retention]\npitr = \"{pitr}\"\nmin_retention = \"0s\"\n\
             [regions]\nuse = [\"region-a\", \"region-b\"]\nmin_copies = 2\n"
        ),
    )
    .unwrap();
}

/// Restores `branch` of shop at `point` from `region` into a new branch; the rows of `t`
/// there, or the restore's error.
async fn restore_count(
    app: &Appliance,
    shop: &ClusterRow,
    branch: &str,
    point: PointSpec,
    region: &str,
    into: &str,
) -> Result<i64, String> {
    let req = RestoreRequest {
        cluster: "shop".into(),
        branch: branch.into(),
        point,
        target: Target::Branch(into.into()),
        region: Some(region.into()),
        cluster_id: None,
        identity: None,
        signers: Vec::new(),
        parallel: 4,
    };
    let progress = Arc::new(Progress::new());
    cairn_restore::restore(app.protection(), &req, &progress)
        .await
        .map_err(|e| e.to_string())?;
    let info = app
        .engine()
        .compute_start(shop, into, None, &progress)
        .await
        .map_err(|e| e.to_string())?;
    let n = sql(&info.url, "SELECT count(*) FROM t").await;
    app.engine()
        .compute_stop(shop, into)
        .await
        .map_err(|e| e.to_string())?;
    Ok(n)
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_in_force_retires_what_no_point_needs_everywhere_and_keeps_the_rest() {
    let tmp = tempfile::Builder::new()
        .prefix("cairn-test-retention-")
        .tempdir()
        .unwrap();
    let home = tmp.path().join("home");
    let regions: PathBuf = tmp.path().join("regions");
    let toml = format!(
        "min_copies = 2\ndeletion_delay = \"0s\"\n\
             [[region]]\nname = \"region-a\"\nurl = \"file://{0}/a\"\n\
             [[region]]\nname = \"region-b\"\nurl = \"file://{0}/b\"\n",
        regions.display()
    );
    let app = common::open(&home, Some(&toml)).await;
    let (engine, shop, info, progress) = common::start_shop(&app).await;
    let url = info.url.clone();
    let write = |n: i64| {
        let url = url.clone();
        async move {
            sql(
                &url,
                &format!("CREATE TABLE IF NOT EXISTS t (g int); INSERT INTO t SELECT generate_series(1, {n}); SELECT count(*) FROM t"),
            )
            .await
        }
    };
    let lsn = |url: String| async move {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let r = c
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap();
        r.get::<_, String>(0).parse::<Lsn>().unwrap()
    };

    // History on main: rows, image A, rows (a branch point), rows, image B, rows, image C,
    // rows. The child branch `audit` starts between A and B.
    write(1000).await;
    engine.image_create(&shop, "main", &progress).await.unwrap();
    let at_branch = write(1000).await;
    let branch_lsn = lsn(url.clone()).await;
    engine.compute_sync(&shop, info.timeline).await.unwrap();
    engine
        .branch_create(&shop, "audit", "main", &PointSpec::Lsn(branch_lsn))
        .await
        .unwrap();
    let in_retired_span = write(1000).await;
    let retired_lsn = lsn(url.clone()).await;
    engine.image_create(&shop, "main", &progress).await.unwrap();
    write(1000).await;
    engine.image_create(&shop, "main", &progress).await.unwrap();
    let final_count = write(1000).await;
    let head_lsn = lsn(url.clone()).await;
    engine.compute_sync(&shop, info.timeline).await.unwrap();
    engine.compute_stop(&shop, "main").await.unwrap();
    let backup = app.backup_now(&shop, true, &progress).await.unwrap();
    backup.require_durable().unwrap();
    let layers_before: Vec<LayerRow> = engine.catalog.layers(shop.id).await.unwrap();
    assert_eq!(
        layers_before
            .iter()
            .filter(|l| l.kind == LayerKind::Image)
            .count(),
        4,
        "the image of creation and A, B, C"
    );

    // A 30-day window in force; then a 1-hour window applied without confirmation: it waits
    // 24 hours.
    let dir = home.join("policies");
    let ctx = policy::context(&engine, policy::DEFAULT_SHIP_INTERVAL)
        .await
        .unwrap();
    let now = cairn_engine::catalog::now_us();
    write_policy(&dir, "30d");
    let (set, _) = policy::check(&dir, &ctx).unwrap();
    policy_change::apply(&engine, &ctx, &dir, &set, "alice", false, now)
        .await
        .unwrap();
    write_policy(&dir, "1h");
    let (set, _) = policy::check(&dir, &ctx).unwrap();
    let (_, waiting) = policy_change::apply(&engine, &ctx, &dir, &set, "bob", false, now + 1)
        .await
        .unwrap();
    assert!(waiting.destructive && !waiting.confirmed);
    assert_eq!(waiting.effective_at_us, now + 1 + 24 * HOUR_US);

    // Three hours on, the change still cools off: nothing is retired.
    let r = retention_run::run(&app, &ctx, now + 3 * HOUR_US)
        .await
        .unwrap();
    let r = r[0].as_ref().unwrap();
    assert_eq!(r.retired.layers, 0, "{r:?}");
    assert_eq!(
        engine.catalog.layers(shop.id).await.unwrap().len(),
        layers_before.len()
    );

    // A day and an hour on, it is in force: the layers nothing needs go.
    let later = now + 25 * HOUR_US;
    let r = retention_run::run(&app, &ctx, later).await.unwrap();
    let r = r[0].as_ref().unwrap();
    assert_eq!(r.change, waiting.id);
    assert!(r.retired.layers >= 2, "{r:?}");
    let after: Vec<LayerRow> = engine.catalog.layers(shop.id).await.unwrap();
    assert_eq!(after.len() + r.retired.layers, layers_before.len());
    let kept: BTreeSet<LayerId> = after.iter().map(|l| l.id).collect();
    let retired: Vec<&LayerRow> = layers_before
        .iter()
        .filter(|l| !kept.contains(&l.id))
        .collect();
    // The WAL between the branch point and image C is needed by no point (images read the
    // images before them, so those stay).
    assert!(
        retired.iter().all(|l| l.kind == LayerKind::Wal),
        "{retired:#?}"
    );
    for l in &retired {
        assert!(
            !engine.layer_path(l).exists(),
            "file of retired layer {} removed",
            l.id
        );
    }
    for l in &after {
        assert!(engine.layer_path(l).exists(), "file of kept layer {}", l.id);
    }
    // The catalog keeps nothing of them.
    for table in ["wal_layer_txns", "wal_markers", "layer_refs"] {
        for l in &retired {
            let n: i64 =
                sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE layer_id = $1"))
                    .bind(l.id.to_string())
                    .fetch_one(engine.catalog.pool())
                    .await
                    .unwrap();
            assert_eq!(n, 0, "{table} rows of retired layer {}", l.id);
        }
    }
    // Running it again at the same time retires nothing more.
    let again = retention_run::run(&app, &ctx, later).await.unwrap();
    assert_eq!(again[0].as_ref().unwrap().retired.layers, 0);

    // The regions: new indexes shipped, the retired objects queued and deleted.
    let p = app.protection();
    p.ship_all(Some(shop.id)).await;
    let queued = p.queue_garbage().await.unwrap();
    assert!(queued > 0);
    let done = p.process_deletions().await.unwrap();
    assert!(done.failed.is_empty(), "{:?}", done.failed);
    for region in ["a", "b"] {
        let files = region_files(&regions.join(region));
        for l in &retired {
            let id = l.id.to_string();
            assert!(
                !files.iter().any(|f| f.contains(&id)),
                "region {region} still holds retired layer {id}"
            );
        }
        for l in &after {
            let id = l.id.to_string();
            assert!(
                files.iter().any(|f| f.contains(&id)),
                "region {region} lost kept layer {id}"
            );
        }
    }

    // Every head and the child's point in its parent's past restore from a region; the
    // retired span does not.
    assert_eq!(
        restore_count(&app, &shop, "main", PointSpec::Head, "region-b", "r-main").await,
        Ok(final_count)
    );
    assert_eq!(
        restore_count(
            &app,
            &shop,
            "main",
            PointSpec::Lsn(head_lsn),
            "region-a",
            "r-head"
        )
        .await,
        Ok(final_count)
    );
    assert_eq!(
        restore_count(&app, &shop, "audit", PointSpec::Head, "region-a", "r-audit").await,
        Ok(at_branch)
    );
    let gone = restore_count(
        &app,
        &shop,
        "main",
        PointSpec::Lsn(retired_lsn),
        "region-a",
        "r-gone",
    )
    .await;
    let err = gone.expect_err(&format!("had {in_retired_span} rows"));
    assert!(
        err.contains("cannot be reconstructed") && err.contains("is missing"),
        "{err}"
    );
}

/// The engine's own guard, whatever a planner asks: a layer of no cluster's, a layer a kept
/// image reads, or WAL a branch head needs is refused, and nothing at all is deleted.
#[tokio::test(flavor = "multi_thread")]
async fn retiring_refuses_what_would_break_a_head_or_an_image_and_deletes_nothing() {
    let tmp = tempfile::Builder::new()
        .prefix("cairn-test-retire-")
        .tempdir()
        .unwrap();
    let (_app, engine, shop, info, progress) = shop_running(tmp.path()).await;
    sql(
        &info.url,
        "CREATE TABLE t AS SELECT generate_series(1, 3000) g; SELECT 1",
    )
    .await;
    engine.image_create(&shop, "main", &progress).await.unwrap();
    sql(
        &info.url,
        "INSERT INTO t SELECT generate_series(1, 3000); SELECT 1",
    )
    .await;
    engine.compute_sync(&shop, info.timeline).await.unwrap();
    engine.compute_stop(&shop, "main").await.unwrap();
    let layers = engine.catalog.layers(shop.id).await.unwrap();
    let newest_image = layers
        .iter()
        .filter(|l| l.kind == LayerKind::Image)
        .max_by_key(|l| l.end)
        .unwrap();
    let refs = engine.catalog.layer_refs(shop.id).await.unwrap();
    let read_by_newest: BTreeSet<LayerId> = refs
        .iter()
        .filter(|(i, _)| *i == newest_image.id)
        .map(|(_, r)| *r)
        .collect();
    let wal_after: BTreeSet<LayerId> = layers
        .iter()
        .filter(|l| l.kind == LayerKind::Wal && l.start >= newest_image.end)
        .map(|l| l.id)
        .collect();
    assert!(!read_by_newest.is_empty() && !wal_after.is_empty());

    let refused = |ids: BTreeSet<LayerId>| {
        let (engine, shop) = (&engine, &shop);
        async move {
            engine
                .retire_layers(shop, &ids)
                .await
                .expect_err("refused")
                .to_string()
        }
    };
    let e = refused(read_by_newest.clone()).await;
    assert!(e.contains("which is kept, reads it"), "{e}");
    let e = refused(wal_after.clone()).await;
    assert!(
        e.contains("the head of branch 'main' would no longer be reconstructible"),
        "{e}"
    );
    let mut stranger = wal_after.clone();
    stranger.insert(LayerId([7; 32]));
    let e = refused(stranger).await;
    assert!(e.contains("not among its layers"), "{e}");
    let still = engine.catalog.layers(shop.id).await.unwrap();
    assert_eq!(still.len(), layers.len());
    assert!(still.iter().all(|l| engine.layer_path(l).exists()));
}

/// Images that no kept image reads go together, whatever reads what among them: images
/// retired with the image they read (their catalog references first, then the rows), after
/// an image that reads none of them (dedup offers no image that reads one left out). The
/// head still starts with every row.
#[tokio::test(flavor = "multi_thread")]
async fn images_retire_together_with_the_images_they_read() {
    let tmp = tempfile::Builder::new()
        .prefix("cairn-test-retire-")
        .tempdir()
        .unwrap();
    let (_app, engine, shop, info, progress) = shop_running(tmp.path()).await;
    let image = || async {
        let r = engine.image_create(&shop, "main", &progress).await.unwrap();
        r.layer.parse::<LayerId>().unwrap()
    };
    sql(
        &info.url,
        "CREATE TABLE big AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 60000) g;
         CREATE TABLE t (g int); SELECT 1",
    )
    .await;
    let second = image().await;
    sql(
        &info.url,
        "INSERT INTO t SELECT generate_series(1, 100); SELECT 1",
    )
    .await;
    let third = image().await;
    sql(&info.url, "DROP TABLE big; CHECKPOINT; SELECT 1").await;
    // The fourth may still read the second (the density of what it may read is measured
    // against the newest image before it, the third, which reads all of the table); the fifth
    // measures against the fourth, which reads little of the second: neither the second nor
    // any image reading it (the third, the fourth) is offered to it.
    let fourth = image().await;
    let fifth = image().await;
    let refs = engine.catalog.layer_refs(shop.id).await.unwrap();
    let reads = |i: LayerId| -> BTreeSet<LayerId> {
        refs.iter()
            .filter(|(a, _)| *a == i)
            .map(|(_, b)| *b)
            .collect()
    };
    assert!(reads(third).contains(&second), "{refs:?}");
    let fifth_reads = reads(fifth);
    assert!(
        [second, third, fourth]
            .iter()
            .all(|i| !fifth_reads.contains(i)),
        "the fifth image reads {fifth_reads:?}"
    );
    sql(
        &info.url,
        "INSERT INTO t SELECT generate_series(1, 23); SELECT 1",
    )
    .await;
    engine.compute_sync(&shop, info.timeline).await.unwrap();
    engine.compute_stop(&shop, "main").await.unwrap();

    // Retire those three images and the WAL before the fifth; the catalog lists the read
    // image before the ones reading it.
    let layers = engine.catalog.layers(shop.id).await.unwrap();
    let start = layers.iter().find(|l| l.id == fifth).unwrap().start;
    let ids: BTreeSet<LayerId> = layers
        .iter()
        .filter(|l| match l.kind {
            LayerKind::Image => [second, third, fourth].contains(&l.id),
            LayerKind::Wal => l.end <= start,
        })
        .map(|l| l.id)
        .collect();
    let order: Vec<LayerId> = layers.iter().map(|l| l.id).collect();
    let at = |i: LayerId| order.iter().position(|x| *x == i).unwrap();
    assert!(at(second) < at(third), "the read image comes first");
    let retired = engine.retire_layers(&shop, &ids).await.unwrap();
    assert_eq!(retired.layers, ids.len());
    let left: BTreeSet<LayerId> = engine
        .catalog
        .layers(shop.id)
        .await
        .unwrap()
        .iter()
        .map(|l| l.id)
        .collect();
    assert!(left.is_disjoint(&ids) && left.contains(&fifth));
    let info = engine
        .compute_start(&shop, "main", None, &progress)
        .await
        .unwrap();
    assert_eq!(sql(&info.url, "SELECT count(*) FROM t").await, 123);
    engine.compute_stop(&shop, "main").await.unwrap();
}

/// A layer committed while a retirement waits for its timeline's lock (an image or an ingest
/// holds it) is known to the retirement once it has the lock: its file is not swept as a
/// stray. The test holds the lock itself and commits a layer meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_layer_committed_while_retirement_waits_for_the_timeline_is_kept() {
    let tmp = tempfile::Builder::new()
        .prefix("cairn-test-retire-")
        .tempdir()
        .unwrap();
    let (_app, engine, shop, info, progress) = shop_running(tmp.path()).await;
    sql(
        &info.url,
        "CREATE TABLE t AS SELECT generate_series(1, 3000) g; SELECT 1",
    )
    .await;
    engine.compute_sync(&shop, info.timeline).await.unwrap();
    let image = engine.image_create(&shop, "main", &progress).await.unwrap();
    engine.compute_stop(&shop, "main").await.unwrap();
    let layers = engine.catalog.layers(shop.id).await.unwrap();
    let newest = layers
        .iter()
        .find(|l| l.id.to_string() == image.layer)
        .unwrap()
        .clone();
    let ids: BTreeSet<LayerId> = layers
        .iter()
        .filter(|l| l.kind == LayerKind::Wal && l.end <= newest.start)
        .map(|l| l.id)
        .collect();
    assert!(!ids.is_empty());

    let held = engine
        .home
        .lock_timeline(info.timeline, "the test")
        .unwrap();
    let retire = {
        let (engine, shop, ids) = (engine.clone(), shop.clone(), ids.clone());
        tokio::spawn(async move { engine.retire_layers(&shop, &ids).await })
    };
    // The retirement has read the catalog and waits for the lock; a copy of the image is
    // committed meanwhile, as an image job would.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(!retire.is_finished());
    let copy = LayerRow {
        id: LayerId([0x5a; 32]),
        ..newest.clone()
    };
    std::fs::copy(engine.layer_path(&newest), engine.layer_path(&copy)).unwrap();
    let mut tx = engine.catalog.begin().await.unwrap();
    tx.insert_layer(&copy, &[], &[]).await.unwrap();
    tx.commit().await.unwrap();
    drop(held);

    let retired = retire.await.unwrap().unwrap();
    assert_eq!(retired.layers, ids.len());
    assert_eq!(retired.strays, 0);
    assert!(
        engine.layer_path(&copy).exists(),
        "the layer committed meanwhile lost its file"
    );
}
