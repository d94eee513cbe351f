//! Objectives kept: each cluster's RPO exposure, computed continuously by `cairn up`.
//!
//! **Exposure** is how much committed work would be lost if this appliance were lost now: now
//! minus the latest moment at which everything committed on the cluster's branches was in
//! layers held by `min_copies` of its policy's regions. A moment is known from the run's WAL
//! stores ([`SyncMark`]: when a store started, everything flushed by then is at or below the
//! head it left); it counts once every layer of the timeline below that head is durable. An
//! idle cluster is not exposed: its stores keep finding nothing new, and each is a new moment.
//!
//! Invariants:
//! - Pure: [`durable_to`] and [`exposure_us`] take the layers, copies, marks and clock as
//!   arguments; [`rpo`] only gathers them.
//! - Copies count only in the regions the cluster's policy selects, and only `min_copies` of
//!   them make a layer durable (the policy's, not regions.toml's).
//! - Before the run has stored a branch's WAL once (or while none of its stores is durable
//!   yet), its exposure counts from the run's start or from when the oldest layer still short
//!   of copies was written, whichever is earlier: never less than the truth, across a restart
//!   or a failover too (the store marks are the run's; the layers are the catalog's).

use std::collections::{HashMap, HashSet};

use cairn_engine::catalog::LayerRow;
use cairn_engine::{LayerId, Lsn, TimelineId};
use cairn_policies::PolicySet;

use crate::Appliance;

/// A store of a branch's WAL: when it started, and the head it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncMark {
    pub at_us: i64,
    pub head: Lsn,
}

/// The LSN below which every layer of the timeline is durable: the start of its lowest layer
/// held by fewer than `min_copies` of `regions`, else `Lsn(u64::MAX)`.
pub fn durable_to<'a>(
    layers: impl IntoIterator<Item = &'a LayerRow>,
    copies: &HashMap<String, HashSet<String>>,
    regions: &[String],
    min_copies: u32,
) -> Lsn {
    layers
        .into_iter()
        .filter(|l| held(l, copies, regions) < min_copies as usize)
        .map(|l| l.start)
        .min()
        .unwrap_or(Lsn(u64::MAX))
}

/// The earliest moment known to be in `layers` held by fewer than `min_copies` of
/// `regions`: the first commit time of such a layer (`first_commit`, from the catalog's
/// transaction summaries), else when it was written. Its work was committed and is not
/// durable, so the last durable moment came before it. The bound that survives a restart
/// (the run's store marks do not).
pub fn undurable_since<'a>(
    layers: impl IntoIterator<Item = &'a LayerRow>,
    copies: &HashMap<String, HashSet<String>>,
    regions: &[String],
    min_copies: u32,
    first_commit: &HashMap<LayerId, i64>,
) -> Option<i64> {
    layers
        .into_iter()
        .filter(|l| held(l, copies, regions) < min_copies as usize)
        .map(|l| {
            first_commit
                .get(&l.id)
                .map_or(l.created_at_us, |t| (*t).min(l.created_at_us))
        })
        .min()
}

fn held(l: &LayerRow, copies: &HashMap<String, HashSet<String>>, regions: &[String]) -> usize {
    copies.get(&l.id.to_string()).map_or(0, |rs| {
        rs.iter()
            .filter(|r| regions.iter().any(|x| x == *r))
            .count()
    })
}

/// Exposure at `now_us` of a branch whose stores are `marks` and whose layers are durable
/// below `durable`: now minus the latest store whose head is durable, or minus `since_us`
/// when there is none.
pub fn exposure_us(now_us: i64, marks: &[SyncMark], durable: Lsn, since_us: i64) -> i64 {
    let t = marks
        .iter()
        .filter(|m| m.head <= durable)
        .map(|m| m.at_us)
        .max()
        .unwrap_or(since_us);
    (now_us - t).max(0)
}

/// One cluster's exposure against its policy's RPO.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RpoStatus {
    pub cluster: String,
    pub policy: String,
    pub rpo_seconds: f64,
    pub exposure_seconds: f64,
    /// The branch with the largest exposure.
    pub worst_branch: Option<String>,
    /// Why the newest work is not durable yet, when exposure exceeds the RPO.
    pub reason: Option<String>,
    /// Each of the policy's regions alone: how far behind it is.
    pub regions: Vec<RegionLag>,
}

/// How far one region is behind a cluster: the exposure if that region were the only copy
/// (its slowest branch), whatever `min_copies` says.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RegionLag {
    pub region: String,
    pub lag_seconds: f64,
}

/// Every governed cluster's exposure at `now_us`, from the run's store marks per timeline.
pub async fn rpo(
    app: &Appliance,
    set: &PolicySet,
    marks: &HashMap<TimelineId, Vec<SyncMark>>,
    since_us: i64,
    now_us: i64,
) -> crate::Result<Vec<RpoStatus>> {
    let engine = app.engine();
    let copies = app.protection().copies().await?;
    let regions = app.protection().status();
    let mut out = Vec::new();
    for c in engine.catalog.clusters().await? {
        let Some(p) = set.for_cluster(&c.name) else {
            continue;
        };
        let layers = engine.catalog.layers(c.id).await?;
        let mut worst: Option<(i64, String, Lsn)> = None;
        let mut lags: Vec<RegionLag> = p
            .regions
            .selected
            .iter()
            .map(|r| RegionLag {
                region: r.clone(),
                lag_seconds: 0.0,
            })
            .collect();
        for b in engine.catalog.branches(c.id).await? {
            let m = marks.get(&b.timeline_id).map_or(&[][..], Vec::as_slice);
            let running = engine.catalog.compute(b.timeline_id).await?.is_some();
            if m.is_empty() && !running && c.kind == cairn_engine::catalog::ClusterKind::Managed {
                continue; // nothing writes to it: nothing to lose
            }
            let own = || layers.iter().filter(|l| l.timeline_id == b.timeline_id);
            let (regions, min) = (&p.regions.selected, p.regions.min_copies);
            let durable = durable_to(own(), &copies, regions, min);
            let lowest = regions
                .iter()
                .map(|r| durable_to(own(), &copies, std::slice::from_ref(r), 1))
                .fold(durable, Lsn::min);
            let mut first_commit = HashMap::new();
            if lowest != Lsn(u64::MAX) {
                let to = Lsn(i64::MAX as u64);
                for t in engine
                    .catalog
                    .txn_layers_after(b.timeline_id, lowest, to, i64::MIN)
                    .await?
                {
                    first_commit.insert(t.layer, t.summary.min_time);
                }
            }
            // Without a durable store mark of this run: from the run's start, or from the
            // first commit not yet durable, whichever is earlier.
            let since = |regions: &[String], min: u32| {
                undurable_since(own(), &copies, regions, min, &first_commit)
                    .map_or(since_us, |t| t.min(since_us))
            };
            let e = exposure_us(now_us, m, durable, since(regions, min));
            if worst.as_ref().is_none_or(|(w, _, _)| e > *w) {
                worst = Some((e, b.name.clone(), durable));
            }
            for lag in &mut lags {
                let one = std::slice::from_ref(&lag.region);
                let held = durable_to(own(), &copies, one, 1);
                let e = exposure_us(now_us, m, held, since(one, 1)) as f64 / 1e6;
                lag.lag_seconds = lag.lag_seconds.max(e);
            }
        }
        let rpo = p.objectives.rpo.as_secs_f64();
        let exposure = worst.as_ref().map_or(0.0, |(e, _, _)| *e as f64 / 1e6);
        let reason = (exposure > rpo).then(|| {
            let failing: Vec<String> = regions
                .iter()
                .filter(|r| p.regions.selected.contains(&r.region))
                .filter_map(|r| r.last_error.as_ref().map(|e| format!("{}: {e}", r.region)))
                .collect();
            let (_, branch, durable) = worst.clone().unwrap_or_default();
            format!(
                "branch '{branch}' is durable in {} region(s) only up to {}; {}",
                p.regions.min_copies,
                if durable == Lsn(u64::MAX) {
                    "its head".to_string()
                } else {
                    durable.to_string()
                },
                if failing.is_empty() {
                    "no region reports a failure (is the WAL being stored? see /api/health)"
                        .to_string()
                } else {
                    format!("failing: {}", failing.join("; "))
                }
            )
        });
        out.push(RpoStatus {
            cluster: c.name.clone(),
            policy: p.name.clone(),
            rpo_seconds: rpo,
            exposure_seconds: exposure,
            worst_branch: worst.map(|(_, b, _)| b),
            reason,
            regions: lags,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_engine::layer::LayerKind;
    use cairn_engine::{ClusterId, LayerId};

    fn layer(n: u8, start: u64, end: u64) -> LayerRow {
        LayerRow {
            id: LayerId([n; 32]),
            cluster_id: ClusterId::generate(),
            timeline_id: TimelineId::generate(),
            kind: LayerKind::Wal,
            start: Lsn(start),
            end: Lsn(end),
            file_size: 0,
            logical_size: 0,
            stored_bytes: 0,
            created_at_us: 0,
        }
    }

    #[test]
    fn durable_to_is_the_start_of_the_lowest_layer_short_of_copies_in_the_policys_regions() {
        let ls = [layer(1, 0, 100), layer(2, 100, 200), layer(3, 200, 300)];
        let regions = vec!["a".to_string(), "b".to_string()];
        let mut copies: HashMap<String, HashSet<String>> = HashMap::new();
        let held = |rs: &[&str]| rs.iter().map(|r| r.to_string()).collect::<HashSet<_>>();
        copies.insert(ls[0].id.to_string(), held(&["a", "b"]));
        // Layer 2 is in a region the policy does not select: it does not count.
        copies.insert(ls[1].id.to_string(), held(&["a", "z"]));
        copies.insert(ls[2].id.to_string(), held(&["a", "b"]));
        assert_eq!(durable_to(&ls, &copies, &regions, 2), Lsn(100));
        assert_eq!(durable_to(&ls, &copies, &regions, 1), Lsn(u64::MAX));
        copies.insert(ls[1].id.to_string(), held(&["a", "b"]));
        assert_eq!(durable_to(&ls, &copies, &regions, 2), Lsn(u64::MAX));
        assert_eq!(durable_to(&ls, &copies, &regions, 3), Lsn(0));
    }

    #[test]
    fn undurable_since_is_when_the_oldest_layer_short_of_copies_was_written() {
        let mut ls = [layer(1, 0, 100), layer(2, 100, 200), layer(3, 200, 300)];
        for (i, l) in ls.iter_mut().enumerate() {
            l.created_at_us = 1_000 * (i as i64 + 1);
        }
        let regions = vec!["a".to_string(), "b".to_string()];
        let mut copies: HashMap<String, HashSet<String>> = HashMap::new();
        let held = |rs: &[&str]| rs.iter().map(|r| r.to_string()).collect::<HashSet<_>>();
        copies.insert(ls[0].id.to_string(), held(&["a", "b"]));
        copies.insert(ls[1].id.to_string(), held(&["a"]));
        let none = HashMap::new();
        assert_eq!(
            undurable_since(&ls, &copies, &regions, 2, &none),
            Some(2_000)
        );
        assert_eq!(
            undurable_since(&ls, &copies, &regions, 1, &none),
            Some(3_000)
        );
        // A commit time known for a layer: the earlier of it and the layer's writing.
        let commits = HashMap::from([(ls[1].id, 1_500), (ls[2].id, 9_000)]);
        assert_eq!(
            undurable_since(&ls, &copies, &regions, 2, &commits),
            Some(1_500)
        );
        assert_eq!(
            undurable_since(&ls, &copies, &regions, 1, &commits),
            Some(3_000)
        );
        copies.insert(ls[2].id.to_string(), held(&["a"]));
        assert_eq!(undurable_since(&ls, &copies, &regions, 1, &none), None);
        assert_eq!(
            undurable_since(&ls, &copies, &["b".to_string()], 1, &none),
            Some(2_000)
        );
    }

    #[test]
    fn exposure_counts_from_the_latest_store_whose_head_is_durable() {
        let marks = [
            SyncMark {
                at_us: 10_000_000,
                head: Lsn(100),
            },
            SyncMark {
                at_us: 20_000_000,
                head: Lsn(200),
            },
            SyncMark {
                at_us: 30_000_000,
                head: Lsn(300),
            },
        ];
        assert_eq!(exposure_us(35_000_000, &marks, Lsn(u64::MAX), 0), 5_000_000);
        assert_eq!(exposure_us(35_000_000, &marks, Lsn(250), 0), 15_000_000);
        assert_eq!(exposure_us(35_000_000, &marks, Lsn(200), 0), 15_000_000);
        assert_eq!(exposure_us(35_000_000, &marks, Lsn(199), 0), 25_000_000);
        // Nothing durable yet: from the run's start.
        assert_eq!(
            exposure_us(35_000_000, &marks, Lsn(50), 1_000_000),
            34_000_000
        );
        assert_eq!(
            exposure_us(35_000_000, &[], Lsn(u64::MAX), 2_000_000),
            33_000_000
        );
        // A clock that went back never gives a negative exposure.
        assert_eq!(exposure_us(5_000_000, &marks, Lsn(u64::MAX), 0), 0);
    }
}
