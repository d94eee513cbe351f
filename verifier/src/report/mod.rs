//! Verification reports: what one run restored, from where, what each check found, how long it
//! took against the policy's RTO and how much it would have lost against its RPO, signed by
//! the appliance and chained to the report before it.
//!
//! Invariants:
//! - A report is plain data ([`Report`]): integers, strings, lists and maps with sorted keys,
//!   no floats, so that it has exactly one encoding ([`seal`]: canonical JSON).
//! - Its stored form ([`seal::SealedReport`]) is that encoding with the signer's public key and
//!   an Ed25519 signature over it; a report names the SHA-256 of the stored form of the report
//!   before it (`previous`) and its place in the chain (`sequence`, from 1), so that editing,
//!   removing or reordering any stored report breaks the chain where it happened
//!   ([`chain::verify_chain`]).
//! - Nothing here reads a clock, a key file or the catalog: callers pass them in.

pub mod chain;
pub mod html;
pub mod seal;

use std::collections::BTreeMap;

/// The version of the report format ([`Report`] and its stored form).
pub const FORMAT_VERSION: u32 = 1;

/// How a check, or a whole run, ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed,
    /// Not run: an earlier failure made it meaningless, or the policy does not ask for it.
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One check of a run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckResult {
    /// The check's name (`object_integrity`, `wal_continuity`, `page_checksums`, ...).
    pub name: String,
    pub outcome: Outcome,
    pub duration_ms: u64,
    /// What it counted (objects read, pages checked, tables compared, ...).
    pub counts: BTreeMap<String, u64>,
    /// What failed, one line each, naming the thing (region, object, LSN, relation, page).
    pub details: Vec<String>,
}

/// A phase of the run and how long it took.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub name: String,
    pub duration_ms: u64,
}

/// A copy repaired during the run: `object` in `region` replaced by the good copy of `from`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repair {
    pub region: String,
    pub object: String,
    pub from: String,
    pub reason: String,
}

/// The policy a run followed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRef {
    pub name: String,
    /// SHA-256 of the policy file in force.
    pub file_sha256: String,
    pub rpo_ms: u64,
    pub rto_ms: u64,
}

/// The recovery point a run restored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointRef {
    pub branch: String,
    /// How it was chosen: `latest`, `random within 7d`, `given`.
    pub selection: String,
    /// The target LSN, as PostgreSQL prints it.
    pub lsn: String,
    /// The target time (Unix µs), when the point was given as one or is known.
    pub time_us: Option<i64>,
}

/// What one verification run did and found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub format: u32,
    /// Place in the chain, from 1.
    pub sequence: u64,
    /// SHA-256 (hex) of the stored form of report `sequence - 1`; none for the first.
    pub previous: Option<String>,
    /// The run's id.
    pub id: String,
    pub appliance_version: String,
    /// Who or what asked for the run (`cli:USER`, `schedule:POLICY/JOB-RUN`).
    pub requested_by: String,
    pub cluster: String,
    pub cluster_id: String,
    pub policy: Option<PolicyRef>,
    pub region: String,
    pub point: PointRef,
    pub started_at_us: i64,
    pub ended_at_us: i64,
    pub outcome: Outcome,
    pub checks: Vec<CheckResult>,
    /// Phase timings, in order; their sum is the measured RTO.
    pub phases: Vec<Phase>,
    /// Restore to queries answered: the measured RTO.
    pub measured_rto_ms: u64,
    /// The newest heartbeat (or commit) time in the restored copy against the point's time:
    /// what a disaster at that point would have lost.
    pub achieved_rpo_ms: Option<u64>,
    pub repairs: Vec<Repair>,
    /// `removed`, or what was left behind and why.
    pub teardown: String,
}

impl Report {
    /// The run's outcome from its checks: failed if any failed.
    pub fn outcome_of(checks: &[CheckResult]) -> Outcome {
        if checks.iter().any(|c| c.outcome == Outcome::Failed) {
            Outcome::Failed
        } else {
            Outcome::Passed
        }
    }
}
