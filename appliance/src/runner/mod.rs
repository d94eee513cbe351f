//! The appliance at work (`cairn up`): computes kept running, their WAL stored in their
//! branches, images taken, layers shipped to every region, the deletion queue and shreds
//! processed, the JSON API served.
//!
//! [`Runner::start`] removes what crashed processes left behind, restarts the computes that
//! should run, starts WAL receivers for adopted clusters, one shipper per region (a slow or
//! dead region holds up only itself) and the API. [`Runner::run`] then stores each compute's
//! WAL at least every `sync_interval` (sooner once `sync_bytes` are waiting), ingests the
//! receivers' spools, takes a new image of a branch once `image_after` bytes of WAL
//! accumulated since its last one, starts the scheduled jobs the policies in force make due
//! ([`crate::jobs`]), and carries out retention ([`crate::retention_run`]), WAL compaction
//! ([`crate::compaction_run`]), the deletion queue and due shreds every 30 s, and writes
//! heartbeats into the clusters whose policy verifies them ([`heartbeat`]), until it is told
//! to stop (or `exit_after` passes); then it stops the computes cleanly after a final ingest,
//! so nothing written before is lost.
//!
//! Invariants:
//! - What an operator should see is reported as an [`Event`]; the caller prints it. Problems
//!   during rounds never stop the run: they are events and are kept in the status the API
//!   shows.
//! - Keyring changes and a promotion made by other cairn processes take effect in the
//!   shippers without a restart.

pub mod state;

mod heartbeat;
mod lease;
mod rounds;
mod watch;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_engine::adopt::Receiver;
use cairn_engine::Lsn;

use crate::api::Access;
use crate::error::Result;
use crate::Appliance;
use state::{Daemon, Status};

/// How often the run looks at the objectives (exposure, alerts, cadence).
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// How the run stores WAL, takes images and ships.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub image_after: u64,
    pub sync_interval: Duration,
    pub sync_bytes: u64,
    pub ship_interval: Duration,
    /// Stop cleanly, as when told to, after this long.
    pub exit_after: Option<Duration>,
    /// URLs that alerts are posted to (JSON), as they are raised and cleared.
    pub webhooks: Vec<String>,
    /// How long ended job runs are kept ([`crate::jobs::history`]).
    pub job_history: Duration,
    /// WAL layers are merged ([`crate::compaction_run`]) once this old and held by every
    /// region...
    pub compact_after: Duration,
    /// ...into layers of at most this many bytes (0: no compaction).
    pub compact_target: u64,
    /// How often a heartbeat is written into the computes of clusters whose policy verifies
    /// heartbeats (zero: never).
    pub heartbeat_every: Duration,
}

/// Something an operator watching the run should see.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// This node took the active role: it runs the appliance's work from now on.
    Active {
        node: String,
    },
    /// Another node holds the active role: this one waits as a standby.
    Standby(crate::nodes::Holder),
    ComputeRestarted {
        branch: String,
        port: u16,
    },
    ComputeStopped {
        branch: String,
        durable_to: Lsn,
    },
    Shredded {
        cluster: String,
    },
    /// A scheduled job's run started on this node.
    JobStarted(crate::jobs::record::JobRun),
    /// A scheduled job's run ended; the detail says what it did or why it failed.
    JobEnded {
        run: crate::jobs::record::JobRun,
        outcome: crate::jobs::record::Outcome,
        detail: String,
    },
    /// A run whose node stopped renewing its lease; its fire is tried again.
    JobAbandoned(crate::jobs::record::JobRun),
    /// WAL compaction merged runs of a cluster's small WAL layers (their old region copies
    /// follow through the deletion queue).
    Compacted(crate::compaction_run::ClusterCompaction),
    /// Retention retired layers of a cluster (their region copies follow through the
    /// deletion queue).
    Retained {
        cluster: String,
        policy: String,
        retired: cairn_engine::retire::Retired,
    },
    /// The run is stopping: final ingest and clean shutdown of the computes.
    Stopping,
    /// An alert raised or cleared.
    Alert(crate::alerts::Transition),
    /// A problem outside a round (rounds record theirs in the status).
    Problem(String),
}

/// Where events go.
pub type Events = Arc<dyn Fn(Event) + Send + Sync>;

/// A started run.
pub struct Runner {
    daemon: Arc<Daemon>,
    opts: RunOptions,
    events: Events,
    receivers: Vec<Receiver>,
    shippers: Vec<tokio::task::JoinHandle<()>>,
    server: tokio::task::JoinHandle<()>,
    stop_shippers: tokio::sync::watch::Sender<bool>,
    jobs: tokio::task::JoinSet<()>,
    /// Takes and renews the node lease in the background, so that a long round never lets it
    /// pass.
    leaser: tokio::task::JoinHandle<()>,
    /// Writes heartbeats ([`heartbeat`]), when they are on.
    heartbeats: Option<tokio::task::JoinHandle<()>>,
}

impl Runner {
    /// Starts the run on `app`, serving the API on `listener` to whom `access` admits.
    pub async fn start(
        app: Appliance,
        opts: RunOptions,
        listener: tokio::net::TcpListener,
        access: Access,
        events: Events,
    ) -> Result<Runner> {
        let daemon = Arc::new(Daemon {
            app,
            status: Mutex::new(Status {
                started: Some(Instant::now()),
                ..Status::default()
            }),
            last_sync: Mutex::new(HashMap::new()),
            marks: Mutex::new(HashMap::new()),
            rpo: Mutex::new(Vec::new()),
            rto: Mutex::new(Vec::new()),
            alerts: Mutex::new(crate::alerts::Alerts::default()),
            sync_every: Mutex::new(HashMap::new()),
            heartbeat_clusters: Mutex::new(Default::default()),
            ship_every_ms: std::sync::atomic::AtomicU64::new(opts.ship_interval.as_millis() as u64),
            started_us: cairn_engine::catalog::now_us(),
            node: crate::nodes::node_name(),
            active: std::sync::atomic::AtomicBool::new(false),
            lease: Mutex::new(lease::Lease::default()),
            ran: Mutex::new(Vec::new()),
        });
        let (stop_shippers, stop_rx) = tokio::sync::watch::channel(false);
        let mut shippers = Vec::new();
        for i in 0..daemon.app.protection().regions.regions.len() {
            let p = daemon.app.protection().clone();
            let mut stop = stop_rx.clone();
            let d = daemon.clone();
            shippers.push(tokio::spawn(async move {
                loop {
                    let region = &p.regions.regions[i];
                    if let Err(e) = p.refresh() {
                        tracing::warn!(error = %e, "cannot reload the keys");
                    }
                    if !p.fenced() && d.active.load(std::sync::atomic::Ordering::Relaxed) {
                        let _ = p.ship_region(region, None).await;
                    }
                    let every = Duration::from_millis(
                        d.ship_every_ms.load(std::sync::atomic::Ordering::Relaxed),
                    );
                    tokio::select! {
                        _ = stop.changed() => break,
                        _ = tokio::time::sleep(every) => {}
                    }
                }
            }));
        }
        let router = crate::api::router(daemon.clone(), Arc::new(access));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        lease::renew(&daemon).await;
        let d = daemon.clone();
        let leaser = tokio::spawn(async move {
            loop {
                tokio::time::sleep(crate::nodes::RENEW).await;
                lease::renew(&d).await;
            }
        });
        let heartbeats = heartbeat::spawn(daemon.clone(), opts.heartbeat_every);
        let mut runner = Runner {
            daemon,
            opts,
            events,
            receivers: Vec::new(),
            shippers,
            server,
            stop_shippers,
            jobs: tokio::task::JoinSet::new(),
            leaser,
            heartbeats,
        };
        runner.follow_lease().await;
        Ok(runner)
    }

    /// The appliance this run works for.
    pub fn appliance(&self) -> &Appliance {
        &self.daemon.app
    }

    /// This node's name in the catalog (job claims, the node lease).
    pub fn node(&self) -> &str {
        &self.daemon.node
    }

    fn active(&self) -> bool {
        self.daemon
            .active
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Follows the lease ([`lease::renew`] keeps it): starts acting when this node took the
    /// role, cleans up when it stopped acting, announces who is active when it stands by.
    async fn follow_lease(&mut self) {
        let l = self.lease_view();
        if let Some(why) = l.stopped.clone() {
            self.daemon
                .lease
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .stopped = None;
            (self.events)(Event::Problem(format!(
                "this node stops acting as the active node: {why}"
            )));
            for r in self.receivers.drain(..) {
                r.stop();
            }
        }
        match l.role {
            Some(crate::nodes::Role::Active) if l.fresh() && !self.active() => {
                self.become_active().await;
            }
            Some(crate::nodes::Role::Standby(h)) if l.announced.as_ref() != Some(&h.node) => {
                self.daemon
                    .lease
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .announced = Some(h.node.clone());
                (self.events)(Event::Standby(h));
            }
            _ => {}
        }
    }

    fn lease_view(&self) -> lease::Lease {
        self.daemon
            .lease
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Starts acting as the active node: orphans of crashed processes removed, computes that
    /// should run restarted, receivers started.
    async fn become_active(&mut self) {
        (self.events)(Event::Active {
            node: self.daemon.node.clone(),
        });
        if let Err(e) = self.daemon.app.engine().recover_orphans().await {
            (self.events)(Event::Problem(format!(
                "cannot remove what crashed processes left behind: {e}"
            )));
        }
        // The alerts a previous run (here or on another node) left active.
        match crate::alerts::record::load(&self.daemon.app.engine().catalog).await {
            Ok(a) => *self.daemon.alerts.lock().unwrap_or_else(|e| e.into_inner()) = a,
            Err(e) => (self.events)(Event::Problem(format!(
                "cannot read the active alerts: {e}"
            ))),
        }
        rounds::restart_computes(&self.daemon, &self.events).await;
        rounds::start_receivers(&self.daemon, &mut self.receivers).await;
        self.daemon
            .active
            .store(true, std::sync::atomic::Ordering::Relaxed);
        rounds::housekeeping(&self.daemon, &self.events, &self.opts).await;
    }

    /// Runs rounds until `stop` completes or `exit_after` passes, then stops cleanly.
    pub async fn run(mut self, stop: impl Future<Output = ()>) -> Result<()> {
        let policy = rounds::SyncPolicy {
            interval: self.opts.sync_interval.max(Duration::from_millis(50)),
            bytes: self.opts.sync_bytes,
            image_after: self.opts.image_after,
        };
        let tick = policy.interval.min(Duration::from_secs(1));
        let deadline = self.opts.exit_after.map(|d| Instant::now() + d);
        let mut last_gc = Instant::now();
        let mut last_watch = Instant::now() - WATCH_EVERY;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(tick) => {}
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            self.follow_lease().await;
            if !self.active() {
                continue;
            }
            rounds::round(&self.daemon, &policy, &mut self.receivers).await;
            self.start_jobs().await;
            if last_watch.elapsed() >= WATCH_EVERY {
                last_watch = Instant::now();
                let watched = watch::watch(
                    &self.daemon,
                    &self.events,
                    &self.opts.webhooks,
                    (self.opts.sync_interval, self.opts.ship_interval),
                    &self.daemon.node,
                    cairn_engine::catalog::now_us(),
                )
                .await;
                match watched {
                    Ok(claimed) => claimed.into_iter().for_each(|r| self.spawn_job(r)),
                    Err(e) => self
                        .daemon
                        .status
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .error(format!("objectives: {e}")),
                }
            }
            if last_gc.elapsed() >= Duration::from_secs(30) {
                last_gc = Instant::now();
                rounds::housekeeping(&self.daemon, &self.events, &self.opts).await;
            }
        }
        (self.events)(Event::Stopping);
        self.server.abort();
        if let Some(h) = self.heartbeats.take() {
            h.abort();
        }
        // Runs going are left to finish their work (an image half taken is worth finishing).
        while self.jobs.join_next().await.is_some() {}
        let _ = self.stop_shippers.send(true);
        for s in self.shippers.drain(..) {
            let _ = s.await;
        }
        if self.active() {
            for r in self.receivers.drain(..) {
                r.stop();
            }
            // The lease is renewed while the computes stop (a final ingest may take long).
            rounds::shutdown(&self.daemon, &self.events).await;
            self.leaser.abort();
            // The computes are down and their WAL stored: a standby may take over at once.
            if let Err(e) =
                crate::nodes::release(&self.daemon.app.engine().catalog, &self.daemon.node).await
            {
                (self.events)(Event::Problem(format!(
                    "cannot release the node lease: {e}"
                )));
            }
        }
        self.leaser.abort();
        Ok(())
    }

    /// Claims the jobs due now and starts each in its own task.
    async fn start_jobs(&mut self) {
        while self.jobs.try_join_next().is_some() {}
        let app = &self.daemon.app;
        let tick = match crate::policy::context(app.engine(), self.opts.ship_interval).await {
            Ok(ctx) => crate::jobs::tick(app, &ctx, &self.daemon.node, chrono::Utc::now()).await,
            Err(e) => Err(e),
        };
        let tick = match tick {
            Ok(t) => t,
            Err(e) => {
                self.daemon
                    .status
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .error(format!("scheduled jobs: {e}"));
                return;
            }
        };
        for run in tick.abandoned {
            (self.events)(Event::JobAbandoned(run));
        }
        for run in tick.claimed {
            self.spawn_job(run);
        }
    }

    /// Executes a claimed run in its own task, reporting its start and end.
    fn spawn_job(&mut self, run: crate::jobs::record::JobRun) {
        let daemon = self.daemon.clone();
        let events = self.events.clone();
        self.jobs.spawn(async move {
            events(Event::JobStarted(run.clone()));
            let (outcome, detail) = crate::jobs::execute(&daemon.app, &run).await;
            if outcome == crate::jobs::record::Outcome::Failed {
                daemon
                    .status
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .error(format!(
                        "{} job {} of cluster '{}' (policy '{}') failed: {detail}",
                        crate::jobs::record::kind_str(run.key.kind),
                        run.id,
                        run.key.cluster,
                        run.key.policy
                    ));
            }
            events(Event::JobEnded {
                run,
                outcome,
                detail,
            });
        });
    }
}
