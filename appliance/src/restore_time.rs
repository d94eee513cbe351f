//! Objectives kept: each cluster's RTO, as the restore time predicted now.
//!
//! A restore after losing this appliance comes from a region, so the prediction is made of what
//! the regions hold: for each branch of a governed cluster, the newest point restorable from
//! the layers held by at least one of the policy's regions, the image and WAL that point needs
//! ([`Needs`]), and the phases of the latest measured restores (the `restores` table: every
//! `cairn restore` records its bytes and seconds) fitted by [`cairn_scheduler::rto`].
//!
//! Invariants:
//! - Only measured restores count: until one succeeded there is no prediction, and the status
//!   says how to get one. Restores that did not replay (no `--recover`) are not measurements.
//! - The cluster's prediction is its slowest branch's.
//! - [`rto`] only reads (catalog, copies); taking an image is the run's ([`wanted_images`]
//!   says which, keyed by the newest image so each is asked for once).

use std::collections::{HashMap, HashSet};

use cairn_engine::catalog::{ClusterRow, LayerRow};
use cairn_engine::layer::LayerKind;
use cairn_engine::{LayerId, Lsn};
use cairn_policies::PolicySet;
use cairn_scheduler::rto::{self, Measured, Model, Needs, Prediction};

use crate::Appliance;

/// How many of the latest restores the prediction is fitted to.
pub const MEASUREMENTS: i64 = 8;

/// One cluster's predicted restore time against its policy's RTO.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RtoStatus {
    pub cluster: String,
    pub policy: String,
    pub rto_seconds: f64,
    /// `None` until a restore was measured, or while no branch is restorable from a region.
    pub predicted_seconds: Option<f64>,
    /// The slowest branch, its point and what restoring it needs.
    pub branch: Option<String>,
    pub point: Option<Lsn>,
    pub needs: Option<Needs>,
    pub prediction: Option<Prediction>,
    /// The image the prediction starts from, and when it was taken (Unix µs).
    pub image: Option<String>,
    pub image_taken_us: Option<i64>,
    /// How many measured restores the prediction rests on.
    pub restores_measured: usize,
    /// Why the prediction is missing or over the RTO.
    pub reason: Option<String>,
}

impl RtoStatus {
    pub fn exceeded(&self) -> bool {
        self.predicted_seconds.is_some_and(|p| p > self.rto_seconds)
    }

    /// Whether an image layer would bring the prediction back under the RTO's margin.
    pub fn image_helps(&self) -> bool {
        self.prediction
            .is_some_and(|p| rto::image_helps(&p, self.rto_seconds))
    }
}

/// The measurements in a recorded restore's report: `None` for a restore that did not replay.
pub fn measured(report: &str) -> Option<Measured> {
    #[derive(serde::Deserialize)]
    struct Phases {
        fetch_index: f64,
        fetch_layers: f64,
        write: f64,
        wal_replay: Option<f64>,
        first_connection: Option<f64>,
    }
    #[derive(serde::Deserialize)]
    struct Report {
        bytes_fetched: u64,
        written_bytes: u64,
        #[serde(default)]
        wal_bytes: Option<u64>,
        #[serde(default)]
        replay_bytes: Option<u64>,
        phases: Phases,
    }
    let r: Report = serde_json::from_str(report).ok()?;
    Some(Measured {
        fetch_bytes: r.bytes_fetched,
        fetch_seconds: r.phases.fetch_layers,
        write_bytes: r.written_bytes + r.wal_bytes?,
        write_seconds: r.phases.write,
        replay_bytes: r.replay_bytes?,
        replay_seconds: r.phases.wal_replay?,
        fixed_seconds: r.phases.fetch_index + r.phases.first_connection.unwrap_or(0.0),
    })
}

/// The model of the latest successful restores that replayed, and how many there were.
pub async fn model(app: &Appliance) -> crate::Result<Option<Model>> {
    let rows = cairn_restore::history::list(&app.engine().catalog, None, MEASUREMENTS * 4).await?;
    let ms: Vec<Measured> = rows
        .iter()
        .filter(|r| r.ok)
        .filter_map(|r| measured(&r.report))
        .take(MEASUREMENTS as usize)
        .collect();
    Ok(rto::model(&ms))
}

/// What restoring branch timeline `tl` from the regions needs now: its point, the image and
/// the needs; `None` when no point of it is restorable from `held` layers.
pub fn needs_of(
    cluster: &ClusterRow,
    tls: &[cairn_engine::catalog::TimelineRow],
    held: &[LayerRow],
    refs: &HashMap<LayerId, Vec<LayerId>>,
    tl: cairn_engine::TimelineId,
) -> Option<(Lsn, LayerId, Needs)> {
    let map = cairn_engine::engine::layer_map_of(tls, held);
    let (_, point) = map.reconstructible_windows(tl).last().copied()?;
    let plan = map.plan(tl, point).ok()?;
    let by_id: HashMap<LayerId, &LayerRow> = held.iter().map(|l| (l.id, l)).collect();
    let size = |id: &LayerId| by_id.get(id).map_or(0, |l| l.file_size);
    let mut images: Vec<LayerId> = vec![plan.image.id];
    for r in refs.get(&plan.image.id).into_iter().flatten() {
        if !images.contains(r) {
            images.push(*r);
        }
    }
    let seg = cluster.segment_size.max(1);
    let needs = Needs {
        image_fetch_bytes: images.iter().map(size).sum(),
        wal_fetch_bytes: plan.wal_layers().map(|w| size(&w.id)).sum(),
        image_write_bytes: by_id.get(&plan.image.id).map_or(0, |l| l.logical_size),
        wal_write_bytes: (point.0 / seg + 1).saturating_sub(plan.image.start.0 / seg) * seg,
        replay_bytes: point.0.saturating_sub(plan.image.end.0),
    };
    Some((point, plan.image.id, needs))
}

/// Every governed cluster's predicted restore time, from what the policy's regions hold.
pub async fn rto(app: &Appliance, set: &PolicySet) -> crate::Result<Vec<RtoStatus>> {
    let engine = app.engine();
    let model = model(app).await?;
    let copies = app.protection().copies().await?;
    let mut out = Vec::new();
    for c in engine.catalog.clusters().await? {
        let Some(p) = set.for_cluster(&c.name) else {
            continue;
        };
        let regions: HashSet<&str> = p.regions.selected.iter().map(String::as_str).collect();
        let held: Vec<LayerRow> = engine
            .catalog
            .layers(c.id)
            .await?
            .into_iter()
            .filter(|l| {
                copies
                    .get(&l.id.to_string())
                    .is_some_and(|rs| rs.iter().any(|r| regions.contains(r.as_str())))
            })
            .collect();
        let tls = engine.catalog.timelines(c.id).await?;
        let mut refs: HashMap<LayerId, Vec<LayerId>> = HashMap::new();
        for (image, r) in engine.catalog.layer_refs(c.id).await? {
            refs.entry(image).or_default().push(r);
        }
        let rto_seconds = p.objectives.rto.as_secs_f64();
        let mut status = RtoStatus {
            cluster: c.name.clone(),
            policy: p.name.clone(),
            rto_seconds,
            predicted_seconds: None,
            branch: None,
            point: None,
            needs: None,
            prediction: None,
            image: None,
            image_taken_us: None,
            restores_measured: model.map_or(0, |m| m.restores),
            reason: None,
        };
        let Some(m) = model else {
            status.reason = Some(
                "no restore has been measured yet: the prediction needs one \
                 (`cairn restore --to-datadir DIR --recover`, or a verification run)"
                    .into(),
            );
            out.push(status);
            continue;
        };
        for b in engine.catalog.branches(c.id).await? {
            let Some((point, image, needs)) = needs_of(&c, &tls, &held, &refs, b.timeline_id)
            else {
                continue;
            };
            let pr = rto::predict(&m, &needs);
            if status.predicted_seconds.is_some_and(|s| s >= pr.seconds) {
                continue;
            }
            status.predicted_seconds = Some(pr.seconds);
            status.branch = Some(b.name.clone());
            status.point = Some(point);
            status.needs = Some(needs);
            status.prediction = Some(pr);
            status.image = Some(image.to_string());
            status.image_taken_us = held
                .iter()
                .find(|l| l.id == image && l.kind == LayerKind::Image)
                .map(|l| l.created_at_us);
        }
        status.reason = match (&status.prediction, status.exceeded()) {
            (None, _) => Some(
                "no branch is restorable from the policy's regions yet (no image is shipped)"
                    .into(),
            ),
            (Some(pr), true) => Some(explain(&status, pr)),
            (Some(_), false) => None,
        };
        out.push(status);
    }
    Ok(out)
}

/// Why a prediction is over the RTO: its phases, and what an image would do.
fn explain(s: &RtoStatus, p: &Prediction) -> String {
    let n = s.needs.unwrap_or_default();
    let size = cairn_units::fmt_size;
    let what = format!(
        "restoring branch '{}' would take {:.1}s (fixed {:.1}s, fetch {:.1}s of {}, write \
         {:.1}s of {}, replay {:.1}s of {} WAL; from {} measured restore(s))",
        s.branch.as_deref().unwrap_or("?"),
        p.seconds,
        p.fixed_seconds,
        p.fetch_seconds,
        size(n.image_fetch_bytes + n.wal_fetch_bytes),
        p.write_seconds,
        size(n.image_write_bytes + n.wal_write_bytes),
        p.replay_seconds,
        size(n.replay_bytes),
        s.restores_measured
    );
    let without_wal = p.seconds - p.wal_seconds;
    if rto::image_helps(p, s.rto_seconds) && without_wal <= s.rto_seconds {
        format!(
            "{what}; an image layer is being taken to shorten replay (the {:.1}s that grow \
             with the WAL go once it reaches the regions)",
            p.wal_seconds
        )
    } else {
        format!(
            "{what}; a new image would still leave {without_wal:.1}s: the data itself takes \
             longer than the RTO to restore here (raise the RTO, or restore from a faster region)"
        )
    }
}

/// The clusters whose prediction asks for an image now, with the image it would replace
/// (taken at Unix µs): the run claims one image per cluster and replaced image.
pub fn wanted_images(statuses: &[RtoStatus]) -> Vec<(&RtoStatus, i64)> {
    statuses
        .iter()
        .filter(|s| s.image_helps())
        .filter_map(|s| s.image_taken_us.map(|t| (s, t)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_that_replayed_is_a_measurement_and_others_are_not() {
        let r = r#"{"bytes_fetched": 100, "written_bytes": 40, "wal_bytes": 16, "replay_bytes": 5,
            "phases": {"fetch_index": 0.5, "fetch_layers": 2.0, "write": 1.0,
                       "wal_replay": 3.0, "first_connection": 0.25}}"#;
        assert_eq!(
            measured(r),
            Some(Measured {
                fetch_bytes: 100,
                fetch_seconds: 2.0,
                write_bytes: 56,
                write_seconds: 1.0,
                replay_bytes: 5,
                replay_seconds: 3.0,
                fixed_seconds: 0.75,
            })
        );
        let no_replay = r.replace("\"wal_replay\": 3.0", "\"wal_replay\": null");
        assert_eq!(measured(&no_replay), None);
        // Recorded before restores reported their WAL bytes: not a measurement.
        let old = r.replace("\"replay_bytes\": 5,", "");
        assert_eq!(measured(&old), None);
        assert_eq!(measured("not json"), None);
    }
}
