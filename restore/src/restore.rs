//! One restore, from request to report.
//!
//! Phases, each timed (these are the RTO measurements the scheduler and reports use):
//! 1. `fetch_index`: choose the region, read and verify the cluster's indexes, read the
//!    metadata of the WAL layers on the branch's ancestry, stage them, resolve the point and
//!    plan it (image + WAL pieces);
//! 2. `fetch_layers`: download the plan's layers in parallel, each verified end to end, each
//!    from the first region holding a good copy;
//! 3. `write`: materialise the data directory (image pieces checked against their SHA-256,
//!    WAL from the image's redo point to the target);
//! 4. `wal_replay`: PostgreSQL replays that WAL and ends recovery exactly at the point;
//! 5. `first_connection`: the first connection and query.
//!
//! Everything that can be refused is refused before the first layer is fetched: an unknown
//! branch or a point outside every window the region holds (the windows are listed), a
//! target directory that is not empty, PostgreSQL binaries of another major version, too little
//! free disk. A failed restore removes what it wrote; a restore as a branch removes the branch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;

use cairn_backup::keys::Identity;
use cairn_backup::{Error, Protection, Result};
use cairn_engine::branch::PointSpec;
use cairn_engine::catalog::{now_us, ClusterKind, RestoreRow};
use cairn_engine::compute::superuser;
use cairn_engine::compute::PreparedSource;
use cairn_engine::engine::fmt_time;
use cairn_engine::layer_map::Plan;
use cairn_engine::progress::Progress;
use cairn_engine::{LayerId, Lsn, TimelineId};

use crate::recovery::{recover, Replay};
use crate::source::{RegionProbe, Source, Substitution};
use crate::staging::Staging;

/// Where a restore writes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A new branch of the cluster in this appliance, with a compute started on it.
    Branch(String),
    /// A plain PostgreSQL data directory; `recover`: replay to the point and shut down cleanly
    /// (else the directory is left to replay on its first start); `delta`: write over an
    /// existing data directory, rewriting only what differs.
    Datadir {
        dir: PathBuf,
        recover: bool,
        delta: bool,
        /// Where the tablespaces go.
        tablespaces: crate::tablespaces::TablespaceMap,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Branch(b) => write!(f, "branch '{b}'"),
            Target::Datadir { dir, .. } => write!(f, "data directory {}", dir.display()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub cluster: String,
    pub branch: String,
    pub point: PointSpec,
    pub target: Target,
    /// The region to read indexes and objects from first.
    pub region: Option<String>,
    /// The cluster's id, when a name is not enough (several clusters of that name).
    pub cluster_id: Option<String>,
    /// An identity that opens the data keys, besides the appliance's own.
    pub identity: Option<Identity>,
    /// Signing keys trusted besides the appliance's (a recovery kit's, `--trust-signer`).
    pub signers: Vec<[u8; 32]>,
    /// Layers fetched at once.
    pub parallel: usize,
}

/// Seconds spent in each phase.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Phases {
    pub fetch_index: f64,
    pub fetch_layers: f64,
    pub write: f64,
    pub wal_replay: Option<f64>,
    pub first_connection: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    pub id: String,
    pub cluster: String,
    pub branch: String,
    pub point: String,
    pub lsn: Lsn,
    /// Time of the last transaction at or before the point, when known.
    pub point_time: Option<String>,
    pub target: String,
    /// The region the indexes came from.
    pub region: String,
    pub signers: Vec<String>,
    pub probes: Vec<RegionProbe>,
    /// Objects another region had to serve, and why.
    pub substitutions: Vec<Substitution>,
    pub layers_fetched: usize,
    /// The layers the point needed (image, images it references, WAL), by id.
    pub layers: Vec<String>,
    pub bytes_fetched: u64,
    pub data_bytes: u64,
    /// Bytes of data files written (less than `data_bytes` after a delta restore).
    pub written_bytes: u64,
    /// Files and directories a delta restore removed.
    pub removed: u64,
    pub wal_segments: u64,
    pub phases: Phases,
    pub total_seconds: f64,
    /// For a branch target: the compute's port.
    pub compute_port: Option<u16>,
    /// For a data directory target: its roles and how to log in as each.
    pub logins: Vec<crate::logins::Login>,
    /// For a data directory target: where each tablespace went.
    pub tablespaces: Vec<crate::tablespaces::RestoredTablespace>,
    /// The cluster as the region describes it (binaries, superuser), for callers that go on
    /// to start the restored data directory.
    #[serde(skip)]
    pub cluster_row: Option<cairn_engine::catalog::ClusterRow>,
}

/// A point as the report shows it.
fn describe(p: &PointSpec) -> String {
    match p {
        PointSpec::Head => "latest".into(),
        other => other.to_string(),
    }
}

/// Restores `req` and records the outcome (report or error) in the appliance's catalog.
pub async fn restore(
    p: &Protection,
    req: &RestoreRequest,
    progress: &Arc<Progress>,
) -> Result<RestoreReport> {
    let started_at = now_us();
    let id = TimelineId::generate().to_string();
    let result = run(p, req, &id, progress).await;
    let (ok, error, report, lsn, region) = match &result {
        Ok(r) => (
            true,
            None,
            serde_json::to_string(r).unwrap_or_default(),
            Some(r.lsn),
            Some(r.region.clone()),
        ),
        Err(e) => (false, Some(e.to_string()), "{}".into(), None, None),
    };
    let row = RestoreRow {
        id,
        cluster: req.cluster.clone(),
        branch: req.branch.clone(),
        point: describe(&req.point),
        lsn,
        target: req.target.to_string(),
        region,
        ok,
        error,
        report,
        started_at_us: started_at,
        finished_at_us: now_us(),
    };
    if let Err(e) = p.engine.catalog.record_restore(&row).await {
        tracing::warn!(error = %e, "could not record the restore in the catalog");
    }
    result
}

async fn run(
    p: &Protection,
    req: &RestoreRequest,
    id: &str,
    progress: &Arc<Progress>,
) -> Result<RestoreReport> {
    let t0 = Instant::now();
    let local = &p.engine;
    // Refusals that need no region.
    let mut delta = false;
    match &req.target {
        Target::Datadir {
            dir,
            delta: d,
            tablespaces,
            ..
        } => {
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
        }
    }
    // 1. Indexes, WAL metadata, staging, point, plan.
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
    let (_, tl) = se.resolve_branch(&cluster, &req.branch).await?;
    let raw = se.resolve_raw(&cluster, &tl, &req.point).await?;
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
        .plan(tl.id, raw)
        .map_err(|e| Error::from(se.explain(&map, &what, tl.id, e)))?;
    // Binaries of the cluster's major version (they replay the WAL and start the compute).
    local.bins_for(&cluster)?;
    if let (true, Target::Datadir { dir, .. }) = (delta, &req.target) {
        let v = std::fs::read_to_string(dir.join("PG_VERSION")).unwrap_or_default();
        if v.trim() != cluster.pg_major.to_string() {
            return Err(Error::Refused(format!(
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
            )));
        }
    }
    let fetch_index = t0.elapsed().as_secs_f64();

    // Space: staged layers, and the data directory.
    let needed: Vec<LayerId> = plan_layers(&staging, &plan)?;
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
    let data_dir = match &req.target {
        Target::Datadir { dir, .. } => dir.clone(),
        Target::Branch(_) => local.home.computes.clone(),
    };
    crate::space::ensure(&[
        (staging.dir.clone(), fetch_bytes, "layers"),
        (
            data_dir,
            if delta { 0 } else { image_size } + wal_bytes,
            "data directory",
        ),
    ])?;

    // 2. Layers.
    let t1 = Instant::now();
    progress.phase("fetch layers", fetch_bytes);
    let fetched = fetch(
        &staging,
        &source,
        &view.cluster.id,
        &needed,
        req.parallel,
        progress,
    )
    .await?;
    // The exact record boundary needs the WAL just fetched.
    let (lsn, prev) = se.record_boundary(&cluster, &tl, raw).await?;
    let mut plan = plan;
    let mut fetched = fetched;
    let mut layer_ids: Vec<LayerId> = needed.clone();
    if lsn != plan.lsn {
        plan = map
            .plan(tl.id, lsn)
            .map_err(|e| Error::from(se.explain(&map, &what, tl.id, e)))?;
        let more: Vec<LayerId> = plan_layers(&staging, &plan)?
            .into_iter()
            .filter(|l| !needed.contains(l))
            .collect();
        layer_ids.extend(more.iter().copied());
        fetched += fetch(
            &staging,
            &source,
            &view.cluster.id,
            &more,
            req.parallel,
            progress,
        )
        .await?;
    }
    let bytes_fetched = progress.done.load(Ordering::Relaxed);
    let fetch_layers = t1.elapsed().as_secs_f64();
    let paths: HashMap<LayerId, PathBuf> = staging
        .layers
        .keys()
        .filter_map(|id| staging.path(*id).map(|p| (*id, p)))
        .collect();
    let point_time = se.time_at(&tl, lsn).await.ok().flatten().map(fmt_time);

    let mut report = RestoreReport {
        id: id.to_string(),
        cluster: cluster.name.clone(),
        branch: req.branch.clone(),
        point: describe(&req.point),
        lsn,
        point_time,
        target: req.target.to_string(),
        region: view.region.clone(),
        signers: view.signers.clone(),
        probes: source.probes.clone(),
        substitutions: vec![],
        layers_fetched: fetched,
        layers: layer_ids.iter().map(|l| l.to_string()).collect(),
        bytes_fetched,
        data_bytes: 0,
        written_bytes: 0,
        removed: 0,
        wal_segments: 0,
        phases: Phases {
            fetch_index,
            fetch_layers,
            ..Default::default()
        },
        total_seconds: 0.0,
        cluster_row: Some(cluster.clone()),
        compute_port: None,
        logins: vec![],
        tablespaces: vec![],
    };

    match &req.target {
        Target::Datadir {
            dir,
            recover: run_recovery,
            tablespaces: ts_map,
            ..
        } => {
            // 3. Write.
            let created = !dir.exists();
            let known = image_tablespaces(&paths, plan.image.id)?;
            let placement = ts_map.placement(dir, &known)?;
            // Tablespace directories this restore creates (removed again if it fails).
            let mut ts_created: Vec<PathBuf> = Vec::new();
            if !placement.root.exists() {
                ts_created.push(placement.root.clone());
            }
            ts_created.extend(placement.map.values().filter(|d| !d.exists()).cloned());
            let cleanup = |dir: &Path| {
                for d in &ts_created {
                    let _ = std::fs::remove_dir_all(d);
                }
                if delta {
                    tracing::warn!(dir = %dir.display(), "the delta restore failed part way: run it again to finish");
                } else if created {
                    let _ = std::fs::remove_dir_all(dir);
                } else if let Ok(rd) = std::fs::read_dir(dir) {
                    for e in rd.flatten() {
                        let p = e.path();
                        let _ = if p.is_dir() {
                            std::fs::remove_dir_all(&p)
                        } else {
                            std::fs::remove_file(&p)
                        };
                    }
                }
            };
            let t2 = Instant::now();
            progress.phase("write", image_size);
            if delta {
                // The earlier restore belongs to the postgres OS user: root takes it over
                // before writing through its paths (no link can be slipped in meanwhile).
                local.user.take_over_tree(dir)?;
            }
            // Tablespace directories that exist already (empty, or an earlier restore's with
            // --delta) are taken over the same way before root writes through them.
            for d in std::iter::once(&placement.root).chain(placement.map.values()) {
                if d.is_dir() {
                    local.user.take_over_tree(d)?;
                }
            }
            let (pl, pa, d, pr) = (plan.clone(), paths.clone(), dir.clone(), progress.clone());
            let pm = placement.clone();
            let stats = tokio::task::spawn_blocking(move || {
                if delta {
                    cairn_engine::materialise::materialise_delta(&pl, &pa, &d, &pm, &pr.done)
                } else {
                    cairn_engine::materialise::materialise(&pl, &pa, &d, &pm, &pr.done)
                }
            })
            .await
            .map_err(|e| Error::io("write task", std::io::Error::other(e.to_string())))?;
            let stats = match stats {
                Ok(s) => s,
                Err(e) => {
                    cleanup(dir);
                    return Err(e.into());
                }
            };
            report.data_bytes = stats.data_bytes;
            report.written_bytes = stats.written_bytes;
            report.removed = stats.removed;
            report.wal_segments = stats.wal_segments;
            report.tablespaces =
                crate::tablespaces::report(&stats.tablespaces, &known, &stats.wal_tablespaces);
            if let Err(e) = ts_map.check_used(&placement, &stats.tablespaces) {
                cleanup(dir);
                return Err(e);
            }
            // Owned by the PostgreSQL OS user when Cairn runs as root, like any data
            // directory; so are its tablespaces, which that user must reach.
            let owned = std::iter::once(dir.as_path())
                .chain(stats.tablespaces.iter().map(|(_, d)| d.as_path()))
                .try_for_each(|d| {
                    local.user.chown_tree(d)?;
                    local.user.check_reachable(d)
                });
            if let Err(e) = owned {
                cleanup(dir);
                return Err(e.into());
            }
            // Its roles accept only passwords: the owner of the directory gets a way in.
            let su = superuser(&cluster);
            let peer = match cluster.kind {
                ClusterKind::Managed => {
                    if let Err(e) = crate::logins::grant_peer_login(dir, &local.user.name, &su) {
                        cleanup(dir);
                        return Err(e);
                    }
                    Some(local.user.name.as_str())
                }
                ClusterKind::Adopted => None,
            };
            report.logins = crate::logins::logins(&cluster, &su, peer);
            report.phases.write = t2.elapsed().as_secs_f64();
            // 4, 5. Replay and first connection.
            if *run_recovery {
                progress.phase("wal replay", 0);
                match recover(local, &cluster, dir, lsn).await {
                    Ok(Replay {
                        replay_seconds,
                        first_connection_seconds,
                        ..
                    }) => {
                        report.phases.wal_replay = Some(replay_seconds);
                        report.phases.first_connection = Some(first_connection_seconds);
                    }
                    Err(e) => {
                        cleanup(dir);
                        return Err(e);
                    }
                }
            }
        }
        Target::Branch(name) => {
            let lc = local
                .catalog
                .cluster_by_name(&req.cluster)
                .await?
                .ok_or_else(|| Error::Refused(format!("cluster '{}' vanished", req.cluster)))?;
            if lc.id != cluster.id {
                return Err(Error::Refused(format!(
                    "cluster '{}' in this appliance is not the cluster of that name in region \
                     '{}' (ids {} and {}); restore it with --to-datadir",
                    req.cluster, view.region, lc.id, cluster.id
                )));
            }
            local
                .branch_create_at(&lc, name, plan.timeline, lsn, prev)
                .await?;
            let started = local
                .compute_start_from(
                    &lc,
                    name,
                    None,
                    progress,
                    Some(PreparedSource {
                        plan: plan.clone(),
                        layers: paths.clone(),
                        logical_size: image_size,
                    }),
                )
                .await;
            let info = match started {
                Ok(i) => i,
                Err(e) => {
                    if let Err(d) = local.branch_delete(&lc, name).await {
                        tracing::warn!(branch = %name, error = %d, "could not remove the failed restore's branch");
                    }
                    return Err(e.into());
                }
            };
            let m = info.materialise.clone().unwrap_or_default();
            report.data_bytes = m.data_bytes;
            report.written_bytes = m.written_bytes;
            report.wal_segments = m.wal_segments;
            report.phases.write = m.seconds;
            report.phases.wal_replay = info.start_seconds;
            report.compute_port = Some(info.port);
            // First connection, as a user of the branch would make it.
            let t3 = Instant::now();
            let client =
                cairn_engine::pg::server::connect(info.port, &info.login, "postgres").await?;
            client
                .query_one("SELECT 1", &[])
                .await
                .map_err(|e| Error::Refused(format!("first query on the restored branch: {e}")))?;
            report.phases.first_connection = Some(t3.elapsed().as_secs_f64());
        }
    }
    report.substitutions = source.substitutions();
    report.total_seconds = t0.elapsed().as_secs_f64();
    tracing::info!(cluster = %report.cluster, branch = %report.branch, lsn = %report.lsn, target = %report.target, seconds = report.total_seconds, "restore finished");
    Ok(report)
}

/// The tablespaces the plan's image records (names and source locations).
fn image_tablespaces(
    paths: &HashMap<LayerId, PathBuf>,
    image: LayerId,
) -> Result<Vec<cairn_engine::layer::image::TablespaceInfo>> {
    use cairn_engine::layer::file::{LayerFile, LayerKind};
    use cairn_engine::layer::image::ImageMeta;
    let path = paths
        .get(&image)
        .ok_or_else(|| Error::Refused(format!("image layer {image} was not fetched")))?;
    let f = LayerFile::open(path, LayerKind::Image)?;
    let meta = ImageMeta::decode(&f.meta, f.version).map_err(|e| {
        Error::from(cairn_engine::Error::corrupt(
            format!("image layer {}", path.display()),
            e.0,
        ))
    })?;
    Ok(meta.tablespaces)
}

/// The layers a plan reads: its image, the images it references, its WAL layers.
fn plan_layers(staging: &Staging, plan: &Plan) -> Result<Vec<LayerId>> {
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

/// Downloads `ids` into the staging area, `parallel` at a time; returns how many.
async fn fetch(
    staging: &Staging,
    source: &Source,
    cluster_id: &str,
    ids: &[LayerId],
    parallel: usize,
    progress: &Arc<Progress>,
) -> Result<usize> {
    let jobs = ids.iter().map(|id| async move {
        let (_, il) = staging
            .layers
            .get(id)
            .ok_or_else(|| Error::tampered(format!("layer {id}"), "planned but not indexed"))?;
        let dest = staging
            .path(*id)
            .ok_or_else(|| Error::tampered(format!("layer {id}"), "planned but not indexed"))?;
        if dest.exists() {
            return Ok(());
        }
        source
            .fetch_layer(cluster_id, il, &dest, &progress.done)
            .await
            .map(|_| ())
    });
    let results: Vec<Result<()>> = futures::stream::iter(jobs)
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(ids.len())
}
