//! Several nodes on one catalog: which node is the active one.
//!
//! Computes, WAL receivers, shipping to the regions, retention and the deletion queue, the
//! objectives and scheduled jobs are the work of one node at a time: the **active** node, the
//! one holding the lease in the catalog (`node_leases`, role `active`). Other nodes running
//! `cairn up` on the same catalog and home are **standbys**: they serve the API, renew nothing
//! and try to take the lease every few seconds. When the active node dies its lease passes and
//! a standby takes it, restarts the computes and carries on; the runs it had going are
//! abandoned by their own leases and tried again ([`crate::jobs::record`]).
//!
//! Invariants:
//! - Taking or renewing the lease is one conditional statement (the holder itself, or a lease
//!   that has passed): of several nodes at once exactly one holds it.
//! - A holder on this host whose process is gone (killed, crashed) is taken over at once
//!   instead of after its lease: a restart on one machine does not wait.
//! - An active node that cannot renew for half a lease stops acting (its caller stops the
//!   computes) before any other node can take over: two nodes never run one compute.
//! - A node that stops cleanly releases the lease, so a standby takes over at once.
//! - Times are the nodes' clocks, which must agree to well under a lease (NTP).
//! - Every statement is parameterised.

use std::time::Duration;

use cairn_engine::catalog::{column as get, Catalog};

use crate::error::{Error, Result};

/// How long the active node's lease holds without renewal.
pub const LEASE: Duration = Duration::from_secs(30);

/// How often the lease is renewed by its holder, and tried by the standbys.
pub const RENEW: Duration = Duration::from_secs(5);

const ACTIVE: &str = "active";

/// Who holds the active role.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    pub node: String,
    /// When it took the role (Unix µs).
    pub since_us: i64,
    pub lease_until_us: i64,
}

/// This node's role after an attempt to take or renew the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Active,
    Standby(Holder),
}

fn catalog_error(what: &str, e: sqlx::Error) -> Error {
    Error::from(cairn_engine::Error::catalog(what, e))
}

/// Takes or renews the active role for `node` at `now_us`.
pub async fn acquire(cat: &Catalog, node: &str, now_us: i64) -> Result<Role> {
    let until = now_us + LEASE.as_micros() as i64;
    let renewed = sqlx::query(
        "UPDATE node_leases
         SET since = CASE WHEN node = $1 THEN since ELSE $3 END, node = $1, lease_until = $2
         WHERE role = $4 AND (node = $1 OR lease_until <= $3)",
    )
    .bind(node)
    .bind(until)
    .bind(now_us)
    .bind(ACTIVE)
    .execute(cat.pool())
    .await
    .map_err(|e| catalog_error("renew the node lease", e))?;
    if renewed.rows_affected() == 1 {
        return Ok(Role::Active);
    }
    let inserted = sqlx::query(
        "INSERT INTO node_leases (role, node, since, lease_until) VALUES ($1, $2, $3, $4)
         ON CONFLICT (role) DO NOTHING",
    )
    .bind(ACTIVE)
    .bind(node)
    .bind(now_us)
    .bind(until)
    .execute(cat.pool())
    .await
    .map_err(|e| catalog_error("take the node lease", e))?;
    if inserted.rows_affected() == 1 {
        return Ok(Role::Active);
    }
    let Some(h) = holder(cat).await? else {
        return Err(Error::Refused(
            "the node lease vanished while it was taken; trying again".into(),
        ));
    };
    if gone_from_this_host(&h.node) {
        let taken = sqlx::query(
            "UPDATE node_leases SET node = $1, since = $2, lease_until = $3
             WHERE role = $4 AND node = $5",
        )
        .bind(node)
        .bind(now_us)
        .bind(until)
        .bind(ACTIVE)
        .bind(&h.node)
        .execute(cat.pool())
        .await
        .map_err(|e| catalog_error("take over the node lease", e))?;
        if taken.rows_affected() == 1 {
            tracing::info!(previous = %h.node, "the active node's process is gone: taking over");
            return Ok(Role::Active);
        }
    }
    Ok(Role::Standby(h))
}

/// Gives the role up (on a clean stop), if `node` holds it.
pub async fn release(cat: &Catalog, node: &str) -> Result<()> {
    sqlx::query("UPDATE node_leases SET lease_until = 0 WHERE role = $1 AND node = $2")
        .bind(ACTIVE)
        .bind(node)
        .execute(cat.pool())
        .await
        .map_err(|e| catalog_error("release the node lease", e))?;
    Ok(())
}

/// Who holds the active role, if anyone ever did.
pub async fn holder(cat: &Catalog) -> Result<Option<Holder>> {
    let row = sqlx::query("SELECT node, since, lease_until FROM node_leases WHERE role = $1")
        .bind(ACTIVE)
        .fetch_optional(cat.pool())
        .await
        .map_err(|e| catalog_error("read the node lease", e))?;
    row.map(|r| {
        Ok(Holder {
            node: get(&r, "node")?,
            since_us: get(&r, "since")?,
            lease_until_us: get(&r, "lease_until")?,
        })
    })
    .transpose()
}

/// This host's name, as node names start with it.
pub fn host() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A name for this node, unique across restarts: host, process, start time.
pub fn node_name() -> String {
    format!(
        "{}:{}:{}",
        host(),
        std::process::id(),
        chrono::Utc::now().timestamp()
    )
}

/// Whether `node` names a process of this host that no longer runs.
fn gone_from_this_host(node: &str) -> bool {
    let mut parts = node.rsplitn(3, ':');
    let (Some(_started), Some(pid), Some(h)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    h == host()
        && pid != std::process::id()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_engine::pg::scratch::ScratchServer;

    async fn exercise(cat: &Catalog) {
        cat.migrate(&crate::schema::COMPONENT).await.unwrap();
        let lease = LEASE.as_micros() as i64;
        // Hosts elsewhere (their processes cannot be checked from here).
        let (a, b) = ("host-a:1:1", "host-b:1:1");
        assert_eq!(acquire(cat, a, 1_000).await.unwrap(), Role::Active);
        let Role::Standby(h) = acquire(cat, b, 2_000).await.unwrap() else {
            panic!("b took a held lease");
        };
        assert_eq!((h.node.as_str(), h.since_us), (a, 1_000));
        // Renewed: still a's, since unchanged.
        assert_eq!(acquire(cat, a, 3_000).await.unwrap(), Role::Active);
        assert!(matches!(
            acquire(cat, b, 3_000 + lease - 1).await.unwrap(),
            Role::Standby(_)
        ));
        // a stopped renewing: once its lease passed, b takes it.
        assert_eq!(acquire(cat, b, 3_000 + lease).await.unwrap(), Role::Active);
        let h = holder(cat).await.unwrap().unwrap();
        assert_eq!((h.node.as_str(), h.since_us), (b, 3_000 + lease));
        assert!(matches!(
            acquire(cat, a, 3_000 + lease + 1).await.unwrap(),
            Role::Standby(_)
        ));
        // A clean stop releases at once.
        release(cat, b).await.unwrap();
        assert_eq!(
            acquire(cat, a, 3_000 + lease + 2).await.unwrap(),
            Role::Active
        );
        // A holder of this host whose process is gone is taken over before its lease passes.
        let dead = format!("{}:{}:1", host(), u32::MAX - 1);
        release(cat, a).await.unwrap();
        assert_eq!(acquire(cat, &dead, 10 * lease).await.unwrap(), Role::Active);
        assert_eq!(acquire(cat, a, 10 * lease + 1).await.unwrap(), Role::Active);
        // One of this host that runs (this test) is not.
        let alive = format!("{}:{}:1", host(), std::process::id());
        assert!(matches!(
            acquire(cat, &alive, 10 * lease + 2).await.unwrap(),
            Role::Standby(_)
        ));
    }

    #[tokio::test]
    async fn one_node_holds_the_lease_and_another_takes_it_when_it_passes_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&Catalog::sqlite_url(dir.path()))
            .await
            .unwrap();
        exercise(&cat).await;
    }

    #[tokio::test]
    async fn one_node_holds_the_lease_and_another_takes_it_when_it_passes_on_postgres() {
        let dir = tempfile::tempdir().unwrap();
        let server = ScratchServer::start(&dir.path().join("pg"), &[]).expect("start PostgreSQL");
        let cat = Catalog::open(&server.url("postgres")).await.unwrap();
        exercise(&cat).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn of_nodes_racing_for_a_free_lease_exactly_one_wins_on_postgres() {
        let dir = tempfile::tempdir().unwrap();
        let server = ScratchServer::start(&dir.path().join("pg"), &[]).expect("start PostgreSQL");
        let cat = Catalog::open(&server.url("postgres")).await.unwrap();
        cat.migrate(&crate::schema::COMPONENT).await.unwrap();
        for round in 0..5i64 {
            let now = round * 10 * LEASE.as_micros() as i64;
            let mut tries = tokio::task::JoinSet::new();
            for i in 0..8 {
                let cat = cat.clone();
                tries
                    .spawn(async move { acquire(&cat, &format!("host-{i}:1:{round}"), now).await });
            }
            let mut active = 0;
            while let Some(r) = tries.join_next().await {
                active += matches!(r.unwrap().unwrap(), Role::Active) as usize;
            }
            assert_eq!(active, 1, "round {round}");
        }
    }
}
