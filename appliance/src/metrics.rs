//! `/metrics`: the run's state in the Prometheus text format (version 0.0.4).
//!
//! Invariants:
//! - Every family has `# HELP` and `# TYPE` lines; label values are escaped (`\`, `"`, newline);
//!   samples of one family are contiguous, sorted by their labels.
//! - Rendering is a pure function of a snapshot ([`Snapshot`]), so it is tested without a run.
//! - Nothing secret is exported: names of regions and clusters, counts, bytes and times only.

use std::fmt::Write;

/// What `/metrics` reports, gathered by the API handler.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub rounds: u64,
    pub recent_errors: usize,
    pub fenced: bool,
    pub uptime_seconds: f64,
    pub regions: Vec<RegionMetrics>,
    pub clusters: Vec<ClusterMetrics>,
    /// Scheduled job runs that ended, per cluster, kind and outcome.
    pub jobs: Vec<crate::jobs::record::Totals>,
    /// Each governed cluster's exposure against its RPO.
    pub rpo: Vec<crate::objectives::RpoStatus>,
    /// Each governed cluster's predicted restore time against its RTO.
    pub rto: Vec<crate::restore_time::RtoStatus>,
    pub alerts: Vec<crate::alerts::Alert>,
}

#[derive(Debug, Clone, Default)]
pub struct RegionMetrics {
    pub region: String,
    pub pending_objects: u64,
    pub pending_bytes: u64,
    pub shipped_bytes: u64,
    pub last_success_at_us: Option<i64>,
    pub failing: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ClusterMetrics {
    pub cluster: String,
    pub layers: u64,
    pub stored_bytes: u64,
    /// When the newest layer was written (Unix µs).
    pub newest_layer_at_us: Option<i64>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

/// The snapshot in the Prometheus text format.
pub fn render(s: &Snapshot) -> String {
    let mut o = Out(String::new());
    o.family(
        "cairn_up_rounds_total",
        "counter",
        "Rounds the run has completed.",
    );
    o.sample("cairn_up_rounds_total", &[], s.rounds as f64);
    o.family(
        "cairn_up_recent_errors",
        "gauge",
        "Problems among the run's recent ones (the last 50).",
    );
    o.sample("cairn_up_recent_errors", &[], s.recent_errors as f64);
    o.family(
        "cairn_up_uptime_seconds",
        "gauge",
        "Seconds since the run started.",
    );
    o.sample("cairn_up_uptime_seconds", &[], s.uptime_seconds);
    o.family(
        "cairn_fenced",
        "gauge",
        "1 when this appliance was rebuilt and not promoted: it ships and deletes nothing.",
    );
    o.sample("cairn_fenced", &[], if s.fenced { 1.0 } else { 0.0 });

    let mut regions = s.regions.clone();
    regions.sort_by(|a, b| a.region.cmp(&b.region));
    type RegionValue = fn(&RegionMetrics) -> Option<f64>;
    let region_families: [(&str, &str, &str, RegionValue); 5] = [
        (
            "cairn_region_pending_objects",
            "gauge",
            "Objects waiting to be shipped to the region.",
            |r| Some(r.pending_objects as f64),
        ),
        (
            "cairn_region_pending_bytes",
            "gauge",
            "Bytes waiting to be shipped to the region.",
            |r| Some(r.pending_bytes as f64),
        ),
        (
            "cairn_region_shipped_bytes_total",
            "counter",
            "Bytes shipped to the region by this run.",
            |r| Some(r.shipped_bytes as f64),
        ),
        (
            "cairn_region_last_success_timestamp_seconds",
            "gauge",
            "When a shipping round to the region last succeeded (Unix seconds).",
            |r| r.last_success_at_us.map(|t| t as f64 / 1e6),
        ),
        (
            "cairn_region_failing",
            "gauge",
            "1 while the region's last shipping round failed.",
            |r| Some(if r.failing { 1.0 } else { 0.0 }),
        ),
    ];
    for (name, kind, help, value) in region_families {
        o.family(name, kind, help);
        for r in &regions {
            if let Some(v) = value(r) {
                o.sample(name, &[("region", &r.region)], v);
            }
        }
    }

    let mut clusters = s.clusters.clone();
    clusters.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    type ClusterValue = fn(&ClusterMetrics) -> Option<f64>;
    let cluster_families: [(&str, &str, &str, ClusterValue); 3] = [
        (
            "cairn_cluster_layers",
            "gauge",
            "Layers that hold the cluster's history on this appliance.",
            |c| Some(c.layers as f64),
        ),
        (
            "cairn_cluster_stored_bytes",
            "gauge",
            "Bytes of the cluster's layer files on this appliance.",
            |c| Some(c.stored_bytes as f64),
        ),
        (
            "cairn_cluster_newest_layer_timestamp_seconds",
            "gauge",
            "When the cluster's newest layer was written (Unix seconds).",
            |c| c.newest_layer_at_us.map(|t| t as f64 / 1e6),
        ),
    ];
    for (name, kind, help, value) in cluster_families {
        o.family(name, kind, help);
        for c in &clusters {
            if let Some(v) = value(c) {
                o.sample(name, &[("cluster", &c.cluster)], v);
            }
        }
    }

    let mut jobs = s.jobs.clone();
    jobs.sort_by(|a, b| {
        (&a.cluster, a.kind, a.outcome.as_str()).cmp(&(&b.cluster, b.kind, b.outcome.as_str()))
    });
    o.family(
        "cairn_job_runs_total",
        "counter",
        "Scheduled job runs that ended, by cluster, kind and outcome.",
    );
    for j in &jobs {
        let kind = crate::jobs::record::kind_str(j.kind);
        o.sample(
            "cairn_job_runs_total",
            &[
                ("cluster", &j.cluster),
                ("kind", kind),
                ("outcome", j.outcome.as_str()),
            ],
            j.runs as f64,
        );
    }
    o.family(
        "cairn_job_last_success_timestamp_seconds",
        "gauge",
        "When a scheduled job of the cluster last succeeded (Unix seconds).",
    );
    for j in jobs
        .iter()
        .filter(|j| j.outcome == crate::jobs::record::Outcome::Succeeded)
    {
        let kind = crate::jobs::record::kind_str(j.kind);
        o.sample(
            "cairn_job_last_success_timestamp_seconds",
            &[("cluster", &j.cluster), ("kind", kind)],
            j.last_ended_at_us as f64 / 1e6,
        );
    }

    let mut rpo = s.rpo.clone();
    rpo.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    type RpoValue = fn(&crate::objectives::RpoStatus) -> f64;
    let rpo_families: [(&str, &str, RpoValue); 2] = [
        (
            "cairn_rpo_exposure_seconds",
            "How much committed work would be lost now: seconds since everything committed was durable in min_copies of the policy's regions.",
            |r| r.exposure_seconds,
        ),
        (
            "cairn_rpo_target_seconds",
            "The cluster's RPO, from its policy.",
            |r| r.rpo_seconds,
        ),
    ];
    for (name, help, value) in rpo_families {
        o.family(name, "gauge", help);
        for r in &rpo {
            o.sample(
                name,
                &[("cluster", &r.cluster), ("policy", &r.policy)],
                value(r),
            );
        }
    }
    o.family(
        "cairn_region_lag_seconds",
        "gauge",
        "How far a region is behind a governed cluster: seconds since everything committed on the cluster was in layers the region holds.",
    );
    for r in &rpo {
        for l in &r.regions {
            o.sample(
                "cairn_region_lag_seconds",
                &[
                    ("cluster", &r.cluster),
                    ("policy", &r.policy),
                    ("region", &l.region),
                ],
                l.lag_seconds,
            );
        }
    }
    let mut rto = s.rto.clone();
    rto.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    type RtoValue = fn(&crate::restore_time::RtoStatus) -> Option<f64>;
    let rto_families: [(&str, &str, RtoValue); 2] = [
        (
            "cairn_rto_predicted_seconds",
            "How long restoring the cluster's slowest branch from its policy's regions would take now, predicted from measured restores (absent until one was measured).",
            |r| r.predicted_seconds,
        ),
        (
            "cairn_rto_target_seconds",
            "The cluster's RTO, from its policy.",
            |r| Some(r.rto_seconds),
        ),
    ];
    for (name, help, value) in rto_families {
        o.family(name, "gauge", help);
        for r in &rto {
            if let Some(v) = value(r) {
                o.sample(name, &[("cluster", &r.cluster), ("policy", &r.policy)], v);
            }
        }
    }
    o.family(
        "cairn_alert_since_timestamp_seconds",
        "gauge",
        "Active alerts: when each started (Unix seconds).",
    );
    let mut alerts = s.alerts.clone();
    alerts.sort_by(|a, b| (a.kind, &a.cluster).cmp(&(b.kind, &b.cluster)));
    for a in &alerts {
        o.sample(
            "cairn_alert_since_timestamp_seconds",
            &[
                ("alert", a.kind.as_str()),
                ("cluster", &a.cluster),
                ("policy", &a.policy),
            ],
            a.since_us as f64 / 1e6,
        );
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::record::{Outcome, Totals};
    use cairn_scheduler::due::JobKind;

    #[test]
    fn families_are_typed_sorted_and_labels_escaped() {
        let s = Snapshot {
            rounds: 7,
            recent_errors: 1,
            fenced: false,
            uptime_seconds: 2.5,
            regions: vec![
                RegionMetrics {
                    region: "z\"one".into(),
                    pending_bytes: 10,
                    last_success_at_us: None,
                    failing: true,
                    ..Default::default()
                },
                RegionMetrics {
                    region: "a".into(),
                    shipped_bytes: 4096,
                    last_success_at_us: Some(1_500_000),
                    ..Default::default()
                },
            ],
            clusters: vec![ClusterMetrics {
                cluster: "shop".into(),
                layers: 3,
                stored_bytes: 123,
                newest_layer_at_us: Some(2_000_000),
            }],
            jobs: vec![
                Totals {
                    cluster: "shop".into(),
                    kind: JobKind::Image,
                    outcome: Outcome::Succeeded,
                    runs: 3,
                    last_ended_at_us: 4_000_000,
                },
                Totals {
                    cluster: "shop".into(),
                    kind: JobKind::Image,
                    outcome: Outcome::Failed,
                    runs: 1,
                    last_ended_at_us: 5_000_000,
                },
            ],
            rpo: vec![crate::objectives::RpoStatus {
                cluster: "shop".into(),
                policy: "p".into(),
                rpo_seconds: 30.0,
                exposure_seconds: 41.5,
                worst_branch: Some("main".into()),
                reason: Some("region a down".into()),
                regions: vec![
                    crate::objectives::RegionLag {
                        region: "a".into(),
                        lag_seconds: 41.5,
                    },
                    crate::objectives::RegionLag {
                        region: "b".into(),
                        lag_seconds: 2.0,
                    },
                ],
            }],
            rto: ["shop", "new"]
                .iter()
                .map(|c| crate::restore_time::RtoStatus {
                    cluster: c.to_string(),
                    policy: "p".into(),
                    rto_seconds: 60.0,
                    predicted_seconds: (*c == "shop").then_some(12.5),
                    branch: None,
                    point: None,
                    needs: None,
                    prediction: None,
                    image: None,
                    image_taken_us: None,
                    restores_measured: 1,
                    reason: None,
                })
                .collect(),
            alerts: vec![crate::alerts::Alert {
                kind: crate::alerts::AlertKind::RpoExceeded,
                cluster: "shop".into(),
                policy: "p".into(),
                since_us: 7_000_000,
                reason: "region a down".into(),
                value: 41.5,
                target: 30.0,
            }],
        };
        let text = render(&s);
        assert!(text.contains("# TYPE cairn_up_rounds_total counter\ncairn_up_rounds_total 7\n"));
        assert!(text.contains("cairn_fenced 0\n"));
        assert!(text.contains(
            "cairn_region_pending_bytes{region=\"a\"} 0\ncairn_region_pending_bytes{region=\"z\\\"one\"} 10\n"
        ));
        // A region that never succeeded has no timestamp sample.
        assert!(text.contains(
            "# TYPE cairn_region_last_success_timestamp_seconds gauge\ncairn_region_last_success_timestamp_seconds{region=\"a\"} 1.5\n# HELP cairn_region_failing"
        ));
        assert!(text.contains("cairn_region_failing{region=\"z\\\"one\"} 1\n"));
        assert!(text.contains("cairn_cluster_stored_bytes{cluster=\"shop\"} 123\n"));
        assert!(text.contains("cairn_cluster_newest_layer_timestamp_seconds{cluster=\"shop\"} 2\n"));
        assert!(text.contains(
            "cairn_job_runs_total{cluster=\"shop\",kind=\"image\",outcome=\"failed\"} 1\n\
             cairn_job_runs_total{cluster=\"shop\",kind=\"image\",outcome=\"succeeded\"} 3\n"
        ));
        // The last success, not the last end (a failure came later).
        assert!(text.contains(
            "cairn_job_last_success_timestamp_seconds{cluster=\"shop\",kind=\"image\"} 4\n"
        ));
        assert!(text.contains("cairn_rpo_exposure_seconds{cluster=\"shop\",policy=\"p\"} 41.5\n"));
        assert!(text.contains("cairn_rpo_target_seconds{cluster=\"shop\",policy=\"p\"} 30\n"));
        assert!(text.contains(
            "cairn_region_lag_seconds{cluster=\"shop\",policy=\"p\",region=\"a\"} 41.5\n\
             cairn_region_lag_seconds{cluster=\"shop\",policy=\"p\",region=\"b\"} 2\n"
        ));
        // A cluster without a measured restore has a target but no prediction.
        assert!(text.contains(
            "# TYPE cairn_rto_predicted_seconds gauge\ncairn_rto_predicted_seconds{cluster=\"shop\",policy=\"p\"} 12.5\n# HELP"
        ));
        assert!(text.contains(
            "cairn_rto_target_seconds{cluster=\"new\",policy=\"p\"} 60\ncairn_rto_target_seconds{cluster=\"shop\",policy=\"p\"} 60\n"
        ));
        assert!(text.contains(
            "cairn_alert_since_timestamp_seconds{alert=\"rpo_exceeded\",cluster=\"shop\",policy=\"p\"} 7\n"
        ));
        // Every sample line is `name{labels} number` after its family's HELP and TYPE.
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert!(typed.contains(name), "{name} sampled before its TYPE");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
