//! `cairn jobs`: the runs of scheduled jobs, newest first, as `cairn up` recorded them.

use anyhow::Result;
use cairn_appliance::jobs::record::{self, kind_str};
use cairn_engine::engine::fmt_time;
use clap::Args;

use crate::args::Global;
use crate::output::print_json;

#[derive(Args, Debug)]
pub struct JobsArgs {
    /// Only this cluster's runs.
    #[arg(long, value_name = "NAME")]
    cluster: Option<String>,
    /// At most this many runs.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

pub const AFTER_HELP: &str =
    "Examples:\n  cairn jobs\n  cairn jobs --cluster shop --limit 10 --json\n\n\
Each run shows its job (kind, cluster, policy), the fire it was for, whether it started late \
(after downtime it stands for the fires missed), the node that ran it, and how it ended.";

pub async fn jobs(g: &Global, a: JobsArgs) -> Result<()> {
    let app = crate::open::open(g).await?;
    let runs = record::list(&app.engine().catalog, a.cluster.as_deref(), a.limit).await?;
    if g.json {
        return print_json(&runs);
    }
    if runs.is_empty() {
        println!("no scheduled job has run yet (schedules come from `cairn policy apply`; `cairn up` runs them)");
    }
    for r in runs {
        let ended = match (r.ended_at_us, r.outcome) {
            (Some(t), Some(o)) => format!("{} at {}", o.as_str(), fmt_time(t)),
            _ => format!("running on {}", r.node),
        };
        println!(
            "{} {} {} (policy {}) fire {}{}{}: {ended}{}",
            r.id,
            kind_str(r.key.kind),
            r.key.cluster,
            r.key.policy,
            fmt_time(r.fire_at_us),
            if r.late { ", late" } else { "" },
            if r.attempt > 1 {
                format!(", attempt {}", r.attempt)
            } else {
                String::new()
            },
            if r.detail.is_empty() {
                String::new()
            } else {
                format!(" — {}", r.detail)
            }
        );
    }
    Ok(())
}
