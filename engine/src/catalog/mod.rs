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
pub mod schema;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

use crate::error::{Error, Result};
use crate::ids::{ClusterId, LayerId, Lsn, TimelineId};
use crate::layer::LayerKind;
use crate::wal::WalEvent;

/// Whether a cluster's primary is a compute Cairn manages or a server it protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterKind {
    Managed,
    Adopted,
}

impl ClusterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterKind::Managed => "managed",
            ClusterKind::Adopted => "adopted",
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterRow {
    pub id: ClusterId,
    pub name: String,
    pub kind: ClusterKind,
    pub pg_major: u32,
    pub system_id: u64,
    pub segment_size: u64,
    pub tli: u32,
    /// Adopted clusters: the source's connection string, without any password.
    pub source: Option<String>,
    /// Adopted clusters: the replication slot on the source.
    pub slot: Option<String>,
    pub created_at_us: i64,
}

/// One restore, as recorded: the report is the JSON the restore printed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreRow {
    pub id: String,
    pub cluster: String,
    pub branch: String,
    pub point: String,
    pub lsn: Option<Lsn>,
    pub target: String,
    pub region: Option<String>,
    pub ok: bool,
    pub error: Option<String>,
    pub report: String,
    pub started_at_us: i64,
    pub finished_at_us: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TimelineRow {
    pub id: TimelineId,
    pub cluster_id: ClusterId,
    pub ancestor: Option<(TimelineId, Lsn)>,
    /// Start of the record that ends at the branch point (the `xl_prev` of the timeline's
    /// first record).
    pub ancestor_prev: Option<Lsn>,
    /// End of the last record the timeline holds.
    pub head: Lsn,
    /// Start of that record (the next record's `xl_prev`), when known.
    pub head_prev: Option<Lsn>,
    pub created_at_us: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BranchRow {
    pub cluster_id: ClusterId,
    pub name: String,
    pub timeline_id: TimelineId,
    pub protected: bool,
    pub created_at_us: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerRow {
    pub id: LayerId,
    pub cluster_id: ClusterId,
    pub timeline_id: TimelineId,
    pub kind: LayerKind,
    pub start: Lsn,
    pub end: Lsn,
    pub file_size: u64,
    /// Image: the data directory's size; WAL: bytes of WAL.
    pub logical_size: u64,
    /// Bytes of compressed pieces stored in this layer (what deduplication did not avoid).
    pub stored_bytes: u64,
    pub created_at_us: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ComputeRow {
    pub timeline_id: TimelineId,
    pub cluster_id: ClusterId,
    /// `running` or `stopped`: what `cairn up` should make true.
    pub desired: String,
    pub port: u16,
    pub datadir: PathBuf,
    pub pid: Option<i64>,
    pub started_at_us: i64,
}

/// Current time in Unix microseconds.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn parse_col<T: FromStr>(row: &AnyRow, col: &str) -> Result<T> {
    let s: String = row
        .try_get(col)
        .map_err(|e| Error::catalog(format!("read column {col}"), e))?;
    s.parse().map_err(|_| {
        Error::corrupt(
            "catalog",
            format!("column {col} holds '{s}', which does not parse"),
        )
    })
}

fn get<T>(row: &AnyRow, col: &str) -> Result<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(col)
        .map_err(|e| Error::catalog(format!("read column {col}"), e))
}

fn cluster_row(r: &AnyRow) -> Result<ClusterRow> {
    let kind: String = get(r, "kind")?;
    Ok(ClusterRow {
        id: parse_col(r, "id")?,
        name: get(r, "name")?,
        kind: if kind == "adopted" {
            ClusterKind::Adopted
        } else {
            ClusterKind::Managed
        },
        pg_major: get::<i64>(r, "pg_major")? as u32,
        system_id: parse_col(r, "system_id")?,
        segment_size: get::<i64>(r, "segment_size")? as u64,
        tli: get::<i64>(r, "tli")? as u32,
        source: get(r, "source")?,
        slot: get(r, "slot")?,
        created_at_us: get(r, "created_at")?,
    })
}

fn timeline_row(r: &AnyRow) -> Result<TimelineRow> {
    let ancestor_id: Option<String> = get(r, "ancestor_id")?;
    let ancestor_lsn: Option<i64> = get(r, "ancestor_lsn")?;
    let ancestor = match (ancestor_id, ancestor_lsn) {
        (Some(a), Some(l)) => Some((
            a.parse()
                .map_err(|e: String| Error::corrupt("catalog", e))?,
            Lsn::from_i64(l),
        )),
        _ => None,
    };
    Ok(TimelineRow {
        id: parse_col(r, "id")?,
        cluster_id: parse_col(r, "cluster_id")?,
        ancestor,
        ancestor_prev: get::<Option<i64>>(r, "ancestor_prev")?.map(Lsn::from_i64),
        head: Lsn::from_i64(get(r, "head")?),
        head_prev: get::<Option<i64>>(r, "head_prev")?.map(Lsn::from_i64),
        created_at_us: get(r, "created_at")?,
    })
}

fn branch_row(r: &AnyRow) -> Result<BranchRow> {
    Ok(BranchRow {
        cluster_id: parse_col(r, "cluster_id")?,
        name: get(r, "name")?,
        timeline_id: parse_col(r, "timeline_id")?,
        protected: get::<i64>(r, "protected")? != 0,
        created_at_us: get(r, "created_at")?,
    })
}

fn layer_row(r: &AnyRow) -> Result<LayerRow> {
    let kind: String = get(r, "kind")?;
    Ok(LayerRow {
        id: parse_col(r, "id")?,
        cluster_id: parse_col(r, "cluster_id")?,
        timeline_id: parse_col(r, "timeline_id")?,
        kind: LayerKind::parse(&kind)
            .ok_or_else(|| Error::corrupt("catalog", format!("unknown layer kind '{kind}'")))?,
        start: Lsn::from_i64(get(r, "start_lsn")?),
        end: Lsn::from_i64(get(r, "end_lsn")?),
        file_size: get::<i64>(r, "file_size")? as u64,
        logical_size: get::<i64>(r, "logical_size")? as u64,
        stored_bytes: get::<i64>(r, "stored_bytes")? as u64,
        created_at_us: get(r, "created_at")?,
    })
}

fn compute_row(r: &AnyRow) -> Result<ComputeRow> {
    let datadir: String = get(r, "datadir")?;
    Ok(ComputeRow {
        timeline_id: parse_col(r, "timeline_id")?,
        cluster_id: parse_col(r, "cluster_id")?,
        desired: get(r, "desired")?,
        port: get::<i64>(r, "port")? as u16,
        datadir: PathBuf::from(datadir),
        pid: get(r, "pid")?,
        started_at_us: get(r, "started_at")?,
    })
}

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
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                .ctx("set mode", &p)?;
        }
    }
    Ok(())
}

impl Catalog {
    /// The embedded catalog of a data directory.
    pub fn sqlite_url(home: &Path) -> String {
        format!("sqlite://{}?mode=rwc", home.join("catalog.db").display())
    }

    /// Opens (creating if needed) the catalog at `url` and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Catalog> {
        Self::open_with(url, schema::MIGRATIONS).await
    }

    /// Opens the catalog at `url` and applies `migrations` (all of them but in tests, which
    /// build catalogs as older versions left them).
    pub(crate) async fn open_with(url: &str, migrations: &[schema::Migration]) -> Result<Catalog> {
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
        let cat = Catalog { pool, backend };
        cat.migrate(migrations).await?;
        Ok(cat)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection pool, for the tables other crates add through migrations.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    async fn migrate(&self, migrations: &[schema::Migration]) -> Result<()> {
        let ctx = |what: &str| format!("migrate schema: {what}");
        self.pool
            .execute(
                "CREATE TABLE IF NOT EXISTS cairn_schema (
                    version BIGINT PRIMARY KEY,
                    description TEXT NOT NULL,
                    applied_at BIGINT NOT NULL)",
            )
            .await
            .map_err(|e| Error::catalog(ctx("create version table"), e))?;
        let mut applied = Vec::new();
        for m in migrations {
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
                "INSERT INTO cairn_schema (version, description, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(m.version)
            .bind(m.description)
            .bind(now_us())
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::catalog(ctx("record version"), e))?;
            tx.commit()
                .await
                .map_err(|e| Error::catalog(ctx("commit"), e))?;
            tracing::debug!(version = m.version, "catalog migrated");
            applied.push(m.version);
        }
        let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM cairn_schema")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| Error::catalog(ctx("read version"), e))?;
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
        let known = schema::MIGRATIONS.last().map_or(0, |m| m.version);
        if newest.unwrap_or(0) > known {
            return Err(Error::Refused(format!(
                "the catalog has schema version {}, newer than this cairn knows ({known}); \
                 upgrade cairn",
                newest.unwrap_or(0)
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

    pub async fn timeline_layers(&self, tl: TimelineId) -> Result<Vec<LayerRow>> {
        let rows = sqlx::query("SELECT * FROM layers WHERE timeline_id = $1 ORDER BY start_lsn")
            .bind(tl.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::catalog("list layers", e))?;
        rows.iter().map(layer_row).collect()
    }

    // ---- restores ----

    pub async fn record_restore(&self, r: &RestoreRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO restores (id, cluster_name, branch, point, lsn, target, region, ok, error,
                                   report, started_at, finished_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&r.id)
        .bind(&r.cluster)
        .bind(&r.branch)
        .bind(&r.point)
        .bind(r.lsn.map(|l| l.as_i64()))
        .bind(&r.target)
        .bind(r.region.clone())
        .bind(r.ok as i64)
        .bind(r.error.clone())
        .bind(&r.report)
        .bind(r.started_at_us)
        .bind(r.finished_at_us)
        .execute(&self.pool)
        .await
        .map_err(|e| Error::catalog("record a restore", e))?;
        Ok(())
    }

    /// The latest restores, newest first; `cluster` filters.
    pub async fn restores(&self, cluster: Option<&str>, limit: i64) -> Result<Vec<RestoreRow>> {
        let rows = sqlx::query(
            "SELECT * FROM restores WHERE ($1 = '' OR cluster_name = $1)
             ORDER BY started_at DESC LIMIT $2",
        )
        .bind(cluster.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::catalog("list restores", e))?;
        rows.iter()
            .map(|r| {
                Ok(RestoreRow {
                    id: get(r, "id")?,
                    cluster: get(r, "cluster_name")?,
                    branch: get(r, "branch")?,
                    point: get(r, "point")?,
                    lsn: get::<Option<i64>>(r, "lsn")?.map(|v| Lsn(v as u64)),
                    target: get(r, "target")?,
                    region: get(r, "region")?,
                    ok: get::<i64>(r, "ok")? != 0,
                    error: get(r, "error")?,
                    report: get(r, "report")?,
                    started_at_us: get(r, "started_at")?,
                    finished_at_us: get(r, "finished_at")?,
                })
            })
            .collect()
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

/// A catalog transaction. Dropping it without [`Tx::commit`] rolls back.
pub struct Tx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
}

impl Tx {
    pub async fn commit(self) -> Result<()> {
        crate::failpoint::hit("catalog-before-commit");
        self.tx
            .commit()
            .await
            .map_err(|e| Error::catalog("commit", e))
    }

    pub async fn insert_cluster(&mut self, c: &ClusterRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO clusters (id, name, kind, pg_major, system_id, segment_size, tli,
                                   source, slot, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(c.id.to_string())
        .bind(&c.name)
        .bind(c.kind.as_str())
        .bind(c.pg_major as i64)
        .bind(c.system_id.to_string())
        .bind(c.segment_size as i64)
        .bind(c.tli as i64)
        .bind(c.source.clone())
        .bind(c.slot.clone())
        .bind(c.created_at_us)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| Error::catalog(format!("insert cluster '{}'", c.name), e))?;
        Ok(())
    }

    pub async fn insert_timeline(&mut self, t: &TimelineRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO timelines (id, cluster_id, ancestor_id, ancestor_lsn, ancestor_prev, head,
                                    head_prev, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(t.id.to_string())
        .bind(t.cluster_id.to_string())
        .bind(t.ancestor.map(|a| a.0.to_string()))
        .bind(t.ancestor.map(|a| a.1.as_i64()))
        .bind(t.ancestor_prev.map(|l| l.as_i64()))
        .bind(t.head.as_i64())
        .bind(t.head_prev.map(|l| l.as_i64()))
        .bind(t.created_at_us)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| Error::catalog("insert timeline", e))?;
        Ok(())
    }

    pub async fn set_head(&mut self, tl: TimelineId, head: Lsn, prev: Option<Lsn>) -> Result<()> {
        sqlx::query("UPDATE timelines SET head = $1, head_prev = $2 WHERE id = $3")
            .bind(head.as_i64())
            .bind(prev.map(|l| l.as_i64()))
            .bind(tl.to_string())
            .execute(&mut *self.tx)
            .await
            .map_err(|e| Error::catalog("advance timeline head", e))?;
        Ok(())
    }

    pub async fn insert_branch(&mut self, b: &BranchRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO branches (cluster_id, name, timeline_id, protected, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(b.cluster_id.to_string())
        .bind(&b.name)
        .bind(b.timeline_id.to_string())
        .bind(b.protected as i64)
        .bind(b.created_at_us)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| Error::catalog(format!("insert branch '{}'", b.name), e))?;
        Ok(())
    }

    /// Points an existing branch at another timeline.
    pub async fn repoint_branch(
        &mut self,
        cluster: ClusterId,
        name: &str,
        tl: TimelineId,
    ) -> Result<()> {
        sqlx::query("UPDATE branches SET timeline_id = $1 WHERE cluster_id = $2 AND name = $3")
            .bind(tl.to_string())
            .bind(cluster.to_string())
            .bind(name)
            .execute(&mut *self.tx)
            .await
            .map_err(|e| Error::catalog(format!("update branch '{name}'"), e))?;
        Ok(())
    }

    pub async fn set_protected(&mut self, cluster: ClusterId, name: &str, on: bool) -> Result<()> {
        sqlx::query("UPDATE branches SET protected = $1 WHERE cluster_id = $2 AND name = $3")
            .bind(on as i64)
            .bind(cluster.to_string())
            .bind(name)
            .execute(&mut *self.tx)
            .await
            .map_err(|e| Error::catalog(format!("update branch '{name}'"), e))?;
        Ok(())
    }

    pub async fn delete_branch(&mut self, cluster: ClusterId, name: &str) -> Result<()> {
        sqlx::query("DELETE FROM branches WHERE cluster_id = $1 AND name = $2")
            .bind(cluster.to_string())
            .bind(name)
            .execute(&mut *self.tx)
            .await
            .map_err(|e| Error::catalog(format!("delete branch '{name}'"), e))?;
        Ok(())
    }

    /// Removes a timeline and everything the catalog holds about it.
    pub async fn delete_timeline(&mut self, tl: TimelineId) -> Result<()> {
        let id = tl.to_string();
        for stmt in [
            "DELETE FROM wal_markers WHERE timeline_id = $1",
            "DELETE FROM wal_layer_txns WHERE timeline_id = $1",
            "DELETE FROM layer_refs WHERE layer_id IN (SELECT id FROM layers WHERE timeline_id = $1)",
            "DELETE FROM layers WHERE timeline_id = $1",
            "DELETE FROM computes WHERE timeline_id = $1",
            "DELETE FROM timelines WHERE id = $1",
        ] {
            sqlx::query(stmt)
                .bind(&id)
                .execute(&mut *self.tx)
                .await
                .map_err(|e| Error::catalog("delete timeline", e))?;
        }
        Ok(())
    }

    pub async fn delete_cluster(&mut self, c: ClusterId) -> Result<()> {
        sqlx::query("DELETE FROM clusters WHERE id = $1")
            .bind(c.to_string())
            .execute(&mut *self.tx)
            .await
            .map_err(|e| Error::catalog("delete cluster", e))?;
        Ok(())
    }

    /// Records a durable layer file, what it references and what the catalog keeps of the
    /// events it holds (see [`events`]).
    pub async fn insert_layer(
        &mut self,
        l: &LayerRow,
        refs: &[LayerId],
        events: &[WalEvent],
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO layers (id, cluster_id, timeline_id, kind, start_lsn, end_lsn, file_size,
                                 logical_size, stored_bytes, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(l.id.to_string())
        .bind(l.cluster_id.to_string())
        .bind(l.timeline_id.to_string())
        .bind(l.kind.as_str())
        .bind(l.start.as_i64())
        .bind(l.end.as_i64())
        .bind(l.file_size as i64)
        .bind(l.logical_size as i64)
        .bind(l.stored_bytes as i64)
        .bind(l.created_at_us)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| Error::catalog("insert layer", e))?;
        for r in refs {
            sqlx::query("INSERT INTO layer_refs (layer_id, ref_layer_id) VALUES ($1, $2)")
                .bind(l.id.to_string())
                .bind(r.to_string())
                .execute(&mut *self.tx)
                .await
                .map_err(|e| Error::catalog("insert layer reference", e))?;
        }
        self.insert_layer_events(l, events).await
    }

    pub async fn upsert_compute(&mut self, c: &ComputeRow) -> Result<()> {
        sqlx::query("DELETE FROM computes WHERE timeline_id = $1")
            .bind(c.timeline_id.to_string())
            .execute(&mut *self.tx)
            .await
            .map_err(|e| Error::catalog("record compute", e))?;
        sqlx::query(
            "INSERT INTO computes (timeline_id, cluster_id, desired, port, datadir, pid,
                                   started_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(c.timeline_id.to_string())
        .bind(c.cluster_id.to_string())
        .bind(&c.desired)
        .bind(c.port as i64)
        .bind(c.datadir.to_string_lossy().into_owned())
        .bind(c.pid)
        .bind(c.started_at_us)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| Error::catalog("record compute", e))?;
        Ok(())
    }

    pub async fn delete_compute(&mut self, tl: TimelineId) -> Result<()> {
        sqlx::query("DELETE FROM computes WHERE timeline_id = $1")
            .bind(tl.to_string())
            .execute(&mut *self.tx)
            .await
            .map_err(|e| Error::catalog("delete compute", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod upgrade_tests;
