//! Retention against a model, over generated histories: branches of branches, WAL with gaps,
//! images referencing images, holds, floors and GFS counts. After a retention run, built from
//! the kept layers only, the engine's own planner must still reconstruct
//! - every point from `now - pitr` to each live branch's head that it reconstructed before
//!   (so the WAL chain inside the window is never broken),
//! - the consistent point of every image the GFS model picks,
//! - every held point,
//!
//! and nothing written less than `min_retention` ago, nor anything a kept image references, is
//! deleted. The model is computed here independently of the planner: time is a linear function
//! of the LSN, so "the points after a time" is an LSN bound.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;

use cairn_engine::layer_map::{ImageDesc, LayerMap, Segment, TimelineDesc, WalDesc};
use cairn_engine::{LayerId, Lsn, TimelineId};
use cairn_policies::{Gfs, HoldPoint, LegalHold, Retention};
use cairn_scheduler::retention::{plan_retention, History, ImageInfo, Period, WalInfo};

/// Microseconds per LSN unit: ten minutes, so a history spans hours to days and GFS periods
/// matter.
const US: i64 = 600_000_000;
/// The first LSN of every history.
const BASE: u64 = 10;

fn tl(i: usize) -> TimelineId {
    TimelineId([i as u8 + 1; 16])
}

fn layer(n: u32) -> LayerId {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&n.to_be_bytes());
    LayerId(b)
}

fn time(lsn: u64) -> i64 {
    lsn as i64 * US
}

#[derive(Debug, Clone)]
struct Spec {
    /// Per timeline: (parent index and branch point as a fraction of its head, WAL chunk
    /// sizes, gap flags, image (end fraction, length) pairs).
    timelines: Vec<TlSpec>,
    live: Vec<bool>,
    refs: Vec<(usize, usize)>,
    pitr_units: u64,
    gfs: [u32; 5],
    floor_units: u64,
    holds: Vec<(bool, u64)>,
    now_extra: u64,
}

#[derive(Debug, Clone)]
struct TlSpec {
    parent: Option<(usize, u8)>,
    /// How much later than its parent's clock this timeline's clock runs (LSN units): a
    /// branch's WAL at an LSN is written after its parent's at that LSN.
    delay: u64,
    chunks: Vec<(u64, bool)>,
    images: Vec<(u8, u64)>,
}

fn spec() -> impl Strategy<Value = Spec> {
    let tl_spec = |parent: bool| {
        (
            if parent {
                (0usize..3, 1u8..=100).prop_map(Some).boxed()
            } else {
                Just(None).boxed()
            },
            0u64..40,
            prop::collection::vec((1u64..12, prop::bool::weighted(0.06)), 1..25),
            prop::collection::vec((0u8..=100, 0u64..6), 0..6),
        )
            .prop_map(|(parent, delay, chunks, images)| TlSpec {
                parent,
                delay,
                chunks,
                images,
            })
    };
    (
        tl_spec(false),
        prop::collection::vec(tl_spec(true), 0..3),
        prop::collection::vec(any::<bool>(), 4),
        prop::collection::vec((0usize..40, 0usize..40), 0..4),
        0u64..200,
        prop::array::uniform5(0u32..4),
        0u64..100,
        prop::collection::vec((any::<bool>(), 0u64..400), 0..3),
        0u64..20,
    )
        .prop_map(
            |(root, children, live, refs, pitr_units, gfs, floor_units, holds, now_extra)| {
                let mut timelines = vec![root];
                timelines.extend(children);
                Spec {
                    timelines,
                    live,
                    refs,
                    pitr_units,
                    gfs,
                    floor_units,
                    holds,
                    now_extra,
                }
            },
        )
}

/// Builds the history a spec describes.
/// Builds the history a spec describes; also each timeline's clock offset (µs).
fn build(s: &Spec) -> (History, Vec<i64>) {
    let mut h = History::default();
    let mut next = 0u32;
    let mut heads: Vec<u64> = Vec::new();
    let mut offsets: Vec<i64> = Vec::new();
    for (i, t) in s.timelines.iter().enumerate() {
        let (ancestor, start, parent_offset) = match t.parent {
            Some((p, frac)) => {
                let p = p.min(i - 1);
                let (from, head) = (first_lsn(&h, p), heads[p]);
                let at = from + (head - from) * frac as u64 / 100;
                (Some((tl(p), Lsn(at))), at, offsets[p])
            }
            None => (None, BASE, 0),
        };
        let offset = parent_offset + t.delay as i64 * US;
        offsets.push(offset);
        let time = |lsn: u64| time(lsn) + offset;
        let mut lsn = start;
        for &(len, gap) in &t.chunks {
            if gap {
                lsn += len;
                continue;
            }
            next += 1;
            h.wals.push(WalInfo {
                desc: WalDesc {
                    id: layer(next),
                    timeline: tl(i),
                    start: Lsn(lsn),
                    end: Lsn(lsn + len),
                },
                first_time_us: time(lsn),
                last_time_us: time(lsn + len),
                created_us: time(lsn + len),
            });
            lsn += len;
        }
        heads.push(lsn);
        h.timelines.push(TimelineDesc {
            id: tl(i),
            ancestor,
            head: Lsn(lsn),
        });
        for &(frac, len) in &t.images {
            let end = start + (lsn - start) * frac as u64 / 100;
            let begin = end.saturating_sub(len).max(start);
            next += 1;
            h.images.push(ImageInfo {
                desc: ImageDesc {
                    id: layer(next),
                    timeline: tl(i),
                    start: Lsn(begin),
                    end: Lsn(end),
                },
                time_us: time(end),
                created_us: time(end),
                refs: vec![],
            });
        }
        if s.live[i] {
            h.live.push(tl(i));
        }
    }
    let n = h.images.len();
    if n > 1 {
        for &(a, b) in &s.refs {
            let (a, b) = (a % n, b % n);
            if a != b {
                let target = h.images[b].desc.id;
                h.images[a].refs.push(target);
            }
        }
    }
    (h, offsets)
}

/// The time of point `x` on the history `segments` (nearest timeline first): the clock of the
/// timeline whose segment holds it.
fn time_on(segments: &[Segment], offsets: &[i64], x: u64) -> i64 {
    let seg = segments
        .iter()
        .find(|s| s.from.0 <= x && (x < s.to.0 || s.to == segments[0].to))
        .unwrap_or(&segments[0]);
    let i = seg.timeline.0[0] as usize - 1;
    time(x) + offsets[i]
}

fn first_lsn(h: &History, t: usize) -> u64 {
    match h.timelines[t].ancestor {
        Some((_, at)) => at.0,
        None => BASE,
    }
}

fn rules(s: &Spec, holds: Vec<LegalHold>) -> Retention {
    Retention {
        pitr: Duration::from_micros((s.pitr_units as i64 * US) as u64),
        gfs: Gfs {
            hourly: s.gfs[0],
            daily: s.gfs[1],
            weekly: s.gfs[2],
            monthly: s.gfs[3],
            yearly: s.gfs[4],
        },
        min_retention: Duration::from_micros((s.floor_units as i64 * US) as u64),
        legal_holds: holds,
        cooling_off: Duration::ZERO,
    }
}

fn map(h: &History, keep: Option<&BTreeSet<LayerId>>) -> LayerMap {
    let kept = |id: &LayerId| keep.is_none_or(|k| k.contains(id));
    LayerMap::new(
        h.timelines.iter().cloned(),
        h.images.iter().filter(|i| kept(&i.desc.id)).map(|i| i.desc),
        h.wals.iter().filter(|w| kept(&w.desc.id)).map(|w| w.desc),
    )
}

/// The GFS model: per kind, the newest image of each of the N latest periods with an image.
fn gfs_model(h: &History, g: [u32; 5], now: i64) -> Vec<&ImageInfo> {
    let tz = chrono_tz::UTC;
    let mut out = Vec::new();
    for (k, period) in Period::ALL.into_iter().enumerate() {
        let mut by: BTreeMap<_, Vec<&ImageInfo>> = BTreeMap::new();
        for i in h.images.iter().filter(|i| i.time_us <= now) {
            by.entry(period.key(i.time_us, tz).unwrap())
                .or_default()
                .push(i);
        }
        for imgs in by.values().rev().take(g[k] as usize) {
            let newest = imgs.iter().max_by_key(|i| (i.time_us, i.desc.end)).unwrap();
            out.push(*newest);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn every_retained_point_still_reconstructs(s in spec()) {
        let (h, offsets) = build(&s);
        let latest = h
            .wals
            .iter()
            .map(|w| w.last_time_us)
            .chain(h.images.iter().map(|i| i.time_us))
            .max()
            .unwrap_or(0);
        let now = latest + s.now_extra as i64 * US;
        let holds: Vec<LegalHold> = s
            .holds
            .iter()
            .map(|&(by_lsn, v)| LegalHold {
                point: if by_lsn {
                    HoldPoint::Lsn(BASE + v)
                } else {
                    HoldPoint::Time(chrono::DateTime::from_timestamp_micros(time(BASE + v)).unwrap())
                },
                reason: "case 7".into(),
            })
            .collect();
        let r = rules(&s, holds.clone());
        let plan = plan_retention(&h, &r, chrono_tz::UTC, now);

        // keep and delete partition the layers.
        let all: BTreeSet<LayerId> = h
            .images
            .iter()
            .map(|i| i.desc.id)
            .chain(h.wals.iter().map(|w| w.desc.id))
            .collect();
        prop_assert!(plan.keep.is_disjoint(&plan.delete));
        prop_assert_eq!(
            plan.keep.union(&plan.delete).copied().collect::<BTreeSet<_>>(),
            all
        );

        let full = map(&h, None);
        let kept = map(&h, Some(&plan.keep));
        let cutoff = now - s.pitr_units as i64 * US;
        for &t in &h.live {
            let head = full.timeline(t).unwrap().head.0;
            let segments = full.history(t, Lsn(head)).unwrap();
            for x in 0..=head {
                if time_on(&segments, &offsets, x) >= cutoff && full.plan(t, Lsn(x)).is_ok() {
                    prop_assert!(
                        kept.plan(t, Lsn(x)).is_ok(),
                        "{:?} at {} lost: {:?}",
                        t, x, kept.plan(t, Lsn(x))
                    );
                }
            }
            // Held points: by LSN; by time, the last point at or before it (where the clock
            // does not jump right after it, at a branch point).
            for hold in &holds {
                let x = match hold.point {
                    HoldPoint::Lsn(x) => Some(x),
                    HoldPoint::Time(at) => {
                        let at = at.timestamp_micros();
                        (0..=head)
                            .rev()
                            .find(|x| time_on(&segments, &offsets, *x) <= at)
                            .filter(|x| {
                                *x < head
                                    && time_on(&segments, &offsets, x + 1) - time_on(&segments, &offsets, *x) == US
                            })
                    }
                };
                if let Some(x) = x {
                    if x <= head && full.plan(t, Lsn(x)).is_ok() {
                        prop_assert!(kept.plan(t, Lsn(x)).is_ok(), "hold {} on {:?}", x, t);
                    }
                }
            }
        }
        // Every window the plan reports holds, point by point.
        for w in &plan.windows {
            for x in w.from.0..=w.to.0 {
                prop_assert!(kept.plan(w.timeline, Lsn(x)).is_ok(), "{:?} at {}", w, x);
            }
        }
        // GFS picks stay restorable at their consistent point (when they were).
        for img in gfs_model(&h, s.gfs, now) {
            let alone = LayerMap::new(
                h.timelines.iter().cloned(),
                [img.desc],
                h.wals.iter().map(|w| w.desc),
            );
            if alone.plan(img.desc.timeline, img.desc.end).is_ok() {
                prop_assert!(plan.keep.contains(&img.desc.id), "GFS image {:?}", img.desc);
                prop_assert!(kept.plan(img.desc.timeline, img.desc.end).is_ok());
            }
        }
        // The floor, and references of kept images.
        let floor = now - s.floor_units as i64 * US;
        for i in &h.images {
            if i.created_us >= floor {
                prop_assert!(plan.keep.contains(&i.desc.id));
            }
            if plan.keep.contains(&i.desc.id) {
                for r in &i.refs {
                    prop_assert!(plan.keep.contains(r), "reference of a kept image deleted");
                }
            }
        }
        for w in &h.wals {
            if w.created_us >= floor {
                prop_assert!(plan.keep.contains(&w.desc.id));
            }
        }
    }
}
