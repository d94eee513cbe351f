//! WAL compaction carried out (`cairn up`): each cluster's runs of small, settled WAL layers,
//! as [`cairn_scheduler::compaction`] plans them, merged into one layer each, without a moment
//! in which less is durable or restorable than before.
//!
//! Each group goes in three steps: the engine stages the merged layer outside the timeline
//! ([`cairn_engine::compact`]); it is shipped to every region and its shipments recorded
//! ([`cairn_backup::Protection::ship_staged`]); only then does the catalog swap it in for the
//! old layers, in one transaction. Hence:
//! - The RPO exposure never jumps: the merged layer is held by every region from the moment
//!   the catalog names it, and the old ones were (only settled layers are merged).
//! - Every index a region holds names only layers the region holds: indexes written before
//!   the swap name the old layers, whose copies stay until no index names them (the deletion
//!   queue's rule); indexes written after it name the merged one, already there.
//! - A region failing, or a crash at any step, leaves the catalog as it was: the staged file
//!   is swept by the next pass, copies already made are queued as garbage (the catalog never
//!   names them).
//!
//! Invariants:
//! - Settled means held by every region of `regions.toml`; scratch timelines are never
//!   shipped, so never settled; a cluster being shredded is left alone.
//! - A pass holds the engine's compaction lock and starts no new group once its time budget
//!   is spent; the rest waits for the next pass.
//! - A fenced appliance compacts nothing (its caller does not call this).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use cairn_engine::catalog::{ClusterRow, LayerRow};
use cairn_engine::layer::LayerKind;
use cairn_engine::layer_map::WalDesc;
use cairn_engine::Lsn;
use cairn_scheduler::compaction::{plan_compaction, CompactGroup, CompactWal, CompactionRules};

use crate::error::Result;
use crate::Appliance;

/// What compaction did to one cluster in one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClusterCompaction {
    pub cluster: String,
    /// Merged layers written.
    pub merged: usize,
    /// Layers they replaced.
    pub replaced: usize,
    /// File bytes of the replaced layers, and of the merged ones.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// The groups to merge among `layers` (one cluster's), given which regions hold which layer
/// (`copies`) and every region's name.
pub fn plan(
    layers: &[LayerRow],
    copies: &HashMap<String, HashSet<String>>,
    regions: &[String],
    rules: CompactionRules,
    now_us: i64,
) -> Vec<CompactGroup> {
    let settled = |l: &LayerRow| {
        copies
            .get(&l.id.to_string())
            .is_some_and(|held| regions.iter().all(|r| held.contains(r)))
    };
    let wals: Vec<CompactWal> = layers
        .iter()
        .filter(|l| l.kind == LayerKind::Wal)
        .map(|l| CompactWal {
            desc: WalDesc {
                id: l.id,
                timeline: l.timeline_id,
                start: l.start,
                end: l.end,
            },
            bytes: l.file_size,
            created_us: l.created_at_us,
            settled: settled(l),
        })
        .collect();
    let mut image_starts: BTreeMap<_, Vec<Lsn>> = BTreeMap::new();
    for l in layers.iter().filter(|l| l.kind == LayerKind::Image) {
        image_starts.entry(l.timeline_id).or_default().push(l.start);
    }
    plan_compaction(&wals, &image_starts, rules, now_us)
}

/// One pass over every cluster at `now_us`: the clusters where compaction merged layers (or
/// failed, with the error). Returns nothing when another compaction holds the lock.
pub async fn run(
    app: &Appliance,
    rules: CompactionRules,
    now_us: i64,
    budget: Duration,
) -> Result<Vec<std::result::Result<ClusterCompaction, (String, crate::Error)>>> {
    let engine = app.engine();
    let p = app.protection();
    let Ok(held) = engine.compaction_lock(Duration::ZERO) else {
        return Ok(Vec::new());
    };
    engine.sweep_compacting(&held);
    let started = Instant::now();
    let copies = p.copies().await?;
    let regions: Vec<String> = p.regions.regions.iter().map(|r| r.name.clone()).collect();
    let mut out = Vec::new();
    for c in engine.catalog.clusters().await? {
        if started.elapsed() >= budget {
            break;
        }
        if p.shred_due(&c.id.to_string()).await? {
            continue;
        }
        let groups = plan(
            &engine.catalog.layers(c.id).await?,
            &copies,
            &regions,
            rules,
            now_us,
        );
        if groups.is_empty() {
            continue;
        }
        let mut done = ClusterCompaction {
            cluster: c.name.clone(),
            ..ClusterCompaction::default()
        };
        let mut failed = None;
        for g in &groups {
            if started.elapsed() >= budget {
                break;
            }
            match merge(app, &c, g).await {
                Ok(m) => {
                    done.merged += 1;
                    done.replaced += m.replaced;
                    done.bytes_before += m.bytes_before;
                    done.bytes_after += m.bytes_after;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if done.merged > 0 {
            tracing::info!(
                cluster = %c.name,
                merged = done.merged,
                replaced = done.replaced,
                bytes_before = done.bytes_before,
                bytes_after = done.bytes_after,
                "compacted WAL layers"
            );
            out.push(Ok(done));
        }
        if let Some(e) = failed {
            out.push(Err((c.name.clone(), e)));
        }
    }
    Ok(out)
}

/// One group: staged, shipped everywhere, swapped in.
async fn merge(
    app: &Appliance,
    c: &ClusterRow,
    g: &CompactGroup,
) -> Result<cairn_engine::compact::Compacted> {
    let engine = app.engine();
    let ids: BTreeSet<_> = g.layers.iter().copied().collect();
    let staged = engine.stage_compaction(c, &ids).await?;
    if let Err(e) = app
        .protection()
        .ship_staged(&staged.row, &staged.path)
        .await
    {
        engine.discard_compaction(staged);
        return Err(e.into());
    }
    Ok(engine.commit_compaction(c, staged).await?)
}
