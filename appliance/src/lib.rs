//! The appliance as a library: the one place that opens the engine, the keys and the regions
//! together and carries out what the appliance does as a whole: a backup now, the recovery
//! points per region, the run of `cairn up` ([`runner`]) and its JSON API ([`api`]), policies
//! and their audit log, retention plans. The `cairn` binary parses arguments, calls this crate
//! and prints; the scheduler and the verifier call the same functions.
//!
//! Invariants:
//! - Nothing here prints or draws progress: work reports through [`Progress`] (and a run
//!   through [`runner::Event`]s) and returns typed values with raw numbers (bytes as `u64`,
//!   LSNs and times as values); presentation is the caller's.
//! - Every error carries a kind ([`ErrorKind`]) that callers act on (an HTTP status code, a
//!   report's classification) without reading its text.
//! - Keys created on first use are returned to the caller ([`Generated`]) so that it can tell
//!   the operator; they are never announced from here.
//!
//! [`Progress`]: cairn_engine::progress::Progress

pub mod alerts;
pub mod api;
pub mod audit;
pub mod backup;
pub mod compaction_run;
pub mod demo;
pub mod error;
pub mod jobs;
pub mod metrics;
pub mod nodes;
pub mod objectives;
pub mod points;
pub mod policy;
pub mod policy_change;
pub mod restore_time;
pub mod retention;
pub mod retention_run;
pub mod runner;
pub mod schema;
pub mod verify;

use std::path::PathBuf;
use std::sync::Arc;

use cairn_backup::keys::Generated;
use cairn_backup::Protection;
use cairn_engine::catalog::schema::Component;
use cairn_engine::catalog::ClusterRow;
use cairn_engine::{Engine, EngineOptions};

pub use error::{Error, ErrorKind, Result};

/// Where the appliance lives.
#[derive(Debug, Clone)]
pub struct ApplianceOptions {
    /// The data directory (catalog, layers, computes, keys).
    pub home: PathBuf,
    /// `None`: the embedded SQLite catalog; else a `postgres://` URL.
    pub catalog_url: Option<String>,
    /// PostgreSQL's server binaries (`None`: found the usual way).
    pub pg_bin: Option<PathBuf>,
}

impl ApplianceOptions {
    fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            home: self.home.clone(),
            catalog_url: self.catalog_url.clone(),
            pg_bin: self.pg_bin.clone(),
        }
    }
}

/// Every crate's share of the catalog, in the order an appliance applies them: the engine's
/// (when the engine opens), the protection layer's (when it opens), the restore's, the
/// verifier's (reports) and the appliance's own (policy changes, jobs, alerts).
pub const CATALOG_COMPONENTS: &[&Component] = &[
    &cairn_engine::catalog::schema::ENGINE,
    &cairn_backup::schema::COMPONENT,
    &cairn_restore::schema::COMPONENT,
    &cairn_verifier::schema::COMPONENT,
    &schema::COMPONENT,
];

/// The engine and the protection layer of one appliance, opened together.
pub struct Appliance {
    engine: Arc<Engine>,
    protection: Arc<Protection>,
}

impl Appliance {
    /// Opens the engine only: for work that touches no key and no region.
    pub async fn open_engine(opts: &ApplianceOptions) -> Result<Engine> {
        Engine::open(opts.engine_options())
            .await
            .map_err(|e| Error::Open {
                home: opts.home.clone(),
                source: Box::new(e.into()),
            })
    }

    /// Opens the engine, then the protection layer (creating the appliance's keys on first
    /// use: see [`Generated`]).
    pub async fn open(opts: &ApplianceOptions) -> Result<(Appliance, Generated)> {
        let engine = Arc::new(Self::open_engine(opts).await?);
        let (protection, generated) =
            Protection::open(engine.clone())
                .await
                .map_err(|e| Error::Open {
                    home: opts.home.clone(),
                    source: Box::new(e),
                })?;
        for c in CATALOG_COMPONENTS {
            engine.catalog.migrate(c).await?;
        }
        Ok((
            Appliance {
                engine,
                protection: Arc::new(protection),
            },
            generated,
        ))
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn protection(&self) -> &Arc<Protection> {
        &self.protection
    }

    /// The named cluster, or every cluster when `name` is `None`.
    pub async fn clusters(&self, name: Option<&str>) -> Result<Vec<ClusterRow>> {
        Ok(match name {
            Some(n) => vec![self.engine.resolve_cluster(Some(n)).await?],
            None => self.engine.catalog.clusters().await?,
        })
    }
}
