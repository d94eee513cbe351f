//! `cairn up`: the appliance in the foreground. The command reads its options, binds the API's
//! address, opens the appliance and prints what the run reports; the run itself is
//! [`cairn_appliance::runner`]. Ctrl-C (or SIGTERM) stops it cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use cairn_appliance::alerts::Transition;
use cairn_appliance::api::Access;
use cairn_appliance::jobs::record::{kind_str, JobRun};
use cairn_appliance::runner::{Event, Events, RunOptions, Runner};
use clap::Args;

use crate::args::Global;

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
    /// Post every alert, as it is raised and cleared, to this URL (JSON). Repeat for several.
    #[arg(long, value_name = "URL")]
    pub alert_webhook: Vec<String>,
    /// How long ended job runs stay listed (`cairn jobs`); older ones are counted into the
    /// totals /metrics reports and deleted, except each job's newest run.
    #[arg(long, default_value = "30d", value_name = "DURATION", value_parser = cairn_units::parse_duration)]
    pub job_history: Duration,
    /// Merge a branch's small WAL layers once they are this old and every region holds them
    /// (fewer objects, catalog rows and fetches per restore; the same points restorable).
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = cairn_units::parse_duration)]
    pub compact_after: Duration,
    /// Largest layer WAL compaction writes; 0 turns compaction off.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub compact_target: u64,
    /// How often a heartbeat (the time) is written into the computes of managed clusters whose
    /// policy lists the `heartbeat` check; a verification reads it back to measure the RPO
    /// each point achieved. 0 turns heartbeats off.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = cairn_units::parse_duration)]
    pub heartbeat_every: Duration,
}

impl UpArgs {
    fn run_options(&self) -> RunOptions {
        RunOptions {
            image_after: self.image_after,
            sync_interval: Duration::from_secs_f64(self.sync_interval.max(0.05)),
            sync_bytes: self.sync_bytes,
            ship_interval: Duration::from_secs_f64(self.ship_interval.max(0.05)),
            exit_after: self.exit_after.map(Duration::from_secs_f64),
            webhooks: self.alert_webhook.clone(),
            job_history: self.job_history,
            compact_after: self.compact_after,
            compact_target: self.compact_target,
            heartbeat_every: self.heartbeat_every,
        }
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
    let access = Access::new(args.listen, token, &args.api_host).map_err(anyhow::Error::msg)?;
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
    if args.demo && app.engine().catalog.clusters().await?.is_empty() {
        eprintln!("creating the demo cluster (initdb, first image)...");
        let url = cairn_appliance::demo::demo(app.engine())
            .await
            .context("setting up the demo cluster")?;
        println!("demo cluster ready: 10000 rows in table accounts on branch main");
        println!("  connect:          psql '{url}'");
        println!("  branch it:        cairn branch create experiment --from main");
        println!(
            "  branch the past:  cairn branch create loaded --from main --at-restore-point demo_loaded"
        );
        println!("  run the branch:   cairn compute start experiment");
        println!("  see the tree:     cairn branch list");
    }
    let events: Events = Arc::new(print_event);
    let runner = Runner::start(app, args.run_options(), listener, access, events).await?;
    eprintln!(
        "cairn is up: data in {}, API on http://{}/api/health (Ctrl-C to stop)",
        runner.appliance().engine().home.root.display(),
        bound
    );
    if runner.appliance().protection().fenced() {
        eprintln!(
            "FENCED: this appliance was rebuilt from a region; it ships nothing, deletes \
             nothing and streams from no source until `cairn catalog promote`"
        );
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install the SIGTERM handler")?;
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
    };
    runner.run(stop).await?;
    eprintln!("stopped cleanly");
    Ok(())
}

/// " (late: ...)" for a run that started late, else nothing.
fn lateness(r: &JobRun) -> String {
    match (r.late, r.missed) {
        (false, _) => String::new(),
        (true, 0) => " (late)".into(),
        (true, n) => format!(" (late: stands for {n} missed fire(s))"),
    }
}

fn print_event(e: Event) {
    match e {
        Event::ComputeRestarted { branch, port } => {
            eprintln!("restarted compute of branch '{branch}' on 127.0.0.1:{port}")
        }
        Event::ComputeStopped { branch, durable_to } => {
            eprintln!("stopped compute of branch '{branch}' (durable up to {durable_to})")
        }
        Event::Shredded { cluster } => eprintln!("shredded cluster '{cluster}'"),
        Event::Stopping => {
            eprintln!("stopping: final WAL ingest and clean shutdown of computes...")
        }
        Event::JobStarted(r) => eprintln!(
            "job {}: {} of cluster '{}' (policy '{}') started{}",
            r.id,
            kind_str(r.key.kind),
            r.key.cluster,
            r.key.policy,
            lateness(&r)
        ),
        Event::JobEnded {
            run,
            outcome,
            detail,
        } => eprintln!(
            "job {}: {} of cluster '{}' {}: {detail}",
            run.id,
            kind_str(run.key.kind),
            run.key.cluster,
            outcome.as_str()
        ),
        Event::JobAbandoned(r) => eprintln!(
            "job {}: {} of cluster '{}' abandoned by node {}; its fire is tried again",
            r.id,
            kind_str(r.key.kind),
            r.key.cluster,
            r.node
        ),
        Event::Compacted(c) => eprintln!(
            "compaction: cluster '{}': {} WAL layer(s) merged into {} ({} -> {})",
            c.cluster,
            c.replaced,
            c.merged,
            cairn_units::fmt_size(c.bytes_before),
            cairn_units::fmt_size(c.bytes_after)
        ),
        Event::Retained {
            cluster,
            policy,
            retired,
        } => eprintln!(
            "retention: cluster '{cluster}' (policy '{policy}'): {} layer(s) retired, {} freed",
            retired.layers,
            cairn_units::fmt_size(retired.file_bytes)
        ),
        Event::Alert(Transition::Raised { alert }) => eprintln!(
            "ALERT {} cluster '{}' (policy '{}'): {}",
            alert.kind.as_str(),
            alert.cluster,
            alert.policy,
            alert.reason
        ),
        Event::Alert(Transition::Cleared { alert, at_us }) => eprintln!(
            "cleared {} cluster '{}' (policy '{}'), raised {} ({} ago)",
            alert.kind.as_str(),
            alert.cluster,
            alert.policy,
            cairn_units::fmt_time(alert.since_us),
            cairn_units::fmt_duration(std::time::Duration::from_micros(
                (at_us - alert.since_us).max(0) as u64
            ))
        ),
        Event::Problem(p) => eprintln!("{p}"),
        Event::Active { node } => eprintln!("this node ({node}) is the active node"),
        Event::Standby(h) => eprintln!(
            "standby: node {} is the active node (since {}); this node takes over if its lease \
             passes ({})",
            h.node,
            cairn_units::fmt_time(h.since_us),
            cairn_units::fmt_time(h.lease_until_us)
        ),
    }
}
