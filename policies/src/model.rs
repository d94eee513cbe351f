//! The typed policy: what a policy file means once it has been parsed and checked.
//!
//! Invariants:
//! - A [`Policy`] exists only for a file that produced no error: every duration is positive
//!   where zero would be meaningless, every schedule parses, every region selector matched a
//!   region of the [`Context`] it was checked against, every recipient is an age X25519 key.
//! - Nothing here is a string standing for state: checks, restore points, hold points and
//!   region selectors are enums; durations are [`Duration`]s; times are UTC.
//! - Defaults live here, as constants, so the parser and the documentation (`docs/POLICIES.md`)
//!   name one source.
//! - In a [`PolicySet`] no two policies claim one cluster at the same precedence (see
//!   [`PolicySet::for_cluster`]); `load` refuses a set where they would.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;

use crate::error::Warning;
use crate::schedule::Schedule;
use crate::select::{NamePattern, RegionInfo, RegionSelector};

/// What the appliance knows when it checks policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The object-store regions the appliance can write to, with their tags.
    pub regions: Vec<RegionInfo>,
    /// The clusters the appliance knows (managed or adopted).
    pub clusters: Vec<String>,
    /// How often WAL is shipped to the regions: no RPO can be shorter.
    pub ship_interval: Duration,
}

impl RegionInfo {
    /// A region with `key=value` tags (a convenience for contexts built in code).
    pub fn new(name: &str, tags: &[(&str, &str)]) -> RegionInfo {
        RegionInfo {
            name: name.to_string(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }
}

/// Defaults of every optional key (documented in `docs/POLICIES.md`).
pub mod defaults {
    use std::time::Duration;

    /// `schedules.image`: one image backup a day, at midnight in the policy's time zone.
    pub const IMAGE: &str = "@daily";
    /// `schedules.verify`: one verification a week (Sunday midnight).
    pub const VERIFY: &str = "@weekly";
    /// `jitter` of a schedule.
    pub const JITTER: Duration = Duration::ZERO;
    /// `max_concurrent` of a schedule.
    pub const MAX_CONCURRENT: u32 = 1;
    /// `retention.pitr`: seven days of point-in-time recovery.
    pub const PITR: Duration = Duration::from_secs(7 * 86400);
    /// `retention.min_retention`: nothing younger than a day is ever deleted.
    pub const MIN_RETENTION: Duration = Duration::from_secs(86400);
    /// `retention.cooling_off`: a destructive change waits a day before it takes effect.
    pub const COOLING_OFF: Duration = Duration::from_secs(86400);
    /// `regions.use`: every region of the appliance.
    pub const REGIONS_USE: &str = "*";
    /// `regions.min_copies`.
    pub const MIN_COPIES: u32 = 2;
    /// `verification.window`: how long the scratch branch of a verification is kept.
    pub const WINDOW: Duration = Duration::from_secs(3600);
    /// `verification.time_limit`: how long one verification may run.
    pub const TIME_LIMIT: Duration = Duration::from_secs(4 * 3600);
}

/// One policy file, parsed and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The `name` key, or the file name without `.toml`.
    pub name: String,
    /// The file as it was given (the policy directory joined with the file name).
    pub file: PathBuf,
    /// SHA-256 of the file's bytes, lower-case hex.
    pub sha256: String,
    /// The clusters this policy covers: exact names and globs, in file order.
    pub clusters: Vec<NamePattern>,
    /// The default time zone of the schedules (`timezone`; UTC if absent).
    pub timezone: Tz,
    pub objectives: Objectives,
    pub schedules: Schedules,
    pub retention: Retention,
    pub regions: Regions,
    pub encryption: Encryption,
    pub verification: Verification,
}

impl Policy {
    /// Whether one of the policy's cluster patterns matches `cluster`.
    pub fn covers(&self, cluster: &str) -> bool {
        self.clusters.iter().any(|p| p.matches(cluster))
    }

    /// Whether the policy names `cluster` exactly (not through a glob).
    pub fn names_exactly(&self, cluster: &str) -> bool {
        self.clusters
            .iter()
            .any(|p| matches!(p, NamePattern::Exact(e) if e == cluster))
    }
}

/// `[objectives]`: the promises the scheduler enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Objectives {
    /// Recovery point objective: the most data (in time) a disaster may lose.
    pub rpo: Duration,
    /// Recovery time objective: the longest a restore may take.
    pub rto: Duration,
}

/// `[schedules]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedules {
    /// Image (base) backups.
    pub image: Schedule,
    /// Verifications: restore into a scratch branch and run the checks.
    pub verify: Schedule,
    /// Restore drills; none unless the policy asks for them.
    pub drill: Option<Schedule>,
}

/// `[retention]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// How far back any point can be restored.
    pub pitr: Duration,
    /// Images kept beyond the PITR window, grandfather-father-son.
    pub gfs: Gfs,
    /// Nothing younger than this is ever deleted, whatever else the policy says.
    pub min_retention: Duration,
    /// Points kept until their hold is removed from the policy.
    pub legal_holds: Vec<LegalHold>,
    /// How long a destructive change (shorter retention, a removed hold) waits before it
    /// takes effect.
    pub cooling_off: Duration,
}

/// How many hourly, daily, weekly, monthly and yearly images are kept (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gfs {
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
}

/// One entry of `retention.legal_holds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegalHold {
    pub point: HoldPoint,
    pub reason: String,
}

/// The point a legal hold keeps restorable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldPoint {
    Time(DateTime<Utc>),
    /// A WAL position, `lsn:HI/LO` in PostgreSQL's notation.
    Lsn(u64),
}

impl fmt::Display for HoldPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HoldPoint::Time(t) => write!(f, "{}", t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            HoldPoint::Lsn(l) => write!(f, "lsn:{:X}/{:X}", l >> 32, l & 0xFFFF_FFFF),
        }
    }
}

/// `[regions]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regions {
    /// The selectors as written (`regions.use`).
    pub selectors: Vec<RegionSelector>,
    /// The regions they select, in the order of [`Context::regions`], each once.
    pub selected: Vec<String>,
    /// An index is written only once every layer it names is in this many regions.
    pub min_copies: u32,
}

/// `[encryption]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Encryption {
    /// Recipients every data key is wrapped for, besides the appliance's own online key.
    pub recipients: Vec<Recipient>,
}

/// An age X25519 recipient (`age1...`).
#[derive(Clone, PartialEq, Eq)]
pub struct Recipient(pub age::x25519::Recipient);

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recipient({})", self.0)
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// `[verification]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// The checks run, each once, in the order of [`Check::ALL`].
    pub checks: Vec<Check>,
    pub point: VerifyPoint,
    /// How long the scratch branch of a verification is kept for inspection.
    pub window: Duration,
    /// How long one verification may run before the check it is at fails.
    pub time_limit: Duration,
    pub probes: Vec<Probe>,
}

/// One check a verification can run against the restored scratch branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    /// Every stored object's SHA-256 and AEAD tags.
    ObjectIntegrity,
    /// The WAL chain from the image to the point has no gap and every CRC holds.
    WalContinuity,
    /// PostgreSQL data checksums of every page.
    PageChecksums,
    /// Recovery stopped exactly at the requested point.
    RecoveryTarget,
    /// `amcheck` over every B-tree index.
    Amcheck,
    /// The newest heartbeat row is as recent as the point promises.
    Heartbeat,
    /// A fingerprint of the data matches the one taken at backup time.
    Fingerprint,
    /// The policy's `[[verification.probes]]` queries.
    Probes,
}

impl Check {
    pub const ALL: [Check; 8] = [
        Check::ObjectIntegrity,
        Check::WalContinuity,
        Check::PageChecksums,
        Check::RecoveryTarget,
        Check::Amcheck,
        Check::Heartbeat,
        Check::Fingerprint,
        Check::Probes,
    ];

    /// The checks run when `verification.checks` is absent (plus `probes` when the policy
    /// defines any).
    pub const DEFAULT: [Check; 6] = [
        Check::ObjectIntegrity,
        Check::WalContinuity,
        Check::PageChecksums,
        Check::RecoveryTarget,
        Check::Amcheck,
        Check::Heartbeat,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Check::ObjectIntegrity => "object_integrity",
            Check::WalContinuity => "wal_continuity",
            Check::PageChecksums => "page_checksums",
            Check::RecoveryTarget => "recovery_target",
            Check::Amcheck => "amcheck",
            Check::Heartbeat => "heartbeat",
            Check::Fingerprint => "fingerprint",
            Check::Probes => "probes",
        }
    }

    pub fn from_name(name: &str) -> Option<Check> {
        Check::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which point a verification restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyPoint {
    /// The newest restorable point.
    #[default]
    Latest,
    /// A point chosen at random within the last `within`.
    Random { within: Duration },
    /// Always this point.
    At(DateTime<Utc>),
}

/// A named SQL query that the `probes` check runs against the restored scratch branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub name: String,
    pub sql: String,
}

/// Every valid policy of a directory, and the warnings they raised.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PolicySet {
    /// In file order (by file name for [`crate::load_dir`]).
    pub policies: Vec<Policy>,
    /// Sorted by file, line and column.
    pub warnings: Vec<Warning>,
}

impl PolicySet {
    /// The policy protecting `cluster`: one that names it exactly, else the first (in file
    /// order) whose glob matches it, else `None`.
    pub fn for_cluster(&self, cluster: &str) -> Option<&Policy> {
        self.policies
            .iter()
            .find(|p| p.names_exactly(cluster))
            .or_else(|| self.policies.iter().find(|p| p.covers(cluster)))
    }

    /// The policy called `name`.
    pub fn get(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }
}

/// Every section as read; `None` where the section had an error.
pub(crate) struct Draft {
    pub name: Option<String>,
    pub clusters: Option<Vec<NamePattern>>,
    pub timezone: Option<Tz>,
    pub objectives: Option<Objectives>,
    pub schedules: Option<Schedules>,
    pub retention: Option<Retention>,
    pub regions: Option<Regions>,
    pub encryption: Option<Encryption>,
    pub verification: Option<Verification>,
}
