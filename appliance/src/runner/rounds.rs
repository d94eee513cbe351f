//! One round of the run and what happens around it: restarting computes, WAL receivers for
//! adopted clusters, storing each compute's WAL when due, images when enough WAL accumulated,
//! retention, WAL compaction, the deletion queue and due shreds, and the final ingest on the
//! way out.
//!
//! Invariants:
//! - A compute's slot advances only after its layers are committed (the engine's ingest).
//! - Nothing here stops the run: every problem is recorded in the run's status (the API shows
//!   the recent ones) and the round goes on with the next compute or cluster.
//! - A fenced appliance ships nothing, deletes nothing and streams from no source.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_engine::adopt::Receiver;
use cairn_engine::catalog::{BranchRow, ClusterKind, ClusterRow, ComputeRow};
use cairn_engine::progress::Progress;

use super::state::Daemon;
use super::{Event, Events};
use crate::error::Result;

/// How long one housekeeping pass may go on starting WAL compactions (the rounds wait
/// meanwhile); what is left waits for the next pass.
const COMPACTION_BUDGET: Duration = Duration::from_secs(10);

/// Scratch past its time, then retention, WAL compaction, the job history, the deletion queue,
/// scheduled shreds and the copies of verification reports (not on a fenced appliance: the
/// regions are not its).
pub(super) async fn housekeeping(d: &Daemon, events: &Events, opts: &super::RunOptions) {
    // Local, so even when fenced: verification copies kept past their window, and scratch a
    // killed process left.
    let home = d.app.engine().home.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || home.sweep_scratch()).await {
        tracing::warn!(error = %e, "the scratch sweep did not finish");
    }
    let p = &d.app.protection();
    if p.fenced() {
        return;
    }
    let mut errors = Vec::new();
    let now = cairn_engine::catalog::now_us();
    let retention = match crate::policy::context(d.app.engine(), opts.ship_interval).await {
        Ok(ctx) => crate::retention_run::run(&d.app, &ctx, now).await,
        Err(e) => Err(e),
    };
    match retention {
        Ok(clusters) => {
            for c in clusters {
                match c {
                    Ok(r) if r.retired.layers > 0 => events(Event::Retained {
                        cluster: r.cluster,
                        policy: r.policy,
                        retired: r.retired,
                    }),
                    Ok(_) => {}
                    Err((cluster, e)) => {
                        errors.push(format!("retention of cluster '{cluster}': {e}"))
                    }
                }
            }
        }
        Err(e) => errors.push(format!("retention: {e}")),
    }
    if opts.compact_target > 0 {
        let rules = cairn_scheduler::compaction::CompactionRules {
            target_bytes: opts.compact_target,
            min_age_us: i64::try_from(opts.compact_after.as_micros()).unwrap_or(i64::MAX),
        };
        match crate::compaction_run::run(&d.app, rules, now, COMPACTION_BUDGET).await {
            Ok(clusters) => {
                for c in clusters {
                    match c {
                        Ok(done) => events(Event::Compacted(done)),
                        Err((cluster, e)) => {
                            errors.push(format!("WAL compaction of cluster '{cluster}': {e}"))
                        }
                    }
                }
            }
            Err(e) => errors.push(format!("WAL compaction: {e}")),
        }
    }
    let cut = now.saturating_sub(i64::try_from(opts.job_history.as_micros()).unwrap_or(i64::MAX));
    match crate::jobs::history::prune(&d.app.engine().catalog, cut).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            runs = n,
            "pruned job runs older than {}",
            cairn_units::fmt_duration(opts.job_history)
        ),
        Err(e) => errors.push(format!("job history: {e}")),
    }
    match p.run_due_shreds().await {
        Ok(done) => {
            for c in done {
                events(Event::Shredded { cluster: c });
            }
        }
        Err(e) => errors.push(format!("shred: {e}")),
    }
    if let Err(e) = p.queue_garbage().await {
        errors.push(format!("deletion queue: {e}"));
    }
    match p.process_deletions().await {
        Ok(r) => errors.extend(r.failed),
        Err(e) => errors.push(format!("deletion queue: {e}")),
    }
    // Verification reports a region lacks (it was down when they were written).
    let cat = &d.app.engine().catalog;
    if matches!(cairn_verifier::store::head(cat).await, Ok(Some(_))) {
        for r in &p.regions.regions {
            if let Err(e) = cairn_verifier::store::publish(cat, r).await {
                errors.push(format!(
                    "copying verification reports to region {}: {e}",
                    r.name
                ));
            }
        }
    }
    let mut st = d.status.lock().unwrap_or_else(|e| e.into_inner());
    for e in errors {
        st.error(e);
    }
}

/// Every compute the catalog knows, with its cluster and branch.
async fn computes(d: &Daemon) -> Vec<(ClusterRow, ComputeRow, BranchRow)> {
    let mut out = Vec::new();
    let Ok(computes) = d.app.engine().catalog.computes().await else {
        return out;
    };
    for c in computes {
        let Ok(cluster) = d.app.engine().catalog.cluster(c.cluster_id).await else {
            continue;
        };
        let Ok(Some(b)) = d
            .app
            .engine()
            .catalog
            .branch_of_timeline(c.timeline_id)
            .await
        else {
            continue;
        };
        out.push((cluster, c, b));
    }
    out
}

pub(super) async fn restart_computes(d: &Daemon, events: &Events) {
    for (cluster, c, b) in computes(d).await {
        let port = (!cairn_engine::pg::server::port_in_use(c.port)).then_some(c.port);
        let progress = Arc::new(Progress::new());
        match d
            .app
            .engine()
            .compute_start(&cluster, &b.name, port, &progress)
            .await
        {
            Ok(info) if !info.already_running => events(Event::ComputeRestarted {
                branch: b.name.clone(),
                port: info.port,
            }),
            Ok(_) => {}
            Err(e) => d
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .error(format!(
                    "cannot restart the compute of branch '{}': {e}",
                    b.name
                )),
        }
    }
}

pub(super) async fn start_receivers(d: &Daemon, out: &mut Vec<Receiver>) {
    // A fenced appliance never takes over a source's replication slot: the appliance it was
    // rebuilt from may still be using it.
    if d.app.protection().fenced() {
        return;
    }
    let Ok(clusters) = d.app.engine().catalog.clusters().await else {
        return;
    };
    for c in clusters
        .into_iter()
        .filter(|c| c.kind == ClusterKind::Adopted)
    {
        if out.iter().any(|r| r.cluster == c.id) {
            continue;
        }
        // pg_receivewal cannot be told to refuse a cleartext password: vet the source first.
        if let Err(e) = d.app.engine().vet_source(&c).await {
            d.status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .error(format!("cannot stream WAL of cluster '{}': {e}", c.name));
            continue;
        }
        match d.app.engine().start_receiver(&c, None) {
            Ok(r) => out.push(r),
            Err(e) => d
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .error(format!("cannot stream WAL of cluster '{}': {e}", c.name)),
        }
    }
}

/// When the run stores WAL and takes images.
pub(super) struct SyncPolicy {
    pub interval: Duration,
    pub bytes: u64,
    pub image_after: u64,
}

/// One round: ingest computes whose WAL is due and the spools; take images where due.
pub(super) async fn round(d: &Daemon, policy: &SyncPolicy, receivers: &mut Vec<Receiver>) {
    let mut errors = Vec::new();
    let all = computes(d).await;
    *d.ran.lock().unwrap_or_else(|e| e.into_inner()) = all
        .iter()
        .map(|(cluster, c, _)| (cluster.clone(), c.timeline_id, c.port))
        .collect();
    for (cluster, c, b) in all {
        let tl = c.timeline_id;
        let last = d
            .last_sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&tl)
            .copied();
        let interval = d
            .sync_every
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cluster.name)
            .copied()
            .unwrap_or(policy.interval);
        let due = match last {
            Some(t) if t.elapsed() < interval => {
                match d.app.engine().compute_pending(&cluster, tl).await {
                    Ok(Some(pending)) => pending >= policy.bytes,
                    Ok(None) => false,
                    Err(e) => {
                        errors.push(format!("compute of branch '{}': {e}", b.name));
                        false
                    }
                }
            }
            _ => true,
        };
        if !due {
            continue;
        }
        d.last_sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tl, Instant::now());
        let started_us = cairn_engine::catalog::now_us();
        let synced = d.app.engine().compute_sync(&cluster, tl).await;
        if let Ok(r) = &synced {
            d.mark(tl, started_us, r.to);
        }
        match synced {
            Ok(r) if r.layers > 0 => {
                if let Err(e) = maybe_image(d, &cluster, tl, policy.image_after).await {
                    errors.push(format!("image of branch '{}': {e}", b.name));
                }
            }
            Ok(_) => {}
            Err(e) => errors.push(format!("ingest of branch '{}': {e}", b.name)),
        }
    }
    receivers.retain_mut(|r| r.alive());
    start_receivers(d, receivers).await;
    if let Ok(clusters) = d.app.engine().catalog.clusters().await {
        for c in clusters
            .into_iter()
            .filter(|c| c.kind == ClusterKind::Adopted)
        {
            let started_us = cairn_engine::catalog::now_us();
            match d.app.engine().ingest_spool(&c).await {
                Ok(r) => d.mark(r.timeline, started_us, r.to),
                Err(e) => errors.push(format!("ingest of cluster '{}': {e}", c.name)),
            }
        }
    }
    let mut st = d.status.lock().unwrap_or_else(|e| e.into_inner());
    st.rounds += 1;
    for e in errors {
        st.error(e);
    }
}

async fn maybe_image(
    d: &Daemon,
    cluster: &cairn_engine::catalog::ClusterRow,
    tl: cairn_engine::TimelineId,
    image_after: u64,
) -> Result<()> {
    let t = d.app.engine().catalog.timeline(tl).await?;
    let map = d.app.engine().layer_map(cluster).await?;
    let since = match map.plan(tl, t.head) {
        Ok(p) => t.head.0.saturating_sub(p.image.end.0),
        Err(_) => u64::MAX,
    };
    if since < image_after {
        return Ok(());
    }
    let Some(b) = d.app.engine().catalog.branch_of_timeline(tl).await? else {
        return Ok(());
    };
    let r = d
        .app
        .engine()
        .image_create(cluster, &b.name, &Arc::new(Progress::new()))
        .await?;
    tracing::info!(branch = %b.name, end = %r.end, stored = r.stored_bytes, "new image layer");
    Ok(())
}

pub(super) async fn shutdown(d: &Daemon, events: &Events) {
    for (cluster, c, b) in computes(d).await {
        match d.app.engine().compute_stop(&cluster, &b.name).await {
            Ok(r) => {
                events(Event::ComputeStopped {
                    branch: b.name.clone(),
                    durable_to: r.to,
                });
                // Remember it should run, so the next `cairn up` starts it again.
                let _ = d
                    .app
                    .engine()
                    .mark_desired_running(&cluster, c.timeline_id, c.port)
                    .await;
            }
            Err(e) => events(Event::Problem(format!(
                "error stopping the compute of branch '{}': {e}",
                b.name
            ))),
        }
    }
    if let Ok(clusters) = d.app.engine().catalog.clusters().await {
        for c in clusters
            .into_iter()
            .filter(|c| c.kind == ClusterKind::Adopted)
        {
            if let Err(e) = d.app.engine().ingest_spool(&c).await {
                events(Event::Problem(format!(
                    "error in the final ingest of cluster '{}': {e}",
                    c.name
                )));
            }
        }
    }
}
