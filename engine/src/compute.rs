//! Computes: real PostgreSQL servers running a branch, and the flow of their WAL back into it.
//!
//! A compute is started from a materialised data directory (see [`crate::materialise`]); right
//! after start it gets a physical replication slot, `cairn`, which keeps every WAL segment from
//! the branch head onwards until Cairn has stored it in a layer. Ingest ("sync") reads the
//! compute's own `pg_wal` up to the server's flush position, validates the chain, writes WAL
//! layers, commits them, and only then advances the slot. A crash anywhere leaves the WAL
//! either in a committed layer or still retained by the slot.
//!
//! Stopping a compute shuts PostgreSQL down cleanly (a shutdown checkpoint is written), ingests
//! everything up to the end of its WAL, and removes the data directory: the branch keeps all of
//! it in layers.

use std::path::Path;
use std::sync::Arc;

use crate::catalog::{now_us, ClusterKind, ClusterRow, ComputeRow, TimelineRow};
use crate::engine::{remove_tree, Engine};
use crate::error::{Error, Result};
use crate::ids::{ClusterId, LayerId, Lsn, TimelineId};
use crate::ingest::image::BuiltImage;
use crate::ingest::wal::{self as wal_ingest, BuiltWal, WalStream};
use crate::materialise::{materialise, MaterialiseStats};
use crate::pg::server::{free_port, Credentials, Server};
use crate::progress::Progress;
use crate::tablespace::Placement;
use crate::wal::DirSource;

/// WAL bytes per layer at most.
pub const MAX_WAL_LAYER: u64 = 256 << 20;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ComputeInfo {
    pub cluster: String,
    pub branch: String,
    pub timeline: TimelineId,
    pub port: u16,
    /// Connection URL, password included: show it to the user, never log it.
    #[serde(skip)]
    pub url: String,
    /// Who `url` logs in as (the owner role, see [`crate::tenant`]): never serialised.
    #[serde(skip)]
    pub login: Credentials,
    /// The role name `url` logs in as.
    pub role: String,
    pub datadir: std::path::PathBuf,
    pub pid: Option<i64>,
    pub head: Lsn,
    pub already_running: bool,
    pub materialise: Option<MaterialiseStats>,
    /// Seconds from starting PostgreSQL to its end of recovery and first connection.
    pub start_seconds: Option<f64>,
}

impl ComputeInfo {
    /// Makes `url` log in as `creds` (e.g. the superuser an operator asked for).
    pub fn login_as(&mut self, creds: Credentials) {
        self.url = crate::pg::server::url(self.port, &creds, "postgres");
        self.role = creds.user.clone();
        self.login = creds;
    }
}

pub use crate::access::{compute_settings, superuser, SLOT};
pub use crate::compute_image::ImageReport;
pub use crate::timeline::SyncReport;
use crate::timeline::{add_layers, advance_slot, flush_lsn};

/// A branch head's reconstruction prepared outside the local layers (e.g. fetched from a region).
#[derive(Debug, Clone)]
pub struct PreparedSource {
    pub plan: crate::layer_map::Plan,
    pub layers: std::collections::HashMap<LayerId, std::path::PathBuf>,
    /// Bytes the data directory will hold (for progress).
    pub logical_size: u64,
}

impl Engine {
    /// The superuser credentials computes of `cluster` accept.
    pub fn credentials(&self, cluster: &ClusterRow) -> Result<Credentials> {
        match cluster.kind {
            ClusterKind::Managed => Ok(Credentials {
                user: superuser(cluster),
                password: self.home.read_secret(cluster.id, "password")?,
            }),
            ClusterKind::Adopted => Ok(Credentials {
                user: superuser(cluster),
                password: self
                    .home
                    .read_secret(cluster.id, "source-password")
                    .unwrap_or_default(),
            }),
        }
    }

    pub(crate) fn server_for(
        &self,
        cluster: &ClusterRow,
        tl: TimelineId,
        port: u16,
    ) -> Result<Server> {
        let dir = self.home.compute_dir(tl);
        Ok(Server::new(
            self.bins_for(cluster)?,
            &self.user,
            &dir.join("pgdata"),
            port,
            &dir.join("postgres.log"),
        ))
    }

    pub(crate) fn stream(&self, cluster: &ClusterRow, tl: TimelineId) -> WalStream {
        WalStream {
            timeline: tl,
            system_id: cluster.system_id,
            pg_major: cluster.pg_major,
            tli: cluster.tli,
            segment_size: cluster.segment_size,
        }
    }

    /// Removes what a dead process left in a timeline's directory: temporary files and layer
    /// files the catalog does not name. Call with the timeline lock held.
    pub async fn recover_timeline(&self, cluster: &ClusterRow, tl: TimelineId) -> Result<usize> {
        let dir = self.home.timeline_dir(cluster.id, tl);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(0);
        };
        let known: std::collections::HashSet<_> = self
            .catalog
            .timeline_layers(tl)
            .await?
            .into_iter()
            .map(|l| l.id)
            .collect();
        let mut removed = 0;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let garbage = crate::fsutil::is_temp_name(&name)
                || crate::layer::file::parse_file_name(&name)
                    .is_some_and(|(_, id)| !known.contains(&id));
            if garbage {
                tracing::info!(file = %e.path().display(), "removing uncommitted layer file");
                std::fs::remove_file(e.path())
                    .map_err(|err| Error::path("remove", &e.path(), err))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Reads the WAL available in `dir` from the timeline's head and writes layers for it.
    /// Nothing is committed.
    pub(crate) async fn write_wal_layers(
        &self,
        cluster: &ClusterRow,
        tl: &TimelineRow,
        dir: &Path,
        vouched: Option<Lsn>,
        must_reach: Option<Lsn>,
    ) -> Result<Vec<BuiltWal>> {
        let stream = self.stream(cluster, tl.id);
        let out_dir = self.home.timeline_dir(cluster.id, tl.id);
        let dir = dir.to_path_buf();
        let (start, prev) = (tl.head, tl.head_prev);
        tokio::task::spawn_blocking(move || -> Result<Vec<BuiltWal>> {
            let mut src = DirSource::new(&dir, stream.tli, stream.segment_size);
            // Pass 1: validate everything the server vouches for; write nothing on failure.
            wal_ingest::scan(
                &stream, &mut src, &dir, start, prev, vouched, must_reach, None,
            )?;
            // Pass 2: write layers of bounded size.
            let mut built = Vec::new();
            let (mut at, mut prev) = (start, prev);
            loop {
                let out = wal_ingest::scan(
                    &stream,
                    &mut src,
                    &dir,
                    at,
                    prev,
                    vouched,
                    None,
                    Some(MAX_WAL_LAYER),
                )?;
                if out.records == 0 {
                    break;
                }
                let b = wal_ingest::write_layer(&out_dir, &stream, &mut src, &out, prev, now_us())?;
                at = out.end;
                prev = out.last_record;
                built.push(b);
            }
            Ok(built)
        })
        .await
        .map_err(|e| Error::io("WAL ingest task", std::io::Error::other(e.to_string())))?
    }

    /// Commits an optional image and WAL layers and advances the timeline's head, in one
    /// transaction.
    pub(crate) async fn commit_layers(
        &self,
        cluster: &ClusterRow,
        tl: &TimelineRow,
        image: Option<&BuiltImage>,
        wals: &[BuiltWal],
    ) -> Result<(Lsn, Option<Lsn>)> {
        let mut tx = self.catalog.begin().await?;
        let head = add_layers(&mut tx, cluster, tl, image, wals).await?;
        if !wals.is_empty() {
            tx.set_head(tl.id, head.0, head.1).await?;
        }
        crate::failpoint::hit("layers-before-commit");
        tx.commit().await?;
        crate::failpoint::hit("layers-after-commit");
        Ok(head)
    }

    /// Materialises a branch's head and starts a compute on it.
    pub async fn compute_start(
        &self,
        cluster: &ClusterRow,
        branch: &str,
        port: Option<u16>,
        progress: &Arc<Progress>,
    ) -> Result<ComputeInfo> {
        self.compute_start_from(cluster, branch, port, progress, None)
            .await
    }

    /// Starts a compute on a branch, materialising its head from `source` (a plan and layer
    /// files fetched from elsewhere, e.g. a region) instead of the local layers when given.
    /// The plan must reconstruct the branch head.
    pub async fn compute_start_from(
        &self,
        cluster: &ClusterRow,
        branch: &str,
        port: Option<u16>,
        progress: &Arc<Progress>,
        source: Option<PreparedSource>,
    ) -> Result<ComputeInfo> {
        let (b, tl) = self.resolve_branch(cluster, branch).await?;
        let _g = self
            .home
            .lock_timeline(tl.id, &format!("branch '{branch}'"))?;
        self.recover_timeline(cluster, tl.id).await?;
        let creds = self.credentials(cluster)?;
        if let Some(c) = self.catalog.compute(tl.id).await? {
            let server = self.server_for(cluster, tl.id, c.port)?;
            if let Some(pid) = server.pid() {
                let user = self.tenant_credentials(cluster, &server).await?;
                return Ok(ComputeInfo {
                    cluster: cluster.name.clone(),
                    branch: b.name,
                    timeline: tl.id,
                    port: c.port,
                    url: server.url(&user, "postgres"),
                    role: user.user.clone(),
                    login: user,
                    datadir: c.datadir,
                    pid: Some(pid),
                    head: tl.head,
                    already_running: true,
                    materialise: None,
                    start_seconds: None,
                });
            }
            // Left behind by a crash: its WAL is still in its pg_wal; take it before starting over.
            self.ingest_stopped(cluster, &tl, &server).await?;
        }
        let tl = self.catalog.timeline(tl.id).await?;
        let (plan, paths, total) = match source {
            Some(s) => {
                if s.plan.lsn != tl.head {
                    return Err(Error::Refused(format!(
                        "the prepared plan reaches {}, not the head of branch '{branch}' ({})",
                        s.plan.lsn, tl.head
                    )));
                }
                (s.plan, s.layers, s.logical_size)
            }
            None => {
                let map = self.layer_map(cluster).await?;
                let plan = map.plan(tl.id, tl.head).map_err(|e| {
                    self.explain(&map, &format!("the head of branch '{branch}'"), tl.id, e)
                })?;
                let layers = self.catalog.layers(cluster.id).await?;
                let total = layers
                    .iter()
                    .find(|l| l.id == plan.image.id)
                    .map_or(0, |l| l.logical_size);
                let paths: std::collections::HashMap<_, _> =
                    layers.iter().map(|l| (l.id, self.layer_path(l))).collect();
                (plan, paths, total)
            }
        };
        // A port the operator named is refused when taken; one Cairn chose moves on (below).
        let chosen = port.is_none();
        let port = match port {
            Some(p) => p,
            None => free_port()?,
        };
        let mut server = self.server_for(cluster, tl.id, port)?;
        let dir = self.home.compute_dir(tl.id);
        remove_tree(&dir)?;
        crate::fsutil::create_dir_mode(&dir, 0o711).map_err(|e| Error::path("create", &dir, e))?;
        self.user.check_reachable(&dir)?;
        if !chosen && crate::pg::server::port_in_use(port) {
            remove_tree(&dir)?;
            return Err(Error::PortInUse(port));
        }
        let datadir = server.datadir.clone();
        let placement = Placement::under(dir.join("tablespaces"));
        progress.phase("materialise", total);
        let p = progress.clone();
        let stats = tokio::task::spawn_blocking(move || {
            materialise(&plan, &paths, &datadir, &placement, &p.done)
        })
        .await
        .map_err(|e| Error::io("materialise task", std::io::Error::other(e.to_string())))?;
        let stats = match stats {
            Ok(s) => s,
            Err(e) => {
                remove_tree(&dir)?;
                return Err(e);
            }
        };
        if cluster.kind == ClusterKind::Adopted {
            crate::access::write_compute_hba(&server.datadir)?;
        }
        self.user.chown_tree(&dir)?;
        let mut settings = compute_settings(branch);
        if cluster.kind == ClusterKind::Adopted {
            settings.push((
                "hba_file",
                server
                    .datadir
                    .join("pg_hba.cairn.conf")
                    .display()
                    .to_string(),
            ));
            // The source's configuration came with its data directory: nothing in it runs
            // on the appliance.
            settings.extend(crate::pg::server::untrusted_config_overrides(
                cluster.pg_major,
            ));
        }
        progress.phase("start", 0);
        let started = std::time::Instant::now();
        let started_ok = if chosen {
            server.start_on_free_port(&settings)
        } else {
            server.start(&settings)
        };
        if let Err(e) = started_ok {
            let _ = server.stop("immediate");
            remove_tree(&dir)?;
            return Err(e);
        }
        let port = server.port;
        let user = match self.after_start(cluster, &server, &creds, &tl).await {
            Ok(user) => user,
            Err(e) => {
                let _ = server.stop("immediate");
                remove_tree(&dir)?;
                return Err(e);
            }
        };
        let start_seconds = started.elapsed().as_secs_f64();
        let pid = server.pid();
        let mut tx = self.catalog.begin().await?;
        tx.upsert_compute(&ComputeRow {
            timeline_id: tl.id,
            cluster_id: cluster.id,
            desired: "running".into(),
            port,
            datadir: server.datadir.clone(),
            pid,
            started_at_us: now_us(),
        })
        .await?;
        tx.commit().await?;
        tracing::info!(branch, port, head = %tl.head, "compute started");
        Ok(ComputeInfo {
            cluster: cluster.name.clone(),
            branch: b.name,
            timeline: tl.id,
            port,
            url: server.url(&user, "postgres"),
            role: user.user.clone(),
            login: user,
            datadir: server.datadir.clone(),
            pid,
            head: tl.head,
            already_running: false,
            materialise: Some(stats),
            start_seconds: Some(start_seconds),
        })
    }

    /// Creates the slot, checks the server ended recovery exactly at the branch head, and
    /// sets up the owner role. Returns the credentials the compute's URL carries.
    async fn after_start(
        &self,
        cluster: &ClusterRow,
        server: &Server,
        creds: &Credentials,
        tl: &TimelineRow,
    ) -> Result<Credentials> {
        let client = server.connect_control(creds, "postgres").await?;
        let row = client
            .query_one(
                "SELECT checkpoint_lsn::text, redo_lsn::text FROM pg_control_checkpoint()",
                &[],
            )
            .await
            .map_err(|e| Error::postgres("read the recovery end point", e.to_string()))?;
        let ckpt: Lsn = row
            .get::<_, String>(0)
            .parse()
            .map_err(|e: String| Error::postgres("pg_control_checkpoint", e))?;
        if ckpt < tl.head || ckpt.0 > tl.head.0 + crate::wal::LONG_PHD {
            return Err(Error::corrupt(
                format!("compute in {}", server.datadir.display()),
                format!(
                    "PostgreSQL ended recovery at {ckpt}, not at the branch head {}: the WAL \
                     handed to it is incomplete. Run `cairn check`",
                    tl.head
                ),
            ));
        }
        client
            .execute(
                "SELECT pg_create_physical_replication_slot($1, true)",
                &[&SLOT],
            )
            .await
            .map_err(|e| Error::postgres("create the cairn replication slot", e.to_string()))?;
        let restart: String = client
            .query_one(
                "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&SLOT],
            )
            .await
            .map_err(|e| Error::postgres("read the cairn replication slot", e.to_string()))?
            .get(0);
        let restart: Lsn = restart
            .parse()
            .map_err(|e: String| Error::postgres("slot", e))?;
        if restart > ckpt {
            return Err(Error::postgres(
                "create the cairn replication slot",
                format!("slot retains WAL only from {restart}, after the branch head {ckpt}"),
            ));
        }
        self.setup_tenant(cluster, &client).await
    }

    /// Ingests the WAL of a running compute up to its flush position and advances its slot.
    pub async fn compute_sync(&self, cluster: &ClusterRow, tl: TimelineId) -> Result<SyncReport> {
        let _g = self.home.lock_timeline(tl, "the branch")?;
        self.sync_locked(cluster, tl).await
    }

    pub(crate) async fn sync_locked(
        &self,
        cluster: &ClusterRow,
        tl_id: TimelineId,
    ) -> Result<SyncReport> {
        self.recover_timeline(cluster, tl_id).await?;
        let tl = self.catalog.timeline(tl_id).await?;
        let c = self.catalog.compute(tl_id).await?.ok_or_else(|| {
            Error::Refused(
                "no compute runs on this branch; start one with `cairn compute start`".into(),
            )
        })?;
        let server = self.server_for(cluster, tl_id, c.port)?;
        if server.pid().is_none() {
            // Crashed or stopped behind our back: take what its pg_wal holds.
            return self.ingest_stopped(cluster, &tl, &server).await;
        }
        let creds = self.credentials(cluster)?;
        let client = server.connect_control(&creds, "postgres").await?;
        let flush = flush_lsn(&client).await?;
        let built = self
            .write_wal_layers(
                cluster,
                &tl,
                &server.datadir.join("pg_wal"),
                Some(flush),
                None,
            )
            .await?;
        let (head, _) = self.commit_layers(cluster, &tl, None, &built).await?;
        if !built.is_empty() {
            advance_slot(&client, head).await?;
        }
        Ok(SyncReport {
            timeline: tl_id,
            from: tl.head,
            to: head,
            layers: built.len(),
        })
    }

    /// Ingests everything a stopped compute's `pg_wal` holds past the head.
    async fn ingest_stopped(
        &self,
        cluster: &ClusterRow,
        tl: &TimelineRow,
        server: &Server,
    ) -> Result<SyncReport> {
        let wal_dir = server.datadir.join("pg_wal");
        if !wal_dir.exists() {
            return Ok(SyncReport {
                timeline: tl.id,
                from: tl.head,
                to: tl.head,
                layers: 0,
            });
        }
        // The control file says where the server's last checkpoint is: the WAL must reach it.
        let ctrl =
            crate::pg::server::control_data(self.bins_for(cluster)?, &self.user, &server.datadir)?;
        let built = self
            .write_wal_layers(
                cluster,
                tl,
                &wal_dir,
                None,
                Some(ctrl.checkpoint).filter(|c| *c >= tl.head),
            )
            .await?;
        let (head, _) = self.commit_layers(cluster, tl, None, &built).await?;
        Ok(SyncReport {
            timeline: tl.id,
            from: tl.head,
            to: head,
            layers: built.len(),
        })
    }

    /// Bytes of WAL a running compute has flushed past the branch head (`None` when it is not
    /// running).
    pub async fn compute_pending(
        &self,
        cluster: &ClusterRow,
        tl: TimelineId,
    ) -> Result<Option<u64>> {
        let Some(c) = self.catalog.compute(tl).await? else {
            return Ok(None);
        };
        let server = self.server_for(cluster, tl, c.port)?;
        if server.pid().is_none() {
            return Ok(None);
        }
        let client = server
            .connect_control(&self.credentials(cluster)?, "postgres")
            .await?;
        let flush = flush_lsn(&client).await?;
        let head = self.catalog.timeline(tl).await?.head;
        Ok(Some(flush.0.saturating_sub(head.0)))
    }

    /// Stops the server of timeline `tl`'s compute (on `port`) without the catalog: for a node
    /// that lost the catalog and must not keep a server running that another node may start.
    /// Its WAL stays in the compute's directory; the next start of the compute stores it (as
    /// after a crash). Does nothing when no server runs there.
    pub fn compute_halt(&self, cluster: &ClusterRow, tl: TimelineId, port: u16) -> Result<bool> {
        let server = self.server_for(cluster, tl, port)?;
        if server.pid().is_none() {
            return Ok(false);
        }
        server.stop("fast")?;
        tracing::warn!(timeline = %tl, "compute halted without the catalog");
        Ok(true)
    }

    /// Stops a branch's compute cleanly, keeping every byte of WAL it wrote.
    pub async fn compute_stop(&self, cluster: &ClusterRow, branch: &str) -> Result<SyncReport> {
        let (_, tl) = self.resolve_branch(cluster, branch).await?;
        let _g = self
            .home
            .lock_timeline(tl.id, &format!("branch '{branch}'"))?;
        self.stop_locked(cluster, &tl).await
    }

    pub(crate) async fn stop_locked(
        &self,
        cluster: &ClusterRow,
        tl: &TimelineRow,
    ) -> Result<SyncReport> {
        self.recover_timeline(cluster, tl.id).await?;
        let c = self
            .catalog
            .compute(tl.id)
            .await?
            .ok_or_else(|| Error::Refused("no compute runs on this branch".into()))?;
        let server = self.server_for(cluster, tl.id, c.port)?;
        if server.pid().is_some() {
            server.stop("fast")?;
        }
        let tl = self.catalog.timeline(tl.id).await?;
        let report = self.ingest_stopped(cluster, &tl, &server).await?;
        crate::failpoint::hit("stop-before-cleanup");
        let mut tx = self.catalog.begin().await?;
        tx.delete_compute(tl.id).await?;
        tx.commit().await?;
        remove_tree(&self.home.compute_dir(tl.id))?;
        tracing::info!(head = %report.to, "compute stopped");
        Ok(report)
    }
}

/// A compute as `compute list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ComputeStatus {
    pub cluster: String,
    pub branch: String,
    pub timeline: TimelineId,
    pub port: u16,
    pub pid: Option<i64>,
    /// `running`, or `stopped` when it should run but its server is gone.
    pub state: String,
}

impl Engine {
    pub async fn compute_list(&self) -> Result<Vec<ComputeStatus>> {
        let mut out = Vec::new();
        for c in self.catalog.computes().await? {
            let cluster = self.catalog.cluster(c.cluster_id).await?;
            let branch = self
                .catalog
                .branch_of_timeline(c.timeline_id)
                .await?
                .map_or_else(|| c.timeline_id.to_string(), |b| b.name);
            let pid = match self.bins_for(&cluster) {
                Ok(_) => self.server_for(&cluster, c.timeline_id, c.port)?.pid(),
                Err(_) => None,
            };
            out.push(ComputeStatus {
                cluster: cluster.name,
                branch,
                timeline: c.timeline_id,
                port: c.port,
                pid,
                state: if pid.is_some() { "running" } else { "stopped" }.into(),
            });
        }
        Ok(out)
    }
}

impl Engine {
    /// Stops a compute at once, without ingesting its WAL, and forgets it (for a cluster that
    /// is being destroyed).
    pub async fn force_stop_compute(&self, cluster: ClusterId, tl: TimelineId) -> Result<()> {
        let c = self.catalog.cluster(cluster).await?;
        let _g = self.home.lock_timeline(tl, "the branch")?;
        if let Some(row) = self.catalog.compute(tl).await? {
            let server = self.server_for(&c, tl, row.port)?;
            if server.pid().is_some() {
                server.stop("immediate")?;
            }
        }
        let mut tx = self.catalog.begin().await?;
        tx.delete_compute(tl).await?;
        tx.commit().await?;
        remove_tree(&self.home.compute_dir(tl))
    }

    /// Records that a (stopped) compute should run, so that `cairn up` starts it again.
    pub async fn mark_desired_running(
        &self,
        cluster: &ClusterRow,
        tl: TimelineId,
        port: u16,
    ) -> Result<()> {
        let mut tx = self.catalog.begin().await?;
        tx.upsert_compute(&ComputeRow {
            timeline_id: tl,
            cluster_id: cluster.id,
            desired: "running".into(),
            port,
            datadir: self.compute_datadir(tl),
            pid: None,
            started_at_us: now_us(),
        })
        .await?;
        tx.commit().await
    }
}
