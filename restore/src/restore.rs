//! One restore, from request to report: [`restore`] plans it ([`crate::plan`]: every
//! refusal, nothing written), carries the plan out ([`crate::execute`]) and records the outcome.
//!
//! Phases, each timed (these are the RTO measurements the scheduler and reports use):
//! 1. `fetch_index`: choose the region, read and verify the cluster's indexes, read the
//!    metadata of the WAL layers on the branch's ancestry, stage them, resolve the point and
//!    plan it (image + WAL pieces);
//! 2. `fetch_layers`: download the plan's layers in parallel, each verified end to end, each
//!    from the first region holding a good copy;
//! 3. `write`: materialise the data directory (image pieces checked against their SHA-256,
//!    WAL from the image's redo point to the target);
//! 4. `wal_replay`: PostgreSQL replays that WAL and ends recovery exactly at the point;
//! 5. `first_connection`: the first connection and query.
//!
//! Everything that can be refused is refused before the first layer is fetched: an unknown
//! branch or a point outside every window the region holds (the windows are listed), a
//! target directory that is not empty, PostgreSQL binaries of another major version, too little
//! free disk. A failed restore removes what it wrote; a restore as a branch removes the branch.

use std::path::PathBuf;
use std::sync::Arc;

use cairn_backup::keys::Identity;
use cairn_backup::{Protection, Result};
use cairn_engine::branch::PointSpec;
use cairn_engine::catalog::{now_us, RestoreRow};
use cairn_engine::progress::Progress;
use cairn_engine::{Lsn, TimelineId};

use crate::source::{RegionProbe, Substitution};

/// Where a restore writes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A new branch of the cluster in this appliance, with a compute started on it.
    Branch(String),
    /// A plain PostgreSQL data directory; `recover`: replay to the point and shut down cleanly
    /// (else the directory is left to replay on its first start); `delta`: write over an
    /// existing data directory, rewriting only what differs.
    Datadir {
        dir: PathBuf,
        recover: bool,
        delta: bool,
        /// Where the tablespaces go.
        tablespaces: crate::tablespaces::TablespaceMap,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Branch(b) => write!(f, "branch '{b}'"),
            Target::Datadir { dir, .. } => write!(f, "data directory {}", dir.display()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub cluster: String,
    pub branch: String,
    pub point: PointSpec,
    pub target: Target,
    /// The region to read indexes and objects from first.
    pub region: Option<String>,
    /// The cluster's id, when a name is not enough (several clusters of that name).
    pub cluster_id: Option<String>,
    /// An identity that opens the data keys, besides the appliance's own.
    pub identity: Option<Identity>,
    /// Signing keys trusted besides the appliance's (a recovery kit's, `--trust-signer`).
    pub signers: Vec<[u8; 32]>,
    /// Layers fetched at once.
    pub parallel: usize,
}

/// Seconds spent in each phase.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Phases {
    pub fetch_index: f64,
    pub fetch_layers: f64,
    pub write: f64,
    pub wal_replay: Option<f64>,
    pub first_connection: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    pub id: String,
    pub cluster: String,
    pub branch: String,
    pub point: String,
    pub lsn: Lsn,
    /// Time of the last transaction at or before the point, when known.
    pub point_time: Option<String>,
    pub target: String,
    /// The region the indexes came from.
    pub region: String,
    pub signers: Vec<String>,
    pub probes: Vec<RegionProbe>,
    /// Objects another region had to serve, and why.
    pub substitutions: Vec<Substitution>,
    pub layers_fetched: usize,
    /// The layers the point needed (image, images it references, WAL), by id.
    pub layers: Vec<String>,
    pub bytes_fetched: u64,
    pub data_bytes: u64,
    /// Bytes of data files written (less than `data_bytes` after a delta restore).
    pub written_bytes: u64,
    /// Files and directories a delta restore removed.
    pub removed: u64,
    pub wal_segments: u64,
    pub phases: Phases,
    pub total_seconds: f64,
    /// For a branch target: the compute's port.
    pub compute_port: Option<u16>,
    /// For a data directory target: its roles and how to log in as each.
    pub logins: Vec<crate::logins::Login>,
    /// For a data directory target: where each tablespace went.
    pub tablespaces: Vec<crate::tablespaces::RestoredTablespace>,
    /// The cluster as the region describes it (binaries, superuser), for callers that go on
    /// to start the restored data directory.
    #[serde(skip)]
    pub cluster_row: Option<cairn_engine::catalog::ClusterRow>,
}

/// A point as the report shows it.
pub(crate) fn describe(p: &PointSpec) -> String {
    match p {
        PointSpec::Head => "latest".into(),
        other => other.to_string(),
    }
}

/// Restores `req` and records the outcome (report or error) in the appliance's catalog.
pub async fn restore(
    p: &Protection,
    req: &RestoreRequest,
    progress: &Arc<Progress>,
) -> Result<RestoreReport> {
    let started_at = now_us();
    let id = TimelineId::generate().to_string();
    let result = match crate::plan::plan(p, req, progress).await {
        Ok(plan) => crate::execute::execute(p, req, plan, &id, progress).await,
        Err(e) => Err(e),
    };
    let (ok, error, report, lsn, region) = match &result {
        Ok(r) => (
            true,
            None,
            serde_json::to_string(r).unwrap_or_default(),
            Some(r.lsn),
            Some(r.region.clone()),
        ),
        Err(e) => (false, Some(e.to_string()), "{}".into(), None, None),
    };
    let row = RestoreRow {
        id,
        cluster: req.cluster.clone(),
        branch: req.branch.clone(),
        point: describe(&req.point),
        lsn,
        target: req.target.to_string(),
        region,
        ok,
        error,
        report,
        started_at_us: started_at,
        finished_at_us: now_us(),
    };
    if let Err(e) = p.engine.catalog.record_restore(&row).await {
        tracing::warn!(error = %e, "could not record the restore in the catalog");
    }
    result
}
