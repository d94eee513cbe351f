//! The job history kept: ended runs older than the history period (`cairn up --job-history`,
//! default 30 days) are counted into `job_run_totals` and deleted, so the history of a job
//! that fires every minute stays bounded and [`record::states`] reads a bounded table.
//!
//! Invariants:
//! - Each job's newest run that was not abandoned stays, however old: it is what the
//!   scheduler counts the next fire from ([`record::states`]); deleting it would make a
//!   schedule look as if it never ran.
//! - Going runs stay (they have no end), and so does anything that ended after the cut.
//! - Counting and deleting are one transaction: a run is in `job_run_totals` or in
//!   `job_runs`, never both and never neither, so the totals `/metrics` reports
//!   ([`record::totals`]) only grow, as Prometheus counters must.
//! - Every statement is parameterised.

use std::collections::BTreeMap;

use cairn_engine::catalog::{column as get, Catalog};

use super::record::{self, catalog_error, Outcome};
use crate::error::Result;

/// Ended runs older than `before_us`, except each job's newest run that was not abandoned:
/// (id, cluster, kind, outcome, ended_at).
const PRUNABLE: &str = "SELECT id, cluster, kind, outcome, ended_at FROM job_runs r
     WHERE ended_at IS NOT NULL AND ended_at < $1
       AND fire_at < (SELECT MAX(l.fire_at) FROM job_runs l
                      WHERE l.policy = r.policy AND l.cluster = r.cluster AND l.kind = r.kind
                        AND (l.outcome IS NULL OR l.outcome <> $2))";

/// Counts the runs that ended before `before_us` into the totals and deletes them (see the
/// invariants for what stays); how many were deleted.
pub async fn prune(cat: &Catalog, before_us: i64) -> Result<u64> {
    let mut tx = cat
        .pool()
        .begin()
        .await
        .map_err(|e| catalog_error("begin pruning the job history", e))?;
    let rows = sqlx::query(PRUNABLE)
        .bind(before_us)
        .bind(Outcome::Abandoned.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| catalog_error("find job runs past the history period", e))?;
    let mut folded: BTreeMap<(String, String, String), (i64, i64)> = BTreeMap::new();
    let mut ids = Vec::with_capacity(rows.len());
    for r in &rows {
        ids.push(get::<String>(r, "id")?);
        let ended: i64 = get(r, "ended_at")?;
        let e = folded
            .entry((get(r, "cluster")?, get(r, "kind")?, get(r, "outcome")?))
            .or_insert((0, ended));
        e.0 += 1;
        e.1 = e.1.max(ended);
    }
    for ((cluster, kind, outcome), (runs, last_ended)) in &folded {
        sqlx::query(
            "INSERT INTO job_run_totals (cluster, kind, outcome, runs, last_ended_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (cluster, kind, outcome) DO UPDATE SET
               runs = job_run_totals.runs + excluded.runs,
               last_ended_at = CASE WHEN excluded.last_ended_at > job_run_totals.last_ended_at
                                    THEN excluded.last_ended_at
                                    ELSE job_run_totals.last_ended_at END",
        )
        .bind(cluster)
        .bind(kind)
        .bind(outcome)
        .bind(runs)
        .bind(last_ended)
        .execute(&mut *tx)
        .await
        .map_err(|e| catalog_error("count pruned job runs", e))?;
    }
    for id in &ids {
        sqlx::query("DELETE FROM job_runs WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| catalog_error("delete a job run past the history period", e))?;
    }
    tx.commit()
        .await
        .map_err(|e| catalog_error("commit pruning the job history", e))?;
    Ok(ids.len() as u64)
}

/// The pruned runs' totals, as [`record::totals`] adds them to the kept runs'.
pub(super) async fn folded(cat: &Catalog) -> Result<Vec<record::Totals>> {
    let rows = sqlx::query(
        "SELECT cluster, kind, outcome, runs, last_ended_at FROM job_run_totals
         ORDER BY cluster, kind, outcome",
    )
    .fetch_all(cat.pool())
    .await
    .map_err(|e| catalog_error("read the pruned job runs' totals", e))?;
    rows.iter()
        .map(|r| {
            Ok(record::Totals {
                cluster: get(r, "cluster")?,
                kind: record::parse_kind(&get::<String>(r, "kind")?)?,
                outcome: Outcome::parse(&get::<String>(r, "outcome")?)?,
                runs: get::<i64>(r, "runs")? as u64,
                last_ended_at_us: get(r, "last_ended_at")?,
            })
        })
        .collect()
}
