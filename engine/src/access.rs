//! Who may do what on a compute: the settings every compute runs with, the replication slot
//! Cairn keeps, the superuser a cluster's data directories know, and the authentication rules
//! of an adopted cluster's computes.
//!
//! Invariants:
//! - Computes never archive, never wait for a synchronous standby and keep `wal_level` and
//!   `full_page_writes` as ingest needs them, whatever the cluster's configuration says.
//! - A compute of an adopted cluster accepts password logins on loopback only.

use std::path::Path;

use crate::catalog::{ClusterKind, ClusterRow};
use crate::error::{IoContext, Result};

/// The replication slot every compute keeps for Cairn.
pub const SLOT: &str = "cairn";
/// Settings every compute runs with, whatever the cluster's configuration says.
pub fn compute_settings(branch: &str) -> Vec<(&'static str, String)> {
    vec![
        ("cluster_name", format!("cairn-{branch}")),
        ("archive_mode", "off".into()),
        ("synchronous_standby_names", String::new()),
        ("wal_level", "replica".into()),
        ("full_page_writes", "on".into()),
        ("max_replication_slots", "10".into()),
        ("max_wal_senders", "10".into()),
        // Only a superuser can create tablespaces; `LOCATION ''` keeps one inside the compute's
        // own directory, and a real directory in pg_tblspc never stops recovery.
        ("allow_in_place_tablespaces", "on".into()),
    ]
}

/// The superuser a cluster's data directories know: `postgres` for managed clusters, the
/// source's role for adopted ones.
pub fn superuser(cluster: &ClusterRow) -> String {
    match cluster.kind {
        ClusterKind::Managed => "postgres".into(),
        ClusterKind::Adopted => cluster
            .source
            .as_deref()
            .and_then(source_user)
            .unwrap_or_else(|| "postgres".into()),
    }
}

/// The user named in a connection URL.
pub fn source_user(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (creds, _) = rest[..end].rsplit_once('@')?;
    Some(creds.split(':').next()?.to_string()).filter(|u| !u.is_empty())
}

/// Writes the authentication rules computes of adopted clusters use: password logins on
/// loopback only, whatever the source's own rules allow.
pub fn write_compute_hba(datadir: &Path) -> Result<()> {
    let p = datadir.join("pg_hba.cairn.conf");
    std::fs::write(
        &p,
        "# Written by cairn for a compute of an adopted cluster: loopback, passwords.\n\
         host all all 127.0.0.1/32 scram-sha-256\n\
         host replication all 127.0.0.1/32 scram-sha-256\n",
    )
    .ctx("write", &p)
}
