//! `cairn export`: a sealed `pg_dump` of any point; `export list`; `export decrypt`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use cairn_backup::export::{self as format, Manifest, SignerTrust};
use cairn_backup::keys::Identity;
use cairn_backup::Protection;
use cairn_engine::progress::Progress;
use cairn_restore::{Destination, ExportReport, ExportRequest};

use crate::args::AtOpt;
use crate::args::Global;
use crate::args::{SourceOpt, TrustOpt};
use crate::bar::with_progress;
use crate::output::{bytes, print_json, table};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ExportArgs {
    #[command(subcommand)]
    pub cmd: Option<ExportCmd>,
    #[command(flatten)]
    pub create: CreateArgs,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("dest").args(["to", "to_region"]))]
pub struct CreateArgs {
    /// The cluster to export.
    pub cluster: Option<String>,
    /// The branch whose history holds the point.
    #[arg(long, short = 'b', default_value = "main")]
    pub branch: String,
    #[command(flatten)]
    pub at: AtOpt,
    /// The database to dump.
    #[arg(long, short = 'd', default_value = "postgres")]
    pub database: String,
    /// Write a sealed export file (it must not exist).
    #[arg(long, value_name = "FILE")]
    pub to: Option<PathBuf>,
    /// Upload to this region (repeat for several).
    #[arg(long, value_name = "REGION")]
    pub to_region: Vec<String>,
    /// Read the point from the regions even though the cluster is in this appliance.
    #[arg(long)]
    pub from_regions: bool,
    /// Where the point is read from, when it comes from a region.
    #[command(flatten)]
    pub source: SourceOpt,
}

#[derive(Subcommand, Debug)]
pub enum ExportCmd {
    /// List the exports the regions hold.
    #[command(
        after_help = "Examples:\n  cairn export list\n  cairn export list --region region-b --json"
    )]
    List {
        /// Only this region.
        #[arg(long, value_name = "REGION")]
        region: Option<String>,
        #[command(flatten)]
        trust: TrustOpt,
    },
    /// Turn an export (a file, or an id in a region) back into a plain pg_dump archive.
    #[command(
        after_help = "Examples:\n  cairn export decrypt shop.cairnexp --out shop.dump\n  \
        cairn export decrypt 20261123T101500Z-3fa2c1 --region region-b --out shop.dump\n  \
        pg_restore --no-owner --no-privileges --dbname postgres://... shop.dump"
    )]
    Decrypt {
        /// An export file, or with --region an export id.
        export: String,
        /// Read the export with this id from this region.
        #[arg(long, value_name = "REGION")]
        region: Option<String>,
        /// Where to write the pg_dump archive (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        trust: TrustOpt,
    },
}

pub const AFTER_HELP: &str = "Examples:
  cairn export shop --to shop.cairnexp                     (latest point, database postgres)
  cairn export shop --at-time 2026-11-23T09:59:59Z --database app --to-region region-b
  cairn export list
  cairn export decrypt shop.cairnexp --out shop.dump && pg_restore --no-owner --no-privileges -d app shop.dump

The dump is taken with pg_dump (custom format) from a scratch branch at the point, which is
removed afterwards; with --from-regions (or when the cluster is not in this appliance) the
point is restored from a region into a scratch data directory instead. What is written is
sealed like every backup object: readable only with a key of the keyring.";

pub async fn export(g: &Global, a: ExportArgs) -> Result<()> {
    match a.cmd {
        Some(ExportCmd::List { region, trust }) => list(g, region, &trust).await,
        Some(ExportCmd::Decrypt {
            export,
            region,
            out,
            trust,
        }) => decrypt(g, &export, region, &out, &trust).await,
        None => create(g, a.create).await,
    }
}

/// The appliance's trusted signers and those the operator named.
fn trust(p: &Protection, extra: Vec<[u8; 32]>) -> SignerTrust {
    let mut signers = p.trusted();
    signers.extend(extra);
    SignerTrust { signers }
}

async fn create(g: &Global, a: CreateArgs) -> Result<()> {
    let Some(cluster) = a.cluster else {
        bail!("name the cluster to export: cairn export CLUSTER --to FILE (see --help)");
    };
    let dest = match (a.to, a.to_region.is_empty()) {
        (Some(f), true) => Destination::File(std::path::absolute(f)?),
        (None, false) => Destination::Regions(a.to_region),
        _ => bail!("choose where the export goes: --to FILE or --to-region REGION"),
    };
    let app = crate::open::open(g).await?;
    let p = app.protection();
    let (identity, signers) = a.source.trust.load()?;
    let req = ExportRequest {
        cluster,
        branch: a.branch,
        point: crate::args::point(&a.at)?,
        database: a.database,
        dest,
        from_regions: a.from_regions,
        identity,
        region: a.source.region,
        cluster_id: a.source.cluster_id,
        signers,
        parallel: a.source.parallel,
    };
    let progress = Arc::new(Progress::new());
    let r = with_progress(
        &progress,
        !g.json,
        cairn_restore::export(p, &req, &progress),
    )
    .await?;
    if g.json {
        return print_json(&r);
    }
    print_report(&r);
    Ok(())
}

fn print_report(r: &ExportReport) {
    let m = &r.manifest;
    println!(
        "exported database '{}' of cluster '{}' branch '{}' at {} ({}{}) from {}",
        m.database,
        m.cluster,
        m.branch,
        m.point,
        m.lsn,
        m.point_time
            .as_deref()
            .map(|t| format!(", {t}"))
            .unwrap_or_default(),
        m.source
    );
    println!(
        "export {}: {} dump, {} sealed, to {}",
        m.id,
        bytes(m.dump_bytes),
        bytes(m.sealed_bytes),
        r.destinations.join(", ")
    );
    let ph = &r.phases;
    println!(
        "phases: scratch copy {:.2}s, pg_dump {:.2}s, seal {:.2}s, write {:.2}s; total {:.2}s",
        ph.scratch, ph.dump, ph.seal, ph.write, r.total_seconds
    );
    println!("read it back with: cairn export decrypt ... --out FILE, then pg_restore");
}

async fn list(g: &Global, only: Option<String>, opt: &TrustOpt) -> Result<()> {
    let app = crate::open::open(g).await?;
    let p = app.protection();
    let t = trust(p, opt.load()?.1);
    let mut all = Vec::new();
    for r in &p.regions.regions {
        if only.as_deref().is_some_and(|o| o != r.name) {
            continue;
        }
        match format::list_exports(r, &t).await {
            Ok(v) => all.extend(v),
            Err(e) => eprintln!("region '{}' could not be listed: {e}", r.name),
        }
    }
    if g.json {
        return print_json(&all);
    }
    let rows = all
        .iter()
        .map(|l| match &l.manifest {
            Some(m) => vec![
                m.id.clone(),
                l.region.clone(),
                m.cluster.clone(),
                m.branch.clone(),
                m.database.clone(),
                format!("{} ({})", m.lsn, m.point),
                bytes(m.dump_bytes),
            ],
            None => vec![
                l.key.clone(),
                l.region.clone(),
                format!("UNREADABLE: {}", l.problem.as_deref().unwrap_or("?")),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ],
        })
        .collect();
    table(
        &[
            "EXPORT", "REGION", "CLUSTER", "BRANCH", "DATABASE", "POINT", "DUMP",
        ],
        rows,
    );
    Ok(())
}

async fn decrypt(
    g: &Global,
    export: &str,
    region: Option<String>,
    out: &std::path::Path,
    opt: &TrustOpt,
) -> Result<()> {
    let app = crate::open::open(g).await?;
    let p = app.protection();
    let (extra, signers) = opt.load()?;
    let t = trust(p, signers);
    let own = p.identities();
    let mut ids: Vec<&Identity> = extra.iter().collect();
    ids.extend(own.iter());
    let progress = Arc::new(Progress::new());
    let m: Manifest = match region {
        Some(r) => {
            let region = p.regions.get(&r)?;
            progress.phase("download", 0);
            let fut =
                format::decrypt_from_region(region, export, &ids, &t, out, Some(&progress.done));
            with_progress(&progress, !g.json, fut).await?
        }
        None => {
            let path = PathBuf::from(export);
            if !path.is_file() {
                bail!(
                    "{export} is not a file; to read an export from a region pass its id with \
                     --region NAME (cairn export list shows them)"
                );
            }
            let size = std::fs::metadata(&path)?.len();
            progress.phase("decrypt", size);
            let (o, pr) = (out.to_path_buf(), progress.clone());
            let ids: Vec<Identity> = ids.into_iter().cloned().collect();
            let fut = async move {
                tokio::task::spawn_blocking(move || {
                    let refs: Vec<&Identity> = ids.iter().collect();
                    format::decrypt_file(&path, &refs, &t, &o, Some(&pr.done))
                })
                .await
                .map_err(|e| anyhow::anyhow!("decrypt task: {e}"))?
                .map_err(anyhow::Error::from)
            };
            with_progress(&progress, !g.json, fut).await?
        }
    };
    if g.json {
        return print_json(&m);
    }
    println!(
        "wrote {} ({}): database '{}' of cluster '{}' branch '{}' at {} ({}), export {}",
        out.display(),
        bytes(m.dump_bytes),
        m.database,
        m.cluster,
        m.branch,
        m.lsn,
        m.point,
        m.id
    );
    println!(
        "load it with: pg_restore --no-owner --no-privileges --dbname DB {} (objects belong \
         to cairn_owner on the compute; those options give them to the role that loads them)",
        out.display()
    );
    Ok(())
}
