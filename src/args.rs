//! Options shared by several commands: where the appliance lives ([`Global`]), which cluster,
//! which point, and how backups are read and trusted. Parsing only: turning an option into
//! something the libraries take, with the error naming the option.

use std::path::PathBuf;

use anyhow::Result;
use cairn_backup::keys::{Identity, SignerPin};
use cairn_backup::kit::RecoveryKit;
use cairn_engine::branch::PointSpec;
use cairn_engine::Lsn;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Data directory holding the catalog, layers, computes and secrets (created on first use).
    #[arg(
        long,
        global = true,
        env = "CAIRN_HOME",
        default_value = "./cairn-data"
    )]
    pub home: PathBuf,
    /// Catalog database: omit for the embedded SQLite catalog, or postgres://user@host/db.
    #[arg(long, global = true, env = "CAIRN_CATALOG", hide_env_values = true)]
    pub catalog: Option<String>,
    /// Directory of the PostgreSQL server binaries (default: pg_config, PATH, /usr/lib/postgresql/*/bin).
    #[arg(long, global = true, env = "CAIRN_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (repeat for more); logs go to stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// How logs are written to stderr: `text` for people, `json` for one JSON object per
    /// line (time, level, message and fields) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct ClusterOpt {
    /// Cluster (default: the only one).
    #[arg(long, short = 'c', env = "CAIRN_CLUSTER")]
    pub cluster: Option<String>,
}

#[derive(Args, Debug, Clone)]
#[group(multiple = false)]
pub struct AtOpt {
    /// At this LSN (rounded down to a record boundary), e.g. 0/16B3748.
    #[arg(long, value_name = "LSN")]
    pub at: Option<String>,
    /// At this time: everything committed at or before it, e.g. 2026-11-23T10:15:00Z.
    #[arg(long, value_name = "TIMESTAMP")]
    pub at_time: Option<String>,
    /// Just after this restore point (SELECT pg_create_restore_point('NAME')).
    #[arg(long, value_name = "NAME")]
    pub at_restore_point: Option<String>,
}

/// Parses a timestamp (see [`cairn_units::parse_time`] for the accepted forms).
pub fn parse_time(s: &str) -> Result<i64> {
    cairn_units::parse_time(s).map_err(anyhow::Error::msg)
}

pub fn point(at: &AtOpt) -> Result<PointSpec> {
    Ok(if let Some(l) = &at.at {
        PointSpec::Lsn(l.parse::<Lsn>().map_err(anyhow::Error::msg)?)
    } else if let Some(t) = &at.at_time {
        PointSpec::Time(parse_time(t)?)
    } else if let Some(r) = &at.at_restore_point {
        PointSpec::RestorePoint(r.clone())
    } else {
        PointSpec::Head
    })
}

/// What decides trust when reading backups: given by the operator, never learnt from a region.
#[derive(Args, Debug, Clone, Default)]
pub struct TrustOpt {
    /// The recovery kit of the appliance that wrote the backups (`cairn key
    /// export-recovery-kit`): the signing keys to trust and, usually, the identity.
    #[arg(long, value_name = "FILE")]
    pub recovery_kit: Option<PathBuf>,
    /// An age identity that opens the data keys (default: the kit's, then the appliance's).
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Also trust what this Ed25519 public key signed (64 hex digits, as `cairn key
    /// export-public` prints it).
    #[arg(long, value_name = "KEY")]
    pub trust_signer: Option<String>,
}

impl TrustOpt {
    /// The identity (given, else the kit's) and the signing keys to trust.
    pub fn load(&self) -> Result<(Option<Identity>, Vec<[u8; 32]>)> {
        let kit = self
            .recovery_kit
            .as_deref()
            .map(RecoveryKit::load)
            .transpose()?;
        let mut signers: Vec<[u8; 32]> = kit.iter().flat_map(|k| k.signers.clone()).collect();
        if let Some(s) = &self.trust_signer {
            signers.push(SignerPin::parse(s)?.0);
        }
        let identity = match self.identity.as_deref() {
            Some(p) => Some(Identity::load(p)?),
            None => kit.and_then(|k| k.identity),
        };
        Ok((identity, signers))
    }
}

/// How a point is read from the regions (restore, and export from a region).
#[derive(Args, Debug)]
pub struct SourceOpt {
    /// Read from this region first (default: the healthiest).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    #[command(flatten)]
    pub trust: TrustOpt,
    /// The cluster's id, when the region holds several clusters of that name.
    #[arg(long, value_name = "ID")]
    pub cluster_id: Option<String>,
    /// Layers downloaded at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
}
