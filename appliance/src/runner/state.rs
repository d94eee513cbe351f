//! What `cairn up` shares between its loop and its JSON API: the appliance, how the loop is
//! doing (when it started, how many rounds, the recent problems), the clusters' exposure and
//! the active alerts.
//!
//! Invariants:
//! - The recent problems are bounded (the last 50), newest last, each with its time.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::alerts::Alerts;
use crate::objectives::{RpoStatus, SyncMark};
use crate::Appliance;
use cairn_engine::TimelineId;

/// How the run is doing, as the API reports it.
#[derive(Default)]
pub struct Status {
    pub started: Option<Instant>,
    /// Recent problems, newest last: (unix µs, message).
    pub errors: Vec<(i64, String)>,
    pub rounds: u64,
}

impl Status {
    pub fn error(&mut self, msg: String) {
        tracing::warn!("{msg}");
        self.errors.push((cairn_engine::catalog::now_us(), msg));
        if self.errors.len() > 50 {
            self.errors.remove(0);
        }
    }
}

/// What the run's loop, its shippers and its API share.
pub struct Daemon {
    /// The engine and the protection layer (shared with the region shippers).
    pub app: Appliance,
    pub status: Mutex<Status>,
    /// When each compute's WAL was last stored.
    pub(crate) last_sync: Mutex<HashMap<TimelineId, Instant>>,
    /// The stores of each branch's WAL since the newest durable one (see [`crate::objectives`]).
    pub(crate) marks: Mutex<HashMap<TimelineId, Vec<SyncMark>>>,
    /// Each governed cluster's exposure, as last computed.
    pub rpo: Mutex<Vec<RpoStatus>>,
    /// Each governed cluster's predicted restore time, as last computed.
    pub rto: Mutex<Vec<crate::restore_time::RtoStatus>>,
    pub alerts: Mutex<Alerts>,
    /// How often each cluster's WAL is stored, from its policy's RPO (else the run's option).
    pub(crate) sync_every: Mutex<HashMap<String, Duration>>,
    /// The clusters whose policy in force verifies heartbeats: the run writes them
    /// ([`super::heartbeat`]).
    pub(crate) heartbeat_clusters: Mutex<std::collections::HashSet<String>>,
    /// How often each region is shipped to (ms), from the tightest RPO.
    pub(crate) ship_every_ms: AtomicU64,
    /// When the run started (Unix µs).
    pub started_us: i64,
    /// This node's name in the catalog: host, process, start time.
    pub node: String,
    /// Whether this node holds the active role ([`crate::nodes`]).
    pub active: std::sync::atomic::AtomicBool,
    /// The node lease as last taken or renewed.
    pub lease: Mutex<super::lease::Lease>,
    /// The computes the last round saw (cluster, timeline, port): what a node that loses its
    /// lease halts without the catalog.
    pub(crate) ran: Mutex<Vec<(cairn_engine::catalog::ClusterRow, TimelineId, u16)>>,
}

impl Daemon {
    /// Records a store of `tl`'s WAL that started at `at_us` and left `head`.
    pub(crate) fn mark(&self, tl: TimelineId, at_us: i64, head: cairn_engine::Lsn) {
        let mut m = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        let v = m.entry(tl).or_default();
        v.push(SyncMark { at_us, head });
        // Bounded even when nothing becomes durable for long: the oldest is kept (it may be
        // the durable one), the newest are.
        if v.len() > 10_000 {
            v.drain(1..5_000);
        }
    }
}
