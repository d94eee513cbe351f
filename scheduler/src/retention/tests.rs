//! Retention decisions on small, readable histories, each with the exact layers kept: one LSN
//! unit is one hour from 2026-11-01T00:00Z, WAL layer `wN` holds `[N, N+1)`, image `iN` is
//! consistent at `N` (start = end). The property tests (`tests/retention_model.rs`) check the
//! same planner over generated histories against the engine's planner.

use std::time::Duration;

use cairn_engine::layer_map::{ImageDesc, TimelineDesc, WalDesc};
use cairn_policies::{Gfs, HoldPoint, LegalHold};

use super::*;

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
