//! Cairn's scheduler: given policies and the state of the appliance, what must happen. Every
//! decision here is a pure function of its inputs (the clock included, as an argument), so it
//! is tested against simple models; the appliance carries the decisions out.
//!
//! Invariants:
//! - Nothing here reads a file, the catalog, a region or the clock.
//! - [`retention`]: a retention plan never deletes a layer that a retained point needs — the
//!   image, the images it references, the WAL from its start to the point along the branch's
//!   history — and every point of every retained window stays reconstructible from the layers
//!   kept (checked against the engine's own planner by the property tests).
//! - [`due`]: a job never overlaps itself, missed fires collapse into one late run, and no
//!   schedule runs more than its `max_concurrent` at once.
//! - [`compaction`]: merging runs of small WAL layers never changes what is reconstructible,
//!   never spans an image's start, and merges only layers the caller calls settled.
//! - [`rto`]: a restore-time prediction grows with every byte a restore needs, and an image is
//!   only credited with the WAL time it removes.

pub mod compaction;
pub mod due;
pub mod retention;
pub mod rto;

pub use due::{due, Decision, DueRun, Job, JobKey, JobKind, JobState, Waiting};
pub use retention::{plan_retention, History, ImageInfo, Period, Reason, RetentionPlan, WalInfo};
