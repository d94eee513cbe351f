//! `cairn up`: the appliance in the foreground.
//!
//! On start it removes what crashed processes left behind, restarts the computes that should
//! run, and starts WAL receivers for adopted clusters. Then it stores each compute's WAL in
//! its branch at least every `--sync-interval` (sooner once `--sync-bytes` are waiting),
//! advancing the compute's slot only after the layers are committed, ingests the receivers'
//! spools, and takes a new image of a branch once `--image-after` bytes of WAL accumulated
//! since its last image. One shipper per region sends sealed layers and indexes to it
//! (`--ship-interval`); every 30 s the deletion queue and due shreds are processed.
//! Ctrl-C (or SIGTERM)
//! stops the computes cleanly after a final ingest, so nothing written before is lost.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cairn_engine::adopt::Receiver;
use cairn_engine::catalog::{BranchRow, ClusterKind, ClusterRow, ComputeRow};
use cairn_engine::progress::Progress;
use cairn_engine::Engine;
use clap::Args;

use crate::args::Global;
use crate::state::{Daemon, Status};

#[derive(Args, Debug)]
pub struct UpArgs {
    /// On an empty data directory, create a managed cluster 'demo' with sample data.
    #[arg(long)]
    pub demo: bool,
    /// Address of the JSON API (loopback by default; any other address needs
    /// --api-token-file).
    #[arg(long, default_value = "127.0.0.1:7480")]
    pub listen: SocketAddr,
    /// A file (mode 0600) holding the token every API request must carry as
    /// `Authorization: Bearer TOKEN`.
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<std::path::PathBuf>,
    /// A host name the API answers to besides loopback names and the --listen address
    /// (requests naming any other Host are refused: DNS rebinding). Repeat for several.
    #[arg(long, value_name = "NAME")]
    pub api_host: Vec<String>,
    /// Take a new image layer of a branch once this much WAL accumulated since its last one.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub image_after: u64,
    /// Longest time (seconds) a compute's WAL waits before it is stored in a layer.
    #[arg(long, default_value = "10")]
    pub sync_interval: f64,
    /// Store a compute's WAL sooner once this much of it is waiting.
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    pub sync_bytes: u64,
    /// Seconds between shipping rounds of each region.
    #[arg(long, default_value = "2")]
    pub ship_interval: f64,
    /// Exit (cleanly, as on Ctrl-C) after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub exit_after: Option<f64>,
}

impl UpArgs {
    fn ship_interval_duration(&self) -> Duration {
        Duration::from_secs_f64(self.ship_interval.max(0.05))
    }
}

pub use cairn_units::parse_size;

/// Reads the API token file: private, one non-empty line.
fn read_token(path: &std::path::Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("read --api-token-file {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "--api-token-file {} has mode {:o}: others can read it; run chmod 600 {}",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("read --api-token-file {}", path.display()))?
        .trim()
        .to_string();
    if token.len() < 16 {
        anyhow::bail!(
            "--api-token-file {} holds a token of {} characters; use at least 16 random ones",
            path.display(),
            token.len()
        );
    }
    Ok(token)
}

pub async fn up(g: &Global, args: UpArgs) -> Result<()> {
    let token = args.api_token_file.as_deref().map(read_token).transpose()?;
    let access = Arc::new(
        crate::api::Access::new(args.listen, token, &args.api_host).map_err(anyhow::Error::msg)?,
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {} for the API ({e}); another program (or another `cairn up`) \
             uses it: pick another address with --listen",
                args.listen
            )
        })?;
    // With --listen 127.0.0.1:0 the system picks the port: say which one.
    let bound = listener.local_addr().unwrap_or(args.listen);
    let app = crate::open::open(g).await?;
    let engine = app.engine();
    engine.recover_orphans().await?;
    if args.demo && engine.catalog.clusters().await?.is_empty() {
        demo(engine).await.context("setting up the demo cluster")?;
    }
    let daemon = Arc::new(Daemon {
        app,
        status: Mutex::new(Status {
            started: Some(Instant::now()),
            ..Status::default()
        }),
        last_sync: Mutex::new(HashMap::new()),
    });
    restart_computes(&daemon).await;
    let mut receivers: Vec<Receiver> = Vec::new();
    start_receivers(&daemon, &mut receivers).await;
    // One shipper per region: a slow or dead region holds up only itself.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut shippers = Vec::new();
    for i in 0..daemon.app.protection().regions.regions.len() {
        let p = daemon.app.protection().clone();
        let mut stop = stop_rx.clone();
        let every = args.ship_interval_duration();
        shippers.push(tokio::spawn(async move {
            loop {
                let region = &p.regions.regions[i];
                // Keyring changes and a promotion made by other cairn processes take effect
                // here without a restart.
                if let Err(e) = p.refresh() {
                    tracing::warn!(error = %e, "cannot reload the keys");
                }
                if !p.fenced() {
                    let _ = p.ship_region(region, None).await;
                }
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        }));
    }
    let app = crate::api::router(daemon.clone(), access);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    eprintln!(
        "cairn is up: data in {}, API on http://{}/api/health (Ctrl-C to stop)",
        daemon.app.engine().home.root.display(),
        bound
    );
    if daemon.app.protection().fenced() {
        eprintln!(
            "FENCED: this appliance was rebuilt from a region; it ships nothing, deletes \
             nothing and streams from no source until `cairn catalog promote`"
        );
    }
    let policy = SyncPolicy {
        interval: Duration::from_secs_f64(args.sync_interval.max(0.05)),
        bytes: args.sync_bytes,
        image_after: args.image_after,
    };
    let tick = policy.interval.min(Duration::from_secs(1));
    let deadline = args
        .exit_after
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install the SIGTERM handler")?;
    let mut last_gc = Instant::now();
    housekeeping(&daemon).await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = tokio::time::sleep(tick) => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        round(&daemon, &policy, &mut receivers).await;
        if last_gc.elapsed() >= Duration::from_secs(30) {
            last_gc = Instant::now();
            housekeeping(&daemon).await;
        }
    }
    eprintln!("stopping: final WAL ingest and clean shutdown of computes...");
    server.abort();
    let _ = stop_tx.send(true);
    for s in shippers {
        let _ = s.await;
    }
    for r in receivers.drain(..) {
        r.stop();
    }
    shutdown(&daemon).await;
    eprintln!("stopped cleanly");
    Ok(())
}

/// Deletion queue and scheduled shreds (not on a fenced appliance: the regions are not its).
async fn housekeeping(d: &Daemon) {
    let p = &d.app.protection();
    if p.fenced() {
        return;
    }
    let mut errors = Vec::new();
    match p.run_due_shreds().await {
        Ok(done) => {
            for c in done {
                eprintln!("shredded cluster '{c}'");
            }
        }
        Err(e) => errors.push(format!("shred: {e}")),
    }
    if let Err(e) = p.queue_garbage().await {
        errors.push(format!("deletion queue: {e}"));
    }
    match p.process_deletions().await {
        Ok(r) => errors.extend(r.failed),
        Err(e) => errors.push(format!("deletion queue: {e}")),
    }
    let mut st = d.status.lock().unwrap_or_else(|e| e.into_inner());
    for e in errors {
        st.error(e);
    }
}

async fn demo(engine: &Engine) -> Result<()> {
    eprintln!("creating the demo cluster (initdb, first image)...");
    let progress = Arc::new(Progress::new());
    engine.create_cluster("demo", &progress).await?;
    let c = engine.resolve_cluster(Some("demo")).await?;
    let info = engine.compute_start(&c, "main", None, &progress).await?;
    // The demo data belongs to the owner role, as an application's would.
    let client = cairn_engine::pg::server::connect(info.port, &info.login, "postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL);
             INSERT INTO accounts SELECT g, 'owner ' || g, (g * 37) % 1000
               FROM generate_series(1, 10000) g;
             SELECT pg_create_restore_point('demo_loaded');",
        )
        .await
        .context("loading demo data")?;
    engine.compute_sync(&c, info.timeline).await?;
    println!("demo cluster ready: 10000 rows in table accounts on branch main");
    println!("  connect:          psql '{}'", info.url);
    println!("  branch it:        cairn branch create experiment --from main");
    println!(
        "  branch the past:  cairn branch create loaded --from main --at-restore-point demo_loaded"
    );
    println!("  run the branch:   cairn compute start experiment");
    println!("  see the tree:     cairn branch list");
    Ok(())
}

/// Every compute the catalog knows, with its cluster and branch.
async fn computes(d: &Daemon) -> Vec<(ClusterRow, ComputeRow, BranchRow)> {
    let mut out = Vec::new();
    let Ok(computes) = d.app.engine().catalog.computes().await else {
        return out;
    };
    for c in computes {
        let Ok(cluster) = d.app.engine().catalog.cluster(c.cluster_id).await else {
            continue;
        };
        let Ok(Some(b)) = d
            .app
            .engine()
            .catalog
            .branch_of_timeline(c.timeline_id)
            .await
        else {
            continue;
        };
        out.push((cluster, c, b));
    }
    out
}

async fn restart_computes(d: &Daemon) {
    for (cluster, c, b) in computes(d).await {
        let port = (!cairn_engine::pg::server::port_in_use(c.port)).then_some(c.port);
        let progress = Arc::new(Progress::new());
        match d
            .app
            .engine()
            .compute_start(&cluster, &b.name, port, &progress)
            .await
        {
            Ok(info) if !info.already_running => {
                eprintln!(
                    "restarted compute of branch '{}' on 127.0.0.1:{}",
                    b.name, info.port
                )
            }
            Ok(_) => {}
            Err(e) => d
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .error(format!(
                    "cannot restart the compute of branch '{}': {e}",
                    b.name
                )),
        }
    }
}

async fn start_receivers(d: &Daemon, out: &mut Vec<Receiver>) {
    // A fenced appliance never takes over a source's replication slot: the appliance it was
    // rebuilt from may still be using it.
    if d.app.protection().fenced() {
        return;
    }
    let Ok(clusters) = d.app.engine().catalog.clusters().await else {
        return;
    };
    for c in clusters
        .into_iter()
        .filter(|c| c.kind == ClusterKind::Adopted)
    {
        if out.iter().any(|r| r.cluster == c.id) {
            continue;
        }
        // pg_receivewal cannot be told to refuse a cleartext password: vet the source first.
        if let Err(e) = d.app.engine().vet_source(&c).await {
            d.status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .error(format!("cannot stream WAL of cluster '{}': {e}", c.name));
            continue;
        }
        match d.app.engine().start_receiver(&c, None) {
            Ok(r) => out.push(r),
            Err(e) => d
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .error(format!("cannot stream WAL of cluster '{}': {e}", c.name)),
        }
    }
}

/// When `cairn up` stores WAL and takes images.
struct SyncPolicy {
    interval: Duration,
    bytes: u64,
    image_after: u64,
}

/// One round: ingest computes whose WAL is due and the spools; take images where due.
async fn round(d: &Daemon, policy: &SyncPolicy, receivers: &mut Vec<Receiver>) {
    let mut errors = Vec::new();
    for (cluster, c, b) in computes(d).await {
        let tl = c.timeline_id;
        let last = d
            .last_sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&tl)
            .copied();
        let due = match last {
            Some(t) if t.elapsed() < policy.interval => {
                match d.app.engine().compute_pending(&cluster, tl).await {
                    Ok(Some(pending)) => pending >= policy.bytes,
                    Ok(None) => false,
                    Err(e) => {
                        errors.push(format!("compute of branch '{}': {e}", b.name));
                        false
                    }
                }
            }
            _ => true,
        };
        if !due {
            continue;
        }
        d.last_sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tl, Instant::now());
        match d.app.engine().compute_sync(&cluster, tl).await {
            Ok(r) if r.layers > 0 => {
                if let Err(e) = maybe_image(d, &cluster, tl, policy.image_after).await {
                    errors.push(format!("image of branch '{}': {e}", b.name));
                }
            }
            Ok(_) => {}
            Err(e) => errors.push(format!("ingest of branch '{}': {e}", b.name)),
        }
    }
    receivers.retain_mut(|r| r.alive());
    start_receivers(d, receivers).await;
    if let Ok(clusters) = d.app.engine().catalog.clusters().await {
        for c in clusters
            .into_iter()
            .filter(|c| c.kind == ClusterKind::Adopted)
        {
            if let Err(e) = d.app.engine().ingest_spool(&c).await {
                errors.push(format!("ingest of cluster '{}': {e}", c.name));
            }
        }
    }
    let mut st = d.status.lock().unwrap_or_else(|e| e.into_inner());
    st.rounds += 1;
    for e in errors {
        st.error(e);
    }
}

async fn maybe_image(
    d: &Daemon,
    cluster: &cairn_engine::catalog::ClusterRow,
    tl: cairn_engine::TimelineId,
    image_after: u64,
) -> Result<()> {
    let t = d.app.engine().catalog.timeline(tl).await?;
    let map = d.app.engine().layer_map(cluster).await?;
    let since = match map.plan(tl, t.head) {
        Ok(p) => t.head.0.saturating_sub(p.image.end.0),
        Err(_) => u64::MAX,
    };
    if since < image_after {
        return Ok(());
    }
    let Some(b) = d.app.engine().catalog.branch_of_timeline(tl).await? else {
        return Ok(());
    };
    let r = d
        .app
        .engine()
        .image_create(cluster, &b.name, &Arc::new(Progress::new()))
        .await?;
    tracing::info!(branch = %b.name, end = %r.end, stored = r.stored_bytes, "new image layer");
    Ok(())
}

async fn shutdown(d: &Daemon) {
    for (cluster, c, b) in computes(d).await {
        match d.app.engine().compute_stop(&cluster, &b.name).await {
            Ok(r) => {
                eprintln!(
                    "stopped compute of branch '{}' (durable up to {})",
                    b.name, r.to
                );
                // Remember it should run, so the next `cairn up` starts it again.
                let _ = d
                    .app
                    .engine()
                    .mark_desired_running(&cluster, c.timeline_id, c.port)
                    .await;
            }
            Err(e) => eprintln!("error stopping the compute of branch '{}': {e}", b.name),
        }
    }
    if let Ok(clusters) = d.app.engine().catalog.clusters().await {
        for c in clusters
            .into_iter()
            .filter(|c| c.kind == ClusterKind::Adopted)
        {
            if let Err(e) = d.app.engine().ingest_spool(&c).await {
                eprintln!("error in the final ingest of cluster '{}': {e}", c.name);
            }
        }
    }
}
