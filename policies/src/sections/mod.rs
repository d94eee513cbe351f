//! The sections of a policy file after `[objectives]`: `[schedules]`, `[retention]`,
//! `[regions]` and `[encryption]`, `[verification]`, one module each.
//!
//! Invariants:
//! - Each reader returns its section only if every key of it read cleanly, after reporting
//!   every problem it found (see `read`); an absent section is its defaults (`model::defaults`).
//! - Lists that may be empty say so (legal holds, recipients, probes: none); the others
//!   (`regions.use`, `verification.checks`) refuse emptiness, which would mean "nothing".
//! - The key lists here are the whole format: a key not listed is an unknown key.

mod regions;
mod retention;
mod schedules;
mod verification;

pub use regions::MAX_COPIES;
pub(crate) use regions::{encryption, regions};
pub(crate) use retention::retention;
pub use retention::MAX_GFS;
pub(crate) use schedules::schedules;
pub use schedules::MAX_CONCURRENT;
pub(crate) use verification::verification;

use crate::read::{Fields, Reader};

pub(crate) const SCHEDULES: &[&str] = &["image", "verify", "drill"];
pub(crate) const RETENTION: &[&str] = &[
    "pitr",
    "hourly",
    "daily",
    "weekly",
    "monthly",
    "yearly",
    "min_retention",
    "legal_holds",
    "cooling_off",
];
pub(crate) const REGIONS: &[&str] = &["use", "min_copies"];
pub(crate) const ENCRYPTION: &[&str] = &["recipients"];
pub(crate) const VERIFICATION: &[&str] = &["checks", "point", "window", "time_limit", "probes"];

/// The section's fields: `Ok(None)` if absent, `Err(())` if it is not a table.
pub(crate) fn section<'t>(
    r: &mut Reader,
    root: &Fields<'t>,
    key: &str,
    known: &[&str],
) -> Result<Option<Fields<'t>>, ()> {
    match r.sub_table(root, key, known) {
        None => Ok(None),
        Some(None) => Err(()),
        Some(Some(f)) => Ok(Some(f)),
    }
}
