//! `cairn report`: the signed, hash-chained verification reports — list them, show one (text,
//! JSON or HTML), and verify the chain where it is kept (the catalog and every region).

use anyhow::{bail, Result};
use cairn_engine::engine::fmt_time;
use cairn_verifier::report::{html, seal};
use cairn_verifier::store;
use clap::Subcommand;

use crate::args::Global;
use crate::output::print_json;

#[derive(Subcommand, Debug)]
pub enum ReportCmd {
    /// The verification reports, newest first.
    #[command(
        after_help = "Examples:\n  cairn report list\n  cairn report list --cluster shop --json"
    )]
    List {
        /// Only this cluster's reports.
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
        /// At most this many reports.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One report, by sequence number or run id: its checks, timings and seal. Its signature
    /// is checked first.
    #[command(
        after_help = "Examples:\n  cairn report show 12\n  cairn report show 12 --html > report-12.html\n  cairn report show 12 --json"
    )]
    Show {
        /// Sequence number or run id.
        report: String,
        /// Print the page for people (HTML, no JavaScript) instead of text.
        #[arg(long)]
        html: bool,
    },
    /// Check every report's signature and the whole chain, in the catalog and in every region
    /// (or one): the first broken link is named (an edited, missing or reordered report).
    /// Exits 1 when a chain is broken or a region cannot be read.
    #[command(
        after_help = "Examples:\n  cairn report verify\n  cairn report verify --region region-b --json"
    )]
    Verify {
        /// Only this region's copy (and the catalog).
        #[arg(long, value_name = "NAME")]
        region: Option<String>,
    },
}

pub async fn report(g: &Global, cmd: ReportCmd) -> Result<()> {
    let app = crate::open::open(g).await?;
    let cat = &app.engine().catalog;
    match cmd {
        ReportCmd::List { cluster, limit } => {
            let rows = store::list(cat, cluster.as_deref(), i64::from(limit)).await?;
            if g.json {
                return print_json(&rows);
            }
            if rows.is_empty() {
                println!("no verification report yet");
            }
            for r in rows {
                println!(
                    "{:>6}  {}  {}  {:<7}  cluster {} from {}  ({})",
                    r.sequence,
                    fmt_time(r.started_at_us),
                    r.id,
                    r.outcome,
                    r.cluster,
                    r.region,
                    &r.digest[..16]
                );
            }
            Ok(())
        }
        ReportCmd::Show {
            report,
            html: as_html,
        } => {
            let Some((seq, bytes)) = store::stored(cat, &report).await? else {
                bail!("no verification report '{report}': see `cairn report list`");
            };
            let sealed = seal::open(&bytes, &app.protection().trusted()).map_err(|why| {
                anyhow::anyhow!("report {seq} does not verify: {why}; run `cairn report verify`")
            })?;
            if as_html {
                print!("{}", html::render(&sealed));
                return Ok(());
            }
            if g.json {
                return print_json(&sealed.report);
            }
            print_text(&sealed);
            Ok(())
        }
        ReportCmd::Verify { region } => {
            let places = store::verify_everywhere(app.protection(), region.as_deref()).await?;
            if g.json {
                print_json(&places)?;
            } else {
                for p in &places {
                    match (&p.status, &p.error) {
                        (_, Some(e)) => println!("{}: cannot be read: {e}", p.place),
                        (Some(s), None) => match &s.broken {
                            None => println!(
                                "{}: {} report(s), chain intact{}",
                                p.place,
                                s.good,
                                s.head
                                    .as_ref()
                                    .map(|(n, d)| format!(", newest {n} ({})", &d[..16]))
                                    .unwrap_or_default()
                            ),
                            Some(b) => println!(
                                "{}: BROKEN at {}: {} ({} report(s) before it verify)",
                                p.place, b.at, b.why, s.good
                            ),
                        },
                        (None, None) => {}
                    }
                }
            }
            let bad: Vec<&str> = places
                .iter()
                .filter(|p| !p.intact())
                .map(|p| p.place.as_str())
                .collect();
            if !bad.is_empty() {
                bail!(
                    "the report chain is broken or unreadable in: {}",
                    bad.join(", ")
                );
            }
            Ok(())
        }
    }
}

/// A report as text: the run, the objectives, each check, the repairs, the seal.
pub fn print_text(s: &seal::SealedReport) {
    let r = &s.report;
    println!(
        "report {} ({}): {} — cluster {}, branch {} at {} ({}), from {}",
        r.sequence,
        r.id,
        r.outcome.as_str().to_uppercase(),
        r.cluster,
        r.point.branch,
        r.point.lsn,
        r.point.selection,
        r.region
    );
    println!(
        "  {} to {}, requested by {}",
        fmt_time(r.started_at_us),
        fmt_time(r.ended_at_us),
        r.requested_by
    );
    match &r.policy {
        Some(p) => println!(
            "  policy {}: RTO measured {} ms (target {} ms), RPO achieved {} (target {} ms)",
            p.name,
            r.measured_rto_ms,
            p.rto_ms,
            r.achieved_rpo_ms
                .map_or("not measured".into(), |a| format!("{a} ms")),
            p.rpo_ms
        ),
        None => println!("  no policy; RTO measured {} ms", r.measured_rto_ms),
    }
    for c in &r.checks {
        let counts: Vec<String> = c.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "  {:<20} {:<7} {:>7} ms  {}",
            c.name,
            c.outcome.as_str(),
            c.duration_ms,
            counts.join(", ")
        );
        for d in &c.details {
            println!("      {d}");
        }
    }
    for x in &r.repairs {
        println!(
            "  repaired {} in {} from {}: {}",
            x.object, x.region, x.from, x.reason
        );
    }
    println!("  teardown: {}", r.teardown);
    println!(
        "  signed by {}, SHA-256 {}, previous {}",
        hex::encode(s.signer),
        s.digest,
        r.previous.as_deref().unwrap_or("none")
    );
}
