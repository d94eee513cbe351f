//! The first step of a restore: every refusal, and what the restore would do.
//!
//! [`plan`] checks everything that can be refused before anything is fetched or written — the
//! target (a non-empty directory without `--delta`, a delta target a server is running on, a
//! tablespace map pointing into the appliance, a branch name taken or invalid, a cluster this
//! appliance does not have), the region (indexes signed by a trusted key, the cluster id), the
//! point (inside one of the windows the region holds, else the windows are listed), the
//! PostgreSQL binaries of the cluster's major version, a delta target of another major version,
//! and free disk for the staged layers and the data directory.
//!
//! Invariants:
//! - Planning reads the regions (indexes and WAL metadata) and writes only its staging area, a
//!   scratch directory that is removed when the plan is dropped. It never writes the target,
//!   the appliance's catalog or its layers, so a plan on its own is a dry run.
//! - A [`RestorePlan`] is what [`crate::execute`] carries out; its [`PlanSummary`] is what a
//!   dry run shows, with the same numbers the restore then uses.

use std::time::Instant;

use cairn_backup::{Error, Protection, Result};
use cairn_engine::branch::PointSpec;
use cairn_engine::catalog::{ClusterRow, TimelineRow};
use cairn_engine::layer_map::{LayerMap, Plan};
use cairn_engine::progress::Progress;
use cairn_engine::{LayerId, Lsn};

use crate::request::{describe, RestoreRequest, Target};
use crate::source::{ClusterView, RegionProbe, Source};
use crate::staging::Staging;

/// Everything a restore needs to run, checked: the source, the staged history, the point and
/// the layers that make it.
pub struct RestorePlan {
    pub(crate) source: Source,
    pub(crate) view: ClusterView,
    pub(crate) staging: Staging,
    /// The cluster as the region describes it.
    pub(crate) cluster: ClusterRow,
    pub(crate) timeline: TimelineRow,
    /// The point as resolved from the metadata; the exact record boundary needs the WAL.
    pub(crate) raw: Lsn,
    pub(crate) map: LayerMap,
    pub(crate) plan: Plan,
    /// What is restored, as refusals name it.
    pub(crate) what: String,
    /// Writing over an earlier restore of the cluster.
    pub(crate) delta: bool,
    /// The layers the point needs (image, images it references, WAL).
    pub(crate) needed: Vec<LayerId>,
    pub(crate) fetch_bytes: u64,
    pub(crate) image_size: u64,
    pub(crate) wal_bytes: u64,
    /// Seconds spent planning (the `fetch_index` phase).
    pub(crate) seconds: f64,
}

/// What a restore would do, as a dry run reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanSummary {
    pub cluster: String,
    pub cluster_id: String,
    pub branch: String,
    pub point: String,
    /// The point as planned (the restore may move it to the record boundary at or before it).
    pub lsn: Lsn,
    pub target: String,
    pub delta: bool,
    /// The region whose indexes decide the history.
    pub region: String,
    pub signers: Vec<String>,
    pub probes: Vec<RegionProbe>,
    pub image_layer: String,
    pub wal_layers: usize,
    /// Every layer to fetch, by id.
    pub layers: Vec<String>,
    pub fetch_bytes: u64,
    /// Bytes the data directory needs at most (the image's logical size, unless delta, and
    /// the WAL segments from the image to the point).
    pub write_bytes: u64,
    pub pg_major: u32,
    pub seconds: f64,
}

impl RestorePlan {
    /// What this plan would do.
    pub fn summary(&self, req: &RestoreRequest) -> PlanSummary {
        PlanSummary {
            cluster: self.cluster.name.clone(),
            cluster_id: self.view.cluster.id.clone(),
            branch: req.branch.clone(),
            point: describe(&req.point),
            lsn: self.plan.lsn,
            target: req.target.to_string(),
            delta: self.delta,
            region: self.view.region.clone(),
            signers: self.view.signers.clone(),
            probes: self.source.probes.clone(),
            image_layer: self.plan.image.id.to_string(),
            wal_layers: self.plan.wal_layers().count(),
            layers: self.needed.iter().map(|l| l.to_string()).collect(),
            fetch_bytes: self.fetch_bytes,
            write_bytes: self.write_bytes(),
            pg_major: self.cluster.pg_major,
            seconds: self.seconds,
        }
    }

    fn write_bytes(&self) -> u64 {
        let image = if self.delta { 0 } else { self.image_size };
        image + self.wal_bytes
    }
}

/// Checks every refusal of `req` and plans it; writes nothing but the plan's staging area.
pub async fn plan(
    p: &Protection,
    req: &RestoreRequest,
    progress: &Progress,
) -> Result<RestorePlan> {
    let t0 = Instant::now();
    let local = &p.engine;
    let delta = check_target(p, req).await?;
    progress.phase("fetch index", 0);
    let (source, view) = Source::open(
        p,
        &req.cluster,
        req.cluster_id.as_deref(),
        req.region.as_deref(),
        req.identity.clone(),
        &req.signers,
    )
    .await?;
    local.home.sweep_scratch();
    let staging =
        Staging::build(&local.home, None, &view, &req.branch, &source, req.parallel).await?;
    let cluster = staging.cluster.clone();
    let se = &staging.engine;
    let (_, timeline) = se.resolve_branch(&cluster, &req.branch).await?;
    let raw = se.resolve_raw(&cluster, &timeline, &req.point).await?;
    let map = se.layer_map(&cluster).await?;
    let what = format!(
        "branch '{}' at {}{} in region '{}'",
        req.branch,
        describe(&req.point),
        match req.point {
            PointSpec::Lsn(_) => String::new(),
            _ => format!(" ({raw})"),
        },
        view.region
    );
    let plan = map
        .plan(timeline.id, raw)
        .map_err(|e| Error::from(se.explain(&map, &what, timeline.id, e)))?;
    // Binaries of the cluster's major version (they replay the WAL and start the compute).
    local.bins_for(&cluster)?;
    if let (true, Target::Datadir { dir, .. }) = (delta, &req.target) {
        check_delta_version(dir, &cluster)?;
    }
    let needed = plan_layers(&staging, &plan)?;
    let fetch_bytes: u64 = needed
        .iter()
        .filter_map(|l| staging.layers.get(l))
        .map(|(_, il)| il.file_size)
        .sum();
    let image_size = staging
        .layers
        .get(&plan.image.id)
        .map_or(0, |(r, _)| r.logical_size);
    let wal_bytes = (plan.lsn.0 / cluster.segment_size + 1)
        .saturating_sub(plan.image.start.0 / cluster.segment_size)
        * cluster.segment_size;
    let planned = RestorePlan {
        source,
        view,
        staging,
        cluster,
        timeline,
        raw,
        map,
        plan,
        what,
        delta,
        needed,
        fetch_bytes,
        image_size,
        wal_bytes,
        seconds: 0.0,
    };
    // Space: staged layers, and the data directory.
    let data_dir = match &req.target {
        Target::Datadir { dir, .. } => dir.clone(),
        Target::Branch(_) => local.home.computes.clone(),
    };
    crate::space::ensure(&[
        (planned.staging.dir.clone(), fetch_bytes, "layers"),
        (data_dir, planned.write_bytes(), "data directory"),
    ])?;
    Ok(RestorePlan {
        seconds: t0.elapsed().as_secs_f64(),
        ..planned
    })
}

/// Refusals that need no region; whether the restore writes over an earlier one (delta).
async fn check_target(p: &Protection, req: &RestoreRequest) -> Result<bool> {
    let local = &p.engine;
    match &req.target {
        Target::Datadir {
            dir,
            delta: d,
            tablespaces,
            ..
        } => {
            let mut delta = false;
            if let Err(e) = cairn_engine::materialise::check_empty(dir) {
                if !*d {
                    return Err(Error::Refused(format!(
                        "{e}, or pass --delta to rewrite only what differs in an earlier \
                         restore of the same cluster"
                    )));
                }
                // Before anything is fetched or taken over: a server running on it keeps
                // running untouched.
                cairn_engine::materialise::check_delta_target(dir)?;
                delta = true;
            }
            tablespaces.check(
                dir,
                &[local.home.root.as_path(), local.home.computes.as_path()],
                delta,
            )?;
            Ok(delta)
        }
        Target::Branch(name) => {
            cairn_engine::engine::validate_name("branch", name)?;
            let c = local
                .catalog
                .cluster_by_name(&req.cluster)
                .await?
                .ok_or_else(|| {
                    Error::Refused(format!(
                        "cluster '{}' is not in this appliance's catalog, so there is nothing to \
                         add a branch to: run `cairn catalog rebuild` first, or restore with \
                         --to-datadir",
                        req.cluster
                    ))
                })?;
            if local.catalog.branch(c.id, name).await?.is_some() {
                return Err(Error::Refused(format!(
                    "branch '{name}' already exists in cluster '{}'; choose another name",
                    req.cluster
                )));
            }
            Ok(false)
        }
    }
}

/// A delta restore writes only over a data directory of the cluster's major version.
fn check_delta_version(dir: &std::path::Path, cluster: &ClusterRow) -> Result<()> {
    let v = std::fs::read_to_string(dir.join("PG_VERSION")).unwrap_or_default();
    if v.trim() == cluster.pg_major.to_string() {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "{} is {}, cluster '{}' is PostgreSQL {}: --delta only writes over an earlier \
         restore of the same cluster; restore into an empty directory instead",
        dir.display(),
        if v.trim().is_empty() {
            "not a PostgreSQL data directory".to_string()
        } else {
            format!("a PostgreSQL {} data directory", v.trim())
        },
        cluster.name,
        cluster.pg_major
    )))
}

/// The layers a plan reads: its image, the images it references, its WAL layers.
pub(crate) fn plan_layers(staging: &Staging, plan: &Plan) -> Result<Vec<LayerId>> {
    let mut out = vec![plan.image.id];
    let (_, img) = staging.layers.get(&plan.image.id).ok_or_else(|| {
        Error::tampered(
            format!("image layer {}", plan.image.id),
            "planned but not indexed",
        )
    })?;
    for r in &img.refs {
        let id: LayerId = r
            .parse()
            .map_err(|e: String| Error::tampered(format!("image layer {}", plan.image.id), e))?;
        if !out.contains(&id) {
            out.push(id);
        }
    }
    for w in plan.wal_layers() {
        if !out.contains(&w.id) {
            out.push(w.id);
        }
    }
    Ok(out)
}
