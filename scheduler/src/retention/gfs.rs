//! Grandfather-father-son: which images stand for the last N hours, days, weeks, months and
//! years.
//!
//! Invariants:
//! - Periods are calendar periods in the policy's time zone (a day is a local date, a week an
//!   ISO week, Monday first); an image belongs to the period of its consistent point's time.
//! - For each kind with a count N, the N most recent periods that hold an image (at or before
//!   `now`) each keep their newest image. Periods without an image are skipped, not counted,
//!   as pgBackRest and AWS Backup count backups, not calendar slots. Ties (same time and end)
//!   go to the larger layer id, so the choice never depends on input order.
//! - One image may stand for several kinds (the newest of a day is often the newest of its
//!   hour); each kind is reported.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Timelike};
use chrono_tz::Tz;

use cairn_policies::Gfs;

use super::ImageInfo;

/// A kind of GFS period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Period {
    pub const ALL: [Period; 5] = [
        Period::Hourly,
        Period::Daily,
        Period::Weekly,
        Period::Monthly,
        Period::Yearly,
    ];

    fn count(self, g: Gfs) -> u32 {
        match self {
            Period::Hourly => g.hourly,
            Period::Daily => g.daily,
            Period::Weekly => g.weekly,
            Period::Monthly => g.monthly,
            Period::Yearly => g.yearly,
        }
    }

    /// The period holding `time_us`, as a sortable key (later periods sort higher).
    pub fn key(self, time_us: i64, tz: Tz) -> Option<(i32, u32, u32, u32)> {
        let t = DateTime::from_timestamp_micros(time_us)?.with_timezone(&tz);
        Some(match self {
            Period::Hourly => (t.year(), t.ordinal(), t.hour(), 0),
            Period::Daily => (t.year(), t.ordinal(), 0, 0),
            Period::Weekly => {
                let w = t.iso_week();
                (w.year(), w.week(), 0, 0)
            }
            Period::Monthly => (t.year(), t.month(), 0, 0),
            Period::Yearly => (t.year(), 0, 0, 0),
        })
    }
}

/// The images GFS keeps, each with the kind of period it stands for.
pub(super) fn picks(
    images: &[ImageInfo],
    g: Gfs,
    tz: Tz,
    now_us: i64,
) -> Vec<(&ImageInfo, Period)> {
    let mut out = Vec::new();
    for period in Period::ALL {
        let n = period.count(g) as usize;
        if n == 0 {
            continue;
        }
        let mut newest: BTreeMap<(i32, u32, u32, u32), &ImageInfo> = BTreeMap::new();
        for i in images.iter().filter(|i| i.time_us <= now_us) {
            let Some(k) = period.key(i.time_us, tz) else {
                continue;
            };
            let e = newest.entry(k).or_insert(i);
            if (i.time_us, i.desc.end, i.desc.id) > (e.time_us, e.desc.end, e.desc.id) {
                *e = i;
            }
        }
        out.extend(newest.values().rev().take(n).map(|i| (*i, period)));
    }
    out
}
