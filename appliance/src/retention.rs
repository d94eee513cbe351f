//! Retention as this appliance sees it: a cluster's layers read from the catalog and planned
//! under a policy's rules ([`cairn_scheduler::plan_retention`]).
//!
//! Invariants:
//! - Reading only: nothing here deletes; the plan says what a retention run would delete.
//! - A WAL layer's times are those of its first and last commit as the catalog's summary
//!   records them; a layer without commits (and an image) is dated by when it was written.

use std::collections::{BTreeSet, HashMap};

use cairn_engine::catalog::{BranchRow, ClusterRow, LayerRow};
use cairn_engine::layer::LayerKind;
use cairn_engine::layer_map::{ImageDesc, TimelineDesc, WalDesc};
use cairn_engine::{Engine, LayerId, Lsn, TimelineId};
use cairn_policies::Retention;
use cairn_scheduler::retention::{
    plan_retention, History, ImageInfo, Reason, RetentionPlan, WalInfo,
};
use chrono_tz::Tz;

use crate::error::Result;

/// A cluster's layers, timelines and branches read once from the catalog, to be planned under
/// any number of rules ([`ClusterLayers::impact`]).
pub struct ClusterLayers {
    pub cluster: String,
    pub history: History,
    sizes: HashMap<LayerId, u64>,
    branches: Vec<BranchRow>,
}

impl ClusterLayers {
    /// Reads `cluster` from the catalog.
    pub async fn load(engine: &Engine, cluster: &ClusterRow) -> Result<ClusterLayers> {
        let layers = engine.catalog.layers(cluster.id).await?;
        let branches = engine.catalog.branches(cluster.id).await?;
        Ok(ClusterLayers {
            cluster: cluster.name.clone(),
            history: history(engine, cluster, &layers, &branches).await?,
            sizes: layers.iter().map(|l| (l.id, l.file_size)).collect(),
            branches,
        })
    }

    /// Bytes of the layer files `ids`.
    pub fn bytes(&self, ids: &BTreeSet<LayerId>) -> u64 {
        ids.iter().filter_map(|id| self.sizes.get(id)).sum()
    }

    /// What retention under `rules` (in time zone `tz`) would do at `now_us`; with no rules,
    /// nothing is deleted.
    pub fn impact(&self, rules: Option<(&Retention, Tz)>, now_us: i64) -> RetentionImpact {
        let h = &self.history;
        let plan = match rules {
            Some((r, tz)) => plan_retention(h, r, tz, now_us),
            None => RetentionPlan {
                keep: h
                    .images
                    .iter()
                    .map(|i| i.desc.id)
                    .chain(h.wals.iter().map(|w| w.desc.id))
                    .collect(),
                ..RetentionPlan::default()
            },
        };
        let branch_of = |t: TimelineId| {
            self.branches
                .iter()
                .find(|b| b.timeline_id == t)
                .map(|b| b.name.clone())
        };
        RetentionImpact {
            cluster: self.cluster.clone(),
            delete_layers: plan.delete.len(),
            delete_bytes: self.bytes(&plan.delete),
            keep_layers: plan.keep.len(),
            keep_bytes: self.bytes(&plan.keep),
            windows: plan
                .windows
                .iter()
                .map(|w| WindowView {
                    branch: branch_of(w.timeline),
                    timeline: w.timeline,
                    from: w.from,
                    to: w.to,
                    reason: w.reason.clone(),
                })
                .collect(),
            plan,
        }
    }
}

/// A cluster's layers and timelines, as retention plans them.
async fn history(
    engine: &Engine,
    cluster: &ClusterRow,
    layers: &[LayerRow],
    branches: &[BranchRow],
) -> Result<History> {
    let cat = &engine.catalog;
    let timelines = cat.timelines(cluster.id).await?;
    let mut refs: HashMap<LayerId, Vec<LayerId>> = HashMap::new();
    for (image, r) in cat.layer_refs(cluster.id).await? {
        refs.entry(image).or_default().push(r);
    }
    let mut times: HashMap<LayerId, (i64, i64)> = HashMap::new();
    for t in &timelines {
        for s in cat.txn_layers_before(t.id, Lsn(0), t.head).await? {
            times.insert(s.layer, (s.summary.min_time, s.summary.max_time));
        }
    }
    let wal = |l: &LayerRow| {
        let (first, last) = times
            .get(&l.id)
            .copied()
            .unwrap_or((l.created_at_us, l.created_at_us));
        WalInfo {
            desc: WalDesc {
                id: l.id,
                timeline: l.timeline_id,
                start: l.start,
                end: l.end,
            },
            first_time_us: first,
            last_time_us: last,
            created_us: l.created_at_us,
        }
    };
    let image = |l: &LayerRow| ImageInfo {
        desc: ImageDesc {
            id: l.id,
            timeline: l.timeline_id,
            start: l.start,
            end: l.end,
        },
        time_us: l.created_at_us,
        created_us: l.created_at_us,
        refs: refs.get(&l.id).cloned().unwrap_or_default(),
    };
    Ok(History {
        timelines: timelines
            .iter()
            .map(|t| TimelineDesc {
                id: t.id,
                ancestor: t.ancestor,
                head: t.head,
            })
            .collect(),
        live: branches.iter().map(|b| b.timeline_id).collect(),
        images: layers
            .iter()
            .filter(|l| l.kind == LayerKind::Image)
            .map(image)
            .collect(),
        wals: layers
            .iter()
            .filter(|l| l.kind == LayerKind::Wal)
            .map(wal)
            .collect(),
    })
}

/// A window as an operator reads it: on which branch, from where to where, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WindowView {
    pub branch: Option<String>,
    pub timeline: TimelineId,
    pub from: Lsn,
    pub to: Lsn,
    pub reason: Reason,
}

/// What a retention run would do to one cluster.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RetentionImpact {
    pub cluster: String,
    pub delete_layers: usize,
    pub delete_bytes: u64,
    pub keep_layers: usize,
    pub keep_bytes: u64,
    /// The recovery windows and points that stay restorable.
    pub windows: Vec<WindowView>,
    #[serde(skip)]
    pub plan: RetentionPlan,
}
