//! The bounded WAL event index: how a time or a restore point becomes an LSN without a catalog
//! row per commit.
//!
//! Every WAL layer already holds, in its metadata, each commit, abort, restore point and
//! checkpoint of its WAL with its LSNs and time ([`crate::layer::wal::WalMeta::events`]). The
//! catalog keeps only what finds the right layer:
//!
//! - `wal_layer_txns`: one [`TxnSummary`] per WAL layer that holds at least one commit or
//!   abort: how many, the first and the last of them in LSN order (`before`, `end`, time),
//!   and the smallest and largest commit time (times are not monotonic in LSN order: they are
//!   taken before the commit record is inserted);
//! - `wal_markers`: every other event (restore points, checkpoints, end of recovery) exactly,
//!   one row each.
//!
//! So the catalog grows with the number of WAL layers (a layer is cut by each ingest and at
//! 256 MiB of WAL; `cairn up` ingests every `--sync-interval`) and with restore points and
//! checkpoints, which all follow time and WAL volume, never with the number of commits.
//!
//! Resolution reads the layer in range and answers exactly what a scan of every commit and
//! abort of the segment `[from, to]` (`before >= from`, `end <= to`) would answer:
//!
//! - the first transaction whose time is after `t` ([`first_txn_after`]): candidates are the
//!   layers whose summary allows one (`last.before >= from`, `first.end <= to`,
//!   `max_time > t`), taken in LSN order; a candidate wholly inside the segment whose
//!   `min_time > t` answers from its summary (its first transaction), any other is read. The
//!   walk stops at the first layer that starts after the best answer so far, so overlapping
//!   layers (which ingest never writes) would still be answered exactly;
//! - the last transaction of a segment ([`last_txn_before`]): candidates by descending
//!   `last.end`; one whose last transaction lies inside the segment answers from its summary
//!   (the common case: the head of a timeline), any other is read;
//! - a restore point: its exact `wal_markers` row.
//!
//! Where a layer's events come from ([`WalEvents`] and `Engine::layer_events`): events
//! registered in memory first (a restore's staging engine registers the metadata it fetched
//! from a region, checked against the signed index, before any layer file is local), then the
//! local layer file's metadata, read and decoded (a few recent layers are kept decoded: a
//! layer never changes, so nothing kept can go stale). A layer that is neither registered nor
//! readable fails the resolution with its file's error (a branch listing shows no time
//! instead); nothing falls back to a guess.
//!
//! Invariants:
//! 1. A WAL layer has a `wal_layer_txns` row if and only if its events hold a commit or abort,
//!    and the row is [`TxnSummary::of`] those events: written by `Tx::insert_layer` in the
//!    transaction that inserts the layer row, deleted with it (`Tx::delete_timeline`).
//! 2. The catalog decides no time on its own: an answer is either read from the layer's events
//!    or is the summary's first or last transaction, itself a function of those events. Events
//!    read from a layer file must summarise to the catalog's row, or the layer is reported
//!    corrupt and nothing is resolved from it; events from a region are bound by the signed
//!    index's metadata digest (a planted commit time is refused before it gets here).
//! 3. Migration 5 derives every summary from the per-commit `wal_events` rows of older
//!    catalogs, moves their other events to `wal_markers` and drops `wal_events`, in one
//!    transaction: a catalog is either wholly old or wholly new, and a cairn older than the
//!    migration still running on it fails on its next ingest rather than writing rows that
//!    nothing reads.

use std::sync::Arc;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::ids::{ClusterId, LayerId, Lsn, TimelineId};
use crate::layer::file::{LayerFile, LayerKind};
use crate::layer::wal::WalMeta;
use crate::wal::{EventKind, WalEvent};
pub use crate::wal_events::WalEvents;

/// A commit or an abort: where its record starts and ends, and its time (Unix microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Txn {
    pub before: Lsn,
    pub end: Lsn,
    pub time_us: i64,
}

impl Txn {
    fn of(e: &WalEvent) -> Txn {
        Txn {
            before: e.before,
            end: e.end,
            time_us: e.time_us,
        }
    }
}

/// Whether an event ends a transaction (the events points in time resolve against).
pub fn is_txn(e: &WalEvent) -> bool {
    matches!(e.kind, EventKind::Commit | EventKind::Abort)
}

/// What the catalog keeps of a WAL layer's transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnSummary {
    pub txns: u64,
    /// The first and the last transaction in LSN order.
    pub first: Txn,
    pub last: Txn,
    pub min_time: i64,
    pub max_time: i64,
}

impl TxnSummary {
    /// The summary of a layer's events; `None` when they hold no commit or abort.
    pub fn of(events: &[WalEvent]) -> Option<TxnSummary> {
        let mut txns = events.iter().filter(|e| is_txn(e));
        let e0 = txns.next()?;
        let mut s = TxnSummary {
            txns: 1,
            first: Txn::of(e0),
            last: Txn::of(e0),
            min_time: e0.time_us,
            max_time: e0.time_us,
        };
        for e in txns {
            s.txns += 1;
            if e.end < s.first.end {
                s.first = Txn::of(e);
            }
            if e.end > s.last.end {
                s.last = Txn::of(e);
            }
            s.min_time = s.min_time.min(e.time_us);
            s.max_time = s.max_time.max(e.time_us);
        }
        Some(s)
    }

    /// Whether the layer may hold a transaction of `[from, to]` with a time after `t`.
    pub fn may_hold_after(&self, from: Lsn, to: Lsn, t: i64) -> bool {
        self.may_hold(from, to) && self.max_time > t
    }

    /// Whether the layer may hold a transaction of `[from, to]`.
    pub fn may_hold(&self, from: Lsn, to: Lsn) -> bool {
        self.last.before >= from && self.first.end <= to
    }

    fn inside(&self, from: Lsn, to: Lsn) -> bool {
        self.first.before >= from && self.last.end <= to
    }
}

/// A WAL layer's summary with what names its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerTxns {
    pub layer: LayerId,
    pub cluster: ClusterId,
    pub timeline: TimelineId,
    pub summary: TxnSummary,
}

/// Where resolution reads the events of a layer.
pub(crate) trait EventSource {
    async fn events(&self, l: &LayerTxns) -> Result<Arc<[WalEvent]>>;
}

/// The first transaction of `[from, to]` (`before >= from`, `end <= to`) whose time is after
/// `t`, in LSN order, among the layers `layers` (any superset of the candidates).
pub(crate) async fn first_txn_after<S: EventSource>(
    src: &S,
    layers: &[LayerTxns],
    from: Lsn,
    to: Lsn,
    t: i64,
) -> Result<Option<Txn>> {
    let mut cands: Vec<&LayerTxns> = layers
        .iter()
        .filter(|l| l.summary.may_hold_after(from, to, t))
        .collect();
    cands.sort_by_key(|l| (l.summary.first.before, l.layer));
    let mut best: Option<Txn> = None;
    for l in cands {
        let s = &l.summary;
        if best.is_some_and(|b| s.first.before >= b.end) {
            // Every transaction of this layer and of the ones after it ends after `best`.
            break;
        }
        let found = if s.inside(from, to) && s.min_time > t {
            Some(s.first)
        } else {
            src.events(l)
                .await?
                .iter()
                .filter(|e| is_txn(e) && e.before >= from && e.end <= to && e.time_us > t)
                .min_by_key(|e| e.end)
                .map(Txn::of)
        };
        if let Some(f) = found {
            if best.is_none_or(|b| f.end < b.end) {
                best = Some(f);
            }
        }
    }
    Ok(best)
}

/// The last transaction of `[from, to]` (`before >= from`, `end <= to`) in LSN order, among
/// the layers `layers` (any superset of the candidates).
pub(crate) async fn last_txn_before<S: EventSource>(
    src: &S,
    layers: &[LayerTxns],
    from: Lsn,
    to: Lsn,
) -> Result<Option<Txn>> {
    let mut cands: Vec<&LayerTxns> = layers
        .iter()
        .filter(|l| l.summary.may_hold(from, to))
        .collect();
    cands.sort_by_key(|l| (std::cmp::Reverse(l.summary.last.end), l.layer));
    let mut best: Option<Txn> = None;
    for l in cands {
        let s = &l.summary;
        if best.is_some_and(|b| s.last.end <= b.end) {
            break;
        }
        let found = if s.last.before >= from && s.last.end <= to {
            Some(s.last)
        } else {
            src.events(l)
                .await?
                .iter()
                .filter(|e| is_txn(e) && e.before >= from && e.end <= to)
                .max_by_key(|e| e.end)
                .map(Txn::of)
        };
        if let Some(f) = found {
            if best.is_none_or(|b| f.end > b.end) {
                best = Some(f);
            }
        }
    }
    Ok(best)
}

/// Tests: events by layer id.
#[cfg(test)]
impl EventSource for std::collections::HashMap<LayerId, Arc<[WalEvent]>> {
    async fn events(&self, l: &LayerTxns) -> Result<Arc<[WalEvent]>> {
        self.get(&l.layer)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("events of layer {}", l.layer), ""))
    }
}

struct LocalEvents<'a>(&'a Engine);

impl EventSource for LocalEvents<'_> {
    async fn events(&self, l: &LayerTxns) -> Result<Arc<[WalEvent]>> {
        self.0.layer_events(l).await
    }
}

impl Engine {
    /// The first commit or abort of `tl` in `[from, to]` whose time is after `time_us`.
    pub async fn first_txn_after(
        &self,
        tl: TimelineId,
        from: Lsn,
        to: Lsn,
        time_us: i64,
    ) -> Result<Option<Txn>> {
        let layers = self.catalog.txn_layers_after(tl, from, to, time_us).await?;
        first_txn_after(&LocalEvents(self), &layers, from, to, time_us).await
    }

    /// The last commit or abort of `tl` in `[from, to]`.
    pub async fn last_txn_before(&self, tl: TimelineId, from: Lsn, to: Lsn) -> Result<Option<Txn>> {
        let layers = self.catalog.txn_layers_before(tl, from, to).await?;
        last_txn_before(&LocalEvents(self), &layers, from, to).await
    }

    /// The events of a WAL layer: registered ones, else its local file's, which must agree
    /// with the catalog's summary.
    pub(crate) async fn layer_events(&self, l: &LayerTxns) -> Result<Arc<[WalEvent]>> {
        if let Some(e) = self.wal_events.get(l.layer) {
            return Ok(e);
        }
        let path = self
            .home
            .layer_path(l.cluster, l.timeline, LayerKind::Wal, l.layer);
        let (timeline, summary) = (l.timeline, l.summary);
        let events = tokio::task::spawn_blocking(move || -> Result<Vec<WalEvent>> {
            let what = || format!("WAL layer {}", path.display());
            let f = LayerFile::open(&path, LayerKind::Wal)?;
            let meta = WalMeta::decode(&f.meta).map_err(|e| Error::corrupt(what(), e.0))?;
            if meta.timeline != timeline || TxnSummary::of(&meta.events) != Some(summary) {
                return Err(Error::corrupt(
                    what(),
                    "its commits do not match what the catalog recorded for it; run `cairn \
                     check --full`",
                ));
            }
            Ok(meta.events)
        })
        .await
        .map_err(|e| Error::io("WAL metadata task", std::io::Error::other(e.to_string())))??;
        let events: Arc<[WalEvent]> = events.into();
        self.wal_events.remember(l.layer, events.clone());
        Ok(events)
    }
}

#[cfg(test)]
mod tests;
