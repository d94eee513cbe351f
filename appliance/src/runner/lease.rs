//! The node lease as the run keeps it ([`crate::nodes`] takes and renews it in the catalog).
//!
//! A task of its own renews the lease every [`RENEW`](crate::nodes::RENEW), so that a long
//! round never lets it pass; the run's loop follows what it finds ([`super::Runner`]).
//!
//! Invariants:
//! - A renewal that the catalog does not answer within [`ANSWER`] counts as failed.
//! - "Confirmed" is the instant *before* the renewal that succeeded: the lease in the catalog
//!   runs from no earlier than that, so half a lease after it the lease still holds.
//! - An active node whose lease was not confirmed for half a lease fences itself here, without
//!   the catalog and without waiting for the run's loop (which may be stuck on the catalog):
//!   it stops acting and halts the servers of the computes it ran, before any other node may
//!   take the role (a full lease after the last renewal) and start them.
//! - A node that finds another holding the role stops acting and leaves the computes to it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::state::Daemon;

/// How long a renewal may wait for the catalog.
pub const ANSWER: Duration = Duration::from_secs(5);

/// The node lease as this node last saw it.
#[derive(Debug, Clone, Default)]
pub struct Lease {
    /// `None` until the catalog answered once.
    pub role: Option<crate::nodes::Role>,
    /// When the role was last confirmed (the instant before the renewal).
    pub confirmed: Option<Instant>,
    /// The holder last announced as a standby's event.
    pub announced: Option<String>,
    pub error: Option<String>,
    /// Why this node last stopped acting, for the run's loop to report.
    pub stopped: Option<String>,
}

impl Lease {
    /// Confirmed within half a lease: an active node may go on acting.
    pub fn fresh(&self) -> bool {
        self.confirmed
            .is_some_and(|c| c.elapsed() < crate::nodes::LEASE / 2)
    }
}

/// Takes or renews the lease for `d`, records the answer, and stops `d` acting when the role
/// is another node's or could not be confirmed for half a lease.
pub(crate) async fn renew(d: &Daemon) {
    let cat = &d.app.engine().catalog;
    let asked = Instant::now();
    let r = tokio::time::timeout(
        ANSWER,
        crate::nodes::acquire(cat, &d.node, cairn_engine::catalog::now_us()),
    )
    .await;
    let r = match r {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the catalog did not answer within {}s",
            ANSWER.as_secs()
        )),
    };
    let fence = {
        let mut l = d.lease.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(role) => {
                l.role = Some(role);
                l.confirmed = Some(asked);
                l.error = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take or renew the node lease");
                l.error = Some(e);
            }
        }
        let active = d.active.load(Ordering::Relaxed);
        let why = match &l.role {
            Some(crate::nodes::Role::Standby(h)) if active => {
                Some((format!("node {} took the active role", h.node), false))
            }
            _ if active && !l.fresh() => Some((
                "the node lease could not be renewed for half its term".to_string(),
                true,
            )),
            _ => None,
        };
        if let Some((why, _)) = &why {
            d.active.store(false, Ordering::Relaxed);
            l.stopped = Some(why.clone());
        }
        why
    };
    let Some((why, halt)) = fence else {
        return;
    };
    tracing::error!(reason = %why, "this node stops acting as the active node");
    d.status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .error(format!("this node stops acting as the active node: {why}"));
    if halt {
        let ran = d.ran.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (cluster, tl, port) in ran {
            if let Err(e) = d.app.engine().compute_halt(&cluster, tl, port) {
                tracing::error!(timeline = %tl, error = %e, "cannot halt a compute");
            }
        }
    }
}
