//! What `cairn up` shares between its loop and its JSON API: the appliance, and how the loop is
//! doing (when it started, how many rounds, the recent problems).
//!
//! Invariants:
//! - The recent problems are bounded (the last 50), newest last, each with its time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

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
}
