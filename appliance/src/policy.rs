//! Policies as this appliance reads them: the policy directory checked against the appliance's
//! own regions (names and tags) and clusters.
//!
//! Invariants:
//! - Checking reads the policy files, `regions.toml` (or the embedded default when there is
//!   none) and the catalog's cluster names; it writes nothing, so it is safe before `apply`.
//! - A policy set with any error is refused whole, every problem of every file listed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_backup::region::RegionsConfig;
use cairn_engine::Engine;
use cairn_policies::{Context, PolicySet, RegionInfo};

use crate::error::{Error, Result};

/// How often `cairn up` ships WAL to each region unless told otherwise (`--ship-interval`);
/// no RPO below it can be kept.
pub const DEFAULT_SHIP_INTERVAL: Duration = Duration::from_secs(2);

/// The policy directory: `given`, else `HOME/policies`.
pub fn policy_dir(home: &Path, given: Option<&Path>) -> PathBuf {
    given.map_or_else(|| home.join("policies"), Path::to_path_buf)
}

/// What policies are checked against: this appliance's regions and clusters.
pub async fn context(engine: &Engine, ship_interval: Duration) -> Result<Context> {
    let home = &engine.home.root;
    let regions = if RegionsConfig::path(home).exists() {
        RegionsConfig::load_or_init(home)?
    } else {
        RegionsConfig::embedded(home)
    };
    let clusters = engine.catalog.clusters().await?;
    Ok(Context {
        regions: regions
            .regions
            .iter()
            .map(|r| RegionInfo {
                name: r.name.clone(),
                tags: r.tags.clone(),
            })
            .collect(),
        clusters: clusters.into_iter().map(|c| c.name).collect(),
        ship_interval,
    })
}

/// One policy as `policy check` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicySummary {
    pub name: String,
    pub file: PathBuf,
    pub sha256: String,
    /// The patterns as written.
    pub clusters: Vec<String>,
    /// The clusters of this appliance it governs (an exact name in another policy wins).
    pub governs: Vec<String>,
    pub rpo_seconds: u64,
    pub rto_seconds: u64,
    pub regions: Vec<String>,
    pub min_copies: u32,
}

/// The outcome of a clean check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicyCheck {
    pub dir: PathBuf,
    pub policies: Vec<PolicySummary>,
    /// Clusters of this appliance no policy governs.
    pub unprotected: Vec<String>,
    pub warnings: Vec<String>,
}

/// Reads and checks every policy in `dir` against `ctx`.
pub fn check(dir: &Path, ctx: &Context) -> Result<(PolicySet, PolicyCheck)> {
    let set = cairn_policies::load_dir(dir, ctx).map_err(|errors| Error::Policies {
        dir: dir.to_path_buf(),
        errors,
    })?;
    let governs = |name: &str| -> Vec<String> {
        ctx.clusters
            .iter()
            .filter(|c| set.for_cluster(c).is_some_and(|p| p.name == name))
            .cloned()
            .collect()
    };
    let policies = set
        .policies
        .iter()
        .map(|p| PolicySummary {
            name: p.name.clone(),
            file: p.file.clone(),
            sha256: p.sha256.clone(),
            clusters: p.clusters.iter().map(|c| c.as_str().to_string()).collect(),
            governs: governs(&p.name),
            rpo_seconds: p.objectives.rpo.as_secs(),
            rto_seconds: p.objectives.rto.as_secs(),
            regions: p.regions.selected.clone(),
            min_copies: p.regions.min_copies,
        })
        .collect();
    let unprotected = ctx
        .clusters
        .iter()
        .filter(|c| set.for_cluster(c).is_none())
        .cloned()
        .collect();
    let report = PolicyCheck {
        dir: dir.to_path_buf(),
        policies,
        unprotected,
        warnings: set.warnings.iter().map(|w| w.to_string()).collect(),
    };
    Ok((set, report))
}
