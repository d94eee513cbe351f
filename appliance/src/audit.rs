//! The audit log of policy changes: who applied which files (by SHA-256) when, whether the
//! change was destructive and confirmed, when it takes effect, and whether it was cancelled.
//!
//! Invariants:
//! - Rows are only ever added or marked cancelled, never edited otherwise or deleted.
//! - The files of a change are stored with it, so the policies in force can be read back
//!   exactly as they were applied, whatever happened to the policy directory since.
//! - Applying a change cancels every change still waiting to take effect ("superseded by"),
//!   so a waiting destructive change never overrides a later one.
//! - Every statement is parameterised.

use cairn_engine::catalog::{column as get, Catalog};
use cairn_engine::TimelineId;

use crate::error::{Error, Result};

/// One applied policy file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppliedFile {
    pub name: String,
    pub file: String,
    pub sha256: String,
    #[serde(skip)]
    pub content: String,
}

/// One `policy apply`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyChange {
    pub id: String,
    pub requested_at_us: i64,
    pub requested_by: String,
    pub dir: String,
    pub destructive: bool,
    pub confirmed: bool,
    pub effective_at_us: i64,
    pub cancelled_at_us: Option<i64>,
    pub cancelled_by: Option<String>,
    /// What the plan said, one line per item.
    pub summary: String,
    pub files: Vec<AppliedFile>,
}

/// Where a change stands at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeStatus {
    /// Waiting for its cooling-off period to end.
    Pending,
    /// The policies in force.
    InForce,
    /// Was in force; a later change is now.
    Replaced,
    Cancelled,
}

fn catalog_error(what: &str, e: sqlx::Error) -> Error {
    Error::from(cairn_engine::Error::catalog(what, e))
}

/// A new change id.
pub fn new_id() -> String {
    TimelineId::generate().to_string()
}

/// Records `c` and its files; cancels the changes still waiting at `c.requested_at_us`.
pub async fn record(cat: &Catalog, c: &PolicyChange) -> Result<()> {
    let mut tx = cat
        .pool()
        .begin()
        .await
        .map_err(|e| catalog_error("begin a policy change", e))?;
    sqlx::query(
        "UPDATE policy_changes SET cancelled_at = $1, cancelled_by = $2
         WHERE cancelled_at IS NULL AND effective_at > $1",
    )
    .bind(c.requested_at_us)
    .bind(format!("superseded by {}", c.id))
    .execute(&mut *tx)
    .await
    .map_err(|e| catalog_error("supersede waiting policy changes", e))?;
    sqlx::query(
        "INSERT INTO policy_changes (id, requested_at, requested_by, dir, destructive, confirmed,
                                     effective_at, cancelled_at, cancelled_by, summary)
         VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, $8)",
    )
    .bind(&c.id)
    .bind(c.requested_at_us)
    .bind(&c.requested_by)
    .bind(&c.dir)
    .bind(c.destructive as i64)
    .bind(c.confirmed as i64)
    .bind(c.effective_at_us)
    .bind(&c.summary)
    .execute(&mut *tx)
    .await
    .map_err(|e| catalog_error("record a policy change", e))?;
    for f in &c.files {
        sqlx::query(
            "INSERT INTO policy_files (change_id, name, file, sha256, content)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&c.id)
        .bind(&f.name)
        .bind(&f.file)
        .bind(&f.sha256)
        .bind(&f.content)
        .execute(&mut *tx)
        .await
        .map_err(|e| catalog_error("record a policy file", e))?;
    }
    tx.commit()
        .await
        .map_err(|e| catalog_error("commit a policy change", e))
}

/// Cancels change `id` if it has not taken effect at `now_us`.
pub async fn cancel(cat: &Catalog, id: &str, by: &str, now_us: i64) -> Result<PolicyChange> {
    let changes = list(cat).await?;
    let c = changes.iter().find(|c| c.id == id).ok_or_else(|| {
        Error::Refused(format!("no policy change '{id}'; see `cairn policy log`"))
    })?;
    if c.cancelled_at_us.is_some() {
        return Err(Error::Refused(format!(
            "policy change {id} is already cancelled"
        )));
    }
    if c.effective_at_us <= now_us {
        return Err(Error::Refused(format!(
            "policy change {id} is already in effect; apply the policies you want instead"
        )));
    }
    sqlx::query("UPDATE policy_changes SET cancelled_at = $1, cancelled_by = $2 WHERE id = $3")
        .bind(now_us)
        .bind(by)
        .bind(id)
        .execute(cat.pool())
        .await
        .map_err(|e| catalog_error("cancel a policy change", e))?;
    let mut c = c.clone();
    c.cancelled_at_us = Some(now_us);
    c.cancelled_by = Some(by.to_string());
    Ok(c)
}

/// Every change, oldest first, with its files.
pub async fn list(cat: &Catalog) -> Result<Vec<PolicyChange>> {
    let rows = sqlx::query("SELECT * FROM policy_changes ORDER BY requested_at, id")
        .fetch_all(cat.pool())
        .await
        .map_err(|e| catalog_error("list policy changes", e))?;
    let mut out = Vec::new();
    for r in &rows {
        let id: String = get(r, "id")?;
        let files = sqlx::query(
            "SELECT name, file, sha256, content FROM policy_files WHERE change_id = $1
             ORDER BY name",
        )
        .bind(&id)
        .fetch_all(cat.pool())
        .await
        .map_err(|e| catalog_error("list policy files", e))?
        .iter()
        .map(|f| {
            Ok(AppliedFile {
                name: get(f, "name")?,
                file: get(f, "file")?,
                sha256: get(f, "sha256")?,
                content: get(f, "content")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        out.push(PolicyChange {
            id,
            requested_at_us: get(r, "requested_at")?,
            requested_by: get(r, "requested_by")?,
            dir: get(r, "dir")?,
            destructive: get::<i64>(r, "destructive")? != 0,
            confirmed: get::<i64>(r, "confirmed")? != 0,
            effective_at_us: get(r, "effective_at")?,
            cancelled_at_us: get(r, "cancelled_at")?,
            cancelled_by: get(r, "cancelled_by")?,
            summary: get(r, "summary")?,
            files,
        });
    }
    Ok(out)
}

/// The status of each change at `now_us`, in the order of `changes` (oldest first).
pub fn statuses(changes: &[PolicyChange], now_us: i64) -> Vec<ChangeStatus> {
    let in_force = changes
        .iter()
        .rposition(|c| c.cancelled_at_us.is_none() && c.effective_at_us <= now_us);
    changes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if c.cancelled_at_us.is_some() {
                ChangeStatus::Cancelled
            } else if c.effective_at_us > now_us {
                ChangeStatus::Pending
            } else if Some(i) == in_force {
                ChangeStatus::InForce
            } else {
                ChangeStatus::Replaced
            }
        })
        .collect()
}
