//! The SQL catalog: clusters, timelines, branches, layers, an index of WAL events and computes.
//!
//! Invariants:
//! - The catalog is an *index* of the layer files: every layer row names a file that was made
//!   durable before the transaction inserting the row began (see [`crate::layer::file`]). A
//!   layer row and the timeline head it advances are written in one transaction.
//! - It runs on SQLite (the embedded default, in WAL mode with `synchronous=FULL`, so a
//!   committed transaction survives power loss) or PostgreSQL, through sqlx's `Any` driver with
//!   one set of portable statements (see [`schema`]).
//! - Migrations are versioned, applied in order in a transaction each, and a catalog written
//!   by a newer cairn is refused rather than misread.
//! - Every statement is parameterised; no value is ever formatted into SQL.
//! - Transactions are not rows: of a WAL layer's events the catalog keeps one summary of its
//!   commits and aborts and its other, rare events ([`events`]); points in time are resolved
//!   from the layer itself ([`crate::wal_index`]). The catalog grows with layers, not commits.

pub mod events;
mod rows;
pub mod schema;
mod tx;

/// Column `col` of a row, the error naming the column (for the tables of other crates).
pub use rows::get as column;
use rows::{branch_row, cluster_row, compute_row, layer_row, timeline_row};
use rows::{get, parse_col};
pub use rows::{now_us, BranchRow, ClusterKind, ClusterRow, ComputeRow, LayerRow, TimelineRow};
pub use tx::Tx;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};

use crate::error::{Error, Result};
use crate::ids::{ClusterId, LayerId, TimelineId};

/// A connection pool to the catalog.
#[derive(Clone)]
pub struct Catalog {
    pool: AnyPool,
    backend: Backend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Describes a catalog URL without any password it may hold (in the user part or as a
/// `password` parameter).
pub fn redact_url(url: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        if let Ok(u) = crate::pg::url::PgUrl::parse(url) {
            return u.public;
        }
        return "postgres://(unparsable URL)".into();
    }
    // Any other scheme: drop the password of the authority, keep the rest.
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((creds, host)) => {
            let user = creds.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// An embedded catalog's files are the appliance's alone (its directory is 0711, so that the
/// postgres OS user can reach computes): the database is created 0600 before SQLite opens it
/// (SQLite gives its -wal and -shm files the same mode), and existing ones are set so.
fn private_sqlite_files(url: &str) -> Result<()> {
    use crate::error::IoContext;
    use std::os::unix::fs::PermissionsExt;
    let Some(rest) = url.strip_prefix("sqlite://") else {
        return Ok(());
    };
    let path = Path::new(rest.split('?').next().unwrap_or(rest));
    if !path.exists() {
        crate::fsutil::write_new(path, b"", 0o600).ctx("create catalog", path)?;
    }
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
            // Never made, or removed meanwhile: SQLite drops -wal and -shm when the last
            // connection of another process or engine closes.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            r => r.ctx("set mode", &p)?,
        }
    }
    Ok(())
}

impl Catalog {
    /// The embedded catalog of a data directory.
    pub fn sqlite_url(home: &Path) -> String {
        format!("sqlite://{}?mode=rwc", home.join("catalog.db").display())
    }

    /// Opens (creating if needed) the catalog at `url` and brings the engine's tables up to
    /// date; other crates then apply theirs with [`Catalog::migrate`].
    pub async fn open(url: &str) -> Result<Catalog> {
        let cat = Self::connect(url).await?;
        cat.migrate(&schema::ENGINE).await?;
        Ok(cat)
    }

    /// Opens (creating if needed) the catalog at `url` without changing its schema.
    pub async fn connect(url: &str) -> Result<Catalog> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(Error::Refused(format!(
                "catalog URL '{}' is not supported: use sqlite://PATH or postgres://...",
                redact_url(url)
            )));
        };
        if backend == Backend::Sqlite {
            private_sqlite_files(url)?;
        }
        // No idle reaping or lifetime recycling: with them sqlx runs a maintenance task that
        // was seen spinning at 100% CPU in `Semaphore::release` while a `compute start` waited
        // forever (sqlx-core 0.8.6, a loaded two-core machine). Four connections at most stay
        // open; a broken one is replaced on acquire (`test_before_acquire`).
        let mut opts = AnyPoolOptions::new()
            .max_connections(4)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(30));
        if backend == Backend::Sqlite {
            opts = opts.after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = FULL").await?;
                    conn.execute("PRAGMA busy_timeout = 30000").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    // Deleted rows (wrapped keys of a shredded cluster) are overwritten with
                    // zeros, not left in free pages.
                    conn.execute("PRAGMA secure_delete = ON").await?;
                    Ok(())
                })
            });
        }
        // A PostgreSQL catalog is reached over TLS as its sslmode says (remote hosts: at least
        // `require`), and first vetted by a connection of Cairn's own that refuses to send a
        // password in clear; only then is the pool opened, with the same TLS settings.
        let vetted;
        let url = if backend == Backend::Postgres {
            let parsed = crate::pg::url::PgUrl::parse(url)?;
            let (mut cfg, policy) = parsed.config()?;
            cfg.application_name("cairn catalog");
            let (host, port) = parsed.host_port()?;
            crate::pg::tls::connect(
                cfg,
                &host,
                port,
                &policy,
                &format!("catalog {}", parsed.public),
            )
            .await
            .map_err(|e| {
                Error::Refused(format!(
                    "cannot open catalog {} (check the URL, its sslmode, that the server is \
                         up and the credentials): {e}",
                    parsed.public
                ))
            })?;
            vetted = parsed.with_password_and_tls(url)?;
            vetted.as_str()
        } else {
            url
        };
        let pool = opts.connect(url).await.map_err(|e| {
            Error::catalog(
                format!(
                    "cannot open catalog {} (check the URL, that the server is up and the \
                     credentials)",
                    redact_url(url)
                ),
                e,
            )
        })?;
        Ok(Catalog { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection pool, for the tables other crates add through migrations.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Applies the migrations of `component` this catalog lacks, each in a transaction of its
    /// own; refuses a catalog where `component` has a migration this cairn does not know (a
    /// newer cairn wrote it).
    pub async fn migrate(&self, component: &schema::Component) -> Result<()> {
        self.migrate_until(component, i64::MAX).await
    }

    /// [`Catalog::migrate`], but only up to version `last` (upgrade tests build catalogs as
    /// older cairns left them).
    pub async fn migrate_until(&self, component: &schema::Component, last: i64) -> Result<()> {
        let ctx = |what: &str| format!("migrate the {} tables: {what}", component.name);
        self.version_table().await?;
        let mut applied = Vec::new();
        for m in component.migrations.iter().filter(|m| m.version <= last) {
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(|e| Error::catalog(ctx("begin"), e))?;
            if self.backend == Backend::Postgres {
                // Serialises concurrent migrations by several appliance nodes.
                sqlx::query("SELECT pg_advisory_xact_lock(7411)")
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| Error::catalog(ctx("lock"), e))?;
            }
            let done: Option<i64> =
                sqlx::query_scalar("SELECT version FROM cairn_schema WHERE version = $1")
                    .bind(m.version)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| Error::catalog(ctx("read version"), e))?;
            if done.is_some() {
                continue;
            }
            for stmt in m.statements {
                tx.execute(*stmt)
                    .await
                    .map_err(|e| Error::catalog(ctx(&format!("apply v{}", m.version)), e))?;
            }
            sqlx::query(
                "INSERT INTO cairn_schema (version, description, applied_at, component)
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(m.version)
            .bind(m.description)
            .bind(now_us())
            .bind(component.name)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::catalog(ctx("record version"), e))?;
            tx.commit()
                .await
                .map_err(|e| Error::catalog(ctx("commit"), e))?;
            tracing::debug!(
                component = component.name,
                version = m.version,
                "catalog migrated"
            );
            applied.push(m.version);
        }
        if self.backend == Backend::Sqlite
            && applied.contains(&schema::BOUNDED_EVENTS)
            && !applied.contains(&1)
        {
            // The per-commit rows just deleted leave free pages: give them back to the file
            // system once (the live rows left are few, so this is quick). Not needed for
            // correctness, hence only a warning when another process holds the catalog.
            tracing::info!("catalog migrated to the bounded WAL event index; compacting it");
            if let Err(e) = self.pool.execute("VACUUM").await {
                tracing::warn!(error = %e, "could not compact the catalog (VACUUM); its free pages will be reused");
            }
        }
        let unknown: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM cairn_schema WHERE component = $1")
                .bind(component.name)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| Error::catalog(ctx("read versions"), e))?
                .into_iter()
                .filter(|v| !component.migrations.iter().any(|m| m.version == *v))
                .collect();
        if let Some(v) = unknown.iter().max() {
            return Err(Error::Refused(format!(
                "the catalog's {} tables have schema version {v}, which this cairn does not know \
                 (a newer cairn wrote them); upgrade cairn",
                component.name
            )));
        }
        Ok(())
    }

    /// The table of applied migrations, with the crate each belongs to (recorded since
    /// migrations have components; older rows are named from [`schema::LEGACY`]).
    async fn version_table(&self) -> Result<()> {
        let ctx = |what: &str| format!("migrate schema: {what}");
        self.pool
            .execute(
                "CREATE TABLE IF NOT EXISTS cairn_schema (
                    version BIGINT PRIMARY KEY,
                    description TEXT NOT NULL,
                    applied_at BIGINT NOT NULL,
                    component TEXT)",
            )
            .await
            .map_err(|e| Error::catalog(ctx("create version table"), e))?;
        let has_component = sqlx::query("SELECT component FROM cairn_schema LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .is_ok();
        if !has_component {
            // Another node may add it at the same moment: a second ADD fails, the column is
            // there either way, which the check below confirms.
            let _ = self
                .pool
                .execute("ALTER TABLE cairn_schema ADD COLUMN component TEXT")
                .await;
            sqlx::query("SELECT component FROM cairn_schema LIMIT 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| Error::catalog(ctx("add the component column"), e))?;
        }
        for (version, component) in schema::LEGACY {
            sqlx::query(
                "UPDATE cairn_schema SET component = $1 WHERE version = $2 AND component IS NULL",
            )
            .bind(*component)
            .bind(*version)
            .execute(&self.pool)
            .await
            .map_err(|e| Error::catalog(ctx("name the component of an older migration"), e))?;
        }
        // A version no crate is named for was written by a cairn this one cannot place.
        let unplaced: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM cairn_schema WHERE component IS NULL")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| Error::catalog(ctx("read versions"), e))?;
        if let Some(v) = unplaced {
            return Err(Error::Refused(format!(
                "the catalog has schema version {v}, which this cairn does not know (a newer \
                 cairn wrote it); upgrade cairn"
            )));
        }
        Ok(())
    }

    /// The schema version in force.
    pub async fn schema_version(&self) -> Result<i64> {
        let v: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM cairn_schema")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| Error::catalog("read schema version", e))?;
        Ok(v.unwrap_or(0))
    }

    pub async fn begin(&self) -> Result<Tx> {
        let tx = self
            .pool
            .begin()
            .await
            .map_err(|e| Error::catalog("begin transaction", e))?;
        Ok(Tx { tx })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- clusters ----

    pub async fn clusters(&self) -> Result<Vec<ClusterRow>> {
        let rows = sqlx::query("SELECT * FROM clusters ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::catalog("list clusters", e))?;
        rows.iter().map(cluster_row).collect()
    }

    pub async fn cluster_by_name(&self, name: &str) -> Result<Option<ClusterRow>> {
        let row = sqlx::query("SELECT * FROM clusters WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| Error::catalog("read cluster", e))?;
        row.as_ref().map(cluster_row).transpose()
    }

    pub async fn cluster(&self, id: ClusterId) -> Result<ClusterRow> {
        let row = sqlx::query("SELECT * FROM clusters WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| Error::catalog("read cluster", e))?;
        match row {
            Some(r) => cluster_row(&r),
            None => Err(Error::not_found(format!("cluster {id}"), "")),
        }
    }

    // ---- timelines ----

    pub async fn timelines(&self, cluster: ClusterId) -> Result<Vec<TimelineRow>> {
        let rows = sqlx::query("SELECT * FROM timelines WHERE cluster_id = $1 ORDER BY created_at")
            .bind(cluster.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::catalog("list timelines", e))?;
        rows.iter().map(timeline_row).collect()
    }

    pub async fn timeline(&self, id: TimelineId) -> Result<TimelineRow> {
        let row = sqlx::query("SELECT * FROM timelines WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| Error::catalog("read timeline", e))?;
        match row {
            Some(r) => timeline_row(&r),
            None => Err(Error::not_found(format!("timeline {id}"), "")),
        }
    }

    // ---- branches ----

    pub async fn branches(&self, cluster: ClusterId) -> Result<Vec<BranchRow>> {
        let rows = sqlx::query("SELECT * FROM branches WHERE cluster_id = $1 ORDER BY created_at")
            .bind(cluster.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::catalog("list branches", e))?;
        rows.iter().map(branch_row).collect()
    }

    pub async fn branch(&self, cluster: ClusterId, name: &str) -> Result<Option<BranchRow>> {
        let row = sqlx::query("SELECT * FROM branches WHERE cluster_id = $1 AND name = $2")
            .bind(cluster.to_string())
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| Error::catalog("read branch", e))?;
        row.as_ref().map(branch_row).transpose()
    }

    pub async fn branch_of_timeline(&self, tl: TimelineId) -> Result<Option<BranchRow>> {
        let row = sqlx::query("SELECT * FROM branches WHERE timeline_id = $1")
            .bind(tl.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| Error::catalog("read branch", e))?;
        row.as_ref().map(branch_row).transpose()
    }

    // ---- layers ----

    pub async fn layers(&self, cluster: ClusterId) -> Result<Vec<LayerRow>> {
        let rows = sqlx::query(
            "SELECT * FROM layers WHERE cluster_id = $1 ORDER BY timeline_id, kind, start_lsn",
        )
        .bind(cluster.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::catalog("list layers", e))?;
        rows.iter().map(layer_row).collect()
    }

    /// Every `(image, layer it references)` pair of a cluster's images.
    pub async fn layer_refs(&self, cluster: ClusterId) -> Result<Vec<(LayerId, LayerId)>> {
        let rows = sqlx::query(
            "SELECT r.layer_id, r.ref_layer_id FROM layer_refs r
             JOIN layers l ON l.id = r.layer_id WHERE l.cluster_id = $1
             ORDER BY r.layer_id, r.ref_layer_id",
        )
        .bind(cluster.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::catalog("list layer references", e))?;
        rows.iter()
            .map(|r| Ok((parse_col(r, "layer_id")?, parse_col(r, "ref_layer_id")?)))
            .collect()
    }

    pub async fn timeline_layers(&self, tl: TimelineId) -> Result<Vec<LayerRow>> {
        let rows = sqlx::query("SELECT * FROM layers WHERE timeline_id = $1 ORDER BY start_lsn")
            .bind(tl.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::catalog("list layers", e))?;
        rows.iter().map(layer_row).collect()
    }

    // ---- computes ----

    pub async fn computes(&self) -> Result<Vec<ComputeRow>> {
        let rows = sqlx::query("SELECT * FROM computes ORDER BY started_at")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::catalog("list computes", e))?;
        rows.iter().map(compute_row).collect()
    }

    pub async fn compute(&self, tl: TimelineId) -> Result<Option<ComputeRow>> {
        let row = sqlx::query("SELECT * FROM computes WHERE timeline_id = $1")
            .bind(tl.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| Error::catalog("read compute", e))?;
        row.as_ref().map(compute_row).transpose()
    }
}

#[cfg(test)]
mod tests;
