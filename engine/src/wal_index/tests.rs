//! Resolution against a brute-force model: random WAL layers whose commit times are not
//! monotonic, random segments and times, the answer compared with a scan of every event —
//! in memory, through a SQLite catalog, and after migrating a catalog that has a row per
//! commit (SQLite and PostgreSQL).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::catalog::{now_us, schema, Catalog, ClusterKind, ClusterRow, LayerRow, TimelineRow};
use crate::pg::scratch::ScratchServer;

/// One layer as generated: its range and events.
#[derive(Debug, Clone)]
struct GenLayer {
    id: LayerId,
    start: Lsn,
    end: Lsn,
    events: Vec<WalEvent>,
}

/// (gap before the record, record length, kind selector, time jitter in ms)
type RecordSpec = (u64, u64, u8, i64);

fn kind_of(sel: u8) -> EventKind {
    match sel {
        0..=5 => EventKind::Commit,
        6 => EventKind::Abort,
        7 => EventKind::RestorePoint,
        8 => EventKind::Checkpoint,
        _ => EventKind::EndOfRecovery,
    }
}

/// Contiguous layers of records; `dups` repeats some layers under another id (overlapping
/// layers, which ingest never writes but resolution must still answer exactly).
fn build(layers: &[Vec<RecordSpec>], dups: &[bool]) -> Vec<GenLayer> {
    let mut out = Vec::new();
    let mut cursor = 0x100_0000u64;
    let mut clock = 1_000_000_000i64;
    for (i, recs) in layers.iter().enumerate() {
        let start = cursor;
        let mut events = Vec::new();
        for (gap, len, kind, jitter) in recs {
            cursor += gap;
            let before = cursor;
            cursor += len;
            clock += 1_000;
            let kind = kind_of(*kind);
            events.push(WalEvent {
                kind,
                before: Lsn(before),
                end: Lsn(cursor),
                // Times go back and forth (commit times are taken before the record is
                // inserted), and several share a time.
                time_us: clock + jitter * 1_000,
                name: (kind == EventKind::RestorePoint).then(|| format!("rp{}", before % 3)),
            });
        }
        cursor += 8;
        out.push(GenLayer {
            id: LayerId([i as u8 + 1; 32]),
            start: Lsn(start),
            end: Lsn(cursor),
            events,
        });
    }
    let n = out.len();
    for i in 0..n {
        if dups.get(i).copied().unwrap_or(false) {
            let mut d = out[i].clone();
            d.id = LayerId([i as u8 + 128; 32]);
            out.push(d);
        }
    }
    out
}

fn model_first_after(layers: &[GenLayer], from: Lsn, to: Lsn, t: i64) -> Option<Txn> {
    layers
        .iter()
        .flat_map(|l| &l.events)
        .filter(|e| is_txn(e) && e.before >= from && e.end <= to && e.time_us > t)
        .min_by_key(|e| e.end)
        .map(Txn::of)
}

fn model_last_before(layers: &[GenLayer], from: Lsn, to: Lsn) -> Option<Txn> {
    layers
        .iter()
        .flat_map(|l| &l.events)
        .filter(|e| is_txn(e) && e.before >= from && e.end <= to)
        .max_by_key(|e| e.end)
        .map(Txn::of)
}

/// LSNs and times where answers change, to pick queries from.
fn interesting(layers: &[GenLayer]) -> (Vec<Lsn>, Vec<i64>) {
    let mut lsns = vec![Lsn(0)];
    let mut times = vec![i64::MIN / 2, 0];
    for l in layers {
        lsns.extend([l.start, l.end]);
        for e in &l.events {
            lsns.extend([e.before, e.end, Lsn(e.end.0 - 1), Lsn(e.before.0 + 1)]);
            times.extend([e.time_us, e.time_us - 1, e.time_us + 1]);
        }
    }
    lsns.push(Lsn(u32::MAX as u64));
    times.push(i64::MAX / 2);
    (lsns, times)
}

fn summaries(layers: &[GenLayer], cluster: ClusterId, tl: TimelineId) -> Vec<LayerTxns> {
    layers
        .iter()
        .filter_map(|l| {
            TxnSummary::of(&l.events).map(|summary| LayerTxns {
                layer: l.id,
                cluster,
                timeline: tl,
                summary,
            })
        })
        .collect()
}

/// Counts the layers read.
struct Counting {
    events: HashMap<LayerId, Arc<[WalEvent]>>,
    reads: AtomicUsize,
}

impl EventSource for Counting {
    async fn events(&self, l: &LayerTxns) -> Result<Arc<[WalEvent]>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.events.events(l).await
    }
}

fn counting(layers: &[GenLayer]) -> Counting {
    Counting {
        events: layers
            .iter()
            .map(|l| (l.id, Arc::from(l.events.clone())))
            .collect(),
        reads: AtomicUsize::new(0),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn records() -> impl Strategy<Value = Vec<RecordSpec>> {
    prop::collection::vec((0u64..40, 1u64..120, 0u8..10, -5i64..5), 0..24)
}

type Query = (usize, usize, usize);

fn queries() -> impl Strategy<Value = Vec<Query>> {
    prop::collection::vec((any::<usize>(), any::<usize>(), any::<usize>()), 1..24)
}

fn pick<T: Copy>(v: &[T], i: usize) -> T {
    v[i % v.len()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn resolution_matches_a_scan_of_every_event(
        layers in prop::collection::vec(records(), 0..8),
        dups in prop::collection::vec(prop::bool::weighted(0.2), 0..8),
        qs in queries(),
    ) {
        let gen = build(&layers, &dups);
        let (cluster, tl) = (ClusterId::generate(), TimelineId::generate());
        let sums = summaries(&gen, cluster, tl);
        let src = counting(&gen);
        let (lsns, times) = interesting(&gen);
        let rt = runtime();
        for (a, b, c) in qs {
            let (from, to, t) = (pick(&lsns, a), pick(&lsns, b), pick(&times, c));
            let got = rt.block_on(first_txn_after(&src, &sums, from, to, t)).unwrap();
            prop_assert_eq!(got, model_first_after(&gen, from, to, t), "first after {} in {}..{}", t, from, to);
            let got = rt.block_on(last_txn_before(&src, &sums, from, to)).unwrap();
            prop_assert_eq!(got, model_last_before(&gen, from, to), "last in {}..{}", from, to);
        }
    }
}

#[test]
fn the_head_and_times_past_a_layer_answer_from_summaries_alone() {
    // Ten layers of 50 transactions each, times increasing overall but not within a layer.
    let specs: Vec<Vec<RecordSpec>> = (0..10)
        .map(|_| {
            (0..50)
                .map(|i| (4, 40, 0, if i % 2 == 0 { 3 } else { -3 }))
                .collect()
        })
        .collect();
    let gen = build(&specs, &[]);
    let (cluster, tl) = (ClusterId::generate(), TimelineId::generate());
    let sums = summaries(&gen, cluster, tl);
    let src = counting(&gen);
    let rt = runtime();
    let head = gen.last().unwrap().end;
    // The head's time: the last layer's summary.
    let got = rt
        .block_on(last_txn_before(&src, &sums, Lsn(0), head))
        .unwrap();
    assert_eq!(got, model_last_before(&gen, Lsn(0), head));
    assert_eq!(src.reads.load(Ordering::Relaxed), 0);
    // A time before the first commit: the first layer's summary.
    let got = rt
        .block_on(first_txn_after(&src, &sums, Lsn(0), head, 0))
        .unwrap();
    assert_eq!(got, model_first_after(&gen, Lsn(0), head, 0));
    assert_eq!(src.reads.load(Ordering::Relaxed), 0);
    // A time inside the fifth layer: that layer (and at most its neighbour, whose times
    // overlap) is read, not the others.
    let t = gen[4].events[20].time_us;
    let got = rt
        .block_on(first_txn_after(&src, &sums, Lsn(0), head, t))
        .unwrap();
    assert_eq!(got, model_first_after(&gen, Lsn(0), head, t));
    assert!(src.reads.load(Ordering::Relaxed) <= 2);
}

async fn catalog_with(cat: &Catalog, gen: &[GenLayer]) -> (ClusterRow, TimelineRow) {
    let c = ClusterRow {
        id: ClusterId::generate(),
        name: format!("c{}", now_us()),
        kind: ClusterKind::Managed,
        pg_major: 15,
        system_id: 1,
        segment_size: 16 << 20,
        tli: 1,
        source: None,
        slot: None,
        created_at_us: 0,
    };
    let tl = TimelineRow {
        id: TimelineId::generate(),
        cluster_id: c.id,
        ancestor: None,
        ancestor_prev: None,
        head: gen.iter().map(|l| l.end).max().unwrap_or(Lsn(0)),
        head_prev: None,
        created_at_us: 0,
    };
    let mut tx = cat.begin().await.unwrap();
    tx.insert_cluster(&c).await.unwrap();
    tx.insert_timeline(&tl).await.unwrap();
    tx.commit().await.unwrap();
    (c, tl)
}

fn layer_row(l: &GenLayer, c: &ClusterRow, tl: &TimelineRow) -> LayerRow {
    LayerRow {
        id: l.id,
        cluster_id: c.id,
        timeline_id: tl.id,
        kind: LayerKind::Wal,
        start: l.start,
        end: l.end,
        file_size: 1,
        logical_size: l.end.0 - l.start.0,
        stored_bytes: 1,
        created_at_us: 0,
    }
}

/// Every query of `qs` through the catalog and the engine's functions, against the model.
async fn check_catalog(cat: &Catalog, tl: TimelineId, gen: &[GenLayer], qs: &[Query]) {
    let src = counting(gen);
    let (lsns, times) = interesting(gen);
    for &(a, b, c) in qs {
        let (from, to, t) = (pick(&lsns, a), pick(&lsns, b), pick(&times, c));
        let layers = cat.txn_layers_after(tl, from, to, t).await.unwrap();
        let got = first_txn_after(&src, &layers, from, to, t).await.unwrap();
        assert_eq!(
            got,
            model_first_after(gen, from, to, t),
            "first after {t} in {from}..{to}"
        );
        let layers = cat.txn_layers_before(tl, from, to).await.unwrap();
        let got = last_txn_before(&src, &layers, from, to).await.unwrap();
        assert_eq!(
            got,
            model_last_before(gen, from, to),
            "last in {from}..{to}"
        );
        for name in ["rp0", "rp1", "rp2"] {
            let got = cat.restore_points(tl, from, to, name).await.unwrap();
            let mut want: Vec<WalEvent> = gen
                .iter()
                .flat_map(|l| &l.events)
                .filter(|e| {
                    e.kind == EventKind::RestorePoint
                        && e.name.as_deref() == Some(name)
                        && e.before >= from
                        && e.end <= to
                })
                .cloned()
                .collect();
            want.sort_by_key(|e| e.end);
            assert_eq!(
                got.iter().map(|e| e.end).collect::<Vec<_>>(),
                want.iter().map(|e| e.end).collect::<Vec<_>>()
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn resolution_through_a_sqlite_catalog_matches_the_scan(
        layers in prop::collection::vec(records(), 0..6),
        dups in prop::collection::vec(prop::bool::weighted(0.2), 0..6),
        qs in queries(),
    ) {
        let gen = build(&layers, &dups);
        let rt = runtime();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let cat = Catalog::open(&Catalog::sqlite_url(dir.path())).await.unwrap();
            let (c, tl) = catalog_with(&cat, &gen).await;
            let mut tx = cat.begin().await.unwrap();
            for l in &gen {
                tx.insert_layer(&layer_row(l, &c, &tl), &[], &l.events).await.unwrap();
            }
            tx.commit().await.unwrap();
            // No row per commit: summaries and the other events only.
            let kept = cat.markers(tl.id).await.unwrap();
            assert!(kept.iter().all(|e| !is_txn(e)));
            assert_eq!(
                kept.len(),
                gen.iter().flat_map(|l| &l.events).filter(|e| !is_txn(e)).count()
            );
            check_catalog(&cat, tl.id, &gen, &qs).await;
            cat.close().await;
        });
    }
}

/// A catalog as schema version 4 left it (a `wal_events` row per commit) migrates, and
/// resolves exactly as before.
async fn migrates(url: &str) {
    let specs: Vec<Vec<RecordSpec>> = (0..12u64)
        .map(|i| {
            (0..(i * 7 % 40))
                .map(|j| {
                    (
                        (i + j) % 9,
                        20 + (i * j) % 90,
                        ((i * 3 + j * 5) % 10) as u8,
                        ((i + 2 * j) % 9) as i64 - 4,
                    )
                })
                .collect()
        })
        .collect();
    let gen = build(&specs, &[false, false, true]);
    // The engine's tables as cairn left them before migration 5 (the engine's other one is 1).
    let old = Catalog::connect(url).await.unwrap();
    old.migrate_until(&schema::ENGINE, schema::BOUNDED_EVENTS - 1)
        .await
        .unwrap();
    assert_eq!(old.schema_version().await.unwrap(), 1);
    let (c, tl) = catalog_with(&old, &gen).await;
    let mut tx = old.pool().begin().await.unwrap();
    for l in &gen {
        let r = layer_row(l, &c, &tl);
        sqlx::query(
            "INSERT INTO layers (id, cluster_id, timeline_id, kind, start_lsn, end_lsn, file_size,
                                 logical_size, stored_bytes, created_at)
             VALUES ($1, $2, $3, 'wal', $4, $5, 1, 1, 1, 0)",
        )
        .bind(r.id.to_string())
        .bind(c.id.to_string())
        .bind(tl.id.to_string())
        .bind(r.start.as_i64())
        .bind(r.end.as_i64())
        .execute(&mut *tx)
        .await
        .unwrap();
        // Version 4's insert: every event, commits included.
        for e in &l.events {
            sqlx::query(
                "INSERT INTO wal_events (timeline_id, layer_id, kind, before_lsn, end_lsn,
                                         time_us, name) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(tl.id.to_string())
            .bind(r.id.to_string())
            .bind(e.kind.as_str())
            .bind(e.before.as_i64())
            .bind(e.end.as_i64())
            .bind(e.time_us)
            .bind(e.name.clone())
            .execute(&mut *tx)
            .await
            .unwrap();
        }
    }
    tx.commit().await.unwrap();
    let per_commit: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM wal_events")
        .fetch_one(old.pool())
        .await
        .unwrap();
    old.close().await;

    let cat = Catalog::open(url).await.unwrap();
    assert_eq!(cat.schema_version().await.unwrap(), schema::BOUNDED_EVENTS);
    let all = gen.iter().flat_map(|l| &l.events);
    assert_eq!(per_commit as usize, all.clone().count());
    let kept = cat.markers(tl.id).await.unwrap();
    assert_eq!(kept.len(), all.clone().filter(|e| !is_txn(e)).count());
    assert!(
        sqlx::query("SELECT COUNT(*) FROM wal_events")
            .fetch_one(cat.pool())
            .await
            .is_err(),
        "the per-commit table is gone"
    );
    assert!(
        kept.len() < per_commit as usize / 2,
        "{} rows kept",
        kept.len()
    );
    // Every summary is the one a new catalog would have written.
    let stored = cat
        .txn_layers_before(tl.id, Lsn(0), Lsn(u32::MAX as u64))
        .await
        .unwrap();
    let want = summaries(&gen, c.id, tl.id);
    assert_eq!(stored.len(), want.len());
    for w in &want {
        assert!(stored.contains(w), "{w:?} not in {stored:?}");
    }
    let qs: Vec<Query> = (0..400usize)
        .map(|i| (i * 7919, i * 104_729 + 13, i * 1_299_709 + 7))
        .collect();
    check_catalog(&cat, tl.id, &gen, &qs).await;
    cat.close().await;
}

#[tokio::test]
async fn a_catalog_with_a_row_per_commit_migrates_and_resolves_exactly_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    migrates(&Catalog::sqlite_url(dir.path())).await;
}

#[tokio::test]
async fn a_catalog_with_a_row_per_commit_migrates_and_resolves_exactly_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let server = ScratchServer::start(&dir.path().join("pg"), &[]).expect("start PostgreSQL");
    migrates(&server.url("postgres")).await;
}

/// Writes `l` as a WAL layer file of `tl` (metadata only: resolution reads nothing else) and
/// returns it under the id the file got.
fn write_layer_file(engine: &Engine, c: &ClusterRow, tl: &TimelineRow, l: &GenLayer) -> GenLayer {
    use crate::layer::file::LayerWriter;
    use crate::layer::wal::WalChunk;
    let meta = WalMeta {
        system_id: 1,
        pg_major: 15,
        tli: 1,
        segment_size: 16 << 20,
        timeline: tl.id,
        data_start: l.start,
        start: l.start,
        end: l.end,
        prev_record: None,
        last_record: l.start,
        created_at_us: 0,
        chunks: vec![WalChunk {
            lsn: l.start,
            raw_len: (l.end.0 - l.start.0) as u32,
            offset: 16,
            clen: 0,
            hash: [0; 32],
        }],
        events: l.events.clone(),
        resume_points: vec![],
    };
    let w = LayerWriter::create(&engine.home.timeline_dir(c.id, tl.id), LayerKind::Wal).unwrap();
    let (id, _, _) = w.finish(&meta.encode()).unwrap();
    GenLayer { id, ..l.clone() }
}

async fn open_engine(home: &std::path::Path) -> Engine {
    Engine::open(crate::EngineOptions {
        home: home.to_path_buf(),
        catalog_url: None,
        pg_bin: None,
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn an_engine_resolves_from_layer_files_or_registered_events_and_refuses_a_file_that_disagrees(
) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let engine = open_engine(&home).await;
    let specs: Vec<Vec<RecordSpec>> = (0..5u64)
        .map(|i| {
            (0..30u64)
                .map(|j| {
                    (
                        j % 5,
                        30 + (i * j) % 50,
                        ((i + j) % 10) as u8,
                        (j % 7) as i64 - 3,
                    )
                })
                .collect()
        })
        .collect();
    let gen = build(&specs, &[]);
    let (c, tl) = catalog_with(&engine.catalog, &gen).await;
    let gen: Vec<GenLayer> = gen
        .iter()
        .map(|l| write_layer_file(&engine, &c, &tl, l))
        .collect();
    let mut tx = engine.catalog.begin().await.unwrap();
    for l in &gen {
        tx.insert_layer(&layer_row(l, &c, &tl), &[], &l.events)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let (lsns, times) = interesting(&gen);
    let qs: Vec<Query> = (0..300usize)
        .map(|i| (i * 7919, i * 104_729 + 13, i * 1_299_709 + 7))
        .collect();
    let check = |engine: Engine| {
        let (gen, lsns, times, qs) = (gen.clone(), lsns.clone(), times.clone(), qs.clone());
        async move {
            for &(a, b, q) in &qs {
                let (from, to, t) = (pick(&lsns, a), pick(&lsns, b), pick(&times, q));
                assert_eq!(
                    engine.first_txn_after(tl.id, from, to, t).await.unwrap(),
                    model_first_after(&gen, from, to, t),
                    "first after {t} in {from}..{to}"
                );
                assert_eq!(
                    engine.last_txn_before(tl.id, from, to).await.unwrap(),
                    model_last_before(&gen, from, to),
                    "last in {from}..{to}"
                );
            }
            engine
        }
    };
    // From the layer files.
    check(engine).await.catalog.close().await;
    // From registered events, the files gone (a restore's staging engine).
    std::fs::remove_dir_all(engine_dir(&home, &c, &tl)).unwrap();
    let staged = open_engine(&home).await;
    let t = gen[2].events.iter().find(|e| is_txn(e)).unwrap().time_us;
    let err = staged
        .first_txn_after(tl.id, Lsn(0), Lsn(u32::MAX as u64), t)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    for l in &gen {
        staged.wal_events.register(l.id, l.events.clone());
    }
    check(staged).await.catalog.close().await;
    // A layer file whose commits disagree with the catalog's summary is refused.
    let engine = open_engine(&home).await;
    for l in &gen {
        assert_eq!(write_layer_file(&engine, &c, &tl, l).id, l.id);
    }
    let forged = GenLayer {
        events: gen[2]
            .events
            .iter()
            .map(|e| WalEvent {
                time_us: e.time_us - 3_600_000_000,
                ..e.clone()
            })
            .collect(),
        ..gen[2].clone()
    };
    let forged = write_layer_file(&engine, &c, &tl, &forged);
    let victim = engine
        .home
        .layer_path(c.id, tl.id, LayerKind::Wal, gen[2].id);
    std::fs::rename(
        engine
            .home
            .layer_path(c.id, tl.id, LayerKind::Wal, forged.id),
        &victim,
    )
    .unwrap();
    let err = engine
        .first_txn_after(tl.id, Lsn(0), Lsn(u32::MAX as u64), t)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. }) && err.to_string().contains("do not match"),
        "{err}"
    );
}

fn engine_dir(home: &std::path::Path, c: &ClusterRow, tl: &TimelineRow) -> std::path::PathBuf {
    crate::home::Home::open(home)
        .unwrap()
        .timeline_dir(c.id, tl.id)
}
