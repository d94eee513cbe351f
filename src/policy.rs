//! `cairn policy`: check the policy files against this appliance, plan and apply them (with the
//! audit log and the cooling-off period of destructive changes), list and cancel changes.

use std::path::PathBuf;

use anyhow::Result;
use cairn_appliance::audit;
use cairn_appliance::policy::{self, PolicyCheck, DEFAULT_SHIP_INTERVAL};
use cairn_appliance::policy_change::{self, PolicyPlan};
use cairn_engine::engine::fmt_time;
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
    /// Show what applying the policy directory would change against the policies in force:
    /// policies and schedules added, removed or changed, what retention would delete that is
    /// kept now, the windows that stay restorable, and whether the change is destructive.
    #[command(
        after_help = "Examples:\n  cairn policy plan\n  cairn policy plan --as-of 2026-12-24T00:00:00Z --json"
    )]
    Plan {
        /// The policy directory (default: HOME/policies).
        #[arg(long, value_name = "DIR")]
        policies: Option<PathBuf>,
        /// Plan as of this time instead of now (what retention would delete by then).
        #[arg(long, value_name = "TIME")]
        as_of: Option<String>,
    },
    /// Put the policy directory in force, recorded in the audit log (files by SHA-256, who,
    /// when). A destructive change waits for the policies' cooling-off period (default 24h)
    /// unless --confirm-destructive is given; `cairn policy cancel ID` stops it meanwhile.
    #[command(
        after_help = "Examples:\n  cairn policy apply\n  cairn policy apply --confirm-destructive --by alice"
    )]
    Apply {
        /// The policy directory (default: HOME/policies).
        #[arg(long, value_name = "DIR")]
        policies: Option<PathBuf>,
        /// Take effect now even if the change deletes recovery points or shortens retention.
        #[arg(long)]
        confirm_destructive: bool,
        /// Who applies it, for the audit log (default: $USER).
        #[arg(long, value_name = "NAME")]
        by: Option<String>,
    },
    /// The audit log of policy changes, oldest first, with the status of each.
    #[command(after_help = "Examples:\n  cairn policy log\n  cairn policy log --json")]
    Log,
    /// Cancel a policy change that has not taken effect yet.
    #[command(after_help = "Examples:\n  cairn policy cancel 5f0c2e9a8b7d4c3e2f1a0b9c8d7e6f5a")]
    Cancel {
        /// The change's id (`cairn policy log`).
        id: String,
        /// Who cancels it, for the audit log (default: $USER).
        #[arg(long, value_name = "NAME")]
        by: Option<String>,
    },
}

fn who(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
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
        PolicyCmd::Plan { policies, as_of } => {
            let now = match as_of {
                Some(t) => crate::args::parse_time(&t)?,
                None => cairn_engine::catalog::now_us(),
            };
            let app = crate::open::open(g).await?;
            let engine = app.engine();
            let dir = policy::policy_dir(&g.home, policies.as_deref());
            let ctx = policy::context(engine, DEFAULT_SHIP_INTERVAL).await?;
            let (set, _) = policy::check(&dir, &ctx)?;
            let plan = policy_change::plan(engine, &ctx, &set, now).await?;
            if g.json {
                return print_json(&plan);
            }
            print_plan(&plan);
            Ok(())
        }
        PolicyCmd::Apply {
            policies,
            confirm_destructive,
            by,
        } => {
            let app = crate::open::open(g).await?;
            let engine = app.engine();
            let dir = policy::policy_dir(&g.home, policies.as_deref());
            let ctx = policy::context(engine, DEFAULT_SHIP_INTERVAL).await?;
            let (set, _) = policy::check(&dir, &ctx)?;
            let now = cairn_engine::catalog::now_us();
            let (plan, change) =
                policy_change::apply(engine, &ctx, &dir, &set, &who(by), confirm_destructive, now)
                    .await?;
            if g.json {
                return print_json(&change);
            }
            print_plan(&plan);
            if change.effective_at_us > now {
                println!(
                    "recorded change {}: DESTRUCTIVE, takes effect at {} (after the cooling-off \
                     period); cancel it with `cairn policy cancel {}`, or apply again with \
                     --confirm-destructive",
                    change.id,
                    fmt_time(change.effective_at_us),
                    change.id
                );
            } else {
                println!(
                    "recorded change {}: in force now{}",
                    change.id,
                    if change.confirmed {
                        " (destructive, confirmed)"
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
        PolicyCmd::Log => {
            let app = crate::open::open(g).await?;
            let changes = audit::list(&app.engine().catalog).await?;
            let statuses = audit::statuses(&changes, cairn_engine::catalog::now_us());
            if g.json {
                let rows: Vec<serde_json::Value> = changes
                    .iter()
                    .zip(&statuses)
                    .map(|(c, s)| serde_json::json!({"change": c, "status": s}))
                    .collect();
                return print_json(&rows);
            }
            for (c, s) in changes.iter().zip(&statuses) {
                println!(
                    "{} {:?} requested {} by {}; effective {}{}{}; files: {}",
                    c.id,
                    s,
                    fmt_time(c.requested_at_us),
                    c.requested_by,
                    fmt_time(c.effective_at_us),
                    if c.destructive {
                        if c.confirmed {
                            "; destructive, confirmed"
                        } else {
                            "; destructive, cooling off"
                        }
                    } else {
                        ""
                    },
                    c.cancelled_by
                        .as_deref()
                        .map(|b| format!("; cancelled by {b}"))
                        .unwrap_or_default(),
                    c.files
                        .iter()
                        .map(|f| format!("{} ({})", f.name, &f.sha256[..12.min(f.sha256.len())]))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Ok(())
        }
        PolicyCmd::Cancel { id, by } => {
            let app = crate::open::open(g).await?;
            let c = audit::cancel(
                &app.engine().catalog,
                &id,
                &who(by),
                cairn_engine::catalog::now_us(),
            )
            .await?;
            if g.json {
                return print_json(&c);
            }
            println!("cancelled policy change {}", c.id);
            Ok(())
        }
    }
}

fn print_plan(p: &PolicyPlan) {
    match &p.in_force {
        Some(id) => println!("against the policies in force (change {id}):"),
        None => println!("no policies in force yet:"),
    }
    for d in &p.policies {
        println!("  policy {}: {:?}", d.name, d.delta);
    }
    for s in &p.schedules {
        println!(
            "  schedule {} {}: {} -> {}",
            s.policy,
            s.kind,
            s.from.as_deref().unwrap_or("(none)"),
            s.to.as_deref().unwrap_or("(none)")
        );
    }
    for c in &p.clusters {
        println!(
            "  cluster {}: policy {} -> {}; retention would delete {} layer(s) ({}) kept now",
            c.cluster,
            c.old_policy.as_deref().unwrap_or("(none)"),
            c.new_policy.as_deref().unwrap_or("(none)"),
            c.newly_deleted_layers,
            crate::output::bytes(c.newly_deleted_bytes)
        );
        for w in &c.windows {
            println!(
                "    restorable: {} {}..{} ({:?})",
                w.branch.as_deref().unwrap_or("(no branch)"),
                w.from,
                w.to,
                w.reason
            );
        }
    }
    if p.destructive {
        println!(
            "DESTRUCTIVE (takes effect {} after apply unless --confirm-destructive):",
            fmt_duration(std::time::Duration::from_secs(p.cooling_off_seconds))
        );
        for r in &p.reasons {
            println!("  {r}");
        }
    } else {
        println!("not destructive: applying takes effect at once");
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
