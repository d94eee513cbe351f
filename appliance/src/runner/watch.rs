//! The run's watch over the objectives: every couple of seconds, each governed cluster's RPO
//! exposure ([`crate::objectives`]) and predicted restore time ([`crate::restore_time`]), the
//! alerts they raise or clear ([`crate::alerts`]), the cadence of WAL stores and shipping that
//! the RPOs ask for, and the image layers that the RTOs ask for.
//!
//! Invariants:
//! - Cadence: a cluster's WAL is stored at least every sixth of its RPO and every region is
//!   shipped to at least every sixth of the tightest RPO (never slower than the run's own
//!   options, never faster than 200 ms), so exposure stays under half the RPO while the
//!   regions keep up.
//! - Each transition of an alert is logged, reported as an event and posted to the webhooks
//!   exactly once.
//! - Marks older than the newest durable store of their branch are dropped: only what may
//!   still count is kept.
//! - An image for the RTO is claimed in the catalog like a scheduled run (kind `rto_image`,
//!   its fire the newest image it replaces): one per replaced image, on one node.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::state::Daemon;
use super::{Event, Events};
use crate::alerts::{self, AlertKind, Condition};
use crate::error::Result;
use crate::jobs::record::JobRun;
use cairn_scheduler::due::{DueRun, JobKey, JobKind};

const FLOOR: Duration = Duration::from_millis(200);

/// One look at the objectives at `now_us`; returns the image runs it claimed for `node`
/// (the caller executes them).
pub(super) async fn watch(
    d: &Daemon,
    events: &Events,
    webhooks: &[String],
    (sync_interval, ship_interval): (Duration, Duration),
    node: &str,
    now_us: i64,
) -> Result<Vec<JobRun>> {
    let engine = d.app.engine();
    let ctx = crate::policy::context(engine, ship_interval).await?;
    let (change, set) = match crate::policy_change::in_force(engine, &ctx, now_us).await? {
        Some((change, set)) => (Some(change.id), set),
        None => (None, cairn_policies::PolicySet::default()),
    };
    // Cadence.
    let mut every = std::collections::HashMap::new();
    let mut ship = ship_interval;
    let mut beats = std::collections::HashSet::new();
    for c in &ctx.clusters {
        if let Some(p) = set.for_cluster(c) {
            if p.verification
                .checks
                .contains(&cairn_policies::Check::Heartbeat)
            {
                beats.insert(c.clone());
            }
            let part = (p.objectives.rpo / 6).max(FLOOR);
            every.insert(c.clone(), sync_interval.min(part));
            ship = ship.min(part);
        }
    }
    *d.sync_every.lock().unwrap_or_else(|e| e.into_inner()) = every;
    *d.heartbeat_clusters
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = beats;
    d.ship_every_ms
        .store(ship.as_millis() as u64, Ordering::Relaxed);

    // Exposure.
    let marks = d.marks.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let statuses = crate::objectives::rpo(&d.app, &set, &marks, d.started_us, now_us).await?;
    prune_marks(d, &statuses, now_us);
    let mut transitions = Vec::new();
    {
        let mut a = d.alerts.lock().unwrap_or_else(|e| e.into_inner());
        for s in &statuses {
            let cond = s.reason.clone().map(|reason| Condition {
                reason: format!(
                    "exposure {:.0}s exceeds the RPO of {:.0}s: {reason}",
                    s.exposure_seconds, s.rpo_seconds
                ),
                value: s.exposure_seconds,
                target: s.rpo_seconds,
            });
            transitions.extend(a.set(AlertKind::RpoExceeded, &s.cluster, &s.policy, now_us, cond));
        }
        let seen: Vec<String> = statuses.iter().map(|s| s.cluster.clone()).collect();
        transitions.extend(a.retain_clusters(AlertKind::RpoExceeded, &seen, now_us));
    }
    *d.rpo.lock().unwrap_or_else(|e| e.into_inner()) = statuses;

    // Restore time.
    let rto = crate::restore_time::rto(&d.app, &set).await?;
    {
        let mut a = d.alerts.lock().unwrap_or_else(|e| e.into_inner());
        for s in &rto {
            let cond = s.exceeded().then(|| Condition {
                reason: format!(
                    "predicted restore time {:.0}s exceeds the RTO of {:.0}s: {}",
                    s.predicted_seconds.unwrap_or_default(),
                    s.rto_seconds,
                    s.reason.as_deref().unwrap_or("")
                ),
                value: s.predicted_seconds.unwrap_or_default(),
                target: s.rto_seconds,
            });
            transitions.extend(a.set(AlertKind::RtoExceeded, &s.cluster, &s.policy, now_us, cond));
        }
        let seen: Vec<String> = rto.iter().map(|s| s.cluster.clone()).collect();
        transitions.extend(a.retain_clusters(AlertKind::RtoExceeded, &seen, now_us));
    }
    let mut claimed = Vec::new();
    if let Some(change) = change {
        for (s, replaced_us) in crate::restore_time::wanted_images(&rto) {
            if let Some(run) = claim_image(d, s, replaced_us, &change, node, now_us).await? {
                claimed.push(run);
            }
        }
    }
    *d.rto.lock().unwrap_or_else(|e| e.into_inner()) = rto;
    for t in transitions {
        if let Err(e) = alerts::record::save(&engine.catalog, &t).await {
            d.status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .error(format!("alerts: {e}"));
        }
        alerts::log(&t);
        alerts::deliver(webhooks, &t);
        events(Event::Alert(t));
    }
    Ok(claimed)
}

/// Claims the image that cluster `s`'s RTO asks for, once per image it replaces.
async fn claim_image(
    d: &Daemon,
    s: &crate::restore_time::RtoStatus,
    replaced_us: i64,
    change: &str,
    node: &str,
    now_us: i64,
) -> Result<Option<JobRun>> {
    let at = |us| chrono::DateTime::from_timestamp_micros(us).unwrap_or_default();
    let due = DueRun {
        key: JobKey {
            policy: s.policy.clone(),
            cluster: s.cluster.clone(),
            kind: JobKind::RtoImage,
        },
        fire: at(replaced_us),
        start_at: at(now_us),
        missed: 0,
        late: false,
    };
    let run = crate::jobs::record::claim(
        &d.app.engine().catalog,
        &due,
        change,
        node,
        at(now_us),
        crate::jobs::LEASE,
    )
    .await?;
    if let Some(r) = &run {
        tracing::info!(
            job = %r.id, cluster = %s.cluster, policy = %s.policy,
            predicted = s.predicted_seconds.unwrap_or_default(), rto = s.rto_seconds,
            "the predicted restore time approaches the RTO: taking an image layer"
        );
    }
    Ok(run)
}

/// Drops the marks that can no longer count: those before the newest mark whose exposure was
/// computed as durable (its time is `now - exposure`).
fn prune_marks(d: &Daemon, statuses: &[crate::objectives::RpoStatus], now_us: i64) {
    let oldest_needed = statuses
        .iter()
        .map(|s| now_us - (s.exposure_seconds * 1e6) as i64)
        .min();
    let Some(keep_from) = oldest_needed else {
        return;
    };
    let mut m = d.marks.lock().unwrap_or_else(|e| e.into_inner());
    for v in m.values_mut() {
        if let Some(i) = v.iter().rposition(|x| x.at_us <= keep_from) {
            v.drain(..i);
        }
    }
}
