//! Managed clusters: created by `initdb`, ingested, and from then on run as computes.
//!
//! Creating a cluster is all-or-nothing: the new data directory is started once on a free
//! loopback port, a base backup of it becomes the first image layer, it is shut down cleanly,
//! its WAL becomes the first WAL layers, and one catalog transaction records the cluster, its
//! root timeline, the protected `main` branch and those layers. A failure (or a kill) before the
//! commit leaves only directories that the next run removes.

use std::sync::Arc;

use crate::catalog::{now_us, BranchRow, ClusterKind, ClusterRow, TimelineRow};
use crate::engine::{remove_tree, validate_name, Engine};
use crate::error::{Error, Result};
use crate::ids::{ClusterId, Lsn, TimelineId};
use crate::ingest::image::BuiltImage;
use crate::ingest::wal::BuiltWal;
use crate::layer::file::LayerKind;
use crate::pg::scratch::generate_password;
use crate::pg::server::{free_port, Credentials, Server};
use crate::progress::Progress;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterSummary {
    pub name: String,
    pub id: ClusterId,
    pub kind: ClusterKind,
    pub pg_major: u32,
    pub system_id: String,
    pub branches: usize,
    pub image_layers: usize,
    pub wal_layers: usize,
    pub stored_bytes: u64,
    pub main_head: Option<Lsn>,
    pub created_at_us: i64,
    pub source: Option<String>,
}

impl Engine {
    /// Creates a managed cluster: `initdb` (data checksums on), first image, first WAL.
    pub async fn create_cluster(
        &self,
        name: &str,
        progress: &Arc<Progress>,
    ) -> Result<ClusterSummary> {
        validate_name("cluster", name)?;
        let _g = self.home.lock_clusters()?;
        self.recover_orphans_locked().await?;
        if self.catalog.cluster_by_name(name).await?.is_some() {
            return Err(Error::Refused(format!(
                "cluster '{name}' already exists; pick another name or delete it first"
            )));
        }
        let bins = self.bins()?.clone();
        let cid = ClusterId::generate();
        let tid = TimelineId::generate();
        let dir = self.home.compute_dir(tid);
        let creds = Credentials {
            user: "postgres".into(),
            password: generate_password(),
        };
        let mut server = Server::new(
            &bins,
            &self.user,
            &dir.join("pgdata"),
            free_port()?,
            &dir.join("postgres.log"),
        );
        let result = self
            .create_inner(name, cid, tid, &mut server, &creds, progress)
            .await;
        if server.running() {
            let _ = server.stop("immediate");
        }
        let _ = remove_tree(&dir);
        match result {
            Ok(()) => {
                let c = self.resolve_cluster(Some(name)).await?;
                self.cluster_summary(&c).await
            }
            Err(e) => {
                let _ = remove_tree(&self.home.cluster_dir(cid));
                self.home.remove_secrets(cid);
                Err(e)
            }
        }
    }

    async fn create_inner(
        &self,
        name: &str,
        cid: ClusterId,
        tid: TimelineId,
        server: &mut Server,
        creds: &Credentials,
        progress: &Arc<Progress>,
    ) -> Result<()> {
        let dir = self.home.compute_dir(tid);
        crate::fsutil::create_dir_mode(&dir, 0o711).map_err(|e| Error::path("create", &dir, e))?;
        self.user.check_reachable(&dir)?;
        progress.phase("initdb", 0);
        server.initdb(creds)?;
        server.start_on_free_port(&crate::access::compute_settings("main"))?;
        let ctrl = server.control_data()?;
        let client = server.connect(creds, "postgres").await?;
        client
            .execute(
                "SELECT pg_create_physical_replication_slot($1, true)",
                &[&crate::access::SLOT],
            )
            .await
            .map_err(|e| Error::postgres("create the cairn replication slot", e.to_string()))?;
        drop(client);
        let mut cluster = ClusterRow {
            id: cid,
            name: name.to_string(),
            kind: ClusterKind::Managed,
            pg_major: self.bins()?.major,
            system_id: ctrl.system_id,
            segment_size: ctrl.segment_size,
            tli: ctrl.tli,
            source: None,
            slot: None,
            created_at_us: now_us(),
        };
        let mut tl = TimelineRow {
            id: tid,
            cluster_id: cid,
            ancestor: None,
            ancestor_prev: None,
            head: Lsn(0),
            head_prev: None,
            created_at_us: now_us(),
        };
        let image = self
            .take_image(&cluster, &tl, server, creds, progress)
            .await?;
        cluster.tli = image_tli(&image).unwrap_or(cluster.tli);
        server.stop("fast")?;
        tl.head = image.meta.start_lsn;
        let wals = self
            .write_wal_layers(&cluster, &tl, &server.datadir.join("pg_wal"), None, None)
            .await?;
        let head = wals.last().map_or(tl.head, |w| w.meta.end);
        if head < image.meta.end_lsn {
            return Err(Error::postgres(
                format!("ingest the new cluster '{name}'"),
                format!(
                    "its WAL ends at {head}, before the image is consistent ({})",
                    image.meta.end_lsn
                ),
            ));
        }
        self.home.write_secret(cid, "password", &creds.password)?;
        self.commit_new_cluster(&cluster, &tl, &image, &wals).await
    }

    /// One transaction: cluster, root timeline, protected `main`, first layers.
    pub(crate) async fn commit_new_cluster(
        &self,
        cluster: &ClusterRow,
        tl: &TimelineRow,
        image: &BuiltImage,
        wals: &[BuiltWal],
    ) -> Result<()> {
        let mut tx = self.catalog.begin().await?;
        tx.insert_cluster(cluster).await?;
        let mut root = tl.clone();
        if let Some(last) = wals.last() {
            root.head = last.meta.end;
            root.head_prev = Some(last.meta.last_record);
        }
        tx.insert_timeline(&root).await?;
        tx.insert_branch(&BranchRow {
            cluster_id: cluster.id,
            name: "main".into(),
            timeline_id: tl.id,
            protected: true,
            created_at_us: now_us(),
        })
        .await?;
        crate::timeline::add_layers(&mut tx, cluster, tl, Some(image), wals).await?;
        crate::failpoint::hit("create-before-commit");
        tx.commit().await
    }

    pub async fn cluster_summary(&self, c: &ClusterRow) -> Result<ClusterSummary> {
        let layers = self.catalog.layers(c.id).await?;
        let branches = self.catalog.branches(c.id).await?;
        let main_head = match branches.iter().find(|b| b.name == "main") {
            Some(b) => Some(self.catalog.timeline(b.timeline_id).await?.head),
            None => None,
        };
        Ok(ClusterSummary {
            name: c.name.clone(),
            id: c.id,
            kind: c.kind,
            pg_major: c.pg_major,
            system_id: c.system_id.to_string(),
            branches: branches.len(),
            image_layers: layers.iter().filter(|l| l.kind == LayerKind::Image).count(),
            wal_layers: layers.iter().filter(|l| l.kind == LayerKind::Wal).count(),
            stored_bytes: layers.iter().map(|l| l.file_size).sum(),
            main_head,
            created_at_us: c.created_at_us,
            source: c.source.clone(),
        })
    }

    pub async fn cluster_summaries(&self) -> Result<Vec<ClusterSummary>> {
        let mut out = Vec::new();
        for c in self.catalog.clusters().await? {
            out.push(self.cluster_summary(&c).await?);
        }
        Ok(out)
    }

    /// Deletes a cluster and every layer of it. Its computes must be stopped.
    pub async fn delete_cluster(&self, name: &str) -> Result<()> {
        let _g = self.home.lock_clusters()?;
        let c = self.resolve_cluster(Some(name)).await?;
        let _cg = self.home.lock_cluster(c.id, &format!("cluster '{name}'"))?;
        let running: Vec<_> = self
            .catalog
            .computes()
            .await?
            .into_iter()
            .filter(|x| x.cluster_id == c.id)
            .collect();
        if !running.is_empty() {
            return Err(Error::Refused(format!(
                "cluster '{name}' has {} compute(s); stop them first (cairn compute stop BRANCH)",
                running.len()
            )));
        }
        let mut tls = self.catalog.timelines(c.id).await?;
        tls.reverse();
        let mut tx = self.catalog.begin().await?;
        for b in self.catalog.branches(c.id).await? {
            tx.delete_branch(c.id, &b.name).await?;
        }
        for t in &tls {
            tx.delete_timeline(t.id).await?;
        }
        tx.delete_cluster(c.id).await?;
        tx.commit().await?;
        remove_tree(&self.home.cluster_dir(c.id))?;
        remove_tree(&self.home.spool_dir(c.id))?;
        self.home.remove_secrets(c.id);
        Ok(())
    }

    /// Deletes the scratch branches of exports and verifications whose process is gone or
    /// gave them up (their lock is free), with their computes: they held a point's data for a
    /// dump or a comparison, nothing else.
    pub async fn sweep_scratch_branches(&self) -> Result<usize> {
        let mut removed = 0;
        for c in self.catalog.clusters().await? {
            for b in self.catalog.branches(c.id).await? {
                if !b.name.starts_with(crate::branch::SCRATCH_PREFIX) {
                    continue;
                }
                let Ok(_g) = self.home.lock(
                    &format!("scratch-branch-{}", b.name),
                    "an export's scratch branch",
                    std::time::Duration::ZERO,
                ) else {
                    continue;
                };
                tracing::info!(branch = %b.name, "removing the scratch branch of a killed export");
                if self.catalog.compute(b.timeline_id).await?.is_some() {
                    self.force_stop_compute(c.id, b.timeline_id).await?;
                }
                self.branch_delete(&c, &b.name).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes what crashed processes left outside any timeline: directories of clusters and
    /// timelines the catalog does not know, and computes that are not in it (stopping any
    /// server still running there). Skipped while another process creates a cluster.
    pub async fn recover_orphans(&self) -> Result<usize> {
        match self
            .home
            .lock("clusters", "the cluster list", std::time::Duration::ZERO)
        {
            Ok(_g) => self.recover_orphans_locked().await,
            Err(Error::Busy(_)) => Ok(0),
            Err(e) => Err(e),
        }
    }

    async fn recover_orphans_locked(&self) -> Result<usize> {
        let mut removed = self.home.sweep_scratch();
        removed += self.sweep_scratch_branches().await?;
        let clusters = self.catalog.clusters().await?;
        let mut known_tls = std::collections::HashSet::new();
        for c in &clusters {
            for t in self.catalog.timelines(c.id).await? {
                known_tls.insert(t.id);
            }
        }
        let known_c: std::collections::HashSet<_> = clusters.iter().map(|c| c.id).collect();
        if let Ok(rd) = std::fs::read_dir(self.home.layers_dir()) {
            for e in rd.flatten() {
                let Ok(cid) = e.file_name().to_string_lossy().parse::<ClusterId>() else {
                    continue;
                };
                if !known_c.contains(&cid) {
                    tracing::info!(dir = %e.path().display(), "removing directory of an uncommitted cluster");
                    remove_tree(&e.path())?;
                    removed += 1;
                    continue;
                }
                for t in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                    let Ok(tid) = t.file_name().to_string_lossy().parse::<TimelineId>() else {
                        continue;
                    };
                    if !known_tls.contains(&tid) {
                        if let Some(_g) = self.home.try_lock_timeline(tid) {
                            remove_tree(&t.path())?;
                            removed += 1;
                        }
                    }
                }
            }
        }
        let computes: std::collections::HashSet<_> = self
            .catalog
            .computes()
            .await?
            .into_iter()
            .map(|c| c.timeline_id)
            .collect();
        if let Ok(rd) = std::fs::read_dir(&self.home.computes) {
            for e in rd.flatten() {
                let Ok(tid) = e.file_name().to_string_lossy().parse::<TimelineId>() else {
                    continue;
                };
                if computes.contains(&tid) {
                    continue;
                }
                let Some(_g) = self.home.try_lock_timeline(tid) else {
                    continue;
                };
                let datadir = e.path().join("pgdata");
                if let Ok(bins) = self.bins() {
                    let s = Server::new(
                        bins,
                        &self.user,
                        &datadir,
                        0,
                        &e.path().join("postgres.log"),
                    );
                    if s.running() {
                        tracing::warn!(dir = %datadir.display(), "stopping an orphaned PostgreSQL");
                        let _ = s.stop("immediate");
                    }
                }
                remove_tree(&e.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn image_tli(img: &BuiltImage) -> Option<u32> {
    img.meta
        .backup_label
        .lines()
        .find_map(|l| l.strip_prefix("START TIMELINE:"))
        .and_then(|v| v.trim().parse().ok())
}
