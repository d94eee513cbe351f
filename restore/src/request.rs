//! What a restore is asked to do: the cluster, branch and point, the target, and how the
//! regions are read.
//!
//! Invariants:
//! - A request carries everything trust depends on (identity, trusted signers) explicitly;
//!   nothing is learnt from a region.

use std::path::PathBuf;

use cairn_backup::keys::Identity;
use cairn_engine::branch::PointSpec;

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

/// A point as the report shows it.
pub(crate) fn describe(p: &PointSpec) -> String {
    match p {
        PointSpec::Head => "latest".into(),
        other => other.to_string(),
    }
}
