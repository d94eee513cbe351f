//! What is due now: scheduled jobs whose time has come, runs missed while the appliance was
//! down, and what waits because too many of its kind are running.
//!
//! Invariants:
//! - A job runs at most once per decision, at its latest fire: fires missed while the
//!   appliance was down (or while the previous run was still going) collapse into that one
//!   run, which is marked late and counts what it stands for.
//! - A job never overlaps itself: while a run of it is going, it is not due again; its fires
//!   meanwhile are kept and it becomes due (late) once the run ends.
//! - At most `max_concurrent` runs of one schedule (a policy's image, verify or drill schedule,
//!   across its clusters) run at once; the rest wait, oldest fire first, then by job.
//! - Jitter delays a run by a fixed amount per job and fire (a hash of both), below the
//!   schedule's jitter, so clusters of one policy spread out and a decision is reproducible.
//! - A job seen for the first time is not owed any fire from before it was seen.
//! - Pure: the clock is an argument.

use std::collections::{BTreeMap, HashMap};

use cairn_policies::Schedule;
use chrono::{DateTime, Utc};

/// What a scheduled job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Image,
    Verify,
    Drill,
    /// An image taken because the predicted restore time approached the RTO ([`crate::rto`]);
    /// not scheduled by cron: its fire is the newest image it replaces.
    RtoImage,
}

/// One scheduled job: a kind of work for one cluster, under one policy's schedule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct JobKey {
    pub policy: String,
    pub cluster: String,
    pub kind: JobKind,
}

/// A job and its schedule.
#[derive(Debug, Clone)]
pub struct Job {
    pub key: JobKey,
    pub schedule: Schedule,
}

/// What the scheduler remembers of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobState {
    /// When the job was first seen (its schedule took effect).
    pub since: Option<DateTime<Utc>>,
    /// The latest fire a run was started for.
    pub last_fire: Option<DateTime<Utc>>,
    /// A run is going.
    pub running: bool,
}

/// A run to start now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DueRun {
    pub key: JobKey,
    /// The fire this run is for (the latest one passed).
    pub fire: DateTime<Utc>,
    /// When it may start: the fire plus the job's jitter.
    pub start_at: DateTime<Utc>,
    /// Earlier fires this run stands for (missed while down or while a run was going).
    pub missed: u32,
    /// Started later than its fire plus jitter plus `grace`, or standing for missed fires.
    pub late: bool,
}

/// A run that is due but waits: too many runs of its schedule are going.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Waiting {
    pub key: JobKey,
    pub fire: DateTime<Utc>,
    pub running: u32,
    pub max_concurrent: u32,
}

/// What is due at `now`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub start: Vec<DueRun>,
    pub waiting: Vec<Waiting>,
}

/// The delay of one job's run after `fire`, below `jitter`: the same for the same job and fire.
pub fn jitter_for(
    key: &JobKey,
    fire: DateTime<Utc>,
    jitter: std::time::Duration,
) -> chrono::Duration {
    let micros = jitter.as_micros() as u64;
    if micros == 0 {
        return chrono::Duration::zero();
    }
    // FNV-1a over the job and the fire: stable across runs and builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let text = format!(
        "{}/{}/{:?}/{}",
        key.policy,
        key.cluster,
        key.kind,
        fire.timestamp()
    );
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    chrono::Duration::microseconds((h % micros) as i64)
}

/// Decides what starts at `now`. `grace` is how late a run may start and still be on time.
pub fn due(
    jobs: &[Job],
    state: &HashMap<JobKey, JobState>,
    now: DateTime<Utc>,
    grace: chrono::Duration,
) -> Decision {
    // Runs going, per schedule (policy and kind).
    let mut going: BTreeMap<(&str, JobKind), u32> = BTreeMap::new();
    for job in jobs {
        if state.get(&job.key).is_some_and(|s| s.running) {
            *going
                .entry((job.key.policy.as_str(), job.key.kind))
                .or_default() += 1;
        }
    }
    let mut candidates: Vec<(DueRun, &str, u32)> = Vec::new();
    for job in jobs {
        let s = state.get(&job.key).copied().unwrap_or_default();
        if s.running {
            continue;
        }
        let Some(from) = s.last_fire.or(s.since) else {
            continue; // never seen: the caller records `since` first
        };
        let fires = job.schedule.fires_between(from, now);
        let Some(&fire) = fires.last() else {
            continue;
        };
        let start_at = fire + jitter_for(&job.key, fire, job.schedule.jitter());
        if start_at > now {
            continue;
        }
        let missed = (fires.len() - 1) as u32;
        candidates.push((
            DueRun {
                key: job.key.clone(),
                fire,
                start_at,
                missed,
                late: missed > 0 || now > start_at + grace,
            },
            job.key.policy.as_str(),
            job.schedule.max_concurrent(),
        ));
    }
    candidates.sort_by(|(a, _, _), (b, _, _)| (a.fire, &a.key).cmp(&(b.fire, &b.key)));
    let mut out = Decision::default();
    for (run, policy, max) in candidates {
        let n = going.entry((policy, run.key.kind)).or_default();
        if *n >= max {
            out.waiting.push(Waiting {
                key: run.key,
                fire: run.fire,
                running: *n,
                max_concurrent: max,
            });
        } else {
            *n += 1;
            out.start.push(run);
        }
    }
    out
}

#[cfg(test)]
mod tests;
