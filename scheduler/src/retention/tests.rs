//! Retention decisions on small, readable histories, each with the exact layers kept: one LSN
//! unit is one hour from 2026-11-01T00:00Z, WAL layer `wN` holds `[N, N+1)`, image `iN` is
//! consistent at `N` (start = end). The property tests (`tests/retention_model.rs`) check the
//! same planner over generated histories against the engine's planner.

use std::time::Duration;

use cairn_engine::layer_map::{ImageDesc, TimelineDesc, WalDesc};
use cairn_policies::{Gfs, HoldPoint, LegalHold};

use super::*;
use chrono_tz::Tz;

const HOUR: i64 = 3_600_000_000;
/// 2026-11-01T00:00:00Z.
const T0: i64 = 1_793_491_200_000_000;

fn tl(n: u8) -> TimelineId {
    TimelineId([n; 16])
}

fn id(kind: u8, n: u64) -> LayerId {
    let mut b = [0u8; 32];
    b[0] = kind;
    b[1..9].copy_from_slice(&n.to_be_bytes());
    LayerId(b)
}

fn at(h: u64) -> i64 {
    T0 + h as i64 * HOUR
}

struct Builder(History);

impl Builder {
    fn new() -> Builder {
        Builder(History::default())
    }

    fn timeline(mut self, n: u8, ancestor: Option<(u8, u64)>, head: u64, live: bool) -> Builder {
        self.0.timelines.push(TimelineDesc {
            id: tl(n),
            ancestor: ancestor.map(|(p, a)| (tl(p), Lsn(a))),
            head: Lsn(head),
        });
        if live {
            self.0.live.push(tl(n));
        }
        self
    }

    fn wal(mut self, t: u8, hours: std::ops::Range<u64>) -> Builder {
        for h in hours {
            self.0.wals.push(WalInfo {
                desc: WalDesc {
                    id: id(b'w' + t - 1, h),
                    timeline: tl(t),
                    start: Lsn(h),
                    end: Lsn(h + 1),
                },
                first_time_us: at(h),
                last_time_us: at(h + 1),
                created_us: at(h + 1),
            });
        }
        self
    }

    fn images(mut self, t: u8, hours: impl IntoIterator<Item = u64>) -> Builder {
        for h in hours {
            self.0.images.push(ImageInfo {
                desc: ImageDesc {
                    id: id(b'i', h),
                    timeline: tl(t),
                    start: Lsn(h),
                    end: Lsn(h),
                },
                time_us: at(h),
                created_us: at(h),
                refs: vec![],
            });
        }
        self
    }
}

fn rules(pitr_hours: u64, gfs: Gfs, holds: Vec<LegalHold>) -> Retention {
    Retention {
        pitr: Duration::from_secs(pitr_hours * 3600),
        gfs,
        min_retention: Duration::ZERO,
        legal_holds: holds,
        cooling_off: Duration::ZERO,
    }
}

/// The kept (or deleted) layers as `i23 w41 ...`: images, then the WAL of timeline 1 (`w`),
/// then of timeline 2 (`x`), each in hour order.
fn names(ids: &BTreeSet<LayerId>) -> String {
    let mut v: Vec<(u8, u64)> = ids
        .iter()
        .map(|l| {
            let mut n = [0u8; 8];
            n.copy_from_slice(&l.0[1..9]);
            (l.0[0], u64::from_be_bytes(n))
        })
        .collect();
    v.sort_unstable();
    v.iter()
        .map(|(k, n)| format!("{}{n}", *k as char))
        .collect::<Vec<_>>()
        .join(" ")
}

fn range(kind: char, r: std::ops::RangeInclusive<u64>) -> String {
    r.map(|n| format!("{kind}{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn two_days_of_hourly_images_under_a_six_hour_window_and_three_dailies() {
    let h = Builder::new()
        .timeline(1, None, 48, true)
        .wal(1, 0..48)
        .images(1, 1..=48)
        .0;
    let gfs = Gfs {
        daily: 3,
        ..Gfs::default()
    };
    let plan = plan_retention(&h, &rules(6, gfs, vec![]), chrono_tz::UTC, at(48));
    // The window: from the end of the last layer older than 42:00 (w40 ends at 41) to the
    // head, anchored on i41; the dailies are the newest image of Nov 3, 2 and 1.
    assert_eq!(
        names(&plan.keep),
        format!("i23 {} {}", range('i', 41..=48), range('w', 41..=47))
    );
    assert_eq!(
        names(&plan.delete),
        format!(
            "{} {} {}",
            range('i', 1..=22),
            range('i', 24..=40),
            range('w', 0..=40)
        )
    );
    assert!(plan.windows.contains(&RetainedWindow {
        timeline: tl(1),
        from: Lsn(41),
        to: Lsn(48),
        reason: Reason::Pitr,
    }));
    assert_eq!(
        plan.reasons[&id(b'i', 23)],
        BTreeSet::from([Reason::Gfs(Period::Daily)])
    );
}

#[test]
fn a_child_branch_keeps_its_parents_past_below_the_branch_point() {
    // The parent has no branch of its own any more; the child branched at 5.
    let h = Builder::new()
        .timeline(1, None, 20, false)
        .wal(1, 0..20)
        .images(1, [2, 10])
        .timeline(2, Some((1, 5)), 30, true)
        .wal(2, 5..30)
        .0;
    let plan = plan_retention(
        &h,
        &rules(0, Gfs::default(), vec![]),
        chrono_tz::UTC,
        at(30),
    );
    // Kept: the parent's i2 and w2..w4, the child's whole WAL (x5..x29); the parent's own WAL
    // after the branch point and its later image go.
    assert_eq!(
        names(&plan.keep),
        format!("i2 {} {}", range('w', 2..=4), range('x', 5..=29))
    );
    assert_eq!(
        names(&plan.delete),
        format!("i10 {} {}", range('w', 0..=1), range('w', 5..=19))
    );
}

#[test]
fn a_legal_hold_by_time_keeps_a_point_long_out_of_the_window() {
    let h = Builder::new()
        .timeline(1, None, 48, true)
        .wal(1, 0..48)
        .images(1, [0, 12, 24, 36, 48])
        .0;
    let hold = LegalHold {
        point: HoldPoint::Time(chrono::DateTime::from_timestamp_micros(at(5) + HOUR / 2).unwrap()),
        reason: "case 7".into(),
    };
    let plan = plan_retention(
        &h,
        &rules(1, Gfs::default(), vec![hold]),
        chrono_tz::UTC,
        at(48),
    );
    // The hold keeps the layer holding 05:30 (w5) restorable from i0; the window [46, 48]
    // keeps i36 and w36..w47, and i48.
    assert_eq!(
        names(&plan.keep),
        format!("i0 i36 i48 {} {}", range('w', 0..=5), range('w', 36..=47))
    );
    assert_eq!(
        names(&plan.delete),
        format!("i12 i24 {}", range('w', 6..=35))
    );
    let held = plan
        .windows
        .iter()
        .find(|w| matches!(&w.reason, Reason::Hold(r) if r.ends_with("case 7")))
        .unwrap();
    assert_eq!((held.from, held.to), (Lsn(5), Lsn(6)));
}

#[test]
fn a_head_without_an_image_keeps_its_whole_history() {
    let h = Builder::new().timeline(1, None, 10, true).wal(1, 0..10).0;
    let plan = plan_retention(
        &h,
        &rules(0, Gfs::default(), vec![]),
        chrono_tz::UTC,
        at(100),
    );
    assert_eq!(names(&plan.keep), range('w', 0..=9));
    assert!(plan.delete.is_empty());
    assert!(plan
        .reasons
        .values()
        .all(|r| r.contains(&Reason::NoImageYet)));
}

#[test]
fn a_child_without_an_image_keeps_its_history_and_only_its_history() {
    // The parent's only image is after the branch point: the child's head has no image.
    let h = Builder::new()
        .timeline(1, None, 10, false)
        .wal(1, 0..10)
        .images(1, [8])
        .timeline(2, Some((1, 5)), 12, true)
        .wal(2, 5..12)
        .0;
    let plan = plan_retention(
        &h,
        &rules(0, Gfs::default(), vec![]),
        chrono_tz::UTC,
        at(100),
    );
    // The parent below the branch point (w0..w4) and the child's own WAL; not the parent's
    // WAL from the branch point on (w5 starts exactly there) nor its image at 8.
    assert_eq!(
        names(&plan.keep),
        format!("{} {}", range('w', 0..=4), range('x', 5..=11))
    );
    assert_eq!(names(&plan.delete), format!("i8 {}", range('w', 5..=9)));
}

#[test]
fn the_floor_keeps_what_is_young_whatever_else_the_policy_says() {
    let h = Builder::new()
        .timeline(1, None, 10, true)
        .wal(1, 0..10)
        .images(1, [0, 9])
        .0;
    let mut r = rules(0, Gfs::default(), vec![]);
    r.min_retention = Duration::from_secs(3 * 3600);
    let plan = plan_retention(&h, &r, chrono_tz::UTC, at(10));
    // Window [9, 10] from i9; the floor (created since 07:00) adds w6..w8 (w6 ends at 7).
    assert_eq!(names(&plan.keep), format!("i9 {}", range('w', 6..=9)));
    assert_eq!(names(&plan.delete), format!("i0 {}", range('w', 0..=5)));
}

#[test]
fn gfs_periods_are_taken_in_the_policys_time_zone() {
    // 22:00 and 23:30 UTC on Nov 1 and 01:00 UTC on Nov 2 are all Nov 2 in Tokyo.
    let h = Builder::new()
        .timeline(1, None, 30, true)
        .wal(1, 0..30)
        .images(1, [22, 23, 25])
        .0;
    let daily = Gfs {
        daily: 2,
        ..Gfs::default()
    };
    let pick = |tz| -> String {
        let ids: BTreeSet<LayerId> = gfs::picks(&h.images, daily, tz, at(30))
            .into_iter()
            .map(|(i, _)| i.desc.id)
            .collect();
        names(&ids)
    };
    assert_eq!(pick(chrono_tz::UTC), "i23 i25");
    assert_eq!(pick(chrono_tz::Asia::Tokyo), "i25");
    // Hourly counts hours that hold an image, newest first; yearly is one.
    let g = Gfs {
        hourly: 2,
        yearly: 1,
        ..Gfs::default()
    };
    let got: Vec<(String, Period)> = gfs::picks(&h.images, g, chrono_tz::UTC, at(30))
        .into_iter()
        .map(|(i, p)| (names(&BTreeSet::from([i.desc.id])), p))
        .collect();
    assert_eq!(
        got,
        [
            ("i25".to_string(), Period::Hourly),
            ("i23".to_string(), Period::Hourly),
            ("i25".to_string(), Period::Yearly),
        ]
    );
}

/// Twenty-two months of history, generated: a WAL layer every six hours and an image every day
/// at 18:00 UTC (also 06:00 and 12:00 on the last day), from 2025-01-01 to 2026-11-04T00:00Z.
/// One LSN unit is one hour from 2025-01-01T00:00Z.
fn two_years() -> (History, i64) {
    const Y0: i64 = 1_735_689_600_000_000;
    let hours: u64 = 672 * 24;
    let t = |h: u64| Y0 + h as i64 * HOUR;
    let mut h = History::default();
    h.timelines.push(TimelineDesc {
        id: tl(1),
        ancestor: None,
        head: Lsn(hours),
    });
    h.live.push(tl(1));
    for s in (0..hours).step_by(6) {
        h.wals.push(WalInfo {
            desc: WalDesc {
                id: id(b'w', s),
                timeline: tl(1),
                start: Lsn(s),
                end: Lsn(s + 6),
            },
            first_time_us: t(s),
            last_time_us: t(s + 6),
            created_us: t(s + 6),
        });
    }
    let mut images: Vec<u64> = (0..672).map(|d| d * 24 + 18).collect();
    images.extend([671 * 24 + 6, 671 * 24 + 12]);
    for e in images {
        h.images.push(ImageInfo {
            desc: ImageDesc {
                id: id(b'i', e),
                timeline: tl(1),
                start: Lsn(e),
                end: Lsn(e),
            },
            time_us: t(e),
            created_us: t(e),
            refs: vec![],
        });
    }
    (h, t(hours))
}

/// The kept images as UTC times, oldest first.
fn kept_images(h: &History, plan: &RetentionPlan) -> Vec<String> {
    let mut v: Vec<i64> = h
        .images
        .iter()
        .filter(|i| plan.keep.contains(&i.desc.id))
        .map(|i| i.time_us)
        .collect();
    v.sort_unstable();
    v.iter()
        .map(|t| {
            chrono::DateTime::from_timestamp_micros(*t)
                .unwrap()
                .format("%Y-%m-%d %H:%M")
                .to_string()
        })
        .collect()
}

#[test]
fn gfs_combinations_over_two_generated_years() {
    let (h, now) = two_years();
    let run = |gfs: Gfs, tz: Tz| {
        let plan = plan_retention(&h, &rules(1, gfs, vec![]), tz, now);
        kept_images(&h, &plan)
    };
    // 2026-11-03 is a Tuesday: its ISO week began on Monday 11-02.
    let all = Gfs {
        hourly: 3,
        daily: 3,
        weekly: 2,
        monthly: 3,
        yearly: 2,
    };
    assert_eq!(
        run(all, chrono_tz::UTC),
        [
            "2025-12-31 18:00",
            "2026-09-30 18:00",
            "2026-10-31 18:00",
            "2026-11-01 18:00",
            "2026-11-02 18:00",
            "2026-11-03 06:00",
            "2026-11-03 12:00",
            "2026-11-03 18:00",
        ]
    );
    // Only the window (the last image is its anchor) when no GFS count is set.
    assert_eq!(run(Gfs::default(), chrono_tz::UTC), ["2026-11-03 18:00"]);
    // Weeks only: the newest image of each of the last five ISO weeks (Sundays, then the
    // current week's Tuesday).
    let weekly = Gfs {
        weekly: 5,
        ..Gfs::default()
    };
    assert_eq!(
        run(weekly, chrono_tz::UTC),
        [
            "2026-10-11 18:00",
            "2026-10-18 18:00",
            "2026-10-25 18:00",
            "2026-11-01 18:00",
            "2026-11-03 18:00",
        ]
    );
    // Months in Auckland (UTC+13 from 2026-09-27): 18:00 UTC is 07:00 the next day there, so
    // the last image of a local month is the one of its second-to-last UTC day.
    let monthly = Gfs {
        monthly: 3,
        yearly: 1,
        ..Gfs::default()
    };
    assert_eq!(
        run(monthly, chrono_tz::Pacific::Auckland),
        ["2026-09-29 18:00", "2026-10-30 18:00", "2026-11-03 18:00"]
    );
    // More periods asked for than the history has: every year's newest, no more.
    let years = Gfs {
        yearly: 10,
        ..Gfs::default()
    };
    assert_eq!(
        run(years, chrono_tz::UTC),
        ["2025-12-31 18:00", "2026-11-03 18:00"]
    );
}
