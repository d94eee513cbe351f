//! Retention: which layers of a cluster a policy keeps, and which may go.
//!
//! What is retained, for each live branch (a timeline with a branch on it):
//! - **PITR window**: every point from `now - pitr` to the branch's head that is reconstructible
//!   now stays reconstructible. Time is known per WAL layer, not per record: the window starts
//!   at the end of the last layer whose commits are all older than `now - pitr`, so slightly
//!   more is kept, never less.
//! - **GFS images**: the newest image of each of the last `hourly` hours, `daily` days,
//!   `weekly` ISO weeks, `monthly` months and `yearly` years (in the policy's time zone) that
//!   hold an image; each stays restorable at its consistent point.
//! - **Legal holds**: a point given by LSN stays reconstructible; a point given by time keeps
//!   the whole WAL layer holding that time (so the exact point inside it can be resolved).
//! - **Floor**: no layer created less than `min_retention` ago is deleted.
//! - A head that is not reconstructible (no image yet) keeps its whole history.
//!
//! Invariants:
//! - A kept point keeps its image, the images that image references (transitively) and the
//!   WAL from the image's start to the point along the branch's history, including the
//!   ancestors' layers below a branch point: a child branch never loses its parent's past.
//! - `keep` and `delete` partition the layers given; the plan is deterministic (sorted).
//! - What is reconstructible is decided by the engine's own planner
//!   ([`cairn_engine::layer_map::LayerMap`]), never re-derived here.

mod cover;
mod gfs;

use std::collections::{BTreeMap, BTreeSet};

use cairn_engine::layer_map::{ImageDesc, LayerMap, TimelineDesc, WalDesc};
use cairn_engine::{LayerId, Lsn, TimelineId};
use cairn_policies::{HoldPoint, Retention};
use chrono_tz::Tz;

pub use gfs::Period;

/// An image layer and what retention needs to know of it.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub desc: ImageDesc,
    /// Time of its consistent point (Unix µs): what GFS buckets it by.
    pub time_us: i64,
    /// When the layer was written (Unix µs): what the floor is measured against.
    pub created_us: i64,
    /// Layers holding pieces this image reads.
    pub refs: Vec<LayerId>,
}

/// A WAL layer and the times of the first and last commit it holds (its creation time when
/// it holds none).
#[derive(Debug, Clone)]
pub struct WalInfo {
    pub desc: WalDesc,
    pub first_time_us: i64,
    pub last_time_us: i64,
    pub created_us: i64,
}

/// One cluster's layers and timelines, and which timelines have a branch.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub timelines: Vec<TimelineDesc>,
    pub live: Vec<TimelineId>,
    pub images: Vec<ImageInfo>,
    pub wals: Vec<WalInfo>,
}

/// Why something is retained.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Pitr,
    Gfs(Period),
    Hold(String),
    /// Written less than `min_retention` ago.
    Floor,
    /// The branch's head is not reconstructible yet: its whole history stays.
    NoImageYet,
}

/// A range of a timeline's history in which every point stays reconstructible.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RetainedWindow {
    pub timeline: TimelineId,
    pub from: Lsn,
    pub to: Lsn,
    pub reason: Reason,
}

/// What a retention run keeps and deletes.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RetentionPlan {
    pub keep: BTreeSet<LayerId>,
    pub delete: BTreeSet<LayerId>,
    /// Windows (PITR, time holds) and points (GFS images, LSN holds: `from == to`).
    pub windows: Vec<RetainedWindow>,
    /// Why each kept layer is kept (every reason that applies).
    pub reasons: BTreeMap<LayerId, BTreeSet<Reason>>,
}

/// Plans a retention run of `history` under `rules` at `now_us`; GFS buckets are taken in
/// `tz`.
pub fn plan_retention(history: &History, rules: &Retention, tz: Tz, now_us: i64) -> RetentionPlan {
    let full = LayerMap::new(
        history.timelines.iter().cloned(),
        history.images.iter().map(|i| i.desc),
        history.wals.iter().map(|w| w.desc),
    );
    let mut k = cover::Keeper::new(history, &full);
    let micros = |d: std::time::Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
    for &t in &history.live {
        let Some(head) = full.timeline(t).map(|d| d.head) else {
            continue;
        };
        if full.plan(t, head).is_err() {
            k.whole_history(t, head);
            continue;
        }
        let cutoff = now_us.saturating_sub(micros(rules.pitr));
        let cut = cover::pitr_cut(history, &full, t, head, cutoff);
        k.window(t, cut, head, Reason::Pitr);
    }
    for (image, period) in gfs::picks(&history.images, rules.gfs, tz, now_us) {
        k.image(image, Reason::Gfs(period));
    }
    for hold in &rules.legal_holds {
        let reason = Reason::Hold(format!("{}: {}", hold.point, hold.reason));
        for &t in &history.live {
            let Some(head) = full.timeline(t).map(|d| d.head) else {
                continue;
            };
            match hold.point {
                // A point beyond the head is in no window: nothing to keep (yet).
                HoldPoint::Lsn(x) => k.window(t, Lsn(x), Lsn(x), reason.clone()),
                HoldPoint::Time(at) => {
                    if let Some((from, to)) =
                        cover::layer_at_time(history, &full, t, head, at.timestamp_micros())
                    {
                        k.window(t, from, to.min(head), reason.clone());
                    }
                }
            }
        }
    }
    let floor = now_us.saturating_sub(micros(rules.min_retention));
    for i in &history.images {
        if i.created_us >= floor {
            k.layer(i.desc.id, &Reason::Floor);
        }
    }
    for w in &history.wals {
        if w.created_us >= floor {
            k.layer(w.desc.id, &Reason::Floor);
        }
    }
    k.finish()
}

#[cfg(test)]
mod tests;
