//! `cairn`: the command line and the appliance daemon.
//!
//! This crate only wires things together: argument parsing, output formatting, progress
//! bars, the `up` daemon loop and its JSON API. All behaviour lives in the library crates.

mod args;
mod bar;
mod commands;
mod daemon;
mod dr;
mod export;
mod jobs;
mod open;
mod output;
mod policy;
mod protect;
mod report;
mod restore;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use args::Global;

const AFTER_HELP: &str = "\
Start here:
  cairn up --demo                      run the appliance with a demo cluster
  cairn cluster create shop            a new managed PostgreSQL cluster
  cairn compute start main             run it; prints a connection string
  cairn branch create dev --from main  an instant copy you can write to

Every command has --help with examples. The data directory is --home (CAIRN_HOME,
default ./cairn-data).";

/// Cairn: a data-protection appliance for PostgreSQL.
///
/// Branchable storage for real PostgreSQL: every cluster's history is kept as image and WAL
/// layers, any point of it can become a writable branch in O(1), and computes are real
/// PostgreSQL servers whose WAL flows back into their branch.
#[derive(Parser, Debug)]
#[command(name = "cairn", version, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the appliance in the foreground: computes, WAL ingest, images, JSON API.
    #[command(
        after_help = "Examples:\n  cairn up --demo\n  cairn up --listen 127.0.0.1:7480 --image-after 512MiB"
    )]
    Up(daemon::UpArgs),
    /// Create, adopt, list and delete clusters.
    #[command(subcommand)]
    Cluster(commands::ClusterCmd),
    /// Create, list, reset and delete branches (instant, writable copies at any point).
    #[command(subcommand)]
    Branch(commands::BranchCmd),
    /// Start and stop computes: real PostgreSQL servers running a branch.
    #[command(subcommand)]
    Compute(commands::ComputeCmd),
    /// Take an image layer of a branch now.
    #[command(subcommand)]
    Image(commands::ImageCmd),
    /// List the layers that hold a cluster's history.
    #[command(subcommand)]
    Layer(commands::LayerCmd),
    /// Verify that the catalog and the layer files agree (hashes, WAL continuity).
    #[command(after_help = "Examples:\n  cairn check\n  cairn check --full --cluster shop")]
    Check(commands::CheckArgs),
    /// Take and ship a backup now; list recovery points per region.
    #[command(subcommand)]
    Backup(protect::BackupCmd),
    /// Manage the keys: export, escrow recipients, rotation, crypto-shredding.
    #[command(subcommand)]
    Key(protect::KeyCmd),
    /// Object-store regions: list, check (missing or corrupt objects), repair.
    #[command(subcommand)]
    Regions(protect::RegionsCmd),
    /// Disaster recovery: rebuild an empty appliance from one region and the recovery kit
    /// (fenced), then promote it.
    #[command(subcommand)]
    Catalog(dr::CatalogCmd),
    /// Protection policies (RPO, RTO, schedules, retention, regions) from TOML files.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Verify a backup: restore a point from a region into scratch, start PostgreSQL on it,
    /// check the data (checksums, amcheck, fingerprint, probes), and sign a report.
    #[command(after_help = verify::AFTER_HELP)]
    Verify(verify::VerifyArgs),
    /// Verification reports: list, show (text, JSON, HTML), verify the signed chain.
    #[command(subcommand)]
    Report(report::ReportCmd),
    /// The runs of scheduled jobs (images from the policies' schedules), newest first.
    #[command(after_help = jobs::AFTER_HELP)]
    Jobs(jobs::JobsArgs),
    /// Restore any point of a branch from a region: as a new branch, or a data directory.
    #[command(after_help = restore::AFTER_HELP)]
    Restore(restore::RestoreArgs),
    /// A logical copy: pg_dump of any point, sealed to a file or regions; list; decrypt.
    #[command(after_help = export::AFTER_HELP)]
    Export(export::ExportArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.global.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match cli.global.log_format {
        args::LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        args::LogFormat::Json => logs.json().with_ansi(false).init(),
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", output::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
