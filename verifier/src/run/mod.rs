//! A verification run: restore a recovery point from a region into scratch, start PostgreSQL on
//! it in isolation, check the data, tear the scratch down, and append a signed report to the
//! chain (then copy it to every region).
//!
//! Invariants:
//! - The restore is the real one (`cairn_restore::restore`, recorded like any restore, so its
//!   timings feed the RTO prediction), into a data directory under `HOME/verify/` that nothing
//!   else uses: the server on it listens on a private socket only, archives nothing and is
//!   stopped before the directory is removed; nothing flows back into any timeline.
//! - A run always ends in a report, whatever failed: a failed restore is diagnosed by the check
//!   it belongs to and the checks it made impossible are reported as skipped, with why.
//! - The measured RTO runs from the start of the restore to the first query the restored server
//!   answered; the phases say where the time went.
//! - Scratch (data directory, tablespaces, local scratch branch) goes whatever happened; what
//!   a killed run left is swept at the start of the next run (and of `cairn up`).
//! - A region that could not serve an object intact is repaired from a good copy
//!   ([`repair`]); the object integrity check still fails for that run, and the report lists
//!   each repair.

pub mod checks;
pub mod conn;
pub mod fingerprint;
pub mod heartbeat;
pub mod region;
pub mod repair;

use std::sync::Arc;
use std::time::Instant;

use cairn_backup::Protection;
use cairn_engine::branch::PointSpec;
use cairn_engine::catalog::{now_us, ClusterRow};
use cairn_engine::progress::Progress;
use cairn_policies::{Check, Probe};
use cairn_restore::recovery::PrivateServer;
use cairn_restore::{RestoreReport, RestoreRequest, Target};

use crate::error::{Error, Result};
use crate::report::seal::SealedReport;
use crate::report::{CheckResult, Outcome, Phase, PointRef, PolicyRef, Report, FORMAT_VERSION};
use checks::{result, skipped};
use conn::Server;

/// What to verify, and how.
#[derive(Debug, Clone)]
pub struct VerifyRequest {
    pub cluster: String,
    pub branch: String,
    pub point: PointSpec,
    /// How the point was chosen, for the report (`latest`, `given`, `random within 7d`).
    pub selection: String,
    /// The region to restore from; `None`: the one that served this cluster's verifications
    /// least recently.
    pub region: Option<String>,
    /// Who or what asked (`cli:USER`, `schedule:POLICY/RUN`).
    pub requested_by: String,
    pub policy: Option<PolicyRef>,
    /// The checks to run (any order; run in [`Check::ALL`]'s).
    pub checks: Vec<Check>,
    pub probes: Vec<Probe>,
    /// Layers the restore fetches at once.
    pub parallel: usize,
    /// Read back a share of the cluster's objects in every region so that each is proven
    /// within `period`, given at most `until_next` between runs ([`crate::coverage`]).
    pub coverage: Option<Coverage>,
    /// The run's time limit: the check it is at when the limit passes fails, the ones after
    /// it are skipped, and its scratch goes as after any run.
    pub time_limit: Option<std::time::Duration>,
    /// How long the restored copy (stopped) is kept for inspection after a run whose restore
    /// finished; `None`: removed at once.
    pub keep: Option<std::time::Duration>,
}

/// The coverage a run keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    pub period: std::time::Duration,
    pub until_next: std::time::Duration,
}

/// A run's outcome: the stored report, and the restore's own report when it got that far.
#[derive(Debug, Clone)]
pub struct Verified {
    pub sealed: SealedReport,
    pub restore: Option<RestoreReport>,
}

fn ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

fn phase(name: &str, duration_ms: u64) -> Phase {
    Phase {
        name: name.into(),
        duration_ms,
    }
}

/// Runs one verification (see the module's invariants).
pub async fn verify(
    p: &Protection,
    req: &VerifyRequest,
    progress: &Arc<Progress>,
) -> Result<Verified> {
    let engine = &p.engine;
    let cluster = engine.resolve_cluster(Some(&req.cluster)).await?;
    let names: Vec<String> = p.regions.regions.iter().map(|r| r.name.clone()).collect();
    let region = match &req.region {
        Some(r) => p.regions.get(r)?.name.clone(),
        None => {
            let last = crate::store::last_verified(&engine.catalog, &cluster.name).await?;
            region::choose_region(&names, &last)
                .cloned()
                .ok_or_else(|| Error::Refused("no region is configured to verify".into()))?
        }
    };
    if req.checks.contains(&Check::Probes) && req.probes.is_empty() {
        return Err(Error::Refused(
            "the probes check needs at least one probe (policy [[verification.probes]] or \
             --probe)"
                .into(),
        ));
    }
    engine.home.sweep_scratch();
    // A copy kept from this cluster's last run makes way for this one's.
    engine.home.release_kept("verify", &cluster.name);
    let id = format!("vr-{}", cairn_engine::TimelineId::generate());
    let started_at_us = now_us();
    let t0 = Instant::now();
    let suffix = &id[3..15];
    let data = engine
        .home
        .scratch_dir("verify", &format!("data-{suffix}"), 0o711, 0o700)?;
    let ts = engine
        .home
        .scratch_dir("verify", &format!("tablespaces-{suffix}"), 0o711, 0o711)?;
    let rreq = RestoreRequest {
        cluster: cluster.name.clone(),
        branch: req.branch.clone(),
        point: req.point.clone(),
        target: Target::Datadir {
            dir: data.path.clone(),
            recover: true,
            delta: false,
            tablespaces: cairn_restore::TablespaceMap {
                entries: vec![],
                root: Some(ts.path.clone()),
            },
        },
        region: Some(region.clone()),
        cluster_id: Some(cluster.id.to_string()),
        identity: None,
        signers: Vec::new(),
        parallel: req.parallel.max(1),
    };
    let wants = |c: Check| req.checks.contains(&c);
    let mut found = Found::default();
    let work = restore_and_check(
        p,
        req,
        (&cluster, &rreq, progress),
        &data.path,
        started_at_us,
        t0,
        &mut found,
    );
    let cut_off = match req.time_limit {
        Some(limit) => tokio::time::timeout(limit, work)
            .await
            .is_err()
            .then_some(limit),
        None => {
            work.await;
            None
        }
    };
    if let Some(limit) = cut_off {
        found.cut_off(limit, &req.checks);
        // What the abandoned work left running: a server on the copy, a scratch branch.
        cairn_engine::pg::leftover::stop_leftover(&data.path);
        if let Err(e) = engine.sweep_scratch_branches().await {
            tracing::warn!(error = %e, "the scratch branch of a run cut off is left for `cairn up`");
        }
    }
    let Found {
        mut results,
        phases,
        measured_rto_ms,
        repairs,
        restored,
        ..
    } = found;
    // Every asked check has a result, in Check::ALL's order.
    let reason = match (&restored, cut_off) {
        (_, Some(limit)) => format!(
            "not reached: the run hit its time limit of {}",
            cairn_units::fmt_duration(limit)
        ),
        (Some(Ok(_)), None) => "not reached: the restored server did not start".to_string(),
        _ => "not reached: the restore failed".to_string(),
    };
    for c in Check::ALL {
        if wants(c) && !results.iter().any(|r| r.name == c.name()) {
            results.push(skipped(c, &reason));
        }
    }
    results.sort_by_key(|r| Check::from_name(&r.name).map(|c| c as usize));
    results.retain(|r| Check::from_name(&r.name).is_some_and(wants));
    let achieved_rpo_ms = results
        .iter()
        .find(|r| r.name == Check::Heartbeat.name())
        .and_then(|r| r.counts.get(heartbeat::ACHIEVED_RPO_MS).copied());
    let restore_report = restored.and_then(|r| r.ok());
    let teardown = teardown(
        &cluster.name,
        data,
        ts,
        req.keep
            .filter(|_| restore_report.is_some() && cut_off.is_none()),
    );
    let point_lsn = restore_report
        .as_ref()
        .map_or_else(|| req.point.to_string(), |r| r.lsn.to_string());
    let draft = Report {
        format: FORMAT_VERSION,
        sequence: 0,
        previous: None,
        id,
        appliance_version: env!("CARGO_PKG_VERSION").into(),
        requested_by: req.requested_by.clone(),
        cluster: cluster.name.clone(),
        cluster_id: cluster.id.to_string(),
        policy: req.policy.clone(),
        region,
        point: PointRef {
            branch: req.branch.clone(),
            selection: req.selection.clone(),
            lsn: point_lsn,
            time_us: match req.point {
                PointSpec::Time(t) => Some(t),
                _ => None,
            },
        },
        started_at_us,
        ended_at_us: now_us(),
        outcome: Report::outcome_of(&results),
        checks: results,
        phases,
        measured_rto_ms,
        achieved_rpo_ms,
        repairs,
        teardown,
    };
    let sealed = crate::store::append(&engine.catalog, p.signer(), &draft).await?;
    for r in &p.regions.regions {
        if let Err(e) = crate::store::publish(&engine.catalog, r).await {
            tracing::warn!(region = %r.name, error = %e, "verification report not copied yet (cairn up retries)");
        }
    }
    tracing::info!(
        cluster = %cluster.name, report = sealed.report.sequence,
        outcome = sealed.report.outcome.as_str(), "verification done"
    );
    Ok(Verified {
        sealed,
        restore: restore_report,
    })
}

/// Removes the run's scratch directories, or keeps them for `keep` ([`cairn_engine::kept`]);
/// what the report says about it.
fn teardown(
    cluster: &str,
    data: cairn_engine::home::ScratchDir,
    ts: cairn_engine::home::ScratchDir,
    keep: Option<std::time::Duration>,
) -> String {
    if let Some(window) = keep {
        let until_us =
            now_us().saturating_add(i64::try_from(window.as_micros()).unwrap_or(i64::MAX));
        // The tablespace root first: when it cannot be kept, the data directory goes too.
        match ts
            .keep(cluster, until_us)
            .and_then(move |_| data.keep(cluster, until_us))
        {
            Ok(path) => {
                return format!(
                    "kept until {} at {} (stopped; removed then, or when the next \
                     verification of this cluster starts)",
                    cairn_units::fmt_time(until_us),
                    path.display()
                )
            }
            Err(e) => tracing::warn!(error = %e, "the restored copy could not be kept"),
        }
        return "removed (it could not be kept)".to_string();
    }
    let (data_path, ts_path) = (data.path.clone(), ts.path.clone());
    drop(data);
    drop(ts);
    if data_path.exists() || ts_path.exists() {
        format!(
            "left behind: {} (removed by the next run or `cairn up`)",
            data_path.display()
        )
    } else {
        "removed".to_string()
    }
}

/// What a run has found so far. It lives outside the run's future, so a run its time limit
/// cuts off still reports what it finished, and the check it was at.
#[derive(Default)]
struct Found {
    results: Vec<CheckResult>,
    phases: Vec<Phase>,
    measured_rto_ms: u64,
    repairs: Vec<crate::report::Repair>,
    /// `None` while the restore runs.
    restored: Option<std::result::Result<RestoreReport, cairn_backup::Error>>,
    /// The check the run is at and what it was doing: what a time limit cuts off.
    at: Option<(Check, &'static str)>,
}

impl Found {
    /// The run was cut off by its time limit: the check it was at fails, saying so (when that
    /// check was not asked for, the first asked one still waiting for it).
    fn cut_off(&mut self, limit: std::time::Duration, wanted: &[Check]) {
        let Some((at, doing)) = self.at else { return };
        let waiting =
            |c: &Check| wanted.contains(c) && !self.results.iter().any(|r| r.name == c.name());
        let Some(check) = (if wanted.contains(&at) {
            Some(at)
        } else {
            Check::ALL.into_iter().find(waiting)
        }) else {
            return;
        };
        let why = format!(
            "did not finish within the run's time limit of {} ({doing})",
            cairn_units::fmt_duration(limit),
        );
        match self.results.iter_mut().find(|r| r.name == check.name()) {
            Some(r) => {
                r.outcome = Outcome::Failed;
                r.details.push(why);
            }
            None => self.results.push(result(
                check,
                Outcome::Failed,
                Instant::now(),
                Default::default(),
                vec![why],
            )),
        }
    }
}

/// The restore, the checks on the copy, the coverage reads and the repairs, recorded in
/// `found` as they finish.
async fn restore_and_check(
    p: &Protection,
    req: &VerifyRequest,
    (cluster, rreq, progress): (&ClusterRow, &RestoreRequest, &Arc<Progress>),
    datadir: &std::path::Path,
    started_at_us: i64,
    t0: Instant,
    found: &mut Found,
) {
    let wants = |c: Check| req.checks.contains(&c);
    found.at = Some((Check::ObjectIntegrity, "the restore was still running"));
    let t = Instant::now();
    let restored = cairn_restore::restore(p, rreq, progress).await;
    found.phases.push(phase("restore", ms(t)));
    let r = match restored {
        Err(e) => {
            found.results.extend(checks::restore_failed(&e, t));
            found.restored = Some(Err(e));
            return;
        }
        Ok(r) => r,
    };
    if wants(Check::ObjectIntegrity) {
        found.results.push(checks::object_integrity(&r, t));
    }
    if wants(Check::WalContinuity) {
        found.results.push(checks::wal_continuity(&r, t));
    }
    found.restored = Some(Ok(r.clone()));
    let at = Examined {
        datadir,
        t0,
        reference_us: heartbeat::reference(&req.point, r.point_time_us, started_at_us),
    };
    examine(p, req, cluster, &r, &at, found).await;
    // After the checks (not part of the measured RTO): the coverage reads, then what a region
    // could not serve intact is repaired from a good copy.
    found.at = Some((
        Check::ObjectIntegrity,
        "the coverage reads or the repairs were still running",
    ));
    let mut read_problems = Vec::new();
    if let (Some(cov), Some(c)) = (
        req.coverage,
        found
            .results
            .iter_mut()
            .find(|c| c.name == Check::ObjectIntegrity.name()),
    ) {
        let t = Instant::now();
        match crate::coverage::read_due(
            p,
            &cluster.id.to_string(),
            cov.period,
            cov.until_next,
            now_us(),
        )
        .await
        {
            Ok(run) => {
                c.counts.insert("coverage_objects".into(), run.objects);
                c.counts.insert("coverage_read".into(), run.read);
                c.counts.insert("coverage_proven".into(), run.covered);
                if !run.problems.is_empty() {
                    c.outcome = Outcome::Failed;
                    c.details
                        .extend(run.problems.iter().map(|p| format!("read back: {p}")));
                    read_problems = run.problems;
                }
            }
            Err(e) => {
                c.outcome = Outcome::Failed;
                c.details
                    .push(format!("the coverage reads could not run: {e}"));
            }
        }
        found.phases.push(phase("coverage", ms(t)));
    }
    if found
        .results
        .iter()
        .any(|c| c.name == Check::ObjectIntegrity.name() && c.outcome == Outcome::Failed)
    {
        let t = Instant::now();
        let (done, left) = repair::repair_found(p, &r, read_problems).await;
        found.phases.push(phase("repair", ms(t)));
        if let Some(c) = found
            .results
            .iter_mut()
            .find(|c| c.name == Check::ObjectIntegrity.name())
        {
            c.counts.insert("repaired".into(), done.len() as u64);
            c.details.extend(left);
        }
        found.repairs = done;
    }
    found.at = None;
}

/// What [`examine`] looks at besides the restore: where the copy is, and the time its point
/// stands for ([`heartbeat::reference`]).
struct Examined<'a> {
    datadir: &'a std::path::Path,
    /// When the run started (the measured RTO runs from there).
    t0: Instant,
    reference_us: i64,
}

/// The checks on the restored data directory and the server started on it. Records the
/// measured RTO as soon as the restored server answered its first query.
async fn examine(
    p: &Protection,
    req: &VerifyRequest,
    cluster: &ClusterRow,
    r: &RestoreReport,
    at: &Examined<'_>,
    found: &mut Found,
) {
    let engine = &p.engine;
    let wants = |c: Check| req.checks.contains(&c);
    let bins = match engine.bins_for(cluster) {
        Ok(b) => b,
        Err(e) => {
            found.results.push(result(
                Check::RecoveryTarget,
                Outcome::Failed,
                Instant::now(),
                Default::default(),
                vec![format!("no PostgreSQL binaries for this cluster: {e}")],
            ));
            return;
        }
    };
    if wants(Check::PageChecksums) {
        found.at = Some((Check::PageChecksums, "pg_checksums was still running"));
        let t = Instant::now();
        found
            .results
            .push(checks::page_checksums(bins, &engine.user, at.datadir).await);
        found.phases.push(phase("page_checksums", ms(t)));
    }
    found.at = Some((
        Check::RecoveryTarget,
        "the restored server was still starting",
    ));
    let t = Instant::now();
    let server = match PrivateServer::start(
        engine,
        r.cluster_row.as_ref().unwrap_or(cluster),
        at.datadir,
    ) {
        Ok(s) => s,
        Err(e) => {
            found.results.push(result(
                Check::RecoveryTarget,
                Outcome::Failed,
                t,
                Default::default(),
                vec![format!("the restored data directory did not start: {e}")],
            ));
            return;
        }
    };
    let s = Server::Socket {
        dir: server.socket_dir().to_path_buf(),
        port: server.port,
        user: server.user.clone(),
    };
    if s.connect("postgres").await.is_ok() {
        found.measured_rto_ms = at.t0.elapsed().as_millis() as u64;
    }
    found.phases.push(phase("start", ms(t)));
    let t = Instant::now();
    if let Some(c) = found
        .results
        .iter_mut()
        .find(|c| c.name == Check::PageChecksums.name())
    {
        checks::name_damaged_relations(&s, c).await;
    }
    if wants(Check::RecoveryTarget) {
        found.at = Some((Check::RecoveryTarget, "the check was still running"));
        found
            .results
            .push(checks::recovery_target(&s, r, cluster, t).await);
    }
    if wants(Check::Heartbeat) {
        found.at = Some((Check::Heartbeat, "the check was still running"));
        found.results.push(
            heartbeat::check(
                &s,
                cluster,
                r.point_time_us,
                at.reference_us,
                req.policy.as_ref().map(|p| p.rpo_ms),
            )
            .await,
        );
    }
    if wants(Check::Fingerprint) {
        found.at = Some((Check::Fingerprint, "the check was still running"));
        found
            .results
            .push(fingerprint_check(p, cluster, req, r, &s).await);
    }
    if wants(Check::Amcheck) {
        found.at = Some((Check::Amcheck, "the check was still running"));
        found
            .results
            .push(checks::amcheck(bins, &engine.user, &s).await);
    }
    if wants(Check::Probes) {
        found.at = Some((Check::Probes, "the check was still running"));
        found.results.push(checks::probes(&s, &req.probes).await);
    }
    found.phases.push(phase("checks", ms(t)));
    if let Err(e) = server.stop() {
        tracing::warn!(error = %e, "the verification's server did not stop cleanly");
    }
}

/// The restored copy's fingerprint against the same point materialised from this appliance's
/// own layers (a scratch branch and a compute, removed afterwards).
async fn fingerprint_check(
    p: &Protection,
    cluster: &ClusterRow,
    req: &VerifyRequest,
    r: &RestoreReport,
    restored: &Server,
) -> CheckResult {
    let started = Instant::now();
    let engine = &p.engine;
    let fail = |why: String| {
        result(
            Check::Fingerprint,
            Outcome::Failed,
            started,
            Default::default(),
            vec![why],
        )
    };
    // Both at once: the restored copy is read while the appliance's own copy starts.
    let (theirs, ours) = tokio::join!(
        fingerprint::fingerprint(restored),
        own_fingerprint(engine, cluster, &req.branch, r.lsn)
    );
    let theirs = match theirs {
        Ok(f) => f,
        Err(e) => return fail(format!("restored copy: {e}")),
    };
    let ours = match ours {
        Ok(f) => f,
        Err(OwnCopy::NotInLayers(e)) => {
            return skipped(
                Check::Fingerprint,
                &format!("the point is not in this appliance's own layers ({e})"),
            )
        }
        Err(OwnCopy::Failed(e)) => return fail(format!("the appliance's own copy: {e}")),
    };
    let details = fingerprint::differences(&theirs, &ours);
    let rows: i64 = ours.values().map(|(n, _)| n).sum();
    result(
        Check::Fingerprint,
        if details.is_empty() {
            Outcome::Passed
        } else {
            Outcome::Failed
        },
        started,
        [
            ("tables".to_string(), ours.len() as u64),
            ("rows".to_string(), rows.max(0) as u64),
        ]
        .into(),
        details,
    )
}

/// Why the appliance's own copy of the point has no fingerprint.
enum OwnCopy {
    /// The point is not in this appliance's layers (the check is skipped).
    NotInLayers(String),
    Failed(String),
}

/// The fingerprint of `lsn` of `branch` materialised from this appliance's own layers: a
/// scratch branch and a compute, removed afterwards.
async fn own_fingerprint(
    engine: &cairn_engine::Engine,
    cluster: &ClusterRow,
    branch: &str,
    lsn: cairn_engine::Lsn,
) -> std::result::Result<fingerprint::Fingerprint, OwnCopy> {
    let scratch = format!(
        "{}verify-{}",
        cairn_engine::branch::SCRATCH_PREFIX,
        &cairn_engine::TimelineId::generate().to_string()[..12]
    );
    // Held while the scratch branch lives: a sweep of another process leaves it alone.
    let _lock = engine
        .home
        .lock(
            &format!("scratch-branch-{scratch}"),
            "a verification's scratch branch",
            std::time::Duration::ZERO,
        )
        .map_err(|e| OwnCopy::Failed(format!("scratch branch: {e}")))?;
    engine
        .branch_create(cluster, &scratch, branch, &PointSpec::Lsn(lsn))
        .await
        .map_err(|e| OwnCopy::NotInLayers(e.to_string()))?;
    let ours = async {
        let progress = Arc::new(Progress::new());
        let ci = engine
            .compute_start(cluster, &scratch, None, &progress)
            .await
            .map_err(|e| format!("start the local copy: {e}"))?;
        cairn_engine::failpoint::stall("verify-fingerprint-compute").await;
        let creds = engine
            .credentials(cluster)
            .map_err(|e| format!("credentials: {e}"))?;
        fingerprint::fingerprint(&Server::Loopback {
            port: ci.port,
            user: creds.user,
            password: creds.password,
        })
        .await
    }
    .await;
    if let Err(e) = engine.compute_stop(cluster, &scratch).await {
        tracing::warn!(branch = %scratch, error = %e, "could not stop the verification's scratch compute");
    }
    if let Err(e) = engine.branch_delete(cluster, &scratch).await {
        tracing::warn!(branch = %scratch, error = %e, "could not delete the verification's scratch branch");
    }
    ours.map_err(OwnCopy::Failed)
}
