//! `cairn restore`: bring back any point of a branch from a region.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;

use cairn_engine::progress::Progress;
use cairn_restore::{PlanSummary, RestoreReport, RestoreRequest, Target};

use crate::args::AtOpt;
use crate::args::{Global, SourceOpt};
use crate::bar::with_progress;
use crate::output::{bytes, print_json};

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["as_branch", "to_datadir"]))]
pub struct RestoreArgs {
    /// The cluster to restore (its name, as in the region's indexes).
    pub cluster: String,
    /// The branch whose history holds the point.
    #[arg(long, short = 'b', default_value = "main")]
    pub branch: String,
    #[command(flatten)]
    pub at: AtOpt,
    /// The latest point the region holds (the default when no --at* is given).
    #[arg(long, conflicts_with_all = ["at", "at_time", "at_restore_point"])]
    pub latest: bool,
    /// Restore as a new branch of this appliance and start a compute on it.
    #[arg(long, value_name = "NAME")]
    pub as_branch: Option<String>,
    /// Restore into this directory (new or empty) as a plain PostgreSQL data directory.
    #[arg(long, value_name = "DIR")]
    pub to_datadir: Option<PathBuf>,
    /// With --to-datadir: leave the WAL to replay on first start instead of replaying it now.
    #[arg(long, requires = "to_datadir")]
    pub no_recover: bool,
    /// With --to-datadir over an earlier restore of the cluster: rewrite only the pages and
    /// files that differ (stop any server on it first).
    #[arg(long, requires = "to_datadir")]
    pub delta: bool,
    /// With --to-datadir: put a tablespace (by OID, or by name as the image records it) in
    /// this absolute, empty directory. Repeat for each. Unmapped tablespaces go to
    /// DIR.tablespaces/OID beside the data directory; the report lists where each went.
    /// Tablespaces created after the point's image are known by OID only.
    #[arg(long, value_name = "OID|NAME=DIR", requires = "to_datadir",
          value_parser = cairn_restore::tablespaces::parse_entry)]
    pub tablespace_map: Vec<(String, PathBuf)>,
    /// Check every refusal and show what the restore would fetch and write, then stop:
    /// nothing is written to the target or the catalog.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub source: SourceOpt,
}

pub const AFTER_HELP: &str = "Examples:
  cairn restore shop --to-datadir /srv/pg-restored
  cairn restore shop --to-datadir /srv/pg-restored --delta      (rewrites only what changed)
  cairn restore shop --branch main --at-time 2026-11-23T09:59:59Z --as-branch before-drop
  cairn restore shop --at 0/3000150 --to-datadir /srv/pg --region region-b --identity escrow.age
  cairn restore shop --to-datadir /srv/pg --dry-run     (every check, nothing written)

On an empty machine: write HOME/regions.toml with the region's URL and credentials, then
  cairn restore shop --to-datadir DIR --region NAME --recovery-kit shop-appliance.kit
Only indexes signed by a key of the kit (or of this appliance) are believed; objects a region
holds that are not are listed and set aside.
The restore reads the region, not the local layers; objects missing or damaged there are
fetched from the other regions, and the report lists them. --json prints the phase timings.";

pub async fn restore(g: &Global, a: RestoreArgs) -> Result<()> {
    let point = if a.latest {
        cairn_engine::branch::PointSpec::Head
    } else {
        crate::args::point(&a.at)?
    };
    let (identity, signers) = a.source.trust.load()?;
    let target = match (&a.as_branch, &a.to_datadir) {
        (Some(b), _) => Target::Branch(b.clone()),
        (None, Some(d)) => Target::Datadir {
            dir: std::path::absolute(d)?,
            recover: !a.no_recover,
            delta: a.delta,
            tablespaces: cairn_restore::TablespaceMap {
                entries: a.tablespace_map.clone(),
                root: None,
            },
        },
        (None, None) => anyhow::bail!("choose a target: --as-branch NAME or --to-datadir DIR"),
    };
    let app = crate::open::open(g).await?;
    let p = app.protection();
    let req = RestoreRequest {
        cluster: a.cluster,
        branch: a.branch,
        point,
        target,
        region: a.source.region,
        cluster_id: a.source.cluster_id,
        identity,
        signers,
        parallel: a.source.parallel,
    };
    let progress = Arc::new(Progress::new());
    if a.dry_run {
        let plan =
            with_progress(&progress, !g.json, cairn_restore::plan(p, &req, &progress)).await?;
        let summary = plan.summary(&req);
        drop(plan);
        if g.json {
            return print_json(&summary);
        }
        print_plan(&summary);
        return Ok(());
    }
    let r = with_progress(
        &progress,
        !g.json,
        cairn_restore::restore(p, &req, &progress),
    )
    .await?;
    if g.json {
        return print_json(&r);
    }
    print_report(&r);
    Ok(())
}

fn print_plan(s: &PlanSummary) {
    println!(
        "would restore cluster '{}' ({}) branch '{}' at {} ({}) to {}{}",
        s.cluster,
        s.cluster_id,
        s.branch,
        s.point,
        s.lsn,
        s.target,
        if s.delta { " (delta)" } else { "" }
    );
    println!(
        "from region '{}' (signed by {}): image layer {} and {} WAL layer(s), {} to fetch, up \
         to {} to write; PostgreSQL {}",
        s.region,
        s.signers.join(", "),
        s.image_layer,
        s.wal_layers,
        bytes(s.fetch_bytes),
        bytes(s.write_bytes),
        s.pg_major
    );
    for p in &s.probes {
        for x in &p.rejected {
            println!("  set aside: {x}");
        }
    }
    println!("dry run: every check passed; nothing was written");
}

fn print_report(r: &RestoreReport) {
    println!(
        "restored cluster '{}' branch '{}' at {} ({}{}) to {}",
        r.cluster,
        r.branch,
        r.point,
        r.lsn,
        r.point_time
            .as_deref()
            .map(|t| format!(", last commit {t}"))
            .unwrap_or_default(),
        r.target
    );
    println!(
        "from region '{}': {} layer(s), {} fetched; {} of data ({} written{}), {} WAL segment(s)",
        r.region,
        r.layers_fetched,
        bytes(r.bytes_fetched),
        bytes(r.data_bytes),
        bytes(r.written_bytes),
        if r.removed > 0 {
            format!(", {} removed", r.removed)
        } else {
            String::new()
        },
        r.wal_segments
    );
    for p in &r.probes {
        for x in &p.rejected {
            println!("  set aside: {x}");
        }
    }
    for s in &r.substitutions {
        println!(
            "  {} from region '{}' failed ({}){}",
            s.object,
            s.region,
            s.reason,
            match &s.served_by {
                Some(b) => format!("; served by '{b}'"),
                None => String::new(),
            }
        );
    }
    let ph = &r.phases;
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |s| format!("{s:.2}s"));
    println!(
        "phases: fetch index {:.2}s, fetch layers {:.2}s, write {:.2}s, WAL replay {}, first \
         connection {}; total {:.2}s",
        ph.fetch_index,
        ph.fetch_layers,
        ph.write,
        opt(ph.wal_replay),
        opt(ph.first_connection),
        r.total_seconds
    );
    if !r.tablespaces.is_empty() {
        println!("tablespaces:");
        for t in &r.tablespaces {
            println!(
                "  {} ({}): {}{}",
                t.oid,
                t.name.as_deref().unwrap_or("created after the image"),
                t.directory.display(),
                t.source_location
                    .as_deref()
                    .map(|l| format!(" (the source had it at {l})"))
                    .unwrap_or_default()
            );
        }
    }
    if !r.logins.is_empty() {
        println!("logging in:");
        for l in &r.logins {
            println!("  {} ({}): {}", l.role, l.can, l.how);
        }
    }
    if let Some(port) = r.compute_port {
        println!(
            "compute running on 127.0.0.1:{port}: `cairn compute start BRANCH --url-only` prints \
             its URL"
        );
    }
}
