//! Heartbeats: a row Cairn keeps updating inside a cluster, so that a restored copy says by
//! itself how recent it is.
//!
//! `cairn up` writes the appliance's clock (Unix µs) into table `cairn_heartbeat.beat` of
//! database `postgres` at a steady rate, as the cluster's superuser; a verification reads the
//! newest value back from the restored copy, and the point's time minus that value is the
//! *achieved* RPO of the point (over-estimated by at most one heartbeat interval).
//!
//! Invariants:
//! - Only a superuser can have made what a heartbeat is read from: the schema, the table and
//!   everything in the schema must belong to superuser roles, or nothing is written and a
//!   read says the heartbeat is not to be trusted (and names what a non-superuser made). A
//!   compute is a tenant: its owner role has `CREATE` on database `postgres` and could create
//!   the schema before Cairn did, to forge recency; it has no privilege on Cairn's schema.
//! - The schema is not on anyone's `search_path` (the owner's `\dt` does not list it) and
//!   every statement here names objects with their schema, on connections whose
//!   `search_path` is pinned ([`crate::pg::roles::CONTROL_OPTIONS`]).
//! - One row, updated in place: a heartbeat adds a few hundred bytes of WAL, and its commit
//!   is a commit like any other (an image job sees the cluster as written to).

use crate::catalog::{ClusterKind, ClusterRow};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::TimelineId;

/// The schema Cairn's heartbeat lives in (database `postgres`).
pub const SCHEMA: &str = "cairn_heartbeat";

/// The newest heartbeat of a cluster or a restored copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    /// The appliance's clock when it was written (Unix µs).
    pub at_us: i64,
    /// How many heartbeats the table has seen.
    pub beats: i64,
}

/// What a read of the heartbeat found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Beat(Beat),
    /// No heartbeat table: none was ever written into this copy.
    Missing,
    /// Something in the schema was made by a role that is not a superuser (each named).
    Untrusted(Vec<String>),
}

/// What in the heartbeat schema a non-superuser made: `kind name (owned by role)`.
const UNTRUSTED_SQL: &str = "\
SELECT 'schema ' || n.nspname || ' (owned by ' || r.rolname || ')' \
  FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner \
 WHERE n.nspname = $1 AND NOT r.rolsuper \
UNION ALL \
SELECT 'relation ' || n.nspname || '.' || c.relname || ' (owned by ' || r.rolname || ')' \
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
  JOIN pg_catalog.pg_roles r ON r.oid = c.relowner \
 WHERE n.nspname = $1 AND NOT r.rolsuper \
UNION ALL \
SELECT 'function ' || n.nspname || '.' || p.proname || ' (owned by ' || r.rolname || ')' \
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
  JOIN pg_catalog.pg_roles r ON r.oid = p.proowner \
 WHERE n.nspname = $1 AND NOT r.rolsuper \
UNION ALL \
SELECT 'type ' || n.nspname || '.' || t.typname || ' (owned by ' || r.rolname || ')' \
  FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
  JOIN pg_catalog.pg_roles r ON r.oid = t.typowner \
 WHERE n.nspname = $1 AND NOT r.rolsuper \
ORDER BY 1";

/// Makes the schema and the table (as the connected superuser); idempotent.
const SETUP_SQL: &str = "\
CREATE SCHEMA IF NOT EXISTS cairn_heartbeat AUTHORIZATION CURRENT_USER;
REVOKE ALL ON SCHEMA cairn_heartbeat FROM PUBLIC;
CREATE TABLE IF NOT EXISTS cairn_heartbeat.beat (
  id integer PRIMARY KEY CHECK (id = 1),
  at_us bigint NOT NULL,
  beats bigint NOT NULL
);
REVOKE ALL ON cairn_heartbeat.beat FROM PUBLIC;";

const WRITE_SQL: &str = "\
INSERT INTO cairn_heartbeat.beat AS b (id, at_us, beats) VALUES (1, $1, 1) \
ON CONFLICT (id) DO UPDATE SET at_us = EXCLUDED.at_us, beats = b.beats + 1 \
RETURNING b.at_us, b.beats";

fn pg(what: &str, e: tokio_postgres::Error) -> Error {
    Error::postgres(what, e.to_string())
}

/// What in the heartbeat schema a non-superuser made (empty: nothing).
pub async fn untrusted(client: &impl tokio_postgres::GenericClient) -> Result<Vec<String>> {
    let rows = client
        .query(UNTRUSTED_SQL, &[&SCHEMA])
        .await
        .map_err(|e| pg("look up who made the heartbeat schema", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Writes a heartbeat saying `at_us` (the connection is the superuser's, to database
/// `postgres`); refused when something in the schema was made by a non-superuser.
pub async fn write(client: &mut tokio_postgres::Client, at_us: i64) -> Result<Beat> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| pg("begin a heartbeat", e))?;
    let bad = untrusted(&tx).await?;
    if !bad.is_empty() {
        return Err(Error::Refused(format!(
            "no heartbeat written: {} in database postgres, made by a role that is not a \
             superuser, could forge it; a superuser should look at it and drop it (DROP SCHEMA \
             {SCHEMA} CASCADE), and Cairn makes it again",
            bad.join(", ")
        )));
    }
    tx.batch_execute(SETUP_SQL)
        .await
        .map_err(|e| pg("make the heartbeat table", e))?;
    let row = tx
        .query_one(WRITE_SQL, &[&at_us])
        .await
        .map_err(|e| pg("write a heartbeat", e))?;
    tx.commit().await.map_err(|e| pg("commit a heartbeat", e))?;
    Ok(Beat {
        at_us: row.get(0),
        beats: row.get(1),
    })
}

/// The newest heartbeat of the server `client` is connected to (database `postgres`, as a
/// superuser, `search_path` pinned).
pub async fn read(client: &tokio_postgres::Client) -> Result<Found> {
    let bad = untrusted(client).await?;
    if !bad.is_empty() {
        return Ok(Found::Untrusted(bad));
    }
    let exists: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('cairn_heartbeat.beat') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| pg("look for the heartbeat table", e))?
        .get(0);
    if !exists {
        return Ok(Found::Missing);
    }
    let row = client
        .query_opt(
            "SELECT at_us, beats FROM cairn_heartbeat.beat WHERE id = 1",
            &[],
        )
        .await
        .map_err(|e| pg("read the heartbeat", e))?;
    Ok(match row {
        Some(r) => Found::Beat(Beat {
            at_us: r.get(0),
            beats: r.get(1),
        }),
        None => Found::Missing,
    })
}

impl Engine {
    /// Writes a heartbeat saying `at_us` into the running compute of `tl` (on `port`). Only
    /// managed clusters: an adopted cluster's computes are copies, and its source is the
    /// owner's.
    pub async fn heartbeat(
        &self,
        cluster: &ClusterRow,
        tl: TimelineId,
        port: u16,
        at_us: i64,
    ) -> Result<Beat> {
        if cluster.kind != ClusterKind::Managed {
            return Err(Error::Refused(format!(
                "cluster '{}' is adopted: Cairn writes heartbeats only into clusters it manages",
                cluster.name
            )));
        }
        let server = self.server_for(cluster, tl, port)?;
        let mut client = server
            .connect_control(&self.credentials(cluster)?, "postgres")
            .await?;
        write(&mut client, at_us).await
    }
}
