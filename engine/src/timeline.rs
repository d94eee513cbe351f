//! Committing layers to a timeline: the rows, references and WAL events of new layer files in
//! one catalog transaction, and the replication slot advanced only after that commit.
//!
//! Invariants:
//! - A layer enters the catalog only once its file is durable; a timeline's head moves to the
//!   end of its last committed WAL layer in the same transaction.
//! - The `cairn` slot is advanced to a head only after the layers up to it are committed, so a
//!   crash between the two leaves the WAL retained by the server, never lost.

use crate::access::SLOT;
use crate::catalog::{ClusterRow, LayerRow, TimelineRow, Tx};
use crate::error::{Error, Result};
use crate::ids::{Lsn, TimelineId};
use crate::ingest::image::BuiltImage;
use crate::ingest::wal::BuiltWal;
use crate::layer::file::LayerKind;

/// What one ingest added to a timeline.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SyncReport {
    pub timeline: TimelineId,
    pub from: Lsn,
    pub to: Lsn,
    pub layers: usize,
}

/// Adds durable layer files to a transaction (rows, references, WAL events); returns the
/// timeline's head after its WAL layers.
pub(crate) async fn add_layers(
    tx: &mut Tx,
    cluster: &ClusterRow,
    tl: &TimelineRow,
    image: Option<&BuiltImage>,
    wals: &[BuiltWal],
) -> Result<(Lsn, Option<Lsn>)> {
    if let Some(img) = image {
        tx.insert_layer(
            &LayerRow {
                id: img.id,
                cluster_id: cluster.id,
                timeline_id: tl.id,
                kind: LayerKind::Image,
                start: img.meta.start_lsn,
                end: img.meta.end_lsn,
                file_size: img.file_size,
                logical_size: img.meta.logical_size(),
                stored_bytes: img.stats.stored_bytes,
                created_at_us: img.meta.created_at_us,
            },
            &img.meta.referenced_layers().copied().collect::<Vec<_>>(),
            &[],
        )
        .await?;
    }
    let mut head = (tl.head, tl.head_prev);
    for w in wals {
        tx.insert_layer(
            &LayerRow {
                id: w.id,
                cluster_id: cluster.id,
                timeline_id: tl.id,
                kind: LayerKind::Wal,
                start: w.meta.start,
                end: w.meta.end,
                file_size: w.file_size,
                logical_size: w.meta.end.0 - w.meta.start.0,
                stored_bytes: w.file_size,
                created_at_us: w.meta.created_at_us,
            },
            &[],
            &w.meta.events,
        )
        .await?;
        head = (w.meta.end, Some(w.meta.last_record));
    }
    Ok(head)
}

/// The server's WAL flush position.
pub(crate) async fn flush_lsn(client: &tokio_postgres::Client) -> Result<Lsn> {
    let f: String = client
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .await
        .map_err(|e| Error::postgres("read the flush position", e.to_string()))?
        .get(0);
    f.parse()
        .map_err(|e: String| Error::postgres("flush lsn", e))
}

/// Lets the server recycle WAL before `head`: it is in committed layers now.
pub(crate) async fn advance_slot(client: &tokio_postgres::Client, head: Lsn) -> Result<()> {
    client
        .execute(
            "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
            &[&SLOT, &head.to_string()],
        )
        .await
        .map_err(|e| Error::postgres("advance the cairn replication slot", e.to_string()))?;
    Ok(())
}
