//! `cairn policy`: check the policy files against this appliance.

use std::path::PathBuf;

use anyhow::Result;
use cairn_appliance::policy::{self, PolicyCheck, DEFAULT_SHIP_INTERVAL};
use cairn_units::fmt_duration;
use clap::Subcommand;

use crate::args::Global;
use crate::output::print_json;

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Read every policy file and check it against this appliance's regions and clusters:
    /// every problem of every file is listed as FILE:LINE:COLUMN: MESSAGE; nothing changes.
    #[command(
        after_help = "Examples:\n  cairn policy check\n  cairn policy check --policies /etc/cairn/policies --json\n\nThe file format: docs/POLICIES.md; examples: policies/examples/."
    )]
    Check {
        /// The policy directory (default: HOME/policies).
        #[arg(long, value_name = "DIR")]
        policies: Option<PathBuf>,
    },
}

pub async fn policy(g: &Global, cmd: PolicyCmd) -> Result<()> {
    match cmd {
        PolicyCmd::Check { policies } => {
            let engine = crate::open::open_engine(g).await?;
            let dir = policy::policy_dir(&g.home, policies.as_deref());
            let ctx = policy::context(&engine, DEFAULT_SHIP_INTERVAL).await?;
            let (_, report) = policy::check(&dir, &ctx)?;
            if g.json {
                return print_json(&report);
            }
            print_check(&report);
            Ok(())
        }
    }
}

fn print_check(r: &PolicyCheck) {
    for w in &r.warnings {
        eprintln!("{w}");
    }
    println!(
        "{} polic{} in {}: all valid",
        r.policies.len(),
        if r.policies.len() == 1 { "y" } else { "ies" },
        r.dir.display()
    );
    for p in &r.policies {
        println!(
            "  {} ({}): clusters {}; RPO {}, RTO {}; regions {} (min_copies {}); governs {}",
            p.name,
            p.file.display(),
            p.clusters.join(", "),
            fmt_duration(std::time::Duration::from_secs(p.rpo_seconds)),
            fmt_duration(std::time::Duration::from_secs(p.rto_seconds)),
            p.regions.join(", "),
            p.min_copies,
            if p.governs.is_empty() {
                "no cluster yet".to_string()
            } else {
                p.governs.join(", ")
            }
        );
    }
    if !r.unprotected.is_empty() {
        println!(
            "no policy governs: {} (their backups follow `cairn up`'s defaults)",
            r.unprotected.join(", ")
        );
    }
}
