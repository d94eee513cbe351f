//! A report rendered as one HTML page, readable without JavaScript (and printable): the run,
//! the point, the objectives against what was measured, each check with its counts and
//! failures, the phases, the repairs, and the seal (signer, digest, previous report).
//!
//! Invariants: every value from the report is HTML-escaped (a failure detail may quote data
//! from the restored database); the page loads nothing from elsewhere.

use std::fmt::Write;

use super::seal::SealedReport;
use super::Outcome;

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).map_or_else(
        || format!("{us} µs"),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

fn ms(v: u64) -> String {
    format!("{}.{:03} s", v / 1000, v % 1000)
}

fn badge(o: Outcome) -> &'static str {
    match o {
        Outcome::Passed => "<b class=\"ok\">PASSED</b>",
        Outcome::Failed => "<b class=\"bad\">FAILED</b>",
        Outcome::Skipped => "<b>skipped</b>",
    }
}

/// The page for `sealed`.
pub fn render(sealed: &SealedReport) -> String {
    let r = &sealed.report;
    let e = escape;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Verification report {seq} of cluster {cluster}</title>\
         <style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:.2em .5em;\
         text-align:left;vertical-align:top}}.ok{{color:#060}}.bad{{color:#a00}}\
         code{{word-break:break-all}}</style></head><body>\n\
         <h1>Verification report {seq}: cluster {cluster} {badge}</h1>\n<table>\n",
        seq = r.sequence,
        cluster = e(&r.cluster),
        badge = badge(r.outcome),
    );
    let mut row = |k: &str, v: String| {
        let _ = writeln!(h, "<tr><th>{k}</th><td>{v}</td></tr>");
    };
    row("Run", format!("<code>{}</code>", e(&r.id)));
    row("Requested by", e(&r.requested_by));
    row(
        "Started / ended",
        format!("{} / {}", time(r.started_at_us), time(r.ended_at_us)),
    );
    row(
        "Cluster",
        format!("{} (<code>{}</code>)", e(&r.cluster), e(&r.cluster_id)),
    );
    row("Region restored from", e(&r.region));
    row(
        "Recovery point",
        format!(
            "branch {}, LSN {}{} ({})",
            e(&r.point.branch),
            e(&r.point.lsn),
            r.point
                .time_us
                .map(|t| format!(", {}", time(t)))
                .unwrap_or_default(),
            e(&r.point.selection)
        ),
    );
    match &r.policy {
        Some(p) => {
            row(
                "Policy",
                format!(
                    "{} (file SHA-256 <code>{}</code>)",
                    e(&p.name),
                    e(&p.file_sha256)
                ),
            );
            row(
                "RTO",
                format!(
                    "measured {} against {} {}",
                    ms(r.measured_rto_ms),
                    ms(p.rto_ms),
                    if r.measured_rto_ms <= p.rto_ms {
                        "<b class=\"ok\">met</b>"
                    } else {
                        "<b class=\"bad\">missed</b>"
                    }
                ),
            );
            row(
                "RPO",
                match r.achieved_rpo_ms {
                    Some(a) => format!(
                        "achieved {} against {} {}",
                        ms(a),
                        ms(p.rpo_ms),
                        if a <= p.rpo_ms {
                            "<b class=\"ok\">met</b>"
                        } else {
                            "<b class=\"bad\">missed</b>"
                        }
                    ),
                    None => "not measured".into(),
                },
            );
        }
        None => {
            row("Policy", "none".into());
            row("RTO", format!("measured {}", ms(r.measured_rto_ms)));
            row(
                "RPO",
                r.achieved_rpo_ms
                    .map_or("not measured".into(), |a| format!("achieved {}", ms(a))),
            );
        }
    }
    row("Teardown", e(&r.teardown));
    row("Appliance version", e(&r.appliance_version));
    h.push_str("</table>\n<h2>Checks</h2>\n<table><tr><th>check</th><th>result</th><th>time</th><th>counts</th><th>failures</th></tr>\n");
    for c in &r.checks {
        let counts: Vec<String> = c
            .counts
            .iter()
            .map(|(k, v)| format!("{}: {v}", e(k)))
            .collect();
        let details: Vec<String> = c.details.iter().map(|d| e(d)).collect();
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e(&c.name),
            badge(c.outcome),
            ms(c.duration_ms),
            counts.join("<br>"),
            details.join("<br>")
        );
    }
    h.push_str("</table>\n<h2>Phases</h2>\n<table>\n");
    for p in &r.phases {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td></tr>",
            e(&p.name),
            ms(p.duration_ms)
        );
    }
    h.push_str("</table>\n");
    if !r.repairs.is_empty() {
        h.push_str("<h2>Repairs</h2>\n<table><tr><th>region</th><th>object</th><th>from</th><th>why</th></tr>\n");
        for x in &r.repairs {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                e(&x.region),
                e(&x.object),
                e(&x.from),
                e(&x.reason)
            );
        }
        h.push_str("</table>\n");
    }
    let _ =
        write!(
        h,
        "<h2>Seal</h2>\n<table>\n<tr><th>Signed by (Ed25519)</th><td><code>{}</code></td></tr>\n\
         <tr><th>This report's SHA-256</th><td><code>{}</code></td></tr>\n\
         <tr><th>Previous report's SHA-256</th><td><code>{}</code></td></tr>\n</table>\n\
         <p>Check the signatures and the whole chain with <code>cairn report verify</code>.</p>\n\
         </body></html>\n",
        hex::encode(sealed.signer),
        e(&sealed.digest),
        r.previous.as_deref().map_or("none (first report)".into(), e)
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_civil_utc() {
        assert_eq!(time(0), "1970-01-01 00:00:00 UTC");
        // 2026-12-06 05:15:57 UTC
        assert_eq!(time(1_796_534_157_000_000), "2026-12-06 05:15:57 UTC");
        assert_eq!(time(951_782_400_000_000), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn markup_in_values_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
