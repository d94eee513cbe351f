//! Scheduled jobs carried out: the policies in force say what runs when
//! ([`cairn_scheduler::due`] decides), the catalog records every run ([`record`]), and
//! `cairn up` calls [`tick`] every second and [`execute`]s what it claimed.
//!
//! Invariants:
//! - The schedules come from the policies in force (read back from the audit log), never from
//!   the policy directory: editing a file changes nothing until `policy apply`.
//! - A job's schedule counts from when it took effect: the later of the policy change in force
//!   and the cluster's creation. Fires missed while no appliance ran are owed once, as one late
//!   run (the scheduler's rule), so a restart after downtime catches up exactly once.
//! - Every run is claimed in the catalog before it starts and holds a lease it renews while it
//!   works; of several nodes on one catalog exactly one runs each fire, and a run whose node
//!   died is taken over after its lease passes ([`record`]).
//! - Every run ends recorded with an outcome and a detail, even when its work fails.
//! - Image and verification jobs run; drill schedules are parsed and shown by `policy plan`
//!   but their runs are recorded as skipped (drills are not built yet).
//! - The clock is an argument of [`tick`], so catch-up and takeover are tested without
//!   sleeping.

pub mod history;
pub mod image;
pub mod record;
pub mod verify;

use std::collections::HashMap;
use std::time::Duration;

use cairn_policies::{Context, PolicySet};
use cairn_scheduler::due::{self, Job, JobKey, JobKind, JobState, Waiting};
use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::Appliance;
use record::{JobRun, Outcome};

/// How late a run may start and still be on time.
pub const GRACE: Duration = Duration::from_secs(60);

/// How long a claim holds without renewal; a going run renews it every third of this.
pub const LEASE: Duration = Duration::from_secs(30);

/// What one tick decided.
#[derive(Debug, Default)]
pub struct Tick {
    /// Runs this node claimed: the caller executes each.
    pub claimed: Vec<JobRun>,
    /// Due runs another node claimed first.
    pub lost: usize,
    /// Due runs waiting for `max_concurrent`.
    pub waiting: Vec<Waiting>,
    /// Runs of dead nodes marked abandoned (their fires are owed again).
    pub abandoned: Vec<JobRun>,
}

/// The jobs the policies of `set` schedule for `clusters` (images and verifications; drills
/// are not built yet), each with when it took effect (`effective_us`, or the cluster's
/// creation if later).
pub fn jobs_of(
    set: &PolicySet,
    clusters: &[cairn_engine::catalog::ClusterRow],
    effective_us: i64,
) -> Vec<(Job, DateTime<Utc>)> {
    let mut out = Vec::new();
    for c in clusters {
        let Some(p) = set.for_cluster(&c.name) else {
            continue;
        };
        let since =
            DateTime::from_timestamp_micros(effective_us.max(c.created_at_us)).unwrap_or_default();
        for (kind, schedule) in [
            (JobKind::Image, &p.schedules.image),
            (JobKind::Verify, &p.schedules.verify),
        ] {
            out.push((
                Job {
                    key: JobKey {
                        policy: p.name.clone(),
                        cluster: c.name.clone(),
                        kind,
                    },
                    schedule: schedule.clone(),
                },
                since,
            ));
        }
    }
    out
}

/// Expires dead nodes' runs, decides what is due at `now` under the policies in force, and
/// claims it for `node`. Executing the claimed runs is the caller's ([`execute`]).
pub async fn tick(app: &Appliance, ctx: &Context, node: &str, now: DateTime<Utc>) -> Result<Tick> {
    let cat = &app.engine().catalog;
    let mut out = Tick {
        abandoned: record::expire(cat, now).await?,
        ..Tick::default()
    };
    let now_us = now.timestamp_micros();
    let Some((change, set)) = crate::policy_change::in_force(app.engine(), ctx, now_us).await?
    else {
        return Ok(out);
    };
    let clusters = cat.clusters().await?;
    let with_since = jobs_of(&set, &clusters, change.effective_at_us);
    let mut states: HashMap<JobKey, JobState> = record::states(cat, now).await?;
    for (job, since) in &with_since {
        states.entry(job.key.clone()).or_default().since = Some(*since);
    }
    let jobs: Vec<Job> = with_since.into_iter().map(|(j, _)| j).collect();
    let grace = chrono::Duration::from_std(GRACE).unwrap_or_default();
    let decision = due::due(&jobs, &states, now, grace);
    out.waiting = decision.waiting;
    for run in decision.start {
        match record::claim(cat, &run, &change.id, node, now, LEASE).await? {
            Some(r) => out.claimed.push(r),
            None => out.lost += 1,
        }
    }
    Ok(out)
}

/// Carries out a claimed run, renewing its lease while it works, and records how it ended.
pub async fn execute(app: &Appliance, run: &JobRun) -> (Outcome, String) {
    let cat = &app.engine().catalog;
    let kind = record::kind_str(run.key.kind);
    tracing::info!(
        job = %run.id, cluster = %run.key.cluster, policy = %run.key.policy, kind,
        late = run.late, missed = run.missed, "job run started"
    );
    let work = async {
        match run.key.kind {
            JobKind::Image | JobKind::RtoImage => image::run(app, &run.key.cluster).await,
            JobKind::Verify => verify::run(app, run).await,
            JobKind::Drill => (
                Outcome::Skipped,
                "drill runs are not carried out yet".to_string(),
            ),
        }
    };
    tokio::pin!(work);
    let (outcome, detail) = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = tokio::time::sleep(LEASE / 3) => {
                let until = Utc::now().timestamp_micros() + LEASE.as_micros() as i64;
                match record::renew(cat, &run.id, until).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(job = %run.id, "job run was taken over by another node"),
                    Err(e) => tracing::warn!(job = %run.id, error = %e, "cannot renew a job run's lease"),
                }
            }
        }
    };
    if let Err(e) = record::finish(
        cat,
        &run.id,
        Utc::now().timestamp_micros(),
        outcome,
        &detail,
    )
    .await
    {
        tracing::warn!(job = %run.id, error = %e, "cannot record the end of a job run");
    }
    tracing::info!(
        job = %run.id, cluster = %run.key.cluster, policy = %run.key.policy, kind,
        outcome = outcome.as_str(), detail = %detail, "job run ended"
    );
    (outcome, detail)
}
