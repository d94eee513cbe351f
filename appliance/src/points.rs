//! Recovery points: per branch, what each region alone can restore, from the catalog's record
//! of which region holds which layer.
//!
//! Invariants:
//! - A region's windows are computed from the layers recorded as shipped to that region only:
//!   a point is listed for a region only if that region's copies reconstruct it.
//! - A branch is `degraded` when one of its own layers is in fewer than `min_copies` regions.

use std::collections::{BTreeMap, HashMap, HashSet};

use cairn_engine::catalog::ClusterRow;
use cairn_engine::engine::layer_map_of;
use cairn_engine::layer_map::LayerMap;
use cairn_engine::Lsn;
use serde::Serialize;

use crate::{Appliance, Result};

/// Whether a branch's own layers are in enough regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PointStatus {
    Ok,
    Degraded,
}

/// What one region alone can restore of a branch.
#[derive(Debug, Clone, Serialize)]
pub struct RegionPoints {
    /// Restorable LSN ranges, oldest first.
    pub windows: Vec<(Lsn, Lsn)>,
    /// The newest restorable point (the end of the last window).
    pub restorable_to: Option<Lsn>,
}

/// One branch's recovery points.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryPoint {
    pub cluster: String,
    pub branch: String,
    pub head: Lsn,
    pub status: PointStatus,
    /// Region name -> what it can restore.
    pub regions: BTreeMap<String, RegionPoints>,
    /// Bytes of the branch's own layers on local disk.
    pub stored_bytes: u64,
}

impl Appliance {
    /// The recovery points of every branch of `clusters`, per region.
    pub async fn recovery_points(&self, clusters: &[ClusterRow]) -> Result<Vec<RecoveryPoint>> {
        let p = &self.protection;
        let catalog = &self.engine.catalog;
        let copies = p.copies().await?;
        let min = p.regions.min_copies as usize;
        let mut out = Vec::new();
        for c in clusters {
            let tls = catalog.timelines(c.id).await?;
            let layers = catalog.layers(c.id).await?;
            let maps: HashMap<String, LayerMap> = p
                .regions
                .names()
                .into_iter()
                .map(|r| {
                    let held: Vec<_> = layers
                        .iter()
                        .filter(|l| {
                            copies
                                .get(&l.id.to_string())
                                .is_some_and(|s| s.contains(&r))
                        })
                        .cloned()
                        .collect();
                    (r, layer_map_of(&tls, &held))
                })
                .collect();
            let degraded: HashSet<String> = layers
                .iter()
                .map(|l| l.id.to_string())
                .filter(|id| copies.get(id).map_or(0, |s| s.len()) < min)
                .collect();
            for b in catalog.branches(c.id).await? {
                let Some(t) = tls.iter().find(|t| t.id == b.timeline_id) else {
                    continue;
                };
                let regions = maps
                    .iter()
                    .map(|(name, m)| {
                        let windows = m.reconstructible_windows(t.id);
                        let restorable_to = windows.last().map(|w| w.1);
                        (
                            name.clone(),
                            RegionPoints {
                                windows,
                                restorable_to,
                            },
                        )
                    })
                    .collect();
                let own = || layers.iter().filter(|l| l.timeline_id == t.id);
                out.push(RecoveryPoint {
                    cluster: c.name.clone(),
                    branch: b.name.clone(),
                    head: t.head,
                    status: if own().any(|l| degraded.contains(&l.id.to_string())) {
                        PointStatus::Degraded
                    } else {
                        PointStatus::Ok
                    },
                    regions,
                    stored_bytes: own().map(|l| l.file_size).sum(),
                });
            }
        }
        Ok(out)
    }
}
