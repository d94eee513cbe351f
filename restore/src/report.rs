//! What a restore did: the point reached, where it came from, what was fetched and written, and
//! the seconds of each phase (the RTO measurements the scheduler and reports use).

use cairn_engine::Lsn;

use crate::source::{RegionProbe, Substitution};

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
    /// The same time, Unix µs.
    pub point_time_us: Option<i64>,
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
    /// Bytes of the WAL segments written for replay.
    pub wal_bytes: u64,
    /// WAL from the image to the point: what recovery replayed.
    pub replay_bytes: u64,
    pub phases: Phases,
    /// For a data directory replayed here: the checkpoint PostgreSQL wrote when recovery
    /// ended (at most a page header past `lsn`; the restore refuses anything else).
    pub recovery_ended_at: Option<Lsn>,
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
