//! `cairn verify`: restore a point from a region into scratch, start PostgreSQL on it in
//! isolation, check the data, and leave a signed report (see `cairn report`).

use std::sync::Arc;

use anyhow::Result;
use cairn_appliance::verify::VerifyOptions;
use cairn_engine::progress::Progress;
use cairn_policies::{Check, Probe};
use clap::Args;

use crate::args::{AtOpt, Global};
use crate::bar::with_progress;
use crate::output::print_json;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The cluster to verify (default: the only one).
    #[arg(env = "CAIRN_CLUSTER")]
    pub cluster: Option<String>,
    /// The branch whose history holds the point.
    #[arg(long, short = 'b')]
    pub branch: Option<String>,
    #[command(flatten)]
    pub at: AtOpt,
    /// The latest point (the default unless the policy picks points otherwise).
    #[arg(long, conflicts_with_all = ["at", "at_time", "at_restore_point"])]
    pub latest: bool,
    /// Restore from this region (default: the one verified least recently for this cluster).
    #[arg(long, value_name = "NAME")]
    pub region: Option<String>,
    /// Run this check only; repeat for several (default: the policy's, else every check but
    /// heartbeat). One of: object_integrity, wal_continuity, page_checksums, recovery_target,
    /// amcheck, heartbeat, fingerprint, probes.
    #[arg(long = "check", value_name = "NAME", value_parser = parse_check)]
    pub checks: Vec<Check>,
    /// A probe: a query that must return true in the restored copy, as NAME=SQL. Repeat for
    /// several (added to the policy's).
    #[arg(long = "probe", value_name = "NAME=SQL", value_parser = parse_probe)]
    pub probes: Vec<Probe>,
    /// Who asks, for the report (default: $USER).
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
    /// Layers fetched at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Stop the run after this long (e.g. 30m): the check it is at fails, the rest are skipped
    /// (default: the policy's verification.time_limit, else 4h).
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub time_limit: Option<std::time::Duration>,
    /// Keep the restored copy (stopped) this long for inspection, e.g. 2h; 0s removes it at
    /// once (default: the policy's verification.window, else removed at once).
    #[arg(long, value_name = "DURATION", value_parser = cairn_units::parse_duration)]
    pub keep: Option<std::time::Duration>,
}

pub const AFTER_HELP: &str = "Examples:
  cairn verify shop
  cairn verify shop --at-time 2026-12-01T09:00:00Z --region region-b
  cairn verify shop --probe 'orders=SELECT count(*) > 0 FROM orders' --json
  cairn verify shop --check page_checksums --check amcheck
  cairn verify shop --time-limit 30m --keep 2h

The point is restored from the region (through the real restore, every object verified) into
HOME/verify/, started on a private socket with archiving off, checked, then stopped and
removed, or kept for the policy's verification.window (--keep): the report's teardown names
the directory and until when. A newer run of the cluster, or the first sweep after that time
(`cairn up`), removes it. A run past its time limit fails the check it was at and leaves
nothing running. The report is signed, chained to the one before, kept in the catalog and copied to every region:
`cairn report show N --html`. Exits 1 when a check failed (the report says which and why).";

fn positive_duration(s: &str) -> Result<std::time::Duration, String> {
    match cairn_units::parse_duration(s)? {
        d if d.is_zero() => Err(format!("'{s}': a time limit must be greater than 0")),
        d => Ok(d),
    }
}

fn parse_check(s: &str) -> Result<Check, String> {
    Check::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = Check::ALL.iter().map(|c| c.name()).collect();
        format!("unknown check '{s}': one of {}", names.join(", "))
    })
}

fn parse_probe(s: &str) -> Result<Probe, String> {
    match s.split_once('=') {
        Some((n, q)) if !n.trim().is_empty() && !q.trim().is_empty() => Ok(Probe {
            name: n.trim().to_string(),
            sql: q.trim().to_string(),
        }),
        _ => Err(format!(
            "probe '{s}': write NAME=SQL, e.g. 'orders=SELECT count(*) > 0 FROM orders'"
        )),
    }
}

pub async fn verify(g: &Global, a: VerifyArgs) -> Result<()> {
    let point = if a.latest {
        Some(cairn_engine::branch::PointSpec::Head)
    } else if a.at.at.is_some() || a.at.at_time.is_some() || a.at.at_restore_point.is_some() {
        Some(crate::args::point(&a.at)?)
    } else {
        None
    };
    let app = crate::open::open(g).await?;
    let cluster = app.engine().resolve_cluster(a.cluster.as_deref()).await?;
    let by =
        a.by.or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "unknown".into());
    let o = VerifyOptions {
        branch: a.branch,
        point,
        region: a.region,
        checks: (!a.checks.is_empty()).then_some(a.checks),
        probes: a.probes,
        requested_by: format!("cli:{by}"),
        parallel: a.parallel,
        time_limit: a.time_limit,
        keep: a.keep,
    };
    let progress = Arc::new(Progress::new());
    let done = with_progress(
        &progress,
        !g.json,
        cairn_appliance::verify::verify(&app, &cluster.name, &o, &progress),
    )
    .await?;
    let r = &done.sealed.report;
    if g.json {
        print_json(r)?;
    } else {
        crate::report::print_text(&done.sealed);
    }
    if r.outcome == cairn_verifier::report::Outcome::Failed {
        let failed: Vec<&str> = r
            .checks
            .iter()
            .filter(|c| c.outcome == cairn_verifier::report::Outcome::Failed)
            .map(|c| c.name.as_str())
            .collect();
        anyhow::bail!(
            "verification {} of cluster '{}' FAILED: {} (report {}: `cairn report show {}`)",
            r.id,
            r.cluster,
            failed.join(", "),
            r.sequence,
            r.sequence
        );
    }
    Ok(())
}
