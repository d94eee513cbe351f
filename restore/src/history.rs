//! Every restore, recorded: the request, the outcome and the report, in the restore's table of
//! the catalog ([`crate::schema`]).
//!
//! Invariants:
//! - A restore is recorded whether it succeeded or not; a failed one keeps its error.
//! - Recording never fails a restore: the caller logs a recording error and goes on.
//! - Every statement is parameterised.

use cairn_backup::{Error, Result};
use cairn_engine::catalog::{column as get, Catalog};
use cairn_engine::Lsn;

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

fn catalog_error(what: &str, e: sqlx::Error) -> Error {
    Error::from(cairn_engine::Error::catalog(what, e))
}

/// Records `r` (creating the restore's table first if this catalog lacks it).
pub async fn record(cat: &Catalog, r: &RestoreRow) -> Result<()> {
    cat.migrate(&crate::schema::COMPONENT).await?;
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
    .execute(cat.pool())
    .await
    .map_err(|e| catalog_error("record a restore", e))?;
    Ok(())
}

/// The latest restores, newest first; `cluster` filters.
pub async fn list(cat: &Catalog, cluster: Option<&str>, limit: i64) -> Result<Vec<RestoreRow>> {
    cat.migrate(&crate::schema::COMPONENT).await?;
    let rows = sqlx::query(
        "SELECT * FROM restores WHERE ($1 = '' OR cluster_name = $1)
         ORDER BY started_at DESC LIMIT $2",
    )
    .bind(cluster.unwrap_or(""))
    .bind(limit)
    .fetch_all(cat.pool())
    .await
    .map_err(|e| catalog_error("list restores", e))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_engine::pg::scratch::ScratchServer;

    async fn exercise(cat: &Catalog) {
        // Restores are recorded, with or without a point, and listed newest first per cluster.
        for (i, (cluster, ok)) in [("shop", false), ("shop", true), ("other", true)]
            .into_iter()
            .enumerate()
        {
            record(
                cat,
                &RestoreRow {
                    id: format!("r{i}"),
                    cluster: cluster.into(),
                    branch: "main".into(),
                    point: "latest".into(),
                    lsn: ok.then_some(Lsn(0x300_0000 + i as u64)),
                    target: "data directory /x".into(),
                    region: ok.then(|| "region-b".into()),
                    ok,
                    error: (!ok).then(|| "refused".into()),
                    report: "{}".into(),
                    started_at_us: 10 + i as i64,
                    finished_at_us: 20 + i as i64,
                },
            )
            .await
            .unwrap();
        }
        let shop = list(cat, Some("shop"), 10).await.unwrap();
        assert_eq!(
            shop.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["r1", "r0"]
        );
        assert_eq!(shop[0].lsn, Some(Lsn(0x300_0001)));
        assert_eq!(shop[1].error.as_deref(), Some("refused"));
        assert_eq!(list(cat, None, 2).await.unwrap().len(), 2);
        // The table is the restore's, recorded as such.
        let owner: String =
            sqlx::query_scalar("SELECT component FROM cairn_schema WHERE version = 3")
                .fetch_one(cat.pool())
                .await
                .unwrap();
        assert_eq!(owner, "restore");
    }

    #[tokio::test]
    async fn restores_are_recorded_and_listed_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&Catalog::sqlite_url(dir.path()))
            .await
            .unwrap();
        exercise(&cat).await;
    }

    #[tokio::test]
    async fn restores_are_recorded_and_listed_on_postgres() {
        let dir = tempfile::tempdir().unwrap();
        let server = ScratchServer::start(&dir.path().join("pg"), &[]).expect("start PostgreSQL");
        let cat = Catalog::open(&server.url("postgres")).await.unwrap();
        exercise(&cat).await;
    }
}
