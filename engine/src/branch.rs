//! Branches: names for timelines, created in O(1) at any reconstructible point.
//!
//! Creating a branch writes two catalog rows (a timeline whose ancestor is the parent's timeline
//! at the branch LSN, and the branch name) and copies no data, whatever the cluster's size. The
//! branch LSN is always a record boundary: a requested LSN is rounded down to the end of the
//! last complete record before it, a time becomes the boundary just before the first
//! transaction that committed after it, a restore point the boundary just after it.
//!
//! Resetting a branch is the same move in the other direction: the branch name moves to a new
//! timeline branched from its old one at the target, and the old timeline keeps a generated
//! backup name, so nothing is lost by a reset.

use crate::catalog::{now_us, BranchRow, ClusterRow, TimelineRow};
use crate::engine::{fmt_time, remove_tree, validate_name, Engine};
use crate::error::{Error, Result};
use crate::ids::{Lsn, TimelineId};
use crate::ingest::wal::LayerWalSource;
use crate::layer::file::{LayerFile, LayerKind};
use crate::layer::wal::WalMeta;
use crate::wal::{ParseLimits, WalParser};

/// Branches named so are an export's scratch copies: never shipped, removed after the export
/// (or by the next sweep when the export was killed).
pub const SCRATCH_PREFIX: &str = "export-";

/// A point in a branch's history, as the user names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointSpec {
    Head,
    Lsn(Lsn),
    /// Unix microseconds.
    Time(i64),
    RestorePoint(String),
}

impl std::fmt::Display for PointSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PointSpec::Head => write!(f, "its head"),
            PointSpec::Lsn(l) => write!(f, "LSN {l}"),
            PointSpec::Time(t) => write!(f, "time {}", fmt_time(*t)),
            PointSpec::RestorePoint(n) => write!(f, "restore point '{n}'"),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BranchInfo {
    pub name: String,
    pub cluster: String,
    pub timeline: TimelineId,
    pub parent: Option<String>,
    pub depth: usize,
    pub branch_lsn: Option<Lsn>,
    pub branch_time_us: Option<i64>,
    pub head: Lsn,
    pub head_time_us: Option<i64>,
    pub protected: bool,
    pub created_at_us: i64,
    pub compute_port: Option<u16>,
    /// `running`, or `stopped` when a compute should run but does not (`cairn up` restarts it).
    pub compute_state: Option<String>,
    /// Bytes of the layers this branch's own timeline holds.
    pub own_bytes: u64,
    /// Size of the data directory at the latest image of its history.
    pub logical_bytes: u64,
    /// `[from, to]` LSN windows of its history that can be reconstructed.
    pub windows: Vec<(Lsn, Lsn)>,
}

impl Engine {
    /// If a compute runs on `tl`, ingests its WAL so that the head is current.
    async fn sync_if_running(&self, cluster: &ClusterRow, tl: TimelineId) -> Result<TimelineRow> {
        if self.catalog.compute(tl).await?.is_some() {
            self.compute_sync(cluster, tl).await?;
        }
        self.catalog.timeline(tl).await
    }

    /// Turns a user's point into a record boundary of `tl`'s history and the start of the
    /// record ending there.
    pub async fn resolve_point(
        &self,
        cluster: &ClusterRow,
        tl: &TimelineRow,
        spec: &PointSpec,
    ) -> Result<(Lsn, Option<Lsn>)> {
        if *spec == PointSpec::Head {
            return Ok((tl.head, tl.head_prev));
        }
        let x = self.resolve_raw(cluster, tl, spec).await?;
        self.record_boundary(cluster, tl, x).await
    }

    /// Turns a user's point into an LSN of `tl`'s history from the catalog alone (no layer
    /// file is read): times and restore points become record boundaries, an LSN is returned
    /// as given. [`Engine::record_boundary`] rounds it down to a boundary.
    pub async fn resolve_raw(
        &self,
        cluster: &ClusterRow,
        tl: &TimelineRow,
        spec: &PointSpec,
    ) -> Result<Lsn> {
        match spec {
            PointSpec::Head => Ok(tl.head),
            PointSpec::Lsn(l) => {
                if *l > tl.head {
                    let map = self.layer_map(cluster).await?;
                    return Err(self.explain(
                        &map,
                        &format!("LSN {l}"),
                        tl.id,
                        crate::layer_map::Unreconstructible::BeyondHead {
                            lsn: *l,
                            head: tl.head,
                        },
                    ));
                }
                Ok(*l)
            }
            PointSpec::Time(t) => {
                if *t > now_us() {
                    return Err(Error::Refused(format!(
                        "time {} is in the future",
                        fmt_time(*t)
                    )));
                }
                if *t < cluster.created_at_us {
                    return Err(Error::Refused(format!(
                        "time {} is before cluster '{}' existed (it was created at {}); pick a \
                         later time",
                        fmt_time(*t),
                        cluster.name,
                        fmt_time(cluster.created_at_us)
                    )));
                }
                let hist = self.history(tl, tl.head).await?;
                for seg in hist.iter().rev() {
                    if let Some(txn) = self
                        .first_txn_after(seg.timeline, seg.from, seg.to, *t)
                        .await?
                    {
                        return Ok(txn.before);
                    }
                }
                Ok(tl.head)
            }
            PointSpec::RestorePoint(name) => {
                let hist = self.history(tl, tl.head).await?;
                for seg in &hist {
                    let found = self
                        .catalog
                        .restore_points(seg.timeline, seg.from, seg.to, name)
                        .await?;
                    if let Some(ev) = found.last() {
                        return Ok(ev.end);
                    }
                }
                Err(Error::not_found(
                    format!("restore point '{name}' in this branch's history"),
                    "create one with SELECT pg_create_restore_point('NAME') on the compute",
                ))
            }
        }
    }

    /// The last record boundary at or before `l` in `tl`'s history, and the start of the
    /// record that ends there.
    pub async fn record_boundary(
        &self,
        cluster: &ClusterRow,
        tl: &TimelineRow,
        l: Lsn,
    ) -> Result<(Lsn, Option<Lsn>)> {
        if l == tl.head {
            return Ok((tl.head, tl.head_prev));
        }
        let hist = self.history(tl, tl.head).await?;
        let seg = hist
            .iter()
            .find(|s| s.from < l && l <= s.to)
            .or_else(|| hist.last())
            .copied()
            .ok_or_else(|| Error::corrupt("catalog", "timeline without history"))?;
        let layers = self.catalog.timeline_layers(seg.timeline).await?;
        let wal = layers
            .iter()
            .filter(|x| x.kind == LayerKind::Wal)
            .find(|x| x.start < l && l <= x.end)
            .or_else(|| {
                layers
                    .iter()
                    .find(|x| x.kind == LayerKind::Wal && x.start == l)
            });
        let Some(layer) = wal else {
            let map = self.layer_map(cluster).await?;
            let windows = map.reconstructible_windows(tl.id);
            return Err(Error::Refused(format!(
                "LSN {l} is not in the stored WAL of this branch's history (reconstructible: {})",
                if windows.is_empty() {
                    "nothing".into()
                } else {
                    windows
                        .iter()
                        .map(|(a, b)| format!("{a} to {b}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )));
        };
        let path = self.layer_path(layer);
        let major = cluster.pg_major;
        let (seg_size, tli, sysid) = (cluster.segment_size, cluster.tli, cluster.system_id);
        tokio::task::spawn_blocking(move || -> Result<(Lsn, Option<Lsn>)> {
            let f = LayerFile::open(&path, LayerKind::Wal)?;
            let meta = WalMeta::decode(&f.meta)
                .map_err(|e| Error::corrupt(format!("WAL layer {}", path.display()), e.0))?;
            if l == meta.start {
                return Ok((meta.start, meta.prev_record));
            }
            // Parse from the nearest resume point: at most about one chunk of WAL.
            let (from, from_prev) = meta.resume_before(l);
            let mut src = LayerWalSource::new(&f, &meta);
            let mut parser = WalParser {
                segment_size: seg_size,
                major,
                tli: Some(tli),
                system_id: Some(sysid),
                magic: None,
            };
            let out = parser
                .parse(
                    &mut src,
                    from,
                    from_prev,
                    ParseLimits {
                        end: Some(l),
                        ..Default::default()
                    },
                )
                .map_err(|e| Error::io(format!("read WAL layer {}", path.display()), e))?;
            Ok((out.end, out.last_record.or(from_prev)))
        })
        .await
        .map_err(|e| Error::io("WAL task", std::io::Error::other(e.to_string())))?
    }

    /// Creates branch `name` from branch `from` at `spec`, in O(1).
    pub async fn branch_create(
        &self,
        cluster: &ClusterRow,
        name: &str,
        from: &str,
        spec: &PointSpec,
    ) -> Result<BranchInfo> {
        let _g = self.lock_new_branch(cluster, name).await?;
        let (_, parent) = self.resolve_branch(cluster, from).await?;
        let parent = self.sync_if_running(cluster, parent.id).await?;
        let (x, prev) = self.resolve_point(cluster, &parent, spec).await?;
        let map = self.layer_map(cluster).await?;
        map.plan(parent.id, x).map_err(|e| {
            self.explain(
                &map,
                &format!("branch '{from}' at {spec} ({x})"),
                parent.id,
                e,
            )
        })?;
        self.insert_branch_at(cluster, name, parent.id, x, prev)
            .await?;
        tracing::info!(branch = name, from, lsn = %x, "branch created");
        self.branch_info(cluster, name).await
    }

    /// Creates branch `name` on timeline `parent` at the record boundary `x` (the record ending
    /// there starts at `prev`), when the caller has already established that the point is
    /// reconstructible — from a region, for a restore.
    pub async fn branch_create_at(
        &self,
        cluster: &ClusterRow,
        name: &str,
        parent: TimelineId,
        x: Lsn,
        prev: Option<Lsn>,
    ) -> Result<BranchInfo> {
        let _g = self.lock_new_branch(cluster, name).await?;
        let p = self.catalog.timeline(parent).await?;
        if p.cluster_id != cluster.id || x > p.head {
            return Err(Error::Refused(format!(
                "timeline {parent} of cluster '{}' does not reach {x} in this appliance's \
                 catalog (its head is {}); run `cairn catalog rebuild` on an empty appliance, or \
                 restore with --to-datadir",
                cluster.name, p.head
            )));
        }
        self.insert_branch_at(cluster, name, parent, x, prev)
            .await?;
        tracing::info!(branch = name, lsn = %x, "branch created at a restored point");
        self.branch_info(cluster, name).await
    }

    /// Checks that `name` is a valid, free branch name and locks the cluster for its creation.
    async fn lock_new_branch(
        &self,
        cluster: &ClusterRow,
        name: &str,
    ) -> Result<crate::home::LockGuard> {
        validate_name("branch", name)?;
        let g = self
            .home
            .lock_cluster(cluster.id, &format!("cluster '{}'", cluster.name))?;
        if self.catalog.branch(cluster.id, name).await?.is_some() {
            return Err(Error::Refused(format!(
                "branch '{name}' already exists in cluster '{}'",
                cluster.name
            )));
        }
        Ok(g)
    }

    async fn insert_branch_at(
        &self,
        cluster: &ClusterRow,
        name: &str,
        parent: TimelineId,
        x: Lsn,
        prev: Option<Lsn>,
    ) -> Result<()> {
        let tl = TimelineRow {
            id: TimelineId::generate(),
            cluster_id: cluster.id,
            ancestor: Some((parent, x)),
            ancestor_prev: prev,
            head: x,
            head_prev: prev,
            created_at_us: now_us(),
        };
        let mut tx = self.catalog.begin().await?;
        tx.insert_timeline(&tl).await?;
        tx.insert_branch(&BranchRow {
            cluster_id: cluster.id,
            name: name.to_string(),
            timeline_id: tl.id,
            protected: false,
            created_at_us: now_us(),
        })
        .await?;
        tx.commit().await
    }

    /// Describes one branch.
    pub async fn branch_info(&self, cluster: &ClusterRow, name: &str) -> Result<BranchInfo> {
        let all = self.branch_list(cluster).await?;
        all.into_iter()
            .find(|b| b.name == name)
            .ok_or_else(|| Error::not_found(format!("branch '{name}'"), ""))
    }

    /// All branches of a cluster, as a tree in depth-first order.
    pub async fn branch_list(&self, cluster: &ClusterRow) -> Result<Vec<BranchInfo>> {
        let branches = self.catalog.branches(cluster.id).await?;
        let tls = self.catalog.timelines(cluster.id).await?;
        let layers = self.catalog.layers(cluster.id).await?;
        let computes = self.compute_list().await?;
        let map = crate::engine::layer_map_of(&tls, &layers);
        let by_tl: std::collections::HashMap<TimelineId, &BranchRow> =
            branches.iter().map(|b| (b.timeline_id, b)).collect();
        let tl_of: std::collections::HashMap<TimelineId, &TimelineRow> =
            tls.iter().map(|t| (t.id, t)).collect();
        let mut infos = Vec::new();
        for b in &branches {
            let Some(t) = tl_of.get(&b.timeline_id) else {
                continue;
            };
            let parent = t
                .ancestor
                .and_then(|(p, _)| by_tl.get(&p).map(|pb| pb.name.clone()));
            let branch_time = match t.ancestor {
                Some((p, at)) => self.shown_time_at(tl_of[&p], at).await?,
                None => None,
            };
            let head_time = self.shown_time_at(t, t.head).await?;
            let own_bytes = layers
                .iter()
                .filter(|l| l.timeline_id == t.id)
                .map(|l| l.file_size)
                .sum();
            let logical_bytes = match map.plan(t.id, t.head) {
                Ok(p) => layers
                    .iter()
                    .find(|l| l.id == p.image.id)
                    .map_or(0, |l| l.logical_size),
                Err(_) => 0,
            };
            infos.push(BranchInfo {
                name: b.name.clone(),
                cluster: cluster.name.clone(),
                timeline: t.id,
                parent,
                depth: 0,
                branch_lsn: t.ancestor.map(|a| a.1),
                branch_time_us: branch_time,
                head: t.head,
                head_time_us: head_time,
                protected: b.protected,
                created_at_us: b.created_at_us,
                compute_port: computes.iter().find(|c| c.timeline == t.id).map(|c| c.port),
                compute_state: computes
                    .iter()
                    .find(|c| c.timeline == t.id)
                    .map(|c| c.state.clone()),
                own_bytes,
                logical_bytes,
                windows: map.reconstructible_windows(t.id),
            });
        }
        // Depth-first order from the roots.
        let mut ordered = Vec::with_capacity(infos.len());
        fn visit(name: &str, depth: usize, infos: &[BranchInfo], out: &mut Vec<BranchInfo>) {
            if let Some(i) = infos.iter().find(|i| i.name == name) {
                let mut i = i.clone();
                i.depth = depth;
                out.push(i);
            }
            for child in infos.iter().filter(|i| i.parent.as_deref() == Some(name)) {
                visit(&child.name, depth + 1, infos, out);
            }
        }
        for root in infos.iter().filter(|i| i.parent.is_none()) {
            visit(&root.name, 0, &infos, &mut ordered);
        }
        Ok(ordered)
    }

    /// Commit time of the last transaction at or before `x` in `tl`'s history.
    pub async fn time_at(&self, tl: &TimelineRow, x: Lsn) -> Result<Option<i64>> {
        for seg in self.history(tl, x).await? {
            if let Some(txn) = self.last_txn_before(seg.timeline, seg.from, seg.to).await? {
                return Ok(Some(txn.time_us));
            }
        }
        Ok(None)
    }

    /// [`Engine::time_at`] for a description: a WAL layer that cannot be read (reported by
    /// `cairn check`) leaves the time unknown rather than failing the whole listing.
    async fn shown_time_at(&self, tl: &TimelineRow, x: Lsn) -> Result<Option<i64>> {
        match self.time_at(tl, x).await {
            Err(e @ (Error::Io { .. } | Error::Corrupt { .. })) => {
                tracing::warn!(timeline = %tl.id, lsn = %x, error = %e, "commit time unknown");
                Ok(None)
            }
            other => other,
        }
    }

    /// Rewinds branch `name` to `spec`; its pre-reset state stays as a backup branch, whose name
    /// is returned with the new description.
    pub async fn branch_reset(
        &self,
        cluster: &ClusterRow,
        name: &str,
        spec: &PointSpec,
    ) -> Result<(BranchInfo, String)> {
        let _g = self
            .home
            .lock_cluster(cluster.id, &format!("cluster '{}'", cluster.name))?;
        let (b, tl) = self.resolve_branch(cluster, name).await?;
        let _tg = self
            .home
            .lock_timeline(tl.id, &format!("branch '{name}'"))?;
        if self.catalog.compute(tl.id).await?.is_some() {
            return Err(Error::Refused(format!(
                "branch '{name}' has a running compute; stop it first (cairn compute stop {name})"
            )));
        }
        let (x, prev) = self.resolve_point(cluster, &tl, spec).await?;
        let map = self.layer_map(cluster).await?;
        map.plan(tl.id, x).map_err(|e| {
            self.explain(&map, &format!("branch '{name}' at {spec} ({x})"), tl.id, e)
        })?;
        let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
        let mut backup = format!("{name}-pre-reset-{stamp}");
        let mut n = 1;
        while self.catalog.branch(cluster.id, &backup).await?.is_some() {
            n += 1;
            backup = format!("{name}-pre-reset-{stamp}-{n}");
        }
        if backup.len() > 63 {
            backup = format!("pre-reset-{stamp}-{}", &tl.id.to_string()[..8]);
        }
        let new_tl = TimelineRow {
            id: TimelineId::generate(),
            cluster_id: cluster.id,
            ancestor: Some((tl.id, x)),
            ancestor_prev: prev,
            head: x,
            head_prev: prev,
            created_at_us: now_us(),
        };
        let mut tx = self.catalog.begin().await?;
        tx.insert_timeline(&new_tl).await?;
        // The old timeline keeps its history under the backup name.
        tx.repoint_branch(cluster.id, name, new_tl.id).await?;
        tx.insert_branch(&BranchRow {
            cluster_id: cluster.id,
            name: backup.clone(),
            timeline_id: tl.id,
            protected: false,
            created_at_us: now_us(),
        })
        .await?;
        if b.protected {
            tx.set_protected(cluster.id, name, true).await?;
        }
        tx.commit().await?;
        tracing::info!(branch = name, to = %x, backup = %backup, "branch reset");
        Ok((self.branch_info(cluster, name).await?, backup))
    }

    /// Deletes a branch that has no children, no compute and no protection.
    pub async fn branch_delete(&self, cluster: &ClusterRow, name: &str) -> Result<()> {
        let _g = self
            .home
            .lock_cluster(cluster.id, &format!("cluster '{}'", cluster.name))?;
        let (b, tl) = self.resolve_branch(cluster, name).await?;
        if b.protected {
            return Err(Error::Refused(format!(
                "branch '{name}' is protected; remove the protection first (cairn branch \
                 protect {name} --off) if you really mean to delete it"
            )));
        }
        let children: Vec<String> = {
            let mut v = Vec::new();
            for t in self.catalog.timelines(cluster.id).await? {
                if t.ancestor.map(|a| a.0) == Some(tl.id) {
                    v.push(
                        self.catalog
                            .branch_of_timeline(t.id)
                            .await?
                            .map_or_else(|| t.id.to_string(), |b| b.name),
                    );
                }
            }
            v
        };
        if !children.is_empty() {
            return Err(Error::Refused(format!(
                "branch '{name}' has child branches ({}); delete them first",
                children.join(", ")
            )));
        }
        let _tg = self
            .home
            .lock_timeline(tl.id, &format!("branch '{name}'"))?;
        if self.catalog.compute(tl.id).await?.is_some() {
            return Err(Error::Refused(format!(
                "branch '{name}' has a compute; stop it first (cairn compute stop {name})"
            )));
        }
        let mut tx = self.catalog.begin().await?;
        tx.delete_branch(cluster.id, name).await?;
        tx.delete_timeline(tl.id).await?;
        tx.commit().await?;
        remove_tree(&self.home.timeline_dir(cluster.id, tl.id))?;
        Ok(())
    }

    pub async fn branch_protect(&self, cluster: &ClusterRow, name: &str, on: bool) -> Result<()> {
        self.resolve_branch(cluster, name).await?;
        let mut tx = self.catalog.begin().await?;
        tx.set_protected(cluster.id, name, on).await?;
        tx.commit().await
    }
}
