//! What the catalog keeps of WAL events: a transaction summary per WAL layer
//! (`wal_layer_txns`) and every event that is not a commit or an abort (`wal_markers`).
//! Resolving a point against them is [`crate::wal_index`]'s work.

use sqlx::any::AnyRow;

use super::{get, parse_col, Catalog, LayerRow, Tx};
use crate::error::{Error, Result};
use crate::ids::{Lsn, TimelineId};
use crate::wal::{EventKind, WalEvent};
use crate::wal_index::{is_txn, LayerTxns, Txn, TxnSummary};

fn layer_txns_row(r: &AnyRow) -> Result<LayerTxns> {
    let txn = |p: &str| -> Result<Txn> {
        Ok(Txn {
            before: Lsn::from_i64(get(r, &format!("{p}_before"))?),
            end: Lsn::from_i64(get(r, &format!("{p}_end"))?),
            time_us: get(r, &format!("{p}_time"))?,
        })
    };
    Ok(LayerTxns {
        layer: parse_col(r, "layer_id")?,
        cluster: parse_col(r, "cluster_id")?,
        timeline: parse_col(r, "timeline_id")?,
        summary: TxnSummary {
            txns: get::<i64>(r, "txns")? as u64,
            first: txn("first")?,
            last: txn("last")?,
            min_time: get(r, "min_time")?,
            max_time: get(r, "max_time")?,
        },
    })
}

pub(super) fn event_row(r: &AnyRow) -> Result<WalEvent> {
    let kind: String = get(r, "kind")?;
    Ok(WalEvent {
        kind: EventKind::parse(&kind)
            .ok_or_else(|| Error::corrupt("catalog", format!("unknown event kind '{kind}'")))?,
        before: Lsn::from_i64(get(r, "before_lsn")?),
        end: Lsn::from_i64(get(r, "end_lsn")?),
        time_us: get(r, "time_us")?,
        name: get(r, "name")?,
    })
}

const LAYER_TXNS: &str = "SELECT s.*, l.cluster_id FROM wal_layer_txns s
                            JOIN layers l ON l.id = s.layer_id
                          WHERE s.timeline_id = $1 AND s.last_before >= $2 AND s.first_end <= $3";

impl Catalog {
    /// Summaries of `tl`'s WAL layers that may hold a commit or abort of `[from, to]` with a
    /// time after `time_us`, in LSN order.
    pub async fn txn_layers_after(
        &self,
        tl: TimelineId,
        from: Lsn,
        to: Lsn,
        time_us: i64,
    ) -> Result<Vec<LayerTxns>> {
        let rows = sqlx::query(&format!(
            "{LAYER_TXNS} AND s.max_time > $4 ORDER BY s.first_before"
        ))
        .bind(tl.to_string())
        .bind(from.as_i64())
        .bind(to.as_i64())
        .bind(time_us)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::catalog("find WAL layers by commit time", e))?;
        rows.iter().map(layer_txns_row).collect()
    }

    /// Summaries of `tl`'s WAL layers that may hold a commit or abort of `[from, to]`, last
    /// first.
    pub async fn txn_layers_before(
        &self,
        tl: TimelineId,
        from: Lsn,
        to: Lsn,
    ) -> Result<Vec<LayerTxns>> {
        let rows = sqlx::query(&format!("{LAYER_TXNS} ORDER BY s.last_end DESC"))
            .bind(tl.to_string())
            .bind(from.as_i64())
            .bind(to.as_i64())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::catalog("find WAL layers with transactions", e))?;
        rows.iter().map(layer_txns_row).collect()
    }

    /// Restore points named `name` of `tl` in `[from, to]`, in LSN order.
    pub async fn restore_points(
        &self,
        tl: TimelineId,
        from: Lsn,
        to: Lsn,
        name: &str,
    ) -> Result<Vec<WalEvent>> {
        let rows = sqlx::query(
            "SELECT * FROM wal_markers WHERE timeline_id = $1 AND kind = 'restore_point'
               AND name = $2 AND before_lsn >= $3 AND end_lsn <= $4 ORDER BY end_lsn",
        )
        .bind(tl.to_string())
        .bind(name)
        .bind(from.as_i64())
        .bind(to.as_i64())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::catalog("list restore points", e))?;
        rows.iter().map(event_row).collect()
    }

    /// The events the catalog keeps of `tl` (all but commits and aborts), in LSN order.
    pub async fn markers(&self, tl: TimelineId) -> Result<Vec<WalEvent>> {
        let rows = sqlx::query("SELECT * FROM wal_markers WHERE timeline_id = $1 ORDER BY end_lsn")
            .bind(tl.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::catalog("list WAL events", e))?;
        rows.iter().map(event_row).collect()
    }
}

impl Tx {
    /// Records what the catalog keeps of a WAL layer's events: its transaction summary and
    /// every other event.
    pub(super) async fn insert_layer_events(
        &mut self,
        l: &LayerRow,
        events: &[WalEvent],
    ) -> Result<()> {
        if let Some(s) = TxnSummary::of(events) {
            sqlx::query(
                "INSERT INTO wal_layer_txns (layer_id, timeline_id, txns, first_before, first_end,
                                             first_time, last_before, last_end, last_time,
                                             min_time, max_time)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(l.id.to_string())
            .bind(l.timeline_id.to_string())
            .bind(s.txns as i64)
            .bind(s.first.before.as_i64())
            .bind(s.first.end.as_i64())
            .bind(s.first.time_us)
            .bind(s.last.before.as_i64())
            .bind(s.last.end.as_i64())
            .bind(s.last.time_us)
            .bind(s.min_time)
            .bind(s.max_time)
            .execute(&mut *self.tx)
            .await
            .map_err(|e| Error::catalog("insert WAL layer summary", e))?;
        }
        let kept: Vec<&WalEvent> = events.iter().filter(|e| !is_txn(e)).collect();
        // Many rows per statement: a layer can carry many checkpoints after a long outage.
        const COLS: usize = 7;
        for chunk in kept.chunks(256) {
            let mut sql = String::from(
                "INSERT INTO wal_markers (timeline_id, layer_id, kind, before_lsn, end_lsn, \
                 time_us, name) VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * COLS;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push('(');
                sql.push_str(
                    &(1..=COLS)
                        .map(|c| format!("${}", b + c))
                        .collect::<Vec<_>>()
                        .join(", "),
                );
                sql.push(')');
            }
            let mut q = sqlx::query(&sql);
            for ev in chunk {
                q = q
                    .bind(l.timeline_id.to_string())
                    .bind(l.id.to_string())
                    .bind(ev.kind.as_str())
                    .bind(ev.before.as_i64())
                    .bind(ev.end.as_i64())
                    .bind(ev.time_us)
                    .bind(ev.name.clone());
            }
            q.execute(&mut *self.tx)
                .await
                .map_err(|e| Error::catalog("insert WAL markers", e))?;
        }
        Ok(())
    }
}
