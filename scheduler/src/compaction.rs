//! WAL compaction, decided: which runs of small WAL layers to merge into one layer each.
//!
//! A compute's WAL is stored every few seconds (the RPO's cadence), so a busy branch leaves
//! thousands of small WAL layers a day: each is a catalog row, a file, an object per region
//! and a fetch per restore. Merging adjacent ones changes none of what is restorable (the same
//! WAL, in fewer layers) if the merged runs follow the rules below. This module only decides;
//! the engine carries a group out (`cairn_engine::compact`: the merged layer written from the
//! old ones and swapped for them in one catalog transaction), and `cairn up` runs it every
//! housekeeping pass (`cairn_appliance::compaction_run`, which ships the merged layer to every
//! region before the swap).
//!
//! Invariants of a plan ([`plan_compaction`]):
//! - A group is at least two WAL layers of one timeline, contiguous (each starts where the
//!   previous one ends), in LSN order; no layer is in two groups.
//! - Only settled layers are merged: written at least `min_age` ago and marked `settled` by the
//!   caller (e.g. held by every region of the policy), so the newest WAL, still being shipped,
//!   is left alone.
//! - No group's merged size exceeds `target_bytes`, and no group spans the start of an image
//!   layer of its timeline: retention cuts WAL at image starts (a point needs the WAL from its
//!   image's start), so merging within one image interval never makes retention keep WAL of
//!   another interval.
//! - Merging is a fixpoint: planning again over the merged layers finds nothing to do.
//! - The reconstructible windows of every timeline are the same before and after (checked
//!   against the engine's layer map by the property tests).

use std::collections::BTreeMap;

use cairn_engine::layer_map::WalDesc;
use cairn_engine::{LayerId, Lsn, TimelineId};

/// One WAL layer as compaction sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactWal {
    pub desc: WalDesc,
    /// Size of the layer file.
    pub bytes: u64,
    /// When the layer was written (Unix µs).
    pub created_us: i64,
    /// Held where it has to be (the caller's rule): only settled layers are merged.
    pub settled: bool,
}

/// What compaction aims for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionRules {
    /// The largest merged layer (file bytes, the sum of the layers merged).
    pub target_bytes: u64,
    /// Layers younger than this are left alone (µs).
    pub min_age_us: i64,
}

/// A run of layers to merge into one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactGroup {
    pub timeline: TimelineId,
    pub start: Lsn,
    pub end: Lsn,
    /// The layers merged, in LSN order.
    pub layers: Vec<LayerId>,
    pub bytes: u64,
}

/// The groups to merge, by timeline and LSN. `image_starts` are the start LSNs of the image
/// layers, per timeline.
pub fn plan_compaction(
    wals: &[CompactWal],
    image_starts: &BTreeMap<TimelineId, Vec<Lsn>>,
    rules: CompactionRules,
    now_us: i64,
) -> Vec<CompactGroup> {
    let mut by_tl: BTreeMap<TimelineId, Vec<&CompactWal>> = BTreeMap::new();
    for w in wals {
        by_tl.entry(w.desc.timeline).or_default().push(w);
    }
    let mut out = Vec::new();
    for (tl, mut ws) in by_tl {
        ws.sort_by_key(|w| (w.desc.start, w.desc.end));
        let cuts = image_starts.get(&tl).map_or(&[][..], Vec::as_slice);
        let mut run: Vec<&CompactWal> = Vec::new();
        // The furthest end of the layers before the current one: a layer that starts before
        // it overlaps an earlier one.
        let mut reach = Lsn(0);
        let close = |run: &mut Vec<&CompactWal>, out: &mut Vec<CompactGroup>| {
            if run.len() >= 2 {
                out.push(CompactGroup {
                    timeline: tl,
                    start: run[0].desc.start,
                    end: run[run.len() - 1].desc.end,
                    layers: run.iter().map(|w| w.desc.id).collect(),
                    bytes: run.iter().map(|w| w.bytes).sum(),
                });
            }
            run.clear();
        };
        for (i, w) in ws.iter().enumerate() {
            let eligible = w.settled
                && now_us.saturating_sub(w.created_us) >= rules.min_age_us
                && w.bytes < rules.target_bytes
                && !crosses(cuts, w.desc.start, w.desc.end)
                // A layer overlapping another (a transition the caller is in) is left alone.
                && ws.get(i + 1).is_none_or(|n| n.desc.start >= w.desc.end)
                && reach <= w.desc.start;
            reach = reach.max(w.desc.end);
            if !eligible {
                close(&mut run, &mut out);
                continue;
            }
            if let Some(last) = run.last() {
                let bytes: u64 = run.iter().map(|r| r.bytes).sum::<u64>() + w.bytes;
                if last.desc.end != w.desc.start
                    || bytes > rules.target_bytes
                    || crosses(cuts, run[0].desc.start, w.desc.end)
                {
                    close(&mut run, &mut out);
                }
            }
            run.push(w);
        }
        close(&mut run, &mut out);
    }
    out
}

/// Whether an image starts strictly inside `(start, end)`.
fn crosses(cuts: &[Lsn], start: Lsn, end: Lsn) -> bool {
    cuts.iter().any(|c| start < *c && *c < end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(n: u8, start: u64, end: u64, bytes: u64) -> CompactWal {
        CompactWal {
            desc: WalDesc {
                id: LayerId([n; 32]),
                timeline: TimelineId([1; 16]),
                start: Lsn(start),
                end: Lsn(end),
            },
            bytes,
            created_us: 0,
            settled: true,
        }
    }

    const RULES: CompactionRules = CompactionRules {
        target_bytes: 25,
        min_age_us: 10,
    };

    fn ids(groups: &[CompactGroup]) -> Vec<Vec<u8>> {
        groups
            .iter()
            .map(|g| g.layers.iter().map(|l| l.0[0]).collect())
            .collect()
    }

    #[test]
    fn greedy_runs_under_the_target() {
        let wals = [
            w(1, 0, 10, 10),
            w(2, 10, 20, 10),
            w(3, 20, 30, 10),
            w(4, 30, 40, 20),
            w(5, 40, 50, 3),
        ];
        let g = plan_compaction(&wals, &BTreeMap::new(), RULES, 100);
        assert_eq!(ids(&g), [vec![1, 2], vec![4, 5]]);
        assert_eq!((g[1].start, g[1].end, g[1].bytes), (Lsn(30), Lsn(50), 23));
    }

    #[test]
    fn gaps_image_starts_young_and_unsettled_layers_split_runs() {
        let mut wals = vec![
            w(1, 0, 10, 1),
            w(2, 10, 20, 1),
            // a gap
            w(3, 25, 30, 1),
            w(4, 30, 40, 1),
            // an image starts at 45
            w(5, 40, 50, 1),
            w(6, 50, 60, 1),
            w(7, 60, 70, 1),
            w(8, 70, 80, 1),
            w(9, 80, 90, 1),
        ];
        wals[6].settled = false; // 7
        wals[8].created_us = 95; // 9: too young at 100
        let cuts = BTreeMap::from([(TimelineId([1; 16]), vec![Lsn(45), Lsn(60)])]);
        let g = plan_compaction(&wals, &cuts, RULES, 100);
        // 5 crosses 45; 6 alone up to the image at 60; 7 unsettled; 8 alone before 9.
        assert_eq!(ids(&g), [vec![1, 2], vec![3, 4]]);
    }

    #[test]
    fn a_run_may_end_and_start_at_an_image_start() {
        let wals = [w(1, 0, 10, 1), w(2, 10, 20, 1), w(3, 20, 30, 1)];
        let cuts = BTreeMap::from([(TimelineId([1; 16]), vec![Lsn(20)])]);
        let g = plan_compaction(&wals, &cuts, RULES, 100);
        assert_eq!(ids(&g), [vec![1, 2]]);
    }
}
