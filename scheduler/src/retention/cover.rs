//! Turning retained points and windows into layers, through the engine's planner.
//!
//! Invariants:
//! - A window is covered piece by piece: from its start, the planner's best image for the
//!   point, then as far as that image's WAL reaches (asked of a map holding that image alone),
//!   then the next point after it; every layer a piece's plan reads is kept. So every point of
//!   the window has a plan made only of kept layers.
//! - Keeping an image keeps the images it references, transitively.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cairn_engine::layer_map::{LayerMap, Plan};
use cairn_engine::{LayerId, Lsn, TimelineId};

use super::{History, ImageInfo, Reason, RetainedWindow, RetentionPlan};

/// `tl`'s WAL layers along its history up to `head`, oldest first, each clipped to the part
/// of the history it holds.
fn history_wals<'h>(
    h: &'h History,
    full: &LayerMap,
    tl: TimelineId,
    head: Lsn,
) -> Vec<(&'h super::WalInfo, Lsn, Lsn)> {
    let Ok(history) = full.history(tl, head) else {
        return vec![];
    };
    let mut out = Vec::new();
    for seg in history.iter().rev() {
        let mut wals: Vec<_> = h
            .wals
            .iter()
            .filter(|w| {
                w.desc.timeline == seg.timeline && w.desc.start < seg.to && w.desc.end > seg.from
            })
            .collect();
        wals.sort_by_key(|w| (w.desc.start, w.desc.end));
        out.extend(
            wals.into_iter()
                .map(|w| (w, w.desc.start.max(seg.from), w.desc.end.min(seg.to))),
        );
    }
    out
}

/// The first WAL layer on `tl`'s history (oldest first) whose last commit is at or after
/// `time_us`, as the LSN range it holds on that history.
pub(super) fn layer_at_time(
    h: &History,
    full: &LayerMap,
    tl: TimelineId,
    head: Lsn,
    time_us: i64,
) -> Option<(Lsn, Lsn)> {
    history_wals(h, full, tl, head)
        .into_iter()
        .find(|(w, _, _)| w.last_time_us >= time_us)
        .map(|(_, from, to)| (from, to))
}

/// Where the points of `tl`'s history newer than `time_us` begin: the end of the last WAL
/// layer (oldest first, before the first one reaching `time_us`) whose commits are all older,
/// else the start of the history. A point between layers has no known time, so it counts as
/// newer.
pub(super) fn pitr_cut(
    h: &History,
    full: &LayerMap,
    tl: TimelineId,
    head: Lsn,
    time_us: i64,
) -> Lsn {
    let mut cut = Lsn(0);
    for (w, _, to) in history_wals(h, full, tl, head) {
        if w.last_time_us >= time_us {
            break;
        }
        cut = cut.max(to);
    }
    cut.min(head)
}

pub(super) struct Keeper<'a> {
    history: &'a History,
    full: &'a LayerMap,
    images: HashMap<LayerId, &'a ImageInfo>,
    keep: BTreeSet<LayerId>,
    reasons: BTreeMap<LayerId, BTreeSet<Reason>>,
    windows: Vec<RetainedWindow>,
    /// Each timeline's reconstructible windows in the full map (asked once per timeline: the
    /// PITR window and every hold ask again).
    reconstructible: HashMap<TimelineId, Vec<(Lsn, Lsn)>>,
}

impl<'a> Keeper<'a> {
    pub fn new(history: &'a History, full: &'a LayerMap) -> Keeper<'a> {
        Keeper {
            history,
            full,
            images: history.images.iter().map(|i| (i.desc.id, i)).collect(),
            keep: BTreeSet::new(),
            reasons: BTreeMap::new(),
            windows: Vec::new(),
            reconstructible: HashMap::new(),
        }
    }

    /// Keeps `id` (and, for an image, what it references) for `reason`.
    pub fn layer(&mut self, id: LayerId, reason: &Reason) {
        let mut todo = vec![id];
        while let Some(id) = todo.pop() {
            self.reasons.entry(id).or_default().insert(reason.clone());
            if self.keep.insert(id) {
                if let Some(img) = self.images.get(&id) {
                    todo.extend(img.refs.iter().copied());
                }
            }
        }
    }

    fn plan(&mut self, p: &Plan, reason: &Reason) {
        self.layer(p.image.id, reason);
        for w in p.wal_layers() {
            self.layer(w.id, reason);
        }
    }

    /// A map of the whole history but only `image` among the images.
    fn only(&self, image: &ImageInfo) -> LayerMap {
        LayerMap::new(
            self.history.timelines.iter().cloned(),
            [image.desc],
            self.history.wals.iter().map(|w| w.desc),
        )
    }

    /// Keeps `image` restorable at its consistent point (its end); false if it is not.
    fn keep_image(&mut self, image: &ImageInfo, reason: &Reason) -> bool {
        let d = image.desc;
        match self.only(image).plan(d.timeline, d.end) {
            Ok(p) => {
                self.plan(&p, reason);
                true
            }
            Err(_) => false,
        }
    }

    /// Keeps `image` restorable at its consistent point, as a retained point.
    pub fn image(&mut self, image: &ImageInfo, reason: Reason) {
        if self.keep_image(image, &reason) {
            let d = image.desc;
            self.windows.push(RetainedWindow {
                timeline: d.timeline,
                from: d.end,
                to: d.end,
                reason,
            });
        }
    }

    /// Keeps every point of `[from, to]` of `tl` that is reconstructible now.
    pub fn window(&mut self, tl: TimelineId, from: Lsn, to: Lsn, reason: Reason) {
        let full = self.full;
        let windows = self
            .reconstructible
            .entry(tl)
            .or_insert_with(|| full.reconstructible_windows(tl))
            .clone();
        for (lo, hi) in windows {
            let (a, b) = (lo.max(from), hi.min(to));
            if a > b {
                continue;
            }
            self.cover(tl, a, b, &reason);
            self.windows.push(RetainedWindow {
                timeline: tl,
                from: a,
                to: b,
                reason: reason.clone(),
            });
        }
    }

    fn cover(&mut self, tl: TimelineId, a: Lsn, b: Lsn, reason: &Reason) {
        let mut x = a;
        loop {
            let Ok(best) = self.full.plan(tl, x) else {
                return;
            };
            let Some(image) = self.images.get(&best.image.id).copied() else {
                return;
            };
            // A map with one image has at most one window, and it holds `x` (the image's WAL
            // reaches `x`, or the planner would not have chosen it).
            let alone = self.only(image);
            let reach = alone
                .reconstructible_windows(tl)
                .first()
                .map_or(x, |(_, hi)| *hi)
                .min(b);
            match alone.plan(tl, reach) {
                Ok(p) => self.plan(&p, reason),
                Err(_) => self.plan(&best, reason),
            }
            // Within one history, windows of images that overlap end at the same WAL gap, so
            // the first piece reaches `b`; the loop is a guard should that ever not hold.
            if reach >= b {
                break;
            }
            x = Lsn(reach.0.max(x.0) + 1);
        }
        // The window's own images are recovery points too: each kept with its WAL.
        if let Ok(history) = self.full.history(tl, b) {
            let inside: Vec<&ImageInfo> = self
                .history
                .images
                .iter()
                .filter(|i| {
                    i.desc.end >= a
                        && history
                            .iter()
                            .any(|s| s.timeline == i.desc.timeline && i.desc.end <= s.to)
                })
                .collect();
            for i in inside {
                self.keep_image(i, reason);
            }
        }
    }

    /// Keeps every layer of `tl`'s history up to `head` (its head is not reconstructible).
    pub fn whole_history(&mut self, tl: TimelineId, head: Lsn) {
        let Ok(history) = self.full.history(tl, head) else {
            return;
        };
        let reason = Reason::NoImageYet;
        let ids: Vec<LayerId> = self
            .history
            .wals
            .iter()
            .filter(|w| {
                history.iter().any(|s| {
                    s.timeline == w.desc.timeline && w.desc.start < s.to && w.desc.end > s.from
                })
            })
            .map(|w| w.desc.id)
            .chain(
                self.history
                    .images
                    .iter()
                    .filter(|i| {
                        history
                            .iter()
                            .any(|s| s.timeline == i.desc.timeline && i.desc.end <= s.to)
                    })
                    .map(|i| i.desc.id),
            )
            .collect();
        for id in ids {
            self.layer(id, &reason);
        }
    }

    pub fn finish(mut self) -> RetentionPlan {
        let all: BTreeSet<LayerId> = self
            .history
            .images
            .iter()
            .map(|i| i.desc.id)
            .chain(self.history.wals.iter().map(|w| w.desc.id))
            .collect();
        // References to layers this history does not hold are not ours to keep.
        self.keep.retain(|id| all.contains(id));
        self.reasons.retain(|id, _| all.contains(id));
        let delete = all.difference(&self.keep).copied().collect();
        self.windows.sort_by(|x, y| {
            (x.timeline, x.from, x.to, &x.reason).cmp(&(y.timeline, y.from, y.to, &y.reason))
        });
        self.windows.dedup();
        RetentionPlan {
            keep: self.keep,
            delete,
            windows: self.windows,
            reasons: self.reasons,
        }
    }
}
