//! The run's heartbeats: every `heartbeat_every`, the appliance's clock is written into each
//! running compute of the managed clusters whose policy in force verifies heartbeats
//! ([`cairn_engine::heartbeat`]), so that a restored copy of any point says how recent it is.
//!
//! Invariants:
//! - Only the active node writes, and not while fenced (another appliance may own the
//!   computes); only into computes the catalog wants running, never into a scratch branch (a
//!   verification's or an export's copy must stay what it was restored as).
//! - A heartbeat that cannot be written is a problem in the status the API shows, reported
//!   once per branch until its message changes or a heartbeat succeeds again; it never stops
//!   the run.
//! - A heartbeat waits for its compute at most [`ANSWER`]: a stuck server delays the next
//!   heartbeat, never the run's rounds (this is a task of its own).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cairn_engine::catalog::{ClusterKind, ClusterRow};
use cairn_engine::TimelineId;

use super::state::Daemon;

/// How long one heartbeat may take.
pub const ANSWER: Duration = Duration::from_secs(5);

/// Starts the heartbeat task; `None` when heartbeats are off (`every` zero).
pub(super) fn spawn(d: Arc<Daemon>, every: Duration) -> Option<tokio::task::JoinHandle<()>> {
    if every.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut reported: HashMap<TimelineId, String> = HashMap::new();
        loop {
            tokio::time::sleep(every).await;
            if d.active.load(Ordering::Relaxed) && !d.app.protection().fenced() {
                beat(&d, &mut reported).await;
            }
        }
    }))
}

/// The computes to beat: (cluster, timeline, branch, port).
async fn targets(d: &Daemon) -> Vec<(ClusterRow, TimelineId, String, u16)> {
    let wanted = d
        .heartbeat_clusters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if wanted.is_empty() {
        return Vec::new();
    }
    let cat = &d.app.engine().catalog;
    let Ok(computes) = cat.computes().await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for c in computes.into_iter().filter(|c| c.desired == "running") {
        let Ok(cluster) = cat.cluster(c.cluster_id).await else {
            continue;
        };
        if cluster.kind != ClusterKind::Managed || !wanted.contains(&cluster.name) {
            continue;
        }
        let Ok(Some(b)) = cat.branch_of_timeline(c.timeline_id).await else {
            continue;
        };
        if b.name.starts_with(cairn_engine::branch::SCRATCH_PREFIX) {
            continue;
        }
        out.push((cluster, c.timeline_id, b.name, c.port));
    }
    out
}

/// One heartbeat into every target.
async fn beat(d: &Daemon, reported: &mut HashMap<TimelineId, String>) {
    for (cluster, tl, branch, port) in targets(d).await {
        let now = cairn_engine::catalog::now_us();
        let r =
            tokio::time::timeout(ANSWER, d.app.engine().heartbeat(&cluster, tl, port, now)).await;
        let problem = match r {
            Ok(Ok(_)) => {
                reported.remove(&tl);
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("the compute did not answer within {}s", ANSWER.as_secs()),
        };
        let msg = format!(
            "heartbeat of branch '{branch}' (cluster '{}'): {problem}",
            cluster.name
        );
        if reported.get(&tl) != Some(&msg) {
            d.status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .error(msg.clone());
            reported.insert(tl, msg);
        }
    }
}
