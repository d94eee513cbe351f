//! The layer map: which layers reconstruct a (timeline, LSN), or why nothing can.
//!
//! A timeline's history is its ancestors' history up to its branch point followed by its own
//! WAL. For a target `x` on timeline `T0` with ancestors `T1, T2, ...` (branch points `A0` of
//! `T0` on `T1`, `A1` of `T1` on `T2`, ...) the history is cut into segments by
//! `c0 = x, c(j+1) = min(A(j), c(j))`: LSNs in `[c(j+1), c(j))` belong to `Tj`.
//!
//! A point is reconstructible from an image layer `I` of timeline `Tk` when
//! - `I.end <= c(k)` (the image is part of this history: it was consistent before the history
//!   left `Tk`), and
//! - every LSN in `[I.start, x)` is covered by WAL layers of the timeline whose segment holds it.
//!
//! The map picks the latest such image (least WAL to replay). It is a pure function of the
//! catalog's rows, so it can be tested against a model (see the property tests) and rebuilt from
//! any copy of the layers.

use std::collections::HashMap;

use crate::ids::{LayerId, Lsn, TimelineId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineDesc {
    pub id: TimelineId,
    pub ancestor: Option<(TimelineId, Lsn)>,
    /// End of the last record the timeline holds (its branch point when it has no WAL yet).
    pub head: Lsn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageDesc {
    pub id: LayerId,
    pub timeline: TimelineId,
    pub start: Lsn,
    pub end: Lsn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalDesc {
    pub id: LayerId,
    pub timeline: TimelineId,
    pub start: Lsn,
    pub end: Lsn,
}

/// WAL of one timeline needed for `[from, to)`, and the layers that hold it, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalPiece {
    pub timeline: TimelineId,
    pub from: Lsn,
    pub to: Lsn,
    pub layers: Vec<WalDesc>,
}

/// How to reconstruct a point: an image, then WAL pieces in LSN order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub timeline: TimelineId,
    pub lsn: Lsn,
    pub image: ImageDesc,
    pub wal: Vec<WalPiece>,
}

impl Plan {
    /// All WAL layers, in LSN order.
    pub fn wal_layers(&self) -> impl Iterator<Item = &WalDesc> {
        self.wal.iter().flat_map(|p| p.layers.iter())
    }
}

/// Why a point cannot be reconstructed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreconstructible {
    #[error("timeline {0} is not in the catalog")]
    UnknownTimeline(TimelineId),
    #[error("timeline {0} has an ancestor loop in the catalog")]
    AncestorLoop(TimelineId),
    #[error("LSN {lsn} is beyond the end of the branch's history ({head})")]
    BeyondHead { lsn: Lsn, head: Lsn },
    #[error("no image layer at or before LSN {lsn}{}", earliest_hint(*.earliest))]
    NoImage { lsn: Lsn, earliest: Option<Lsn> },
    #[error("WAL of timeline {timeline} between {from} and {to} is missing")]
    WalGap {
        timeline: TimelineId,
        from: Lsn,
        to: Lsn,
    },
}

fn earliest_hint(e: Option<Lsn>) -> String {
    match e {
        Some(l) => format!(" (the earliest reconstructible point is {l})"),
        None => String::new(),
    }
}

/// One segment of a history: LSNs `[from, to)` belong to `timeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub timeline: TimelineId,
    pub from: Lsn,
    pub to: Lsn,
}

#[derive(Debug, Default, Clone)]
pub struct LayerMap {
    timelines: HashMap<TimelineId, TimelineDesc>,
    images: HashMap<TimelineId, Vec<ImageDesc>>,
    wals: HashMap<TimelineId, Vec<WalDesc>>,
    /// Per timeline, for each prefix `wals[..=i]`, the index of the layer reaching furthest
    /// (the later one on a tie): covering a range is a binary search per step.
    furthest: HashMap<TimelineId, Vec<usize>>,
}

impl LayerMap {
    pub fn new(
        timelines: impl IntoIterator<Item = TimelineDesc>,
        images: impl IntoIterator<Item = ImageDesc>,
        wals: impl IntoIterator<Item = WalDesc>,
    ) -> LayerMap {
        let mut m = LayerMap::default();
        for t in timelines {
            m.timelines.insert(t.id, t);
        }
        for i in images {
            m.images.entry(i.timeline).or_default().push(i);
        }
        for w in wals {
            m.wals.entry(w.timeline).or_default().push(w);
        }
        for v in m.images.values_mut() {
            v.sort_by_key(|i| (i.end, i.start));
        }
        for (tl, v) in m.wals.iter_mut() {
            v.sort_by_key(|w| (w.start, w.end));
            let mut best: Vec<usize> = Vec::with_capacity(v.len());
            for (i, w) in v.iter().enumerate() {
                match best.last() {
                    Some(&b) if v[b].end > w.end => best.push(b),
                    _ => best.push(i),
                }
            }
            m.furthest.insert(*tl, best);
        }
        m
    }

    pub fn timeline(&self, id: TimelineId) -> Option<&TimelineDesc> {
        self.timelines.get(&id)
    }

    /// The history of `tl` up to `x`, nearest timeline first.
    pub fn history(&self, tl: TimelineId, x: Lsn) -> Result<Vec<Segment>, Unreconstructible> {
        let mut out = Vec::new();
        let mut cur = self
            .timelines
            .get(&tl)
            .ok_or(Unreconstructible::UnknownTimeline(tl))?;
        let mut upper = x;
        loop {
            if out.len() > self.timelines.len() {
                return Err(Unreconstructible::AncestorLoop(tl));
            }
            match cur.ancestor {
                Some((parent, at)) => {
                    let lower = at.min(upper);
                    out.push(Segment {
                        timeline: cur.id,
                        from: lower,
                        to: upper,
                    });
                    upper = lower;
                    cur = self
                        .timelines
                        .get(&parent)
                        .ok_or(Unreconstructible::UnknownTimeline(parent))?;
                }
                None => {
                    out.push(Segment {
                        timeline: cur.id,
                        from: Lsn(0),
                        to: upper,
                    });
                    return Ok(out);
                }
            }
        }
    }

    /// Covers `[from, to)` of `timeline` with its WAL layers.
    fn cover(
        &self,
        timeline: TimelineId,
        from: Lsn,
        to: Lsn,
    ) -> Result<Vec<WalDesc>, Unreconstructible> {
        let mut layers = Vec::new();
        let mut reach = from;
        let wals = self.wals_of(timeline);
        let furthest = self
            .furthest
            .get(&timeline)
            .map_or(&[][..], |v| v.as_slice());
        while reach < to {
            // The layer that starts at or before `reach` and extends furthest past it.
            let started = wals.partition_point(|w| w.start <= reach);
            let next = started
                .checked_sub(1)
                .map(|i| &wals[furthest[i]])
                .filter(|w| w.end > reach);
            match next {
                Some(w) => {
                    layers.push(*w);
                    reach = w.end;
                }
                None => {
                    let gap_end = wals
                        .iter()
                        .map(|w| w.start)
                        .filter(|s| *s > reach)
                        .min()
                        .unwrap_or(to)
                        .min(to);
                    return Err(Unreconstructible::WalGap {
                        timeline,
                        from: reach,
                        to: gap_end,
                    });
                }
            }
        }
        Ok(layers)
    }

    fn pieces_for(
        &self,
        history: &[Segment],
        image: &ImageDesc,
    ) -> Result<Vec<WalPiece>, Unreconstructible> {
        let mut pieces = Vec::new();
        // Oldest segment first, so pieces come out in LSN order.
        for seg in history.iter().rev() {
            let from = seg.from.max(image.start);
            if from >= seg.to {
                continue;
            }
            let layers = self.cover(seg.timeline, from, seg.to)?;
            pieces.push(WalPiece {
                timeline: seg.timeline,
                from,
                to: seg.to,
                layers,
            });
        }
        Ok(pieces)
    }

    /// Plans the reconstruction of `tl` at `x`.
    pub fn plan(&self, tl: TimelineId, x: Lsn) -> Result<Plan, Unreconstructible> {
        let t = self
            .timelines
            .get(&tl)
            .ok_or(Unreconstructible::UnknownTimeline(tl))?;
        if x > t.head {
            return Err(Unreconstructible::BeyondHead {
                lsn: x,
                head: t.head,
            });
        }
        let history = self.history(tl, x)?;
        // Candidate images, latest end first.
        let mut candidates: Vec<ImageDesc> = Vec::new();
        for (k, seg) in history.iter().enumerate() {
            let bound = if k == 0 { x } else { seg.to };
            if let Some(imgs) = self.images.get(&seg.timeline) {
                candidates.extend(imgs.iter().filter(|i| i.end <= bound).copied());
            }
        }
        candidates.sort_by_key(|i| std::cmp::Reverse((i.end, i.start)));
        let mut first_gap = None;
        for image in candidates {
            match self.pieces_for(&history, &image) {
                Ok(wal) => {
                    return Ok(Plan {
                        timeline: tl,
                        lsn: x,
                        image,
                        wal,
                    })
                }
                Err(e) => {
                    first_gap.get_or_insert(e);
                }
            }
        }
        Err(first_gap.unwrap_or(Unreconstructible::NoImage {
            lsn: x,
            earliest: self.earliest(tl),
        }))
    }

    /// The windows `[lo, hi]` of `tl`'s history in which every record boundary is
    /// reconstructible, in LSN order. Each image contributes `[image end, first WAL gap after
    /// its start]`, clipped to the head; overlapping windows are merged.
    pub fn reconstructible_windows(&self, tl: TimelineId) -> Vec<(Lsn, Lsn)> {
        let Some(t) = self.timelines.get(&tl) else {
            return vec![];
        };
        let head = t.head;
        let Ok(history) = self.history(tl, head) else {
            return vec![];
        };
        let mut windows = Vec::new();
        for (k, seg) in history.iter().enumerate() {
            let bound = if k == 0 { head } else { seg.to };
            for img in self.images_of(seg.timeline) {
                if img.end > bound {
                    continue;
                }
                let reach = self.reach(&history, img);
                if reach >= img.end {
                    windows.push((img.end, reach));
                }
            }
        }
        merge_ranges(windows)
    }

    /// How far the history's WAL reaches, without a gap, from `image.start`.
    fn reach(&self, history: &[Segment], image: &ImageDesc) -> Lsn {
        let mut reach = image.start;
        for seg in history.iter().rev() {
            let from = seg.from.max(image.start);
            if from >= seg.to {
                continue;
            }
            match self.cover(seg.timeline, from, seg.to) {
                Ok(_) => reach = seg.to,
                Err(Unreconstructible::WalGap { from, .. }) => return from,
                Err(_) => return reach,
            }
        }
        reach
    }

    /// The earliest reconstructible point of `tl`, if any.
    pub fn earliest(&self, tl: TimelineId) -> Option<Lsn> {
        self.reconstructible_windows(tl).first().map(|w| w.0)
    }

    /// The image layers of a timeline, by end LSN.
    pub fn images_of(&self, tl: TimelineId) -> &[ImageDesc] {
        self.images.get(&tl).map_or(&[], |v| v.as_slice())
    }

    /// The WAL layers of a timeline, by start LSN.
    pub fn wals_of(&self, tl: TimelineId) -> &[WalDesc] {
        self.wals.get(&tl).map_or(&[], |v| v.as_slice())
    }
}

/// Ranges `[lo, hi)` (or windows `[lo, hi]`) sorted and merged where they touch or overlap.
pub fn merge_ranges<T: Ord + Copy>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::new();
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}
#[cfg(test)]
mod tests;
