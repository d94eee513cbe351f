//! Catalog transactions: every write goes through one, and dropping it without
//! [`Tx::commit`] rolls back.
//!
//! Invariants:
//! - Layer rows, their references and their WAL events are inserted in the transaction that
//!   moves the timeline head past them (see the catalog's invariants).

use crate::error::{Error, Result};
use crate::ids::{ClusterId, LayerId, Lsn, TimelineId};
use crate::wal::WalEvent;

use super::{BranchRow, ClusterRow, ComputeRow, LayerRow, TimelineRow};

/// A catalog transaction. Dropping it without [`Tx::commit`] rolls back.
pub struct Tx {
    pub(super) tx: sqlx::Transaction<'static, sqlx::Any>,
}

impl Tx {
    pub async fn commit(self) -> Result<()> {
        crate::failpoint::hit("catalog-before-commit");
        self.tx
            .commit()
            .await
            .map_err(|e| Error::catalog("commit", e))
    }

    pub async fn insert_cluster(&mut self, c: &ClusterRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO clusters (id, name, kind, pg_major, system_id, segment_size, tli,
                                   source, slot, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(c.id.to_string())
        .bind(&c.name)
        .bind(c.kind.as_str())
        .bind(c.pg_major as i64)
        .bind(c.system_id.to_string())
        .bind(c.segment_size as i64)
        .bind(c.tli as i64)
        .bind(c.source.clone())
        .bind(c.slot.clone())
        .bind(c.created_at_us)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| Error::catalog(format!("insert cluster '{}'", c.name), e))?;
        Ok(())
    }

    pub async fn insert_timeline(&mut self, t: &TimelineRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO timelines (id, cluster_id, ancestor_id, ancestor_lsn, ancestor_prev, head,
                                    head_prev, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(t.id.to_string())
        .bind(t.cluster_id.to_string())
        .bind(t.ancestor.map(|a| a.0.to_string()))
        .bind(t.ancestor.map(|a| a.1.as_i64()))
        .bind(t.ancestor_prev.map(|l| l.as_i64()))
        .bind(t.head.as_i64())
        .bind(t.head_prev.map(|l| l.as_i64()))
        .bind(t.created_at_us)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| Error::catalog("insert timeline", e))?;
        Ok(())
    }

    pub async fn set_head(&mut self, tl: TimelineId, head: Lsn, prev: Option<Lsn>) -> Result<()> {
        sqlx::query("UPDATE timelines SET head = $1, head_prev = $2 WHERE id = $3")
            .bind(head.as_i64())
            .bind(prev.map(|l| l.as_i64()))
            .bind(tl.to_string())
            .execute(&mut *self.tx)
            .await
            .map_err(|e| Error::catalog("advance timeline head", e))?;
        Ok(())
    }

    pub async fn insert_branch(&mut self, b: &BranchRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO branches (cluster_id, name, timeline_id, protected, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(b.cluster_id.to_string())
        .bind(&b.name)
        .bind(b.timeline_id.to_string())
        .bind(b.protected as i64)
        .bind(b.created_at_us)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| Error::catalog(format!("insert branch '{}'", b.name), e))?;
        Ok(())
    }

    /// Points an existing branch at another timeline.
    pub async fn repoint_branch(
        &mut self,
        cluster: ClusterId,
        name: &str,
        tl: TimelineId,
    ) -> Result<()> {
        sqlx::query("UPDATE branches SET timeline_id = $1 WHERE cluster_id = $2 AND name = $3")
            .bind(tl.to_string())
            .bind(cluster.to_string())
            .bind(name)
            .execute(&mut *self.tx)
            .await
            .map_err(|e| Error::catalog(format!("update branch '{name}'"), e))?;
        Ok(())
    }

    pub async fn set_protected(&mut self, cluster: ClusterId, name: &str, on: bool) -> Result<()> {
        sqlx::query("UPDATE branches SET protected = $1 WHERE cluster_id = $2 AND name = $3")
            .bind(on as i64)
            .bind(cluster.to_string())
            .bind(name)
            .execute(&mut *self.tx)
            .await
            .map_err(|e| Error::catalog(format!("update branch '{name}'"), e))?;
        Ok(())
    }

    pub async fn delete_branch(&mut self, cluster: ClusterId, name: &str) -> Result<()> {
        sqlx::query("DELETE FROM branches WHERE cluster_id = $1 AND name = $2")
            .bind(cluster.to_string())
            .bind(name)
            .execute(&mut *self.tx)
            .await
            .map_err(|e| Error::catalog(format!("delete branch '{name}'"), e))?;
        Ok(())
    }

    /// Removes a timeline and everything the catalog holds about it.
    pub async fn delete_timeline(&mut self, tl: TimelineId) -> Result<()> {
        let id = tl.to_string();
        for stmt in [
            "DELETE FROM wal_markers WHERE timeline_id = $1",
            "DELETE FROM wal_layer_txns WHERE timeline_id = $1",
            "DELETE FROM layer_refs WHERE layer_id IN (SELECT id FROM layers WHERE timeline_id = $1)",
            "DELETE FROM layers WHERE timeline_id = $1",
            "DELETE FROM computes WHERE timeline_id = $1",
            "DELETE FROM timelines WHERE id = $1",
        ] {
            sqlx::query(stmt)
                .bind(&id)
                .execute(&mut *self.tx)
                .await
                .map_err(|e| Error::catalog("delete timeline", e))?;
        }
        Ok(())
    }

    /// Removes one layer and what the catalog keeps of it (its references to other layers, its
    /// transaction summary, its markers). Whether that is safe is the caller's
    /// ([`crate::retire`]).
    pub async fn delete_layer(&mut self, id: LayerId) -> Result<()> {
        self.delete_layers(&[id]).await
    }

    /// Removes layers `ids` as [`Tx::delete_layer`] does, in any order: the references of
    /// all of them go first, so an image deleted with the images it reads never leaves a
    /// reference to a deleted row (the schema's foreign keys would refuse the transaction).
    pub async fn delete_layers(&mut self, ids: &[LayerId]) -> Result<()> {
        let ids: Vec<String> = ids.iter().map(LayerId::to_string).collect();
        for id in &ids {
            sqlx::query("DELETE FROM layer_refs WHERE layer_id = $1")
                .bind(id)
                .execute(&mut *self.tx)
                .await
                .map_err(|e| Error::catalog("delete a layer's references", e))?;
        }
        for id in &ids {
            for stmt in [
                "DELETE FROM wal_markers WHERE layer_id = $1",
                "DELETE FROM wal_layer_txns WHERE layer_id = $1",
                "DELETE FROM layers WHERE id = $1",
            ] {
                sqlx::query(stmt)
                    .bind(id)
                    .execute(&mut *self.tx)
                    .await
                    .map_err(|e| Error::catalog("delete a layer", e))?;
            }
        }
        Ok(())
    }

    pub async fn delete_cluster(&mut self, c: ClusterId) -> Result<()> {
        sqlx::query("DELETE FROM clusters WHERE id = $1")
            .bind(c.to_string())
            .execute(&mut *self.tx)
            .await
            .map_err(|e| Error::catalog("delete cluster", e))?;
        Ok(())
    }

    /// Records a durable layer file, what it references and what the catalog keeps of the
    /// events it holds (see [`events`]).
    pub async fn insert_layer(
        &mut self,
        l: &LayerRow,
        refs: &[LayerId],
        events: &[WalEvent],
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO layers (id, cluster_id, timeline_id, kind, start_lsn, end_lsn, file_size,
                                 logical_size, stored_bytes, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(l.id.to_string())
        .bind(l.cluster_id.to_string())
        .bind(l.timeline_id.to_string())
        .bind(l.kind.as_str())
        .bind(l.start.as_i64())
        .bind(l.end.as_i64())
        .bind(l.file_size as i64)
        .bind(l.logical_size as i64)
        .bind(l.stored_bytes as i64)
        .bind(l.created_at_us)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| Error::catalog("insert layer", e))?;
        for r in refs {
            sqlx::query("INSERT INTO layer_refs (layer_id, ref_layer_id) VALUES ($1, $2)")
                .bind(l.id.to_string())
                .bind(r.to_string())
                .execute(&mut *self.tx)
                .await
                .map_err(|e| Error::catalog("insert layer reference", e))?;
        }
        self.insert_layer_events(l, events).await
    }

    pub async fn upsert_compute(&mut self, c: &ComputeRow) -> Result<()> {
        sqlx::query("DELETE FROM computes WHERE timeline_id = $1")
            .bind(c.timeline_id.to_string())
            .execute(&mut *self.tx)
            .await
            .map_err(|e| Error::catalog("record compute", e))?;
        sqlx::query(
            "INSERT INTO computes (timeline_id, cluster_id, desired, port, datadir, pid,
                                   started_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(c.timeline_id.to_string())
        .bind(c.cluster_id.to_string())
        .bind(&c.desired)
        .bind(c.port as i64)
        .bind(c.datadir.to_string_lossy().into_owned())
        .bind(c.pid)
        .bind(c.started_at_us)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| Error::catalog("record compute", e))?;
        Ok(())
    }

    pub async fn delete_compute(&mut self, tl: TimelineId) -> Result<()> {
        sqlx::query("DELETE FROM computes WHERE timeline_id = $1")
            .bind(tl.to_string())
            .execute(&mut *self.tx)
            .await
            .map_err(|e| Error::catalog("delete compute", e))?;
        Ok(())
    }
}
