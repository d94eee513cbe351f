//! Cairn's protection policies: TOML files that say, per cluster, what protection it gets
//! (RPO and RTO, schedules, retention, regions, encryption recipients, verification), read
//! strictly into typed values.
//!
//! An operator keeps one file per policy in a policy directory. [`load_dir`] reads them all
//! and returns a [`PolicySet`] or, if anything is wrong anywhere, every problem at once:
//! [`Errors`], each a [`PolicyError`] printed as `FILE:LINE:COLUMN: MESSAGE (did you mean
//! `X`?)`. The file format is documented key by key in `docs/POLICIES.md`; the examples in
//! `policies/examples/` are checked by the tests.
//!
//! Invariants:
//! - Nothing is accepted loosely: an unknown key, a value of the wrong type, a duration,
//!   cron expression, time zone, region, key or check that does not parse is an error with
//!   the file, line and column of the key or value at fault.
//! - A policy that parses must also be keepable: its RPO is not below the WAL ship interval,
//!   its PITR window covers the gap between image backups, it asks for no more copies than it
//!   has regions (the `Semantic` errors, see `check`).
//! - Parsing is pure: it reads the [`Context`] (regions, clusters, ship interval) and the
//!   file's bytes, never the clock or the network, so a verdict is reproducible.
//! - This crate depends on no other Cairn crate but `cairn-units`; the scheduler and the
//!   appliance consume the typed [`Policy`].
//!
//! Modules: `tree` (TOML with spans) → `read` (typed values, errors with positions) →
//! `parse` and `sections` (the file format) → `check` (semantics) → `load` (a directory,
//! conflicts between files). `schedule` and `crontab` are cron in a time zone; `select` is
//! globs and region selectors; `suggest` is "did you mean".

mod check;
mod crontab;
mod error;
mod load;
mod model;
mod parse;
mod read;
mod schedule;
mod sections;
mod select;
mod suggest;
mod tree;

pub use check::{HORIZON, REFERENCE};
pub use error::{ErrorKind, Errors, PolicyError, Warning};
pub use load::{load_dir, parse_set};
pub use model::{
    defaults, Check, Context, Encryption, Gfs, HoldPoint, LegalHold, Objectives, Policy, PolicySet,
    Probe, Recipient, Regions, Retention, Schedules, Verification, VerifyPoint,
};
pub use parse::parse_str;
pub use schedule::Schedule;
pub use sections::{MAX_CONCURRENT, MAX_COPIES, MAX_GFS};
pub use select::{glob_matches, Glob, NamePattern, RegionInfo, RegionSelector};
