//! Semantic checks: a policy that reads cleanly but cannot keep its promises.
//!
//! Invariants:
//! - Each check runs only when the sections it needs read cleanly, so a typo never causes a
//!   second, misleading error here; checks of different sections still all run.
//! - Every error is of kind `Semantic` and points at the value that makes the promise (the
//!   `rpo`, the `pitr`, the `min_copies`); when that value is a default, at the key or table
//!   that brought the other side of the conflict in, else at 1:1.
//! - Intervals between schedule fires are measured over one fixed year, from
//!   [`REFERENCE`], so the result never depends on when the check runs, and daylight-saving
//!   changes of both hemispheres fall inside it.
//! - Warnings here never refuse a policy.

use std::time::Duration;

use cairn_units::fmt_duration;
use chrono::{DateTime, Utc};

use crate::error::{ErrorKind, Pos};
use crate::model::{defaults, Check, Draft, VerifyPoint};
use crate::read::Reader;
use crate::schedule::Schedule;

/// 2026-01-01T00:00:00Z, the start of the year over which schedule intervals are measured.
pub const REFERENCE: i64 = 1_767_225_600;
/// How far from [`REFERENCE`] schedule intervals are measured.
pub const HORIZON: Duration = Duration::from_secs(366 * 86400);

fn reference() -> DateTime<Utc> {
    DateTime::from_timestamp(REFERENCE, 0).unwrap_or_default()
}

/// The first of `paths` that has a mark, else 1:1.
fn place(r: &Reader, paths: &[&str]) -> Pos {
    paths
        .iter()
        .find_map(|p| r.mark_of(p))
        .unwrap_or(Pos { line: 1, column: 1 })
}

fn semantic(r: &mut Reader, at: Pos, message: String) {
    r.error(ErrorKind::Semantic, at, message);
}

pub(crate) fn semantics(r: &mut Reader, d: &Draft) {
    if let Some(o) = &d.objectives {
        let ship = r.ctx.ship_interval;
        if o.rpo < ship {
            let at = place(r, &["objectives.rpo"]);
            let message = format!(
                "`objectives.rpo` is {}, but WAL is shipped every {}: no RPO can be shorter \
                 than the ship interval",
                fmt_duration(o.rpo),
                fmt_duration(ship)
            );
            semantic(r, at, message);
        }
    }
    if let Some(s) = &d.schedules {
        never_fires(r, "schedules.image", Some(&s.image));
        never_fires(r, "schedules.verify", Some(&s.verify));
        never_fires(r, "schedules.drill", s.drill.as_ref());
        if let Some(ret) = &d.retention {
            pitr_covers_images(r, ret.pitr, &s.image);
        }
    }
    if let Some(g) = &d.regions {
        let at = place(r, &["regions.min_copies", "regions.use", "regions"]);
        if g.min_copies == 0 {
            let message =
                "`regions.min_copies` is 0: every backup needs at least 1 copy".to_string();
            semantic(r, at, message);
        } else if g.min_copies as usize > g.selected.len() {
            let given = if r.mark_of("regions.min_copies").is_some() {
                ""
            } else {
                " (the default)"
            };
            let n = g.selected.len();
            let message = format!(
                "`regions.min_copies` is {}{given}, but `regions.use` selects {n} region{} ({})",
                g.min_copies,
                if n == 1 { "" } else { "s" },
                if n == 0 {
                    "none".to_string()
                } else {
                    g.selected.join(", ")
                },
            );
            semantic(r, at, message);
        }
    }
    if let Some(v) = &d.verification {
        if let (VerifyPoint::Random { within }, Some(ret)) = (v.point, &d.retention) {
            if within > ret.pitr {
                let at = place(r, &["verification.point"]);
                let message = format!(
                    "`verification.point` picks points up to {} back, beyond the {} of \
                     `retention.pitr`",
                    fmt_duration(within),
                    fmt_duration(ret.pitr)
                );
                semantic(r, at, message);
            }
        }
        let at = place(r, &["verification.checks", "verification"]);
        if v.checks.contains(&Check::Probes) && v.probes.is_empty() {
            let message = "`verification.checks` lists `probes`, but no \
                           [[verification.probes]] is defined"
                .to_string();
            semantic(r, at, message);
        }
        if !v.checks.contains(&Check::Probes) && !v.probes.is_empty() {
            let message = "[[verification.probes]] are defined, but `verification.checks` does \
                           not list `probes`: they will not run"
                .to_string();
            r.report.warning(at, message, None);
        }
    }
    if let Some(ret) = &d.retention {
        if ret.cooling_off.is_zero() {
            let at = place(r, &["retention.cooling_off"]);
            let message =
                "`retention.cooling_off` is 0: destructive changes take effect at once".into();
            r.report.warning(at, message, None);
        }
    }
}

fn never_fires(r: &mut Reader, path: &str, schedule: Option<&Schedule>) {
    let Some(s) = schedule else { return };
    if s.next_after(reference()).is_none() {
        let at = place(r, &[path]);
        let message = format!("`{path}` (`{}`) never fires", s.expression());
        semantic(r, at, message);
    }
}

/// A point early in the PITR window is restored from the image before it: a window shorter
/// than the gap between images would need an image older than the window itself.
fn pitr_covers_images(r: &mut Reader, pitr: Duration, image: &Schedule) {
    let Some(gap) = image.longest_interval(reference(), HORIZON) else {
        return;
    };
    if pitr >= gap {
        return;
    }
    let at = place(r, &["retention.pitr", "schedules.image", "retention"]);
    let given = if r.mark_of("retention.pitr").is_some() {
        ""
    } else {
        " (the default)"
    };
    let schedule = if r.mark_of("schedules.image").is_some() {
        format!("`{}`", image.expression())
    } else {
        format!("`{}`, the default", defaults::IMAGE)
    };
    let message = format!(
        "`retention.pitr` is {}{given}, shorter than the longest gap between image backups \
         ({} with {schedule}): points early in the window would need an image older than the \
         window",
        fmt_duration(pitr),
        fmt_duration(gap),
    );
    semantic(r, at, message);
}
