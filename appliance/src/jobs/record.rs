//! The runs of scheduled jobs in the catalog (`job_runs`): claims, leases, outcomes.
//!
//! Invariants:
//! - A claim is an insert under the unique key (policy, cluster, kind, fire, attempt): of two
//!   nodes claiming the same attempt at once, exactly one succeeds; the other gets `None`
//!   from [`claim`] and does nothing.
//! - A run is going while it has no `ended_at` and its lease has not passed. A run whose lease
//!   passed without an end belongs to a node that died: [`expire`] marks it abandoned, and the
//!   fire is owed again (a new attempt), so a dead node's jobs are taken over.
//! - Rows are only added, renewed while going, and ended once; the history's pruning
//!   ([`super::history`]) is the only delete, and it counts what it deletes into the totals.
//! - Every statement is parameterised.

use std::collections::HashMap;

use cairn_engine::catalog::{column as get, Catalog};
use cairn_scheduler::due::{DueRun, JobKey, JobKind, JobState};
use chrono::{DateTime, Utc};

use crate::error::{Error, Result};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    /// Nothing to do (e.g. no WAL since the last image); says why in the detail.
    Skipped,
    Failed,
    /// Its node died (its lease passed); the fire was tried again.
    Abandoned,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
            Outcome::Abandoned => "abandoned",
        }
    }

    pub(super) fn parse(s: &str) -> Result<Outcome> {
        Ok(match s {
            "succeeded" => Outcome::Succeeded,
            "skipped" => Outcome::Skipped,
            "failed" => Outcome::Failed,
            "abandoned" => Outcome::Abandoned,
            other => {
                return Err(Error::Refused(format!(
                    "job_runs holds an unknown outcome '{other}': written by a newer cairn?"
                )))
            }
        })
    }
}

pub fn kind_str(k: JobKind) -> &'static str {
    match k {
        JobKind::Image => "image",
        JobKind::Verify => "verify",
        JobKind::Drill => "drill",
        JobKind::RtoImage => "rto_image",
    }
}

pub(super) fn parse_kind(s: &str) -> Result<JobKind> {
    Ok(match s {
        "image" => JobKind::Image,
        "verify" => JobKind::Verify,
        "drill" => JobKind::Drill,
        "rto_image" => JobKind::RtoImage,
        other => {
            return Err(Error::Refused(format!(
                "job_runs holds an unknown job kind '{other}': written by a newer cairn?"
            )))
        }
    })
}

/// One run of a job as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JobRun {
    pub id: String,
    pub key: JobKey,
    /// The fire it is for, and when it was to start (the fire plus jitter).
    pub fire_at_us: i64,
    pub start_at_us: i64,
    pub attempt: u32,
    /// Started later than its time plus grace, or standing for fires missed while down.
    pub late: bool,
    /// Earlier fires this run stands for.
    pub missed: u32,
    /// The policy change in force when it was claimed.
    pub policy_change: String,
    pub node: String,
    pub claimed_at_us: i64,
    pub lease_until_us: i64,
    pub ended_at_us: Option<i64>,
    pub outcome: Option<Outcome>,
    pub detail: String,
}

impl JobRun {
    /// Going at `now_us`: not ended and its lease not passed.
    pub fn going(&self, now_us: i64) -> bool {
        self.ended_at_us.is_none() && self.lease_until_us > now_us
    }
}

pub(super) fn catalog_error(what: &str, e: sqlx::Error) -> Error {
    Error::from(cairn_engine::Error::catalog(what, e))
}

fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn row(r: &sqlx::any::AnyRow) -> Result<JobRun> {
    let outcome: Option<String> = get(r, "outcome")?;
    Ok(JobRun {
        id: get(r, "id")?,
        key: JobKey {
            policy: get(r, "policy")?,
            cluster: get(r, "cluster")?,
            kind: parse_kind(&get::<String>(r, "kind")?)?,
        },
        fire_at_us: get(r, "fire_at")?,
        start_at_us: get(r, "start_at")?,
        attempt: get::<i64>(r, "attempt")? as u32,
        late: get::<i64>(r, "late")? != 0,
        missed: get::<i64>(r, "missed")? as u32,
        policy_change: get(r, "policy_change")?,
        node: get(r, "node")?,
        claimed_at_us: get(r, "claimed_at")?,
        lease_until_us: get(r, "lease_until")?,
        ended_at_us: get(r, "ended_at")?,
        outcome: outcome.as_deref().map(Outcome::parse).transpose()?,
        detail: get(r, "detail")?,
    })
}

/// The runs, newest claim first; at most `limit`; only `cluster`'s when given.
pub async fn list(cat: &Catalog, cluster: Option<&str>, limit: u32) -> Result<Vec<JobRun>> {
    let rows = sqlx::query(
        "SELECT * FROM job_runs WHERE ($1 = '' OR cluster = $1)
         ORDER BY claimed_at DESC, id DESC LIMIT $2",
    )
    .bind(cluster.unwrap_or(""))
    .bind(i64::from(limit))
    .fetch_all(cat.pool())
    .await
    .map_err(|e| catalog_error("list job runs", e))?;
    rows.iter().map(row).collect()
}

/// What the scheduler needs to know of each job that ever ran: its latest fire a run was
/// claimed for (abandoned attempts do not count) and whether a run is going at `now`.
pub async fn states(cat: &Catalog, now: DateTime<Utc>) -> Result<HashMap<JobKey, JobState>> {
    let rows = sqlx::query(
        "SELECT policy, cluster, kind, fire_at, ended_at, lease_until, outcome FROM job_runs",
    )
    .fetch_all(cat.pool())
    .await
    .map_err(|e| catalog_error("read job runs", e))?;
    let mut out: HashMap<JobKey, JobState> = HashMap::new();
    for r in &rows {
        let key = JobKey {
            policy: get(r, "policy")?,
            cluster: get(r, "cluster")?,
            kind: parse_kind(&get::<String>(r, "kind")?)?,
        };
        let outcome: Option<String> = get(r, "outcome")?;
        if outcome.as_deref() == Some(Outcome::Abandoned.as_str()) {
            continue;
        }
        let fire = DateTime::from_timestamp_micros(get(r, "fire_at")?).unwrap_or_default();
        let ended: Option<i64> = get(r, "ended_at")?;
        let lease: i64 = get(r, "lease_until")?;
        let s = out.entry(key).or_default();
        s.last_fire = Some(s.last_fire.map_or(fire, |f| f.max(fire)));
        s.running |= ended.is_none() && lease > us(now);
    }
    Ok(out)
}

/// Marks abandoned every run whose lease passed at `now` without an end; returns them.
pub async fn expire(cat: &Catalog, now: DateTime<Utc>) -> Result<Vec<JobRun>> {
    let rows = sqlx::query("SELECT * FROM job_runs WHERE ended_at IS NULL AND lease_until <= $1")
        .bind(us(now))
        .fetch_all(cat.pool())
        .await
        .map_err(|e| catalog_error("find expired job runs", e))?;
    let mut out = Vec::new();
    for r in &rows {
        let mut run = row(r)?;
        let detail = format!(
            "node {} stopped renewing its lease at {}; the fire is tried again",
            run.node,
            cairn_units::fmt_time(run.lease_until_us)
        );
        // Only if still unended: another node may be expiring it too.
        let done = sqlx::query(
            "UPDATE job_runs SET ended_at = $1, outcome = $2, detail = $3
             WHERE id = $4 AND ended_at IS NULL",
        )
        .bind(us(now))
        .bind(Outcome::Abandoned.as_str())
        .bind(&detail)
        .bind(&run.id)
        .execute(cat.pool())
        .await
        .map_err(|e| catalog_error("mark a job run abandoned", e))?;
        if done.rows_affected() == 1 {
            run.ended_at_us = Some(us(now));
            run.outcome = Some(Outcome::Abandoned);
            run.detail = detail;
            out.push(run);
        }
    }
    Ok(out)
}

/// Claims `due` for `node` at `now`, with a lease until `now + lease`: the run this node is to
/// carry out, or `None` when another node claimed it first.
pub async fn claim(
    cat: &Catalog,
    due: &DueRun,
    policy_change: &str,
    node: &str,
    now: DateTime<Utc>,
    lease: std::time::Duration,
) -> Result<Option<JobRun>> {
    // The attempt after the abandoned ones: a node that decided on a stale view tries an
    // attempt that exists already, and loses.
    let tries: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM job_runs
         WHERE policy = $1 AND cluster = $2 AND kind = $3 AND fire_at = $4 AND outcome = $5",
    )
    .bind(&due.key.policy)
    .bind(&due.key.cluster)
    .bind(kind_str(due.key.kind))
    .bind(us(due.fire))
    .bind(Outcome::Abandoned.as_str())
    .fetch_one(cat.pool())
    .await
    .map_err(|e| catalog_error("count job runs", e))
    .and_then(|r| get(&r, "n").map_err(Error::from))?;
    let run = JobRun {
        id: crate::audit::new_id(),
        key: due.key.clone(),
        fire_at_us: us(due.fire),
        start_at_us: us(due.start_at),
        attempt: tries as u32 + 1,
        late: due.late || tries > 0,
        missed: due.missed,
        policy_change: policy_change.to_string(),
        node: node.to_string(),
        claimed_at_us: us(now),
        lease_until_us: us(now) + lease.as_micros() as i64,
        ended_at_us: None,
        outcome: None,
        detail: String::new(),
    };
    let inserted = sqlx::query(
        "INSERT INTO job_runs (id, policy, cluster, kind, fire_at, attempt, start_at, late, missed,
                               policy_change, node, claimed_at, lease_until, ended_at, outcome,
                               detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, NULL, NULL, '')",
    )
    .bind(&run.id)
    .bind(&run.key.policy)
    .bind(&run.key.cluster)
    .bind(kind_str(run.key.kind))
    .bind(run.fire_at_us)
    .bind(i64::from(run.attempt))
    .bind(run.start_at_us)
    .bind(run.late as i64)
    .bind(i64::from(run.missed))
    .bind(&run.policy_change)
    .bind(&run.node)
    .bind(run.claimed_at_us)
    .bind(run.lease_until_us)
    .execute(cat.pool())
    .await;
    match inserted {
        Ok(_) => Ok(Some(run)),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(None),
        Err(e) => Err(catalog_error("claim a job run", e)),
    }
}

/// Extends the lease of a going run to `until`; false if it is no longer this node's (it was
/// abandoned meanwhile).
pub async fn renew(cat: &Catalog, id: &str, until_us: i64) -> Result<bool> {
    let r = sqlx::query("UPDATE job_runs SET lease_until = $1 WHERE id = $2 AND ended_at IS NULL")
        .bind(until_us)
        .bind(id)
        .execute(cat.pool())
        .await
        .map_err(|e| catalog_error("renew a job run's lease", e))?;
    Ok(r.rows_affected() == 1)
}

/// Ends a run with its outcome and detail.
pub async fn finish(
    cat: &Catalog,
    id: &str,
    ended_at_us: i64,
    outcome: Outcome,
    detail: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE job_runs SET ended_at = $1, outcome = $2, detail = $3
         WHERE id = $4 AND ended_at IS NULL",
    )
    .bind(ended_at_us)
    .bind(outcome.as_str())
    .bind(detail)
    .bind(id)
    .execute(cat.pool())
    .await
    .map_err(|e| catalog_error("record a job run's end", e))?;
    Ok(())
}

/// Runs that ended, per cluster, kind and outcome, with the newest end.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub cluster: String,
    pub kind: JobKind,
    pub outcome: Outcome,
    pub runs: u64,
    pub last_ended_at_us: i64,
}

/// What `/metrics` says of job outcomes: the kept runs and the pruned ones' totals
/// ([`super::history`]) together.
pub async fn totals(cat: &Catalog) -> Result<Vec<Totals>> {
    let mut all: Vec<Totals> = Vec::new();
    for t in kept_totals(cat)
        .await?
        .into_iter()
        .chain(super::history::folded(cat).await?)
    {
        match all
            .iter_mut()
            .find(|a| (&a.cluster, a.kind, a.outcome) == (&t.cluster, t.kind, t.outcome))
        {
            Some(a) => {
                a.runs += t.runs;
                a.last_ended_at_us = a.last_ended_at_us.max(t.last_ended_at_us);
            }
            None => all.push(t),
        }
    }
    all.sort_by(|a, b| {
        (&a.cluster, kind_str(a.kind), a.outcome.as_str()).cmp(&(
            &b.cluster,
            kind_str(b.kind),
            b.outcome.as_str(),
        ))
    });
    Ok(all)
}

/// The kept runs that ended, per cluster, kind and outcome.
async fn kept_totals(cat: &Catalog) -> Result<Vec<Totals>> {
    let rows = sqlx::query(
        "SELECT cluster, kind, outcome, COUNT(*) AS runs, MAX(ended_at) AS last_ended
         FROM job_runs WHERE ended_at IS NOT NULL
         GROUP BY cluster, kind, outcome ORDER BY cluster, kind, outcome",
    )
    .fetch_all(cat.pool())
    .await
    .map_err(|e| catalog_error("count job runs by outcome", e))?;
    rows.iter()
        .map(|r| {
            Ok(Totals {
                cluster: get(r, "cluster")?,
                kind: parse_kind(&get::<String>(r, "kind")?)?,
                outcome: Outcome::parse(&get::<String>(r, "outcome")?)?,
                runs: get::<i64>(r, "runs")? as u64,
                last_ended_at_us: get(r, "last_ended")?,
            })
        })
        .collect()
}
