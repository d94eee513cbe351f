//! The catalog against both backends: SQLite in a temporary directory, and a real PostgreSQL
//! server started for the test.

use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::ids::{LayerId, Lsn};
use crate::layer::LayerKind;
use crate::pg::scratch::ScratchServer;
use crate::wal::{EventKind, WalEvent};
use crate::wal_index;

fn sample_cluster() -> ClusterRow {
    ClusterRow {
        id: ClusterId::generate(),
        name: "orders".into(),
        kind: ClusterKind::Managed,
        pg_major: 15,
        system_id: u64::MAX - 5,
        segment_size: 16 << 20,
        tli: 1,
        source: None,
        slot: None,
        created_at_us: now_us(),
    }
}

async fn exercise(cat: &Catalog) {
    assert_eq!(cat.schema_version().await.unwrap(), 5);
    let c = sample_cluster();
    let root = TimelineRow {
        id: TimelineId::generate(),
        cluster_id: c.id,
        ancestor: None,
        ancestor_prev: None,
        head: Lsn(0x300_0000),
        head_prev: None,
        created_at_us: 1,
    };
    let child = TimelineRow {
        id: TimelineId::generate(),
        cluster_id: c.id,
        ancestor: Some((root.id, Lsn(0x200_0100))),
        ancestor_prev: Some(Lsn(0x200_00D8)),
        head: Lsn(0x200_0100),
        head_prev: Some(Lsn(0x200_00D8)),
        created_at_us: 2,
    };
    let layer = LayerRow {
        id: LayerId([7; 32]),
        cluster_id: c.id,
        timeline_id: root.id,
        kind: LayerKind::Wal,
        start: Lsn(0x200_0028),
        end: Lsn(0x300_0000),
        file_size: 1000,
        logical_size: 16 << 20,
        stored_bytes: 900,
        created_at_us: 3,
    };
    let events = vec![
        WalEvent {
            kind: EventKind::Commit,
            before: Lsn(0x200_0060),
            end: Lsn(0x200_0088),
            time_us: 1_000,
            name: None,
        },
        WalEvent {
            kind: EventKind::RestorePoint,
            before: Lsn(0x200_0088),
            end: Lsn(0x200_00C0),
            time_us: 2_000,
            name: Some("before-upgrade".into()),
        },
        WalEvent {
            kind: EventKind::Commit,
            before: Lsn(0x200_00C0),
            end: Lsn(0x200_00E8),
            time_us: 3_000,
            name: None,
        },
    ];
    let mut tx = cat.begin().await.unwrap();
    tx.insert_cluster(&c).await.unwrap();
    tx.insert_timeline(&root).await.unwrap();
    tx.insert_timeline(&child).await.unwrap();
    for (name, tl) in [("main", root.id), ("dev", child.id)] {
        tx.insert_branch(&BranchRow {
            cluster_id: c.id,
            name: name.into(),
            timeline_id: tl,
            protected: name == "main",
            created_at_us: 4,
        })
        .await
        .unwrap();
    }
    tx.insert_layer(&layer, &[], &events).await.unwrap();
    tx.set_head(root.id, Lsn(0x300_0000), Some(Lsn(0x2FF_FFD0)))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let got = cat.cluster_by_name("orders").await.unwrap().unwrap();
    assert_eq!(got.id, c.id);
    assert_eq!(got.system_id, u64::MAX - 5, "u64 system ids survive");
    assert!(cat.cluster_by_name("nope").await.unwrap().is_none());
    let tls = cat.timelines(c.id).await.unwrap();
    assert_eq!(tls.len(), 2);
    assert_eq!(tls[1].ancestor, Some((root.id, Lsn(0x200_0100))));
    assert_eq!(
        cat.timeline(root.id).await.unwrap().head_prev,
        Some(Lsn(0x2FF_FFD0))
    );
    let b = cat.branch(c.id, "main").await.unwrap().unwrap();
    assert!(b.protected);
    assert_eq!(
        cat.branch_of_timeline(child.id)
            .await
            .unwrap()
            .unwrap()
            .name,
        "dev"
    );
    let layers = cat.layers(c.id).await.unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0].kind, LayerKind::Wal);
    assert_eq!(layers[0].end, Lsn(0x300_0000));

    // The catalog keeps a summary of the layer's transactions and the restore point, not a
    // row per commit; time lookups read the layer's events (here from memory).
    let kept = cat.markers(root.id).await.unwrap();
    assert_eq!(kept, vec![events[1].clone()]);
    let source: HashMap<LayerId, Arc<[WalEvent]>> =
        HashMap::from([(layer.id, Arc::from(events.clone()))]);
    let after = |t: i64| {
        let (cat, source) = (cat.clone(), source.clone());
        async move {
            let layers = cat
                .txn_layers_after(root.id, Lsn(0), Lsn(0x300_0000), t)
                .await
                .unwrap();
            wal_index::first_txn_after(&source, &layers, Lsn(0), Lsn(0x300_0000), t)
                .await
                .unwrap()
        }
    };
    assert_eq!(after(1_500).await.unwrap().before, Lsn(0x200_00C0));
    assert_eq!(after(500).await.unwrap().before, Lsn(0x200_0060));
    assert!(after(3_000).await.is_none());
    let rp = cat
        .restore_points(root.id, Lsn(0), Lsn(0x300_0000), "before-upgrade")
        .await
        .unwrap();
    assert_eq!(rp.len(), 1);
    assert_eq!(rp[0].end, Lsn(0x200_00C0));
    let layers = cat
        .txn_layers_before(root.id, Lsn(0), Lsn(0x200_00C0))
        .await
        .unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0].cluster, c.id);
    assert_eq!(layers[0].summary.txns, 2);
    let last = wal_index::last_txn_before(&source, &layers, Lsn(0), Lsn(0x200_00C0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.time_us, 1_000);

    // A transaction dropped without commit leaves nothing behind, though every write in it
    // succeeded.
    let mut tx = cat.begin().await.unwrap();
    let ghost_tl = TimelineRow {
        id: TimelineId::generate(),
        ancestor: None,
        ancestor_prev: None,
        created_at_us: 5,
        ..root.clone()
    };
    tx.insert_timeline(&ghost_tl).await.unwrap();
    tx.insert_branch(&BranchRow {
        cluster_id: c.id,
        name: "ghost".into(),
        timeline_id: ghost_tl.id,
        protected: false,
        created_at_us: 5,
    })
    .await
    .unwrap();
    drop(tx);
    assert!(cat.branch(c.id, "ghost").await.unwrap().is_none());
    assert!(cat
        .timelines(c.id)
        .await
        .unwrap()
        .iter()
        .all(|t| t.id != ghost_tl.id));

    // An image deleted together with the image it reads, the read one first: the references
    // go before the rows they name (one at a time, the schema's foreign keys refuse it).
    let image = |n: u8, start: u64| LayerRow {
        id: LayerId([n; 32]),
        kind: LayerKind::Image,
        start: Lsn(start),
        end: Lsn(start + 0x100),
        ..layer.clone()
    };
    let (older, newer) = (image(8, 0x200_0000), image(9, 0x280_0000));
    let mut tx = cat.begin().await.unwrap();
    tx.insert_layer(&older, &[], &[]).await.unwrap();
    tx.insert_layer(&newer, &[older.id], &[]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        cat.layer_refs(c.id).await.unwrap(),
        vec![(newer.id, older.id)]
    );
    let mut tx = cat.begin().await.unwrap();
    assert!(
        tx.delete_layer(older.id).await.is_err(),
        "a read image goes only with what reads it"
    );
    drop(tx);
    let mut tx = cat.begin().await.unwrap();
    tx.delete_layers(&[older.id, newer.id]).await.unwrap();
    tx.commit().await.unwrap();
    assert!(cat.layer_refs(c.id).await.unwrap().is_empty());
    assert_eq!(cat.layers(c.id).await.unwrap().len(), 1);

    // Duplicate names are refused by the schema.
    let mut tx = cat.begin().await.unwrap();
    assert!(tx.insert_cluster(&sample_cluster()).await.is_err());
    drop(tx);

    // Computes.
    let mut tx = cat.begin().await.unwrap();
    tx.upsert_compute(&ComputeRow {
        timeline_id: child.id,
        cluster_id: c.id,
        desired: "running".into(),
        port: 5999,
        datadir: "/tmp/x".into(),
        pid: Some(42),
        started_at_us: 6,
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(cat.compute(child.id).await.unwrap().unwrap().port, 5999);
    let mut tx = cat.begin().await.unwrap();
    tx.delete_branch(c.id, "dev").await.unwrap();
    tx.delete_timeline(child.id).await.unwrap();
    tx.commit().await.unwrap();
    assert!(cat.compute(child.id).await.unwrap().is_none());
    assert_eq!(cat.timelines(c.id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn sqlite_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let url = Catalog::sqlite_url(dir.path());
    let cat = Catalog::open(&url).await.unwrap();
    exercise(&cat).await;
    cat.close().await;
    // Re-opening applies no migration twice and keeps the data.
    let cat = Catalog::open(&url).await.unwrap();
    assert_eq!(cat.clusters().await.unwrap().len(), 1);
}

#[tokio::test]
async fn postgres_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let server = ScratchServer::start(&dir.path().join("pg"), &[]).expect("start PostgreSQL");
    let url = server.url("postgres");
    let cat = Catalog::open(&url).await.unwrap();
    assert_eq!(cat.backend(), Backend::Postgres);
    exercise(&cat).await;
    cat.close().await;
    let cat = Catalog::open(&url).await.unwrap();
    assert_eq!(cat.clusters().await.unwrap().len(), 1);
}

#[tokio::test]
async fn newer_schema_is_refused_and_bad_urls_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let url = Catalog::sqlite_url(dir.path());
    let cat = Catalog::open(&url).await.unwrap();
    sqlx::query("INSERT INTO cairn_schema (version, description, applied_at) VALUES (99, 'x', 0)")
        .execute(&cat.pool)
        .await
        .unwrap();
    cat.close().await;
    let err = Catalog::open(&url).await.err().unwrap().to_string();
    assert!(err.contains("newer"), "{err}");
    let err = Catalog::open("mysql://u:secret@h/db")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("not supported") && !err.contains("secret"),
        "{err}"
    );
    assert_eq!(redact_url("postgres://u:pw@h:5/d"), "postgres://u@h:5/d");
}
