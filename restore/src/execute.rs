//! The second step of a restore: carry out a checked [`RestorePlan`].
//!
//! Phases, each timed: `fetch_layers` (the plan's layers, in parallel, each verified end to
//! end, each from the first region holding a good copy; then the exact record boundary of the
//! point, which may need a few more WAL layers), `write` (the data directory, or a new branch
//! and its compute), `wal_replay` and `first_connection`.
//!
//! Invariants:
//! - Only a plan that passed every refusal is executed; nothing here refuses a request for a
//!   reason the plan could have known.
//! - A failure after the first write removes what this restore wrote: a new data directory and
//!   the tablespace directories it created, the contents of an empty one it was given, a
//!   branch it created. A failed delta restore leaves its target to be finished by running it
//!   again (an earlier restore's files are not removed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;

use cairn_backup::{Error, Protection, Result};
use cairn_engine::catalog::ClusterKind;
use cairn_engine::compute::{superuser, PreparedSource};
use cairn_engine::engine::fmt_time;
use cairn_engine::progress::Progress;
use cairn_engine::LayerId;

use crate::plan::{plan_layers, RestorePlan};
use crate::recovery::{recover, Replay};
use crate::report::{Phases, RestoreReport};
use crate::request::{describe, RestoreRequest, Target};
use crate::source::Source;
use crate::staging::Staging;

/// Carries out `plan` for `req`; `id` names the restore in the catalog.
pub async fn execute(
    p: &Protection,
    req: &RestoreRequest,
    plan: RestorePlan,
    id: &str,
    progress: &Arc<Progress>,
) -> Result<RestoreReport> {
    let t0 = Instant::now();
    let mut plan = plan;
    let se = &plan.staging.engine;
    // 2. Layers.
    progress.phase("fetch layers", plan.fetch_bytes);
    let mut fetched = fetch(
        &plan.staging,
        &plan.source,
        &plan.view.cluster.id,
        &plan.needed,
        req.parallel,
        progress,
    )
    .await?;
    // The exact record boundary needs the WAL just fetched.
    let (lsn, prev) = se
        .record_boundary(&plan.cluster, &plan.timeline, plan.raw)
        .await?;
    let mut layer_ids = plan.needed.clone();
    if lsn != plan.plan.lsn {
        plan.plan = plan
            .map
            .plan(plan.timeline.id, lsn)
            .map_err(|e| Error::from(se.explain(&plan.map, &plan.what, plan.timeline.id, e)))?;
        let more: Vec<LayerId> = plan_layers(&plan.staging, &plan.plan)?
            .into_iter()
            .filter(|l| !plan.needed.contains(l))
            .collect();
        layer_ids.extend(more.iter().copied());
        fetched += fetch(
            &plan.staging,
            &plan.source,
            &plan.view.cluster.id,
            &more,
            req.parallel,
            progress,
        )
        .await?;
    }
    let bytes_fetched = progress.done.load(Ordering::Relaxed);
    let fetch_layers = t0.elapsed().as_secs_f64();
    let paths: HashMap<LayerId, PathBuf> = plan
        .staging
        .layers
        .keys()
        .filter_map(|id| plan.staging.path(*id).map(|p| (*id, p)))
        .collect();
    let point_time_us = se.time_at(&plan.timeline, lsn).await.ok().flatten();
    let point_time = point_time_us.map(fmt_time);
    let mut report = RestoreReport {
        id: id.to_string(),
        cluster: plan.cluster.name.clone(),
        branch: req.branch.clone(),
        point: describe(&req.point),
        lsn,
        point_time,
        point_time_us,
        target: req.target.to_string(),
        region: plan.view.region.clone(),
        signers: plan.view.signers.clone(),
        probes: plan.source.probes.clone(),
        substitutions: vec![],
        layers_fetched: fetched,
        layers: layer_ids.iter().map(|l| l.to_string()).collect(),
        bytes_fetched,
        data_bytes: 0,
        written_bytes: 0,
        removed: 0,
        wal_segments: 0,
        wal_bytes: 0,
        replay_bytes: lsn.0.saturating_sub(plan.plan.image.end.0),
        phases: Phases {
            fetch_index: plan.seconds,
            fetch_layers,
            ..Default::default()
        },
        total_seconds: 0.0,
        cluster_row: Some(plan.cluster.clone()),
        compute_port: None,
        recovery_ended_at: None,
        logins: vec![],
        tablespaces: vec![],
    };
    match &req.target {
        Target::Datadir {
            dir,
            recover,
            tablespaces,
            ..
        } => {
            let target = DatadirTarget {
                dir,
                recover: *recover,
                tablespaces,
            };
            write_datadir(p, &plan, &target, lsn, &paths, progress, &mut report).await?
        }
        Target::Branch(name) => {
            start_branch(
                p,
                req,
                &plan,
                name,
                (lsn, prev),
                &paths,
                progress,
                &mut report,
            )
            .await?
        }
    }
    report.substitutions = plan.source.substitutions();
    report.total_seconds = plan.seconds + t0.elapsed().as_secs_f64();
    tracing::info!(cluster = %report.cluster, branch = %report.branch, lsn = %report.lsn, target = %report.target, seconds = report.total_seconds, "restore finished");
    Ok(report)
}

/// A data directory target, as [`write_datadir`] needs it.
struct DatadirTarget<'a> {
    dir: &'a Path,
    recover: bool,
    tablespaces: &'a crate::tablespaces::TablespaceMap,
}

/// 3–5 for a data directory: write it (and its tablespaces), hand it to the PostgreSQL OS
/// user, give its owner a login, replay to the point. Removes what it wrote on failure.
async fn write_datadir(
    p: &Protection,
    plan: &RestorePlan,
    target: &DatadirTarget<'_>,
    lsn: cairn_engine::Lsn,
    paths: &HashMap<LayerId, PathBuf>,
    progress: &Arc<Progress>,
    report: &mut RestoreReport,
) -> Result<()> {
    let local = &p.engine;
    let dir = target.dir;
    let delta = plan.delta;
    let created = !dir.exists();
    let known = image_tablespaces(paths, plan.plan.image.id)?;
    let placement = target.tablespaces.placement(dir, &known)?;
    // Tablespace directories this restore creates (removed again if it fails).
    let mut ts_created: Vec<PathBuf> = Vec::new();
    if !placement.root.exists() {
        ts_created.push(placement.root.clone());
    }
    ts_created.extend(placement.map.values().filter(|d| !d.exists()).cloned());
    let cleanup = || {
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
    progress.phase("write", plan.image_size);
    if delta {
        // The earlier restore belongs to the postgres OS user: root takes it over before
        // writing through its paths (no link can be slipped in meanwhile).
        local.user.take_over_tree(dir)?;
    }
    // Tablespace directories that exist already (empty, or an earlier restore's with --delta)
    // are taken over the same way before root writes through them.
    for d in std::iter::once(&placement.root).chain(placement.map.values()) {
        if d.is_dir() {
            local.user.take_over_tree(d)?;
        }
    }
    let (pl, pa, d, pr) = (
        plan.plan.clone(),
        paths.clone(),
        dir.to_path_buf(),
        progress.clone(),
    );
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
            cleanup();
            return Err(e.into());
        }
    };
    report.data_bytes = stats.data_bytes;
    report.written_bytes = stats.written_bytes;
    report.removed = stats.removed;
    report.wal_segments = stats.wal_segments;
    report.wal_bytes = stats.wal_segments * plan.cluster.segment_size;
    report.tablespaces =
        crate::tablespaces::report(&stats.tablespaces, &known, &stats.wal_tablespaces);
    if let Err(e) = target
        .tablespaces
        .check_used(&placement, &stats.tablespaces)
    {
        cleanup();
        return Err(e);
    }
    // Owned by the PostgreSQL OS user when Cairn runs as root, like any data directory; so are
    // its tablespaces, which that user must reach.
    let owned = std::iter::once(dir)
        .chain(stats.tablespaces.iter().map(|(_, d)| d.as_path()))
        .try_for_each(|d| {
            local.user.chown_tree(d)?;
            local.user.check_reachable(d)
        });
    if let Err(e) = owned {
        cleanup();
        return Err(e.into());
    }
    // Its roles accept only passwords: the owner of the directory gets a way in.
    let cluster = &plan.cluster;
    let su = superuser(cluster);
    let peer = match cluster.kind {
        ClusterKind::Managed => {
            if let Err(e) = crate::logins::grant_peer_login(dir, &local.user.name, &su) {
                cleanup();
                return Err(e);
            }
            Some(local.user.name.as_str())
        }
        ClusterKind::Adopted => None,
    };
    report.logins = crate::logins::logins(cluster, &su, peer);
    report.phases.write = t2.elapsed().as_secs_f64();
    // 4, 5. Replay and first connection.
    if target.recover {
        progress.phase("wal replay", 0);
        match recover(local, cluster, dir, lsn).await {
            Ok(Replay {
                replay_seconds,
                first_connection_seconds,
                ended_at,
            }) => {
                report.recovery_ended_at = Some(ended_at);
                report.phases.wal_replay = Some(replay_seconds);
                report.phases.first_connection = Some(first_connection_seconds);
            }
            Err(e) => {
                cleanup();
                return Err(e);
            }
        }
    }
    Ok(())
}

/// 3–5 for a branch: create it at the point, start a compute on the fetched layers, connect.
/// Removes the branch if the compute does not start.
#[allow(clippy::too_many_arguments)]
async fn start_branch(
    p: &Protection,
    req: &RestoreRequest,
    plan: &RestorePlan,
    name: &str,
    (lsn, prev): (cairn_engine::Lsn, Option<cairn_engine::Lsn>),
    paths: &HashMap<LayerId, PathBuf>,
    progress: &Arc<Progress>,
    report: &mut RestoreReport,
) -> Result<()> {
    let local = &p.engine;
    let lc = local
        .catalog
        .cluster_by_name(&req.cluster)
        .await?
        .ok_or_else(|| Error::Refused(format!("cluster '{}' vanished", req.cluster)))?;
    if lc.id != plan.cluster.id {
        return Err(Error::Refused(format!(
            "cluster '{}' in this appliance is not the cluster of that name in region '{}' (ids \
             {} and {}); restore it with --to-datadir",
            req.cluster, plan.view.region, lc.id, plan.cluster.id
        )));
    }
    local
        .branch_create_at(&lc, name, plan.plan.timeline, lsn, prev)
        .await?;
    let started = local
        .compute_start_from(
            &lc,
            name,
            None,
            progress,
            Some(PreparedSource {
                plan: plan.plan.clone(),
                layers: paths.clone(),
                logical_size: plan.image_size,
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
    report.wal_bytes = m.wal_segments * plan.cluster.segment_size;
    report.phases.write = m.seconds;
    report.phases.wal_replay = info.start_seconds;
    report.compute_port = Some(info.port);
    // First connection, as a user of the branch would make it.
    let t3 = Instant::now();
    let client = cairn_engine::pg::server::connect(info.port, &info.login, "postgres").await?;
    client
        .query_one("SELECT 1", &[])
        .await
        .map_err(|e| Error::Refused(format!("first query on the restored branch: {e}")))?;
    report.phases.first_connection = Some(t3.elapsed().as_secs_f64());
    Ok(())
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

/// Downloads `ids` into the staging area, `parallel` at a time; returns how many.
async fn fetch(
    staging: &Staging,
    source: &Source,
    cluster_id: &str,
    ids: &[LayerId],
    parallel: usize,
    progress: &Arc<Progress>,
) -> Result<usize> {
    // By value (LayerId is Copy): futures borrowing the iterator's items would not be `Send`
    // for every lifetime, and a restore must run in spawned tasks too.
    let jobs = ids.iter().copied().map(|id| async move {
        let id = &id;
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
