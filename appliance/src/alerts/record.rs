//! The active alerts in the catalog (`alerts`), so that a restarted appliance, or the node that
//! takes the active role over, carries on with them: an alert raised before keeps its `since`,
//! is not raised (nor posted to the webhooks) a second time, and is cleared, with its
//! `cleared` post, when its condition ends, whichever node sees that.
//!
//! Invariants:
//! - A row exists exactly while its alert is active: [`save`] inserts it when raised and
//!   deletes it when cleared; the reason and value of a row are those of the raise (the run
//!   refreshes them in memory on every look).
//! - [`load`] replaces nothing by itself: the run loads the rows when it becomes active.
//! - Every statement is parameterised.

use cairn_engine::catalog::{column as get, Catalog};

use super::{Alert, AlertKind, Alerts, Transition};
use crate::error::{Error, Result};

fn catalog_error(what: &str, e: sqlx::Error) -> Error {
    Error::from(cairn_engine::Error::catalog(what, e))
}

fn parse_kind(s: &str) -> Result<AlertKind> {
    match s {
        "rpo_exceeded" => Ok(AlertKind::RpoExceeded),
        "rto_exceeded" => Ok(AlertKind::RtoExceeded),
        other => Err(Error::Refused(format!(
            "the catalog holds an alert of unknown kind '{other}': written by a newer cairn?"
        ))),
    }
}

/// Records a transition: a raised alert's row, or its removal once cleared.
pub async fn save(cat: &Catalog, t: &Transition) -> Result<()> {
    match t {
        Transition::Raised { alert: a } => {
            sqlx::query(
                "INSERT INTO alerts (kind, cluster, policy, since, reason, value, target)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (kind, cluster) DO UPDATE SET policy = excluded.policy,
                   since = excluded.since, reason = excluded.reason, value = excluded.value,
                   target = excluded.target",
            )
            .bind(a.kind.as_str())
            .bind(&a.cluster)
            .bind(&a.policy)
            .bind(a.since_us)
            .bind(&a.reason)
            .bind(a.value)
            .bind(a.target)
            .execute(cat.pool())
            .await
            .map_err(|e| catalog_error("record a raised alert", e))?;
        }
        Transition::Cleared { alert: a, .. } => {
            sqlx::query("DELETE FROM alerts WHERE kind = $1 AND cluster = $2")
                .bind(a.kind.as_str())
                .bind(&a.cluster)
                .execute(cat.pool())
                .await
                .map_err(|e| catalog_error("record a cleared alert", e))?;
        }
    }
    Ok(())
}

/// The alerts active when the catalog was last written.
pub async fn load(cat: &Catalog) -> Result<Alerts> {
    let rows = sqlx::query(
        "SELECT kind, cluster, policy, since, reason, value, target FROM alerts
         ORDER BY kind, cluster",
    )
    .fetch_all(cat.pool())
    .await
    .map_err(|e| catalog_error("read the active alerts", e))?;
    let mut alerts = Alerts::default();
    for r in &rows {
        alerts.restore(Alert {
            kind: parse_kind(&get::<String>(r, "kind")?)?,
            cluster: get(r, "cluster")?,
            policy: get(r, "policy")?,
            since_us: get(r, "since")?,
            reason: get(r, "reason")?,
            value: get(r, "value")?,
            target: get(r, "target")?,
        });
    }
    Ok(alerts)
}
