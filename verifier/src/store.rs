//! Where reports are kept: the chain in the catalog ([`crate::schema`]), and a copy of every
//! report in every region under `reports/report-<sequence>.json`.
//!
//! Invariants:
//! - Appending reads the head and inserts the next sequence naming its digest; the sequence is
//!   the table's primary key, so two nodes appending at once cannot fork the chain: the one
//!   that loses reads the new head and signs again.
//! - A report is never updated or deleted here.
//! - Every statement is parameterised; region keys are built from sequence numbers only.
//! - A region's copy is untrusted: it is read back through [`crate::report::chain`] with the
//!   appliance's trusted signers, against the head the catalog recorded.

use bytes::Bytes;

use cairn_backup::keys::Signer;
use cairn_backup::region::Region;
use cairn_engine::catalog::{column as get, Catalog};

use crate::error::{Error, Result};
use crate::report::chain::{file_name, parse_file_name, verify_chain, ChainStatus};
use crate::report::seal::{seal, SealedReport};
use crate::report::Report;

/// Where reports live in a region.
pub const REGION_PREFIX: &str = "reports";

/// The largest stored report read from a region.
const MAX_REPORT_BYTES: u64 = 4 << 20;

/// A report as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReportRow {
    pub sequence: u64,
    pub id: String,
    pub cluster: String,
    pub region: String,
    pub outcome: String,
    pub started_at_us: i64,
    pub digest: String,
}

/// The newest report's (sequence, digest).
pub async fn head(cat: &Catalog) -> Result<Option<(u64, String)>> {
    cat.migrate(&crate::schema::COMPONENT).await?;
    let row = sqlx::query(
        "SELECT sequence, digest FROM verification_reports ORDER BY sequence DESC LIMIT 1",
    )
    .fetch_optional(cat.pool())
    .await
    .map_err(|e| Error::catalog("read the newest verification report", e))?;
    row.map(|r| Ok((get::<i64>(&r, "sequence")? as u64, get(&r, "digest")?)))
        .transpose()
}

/// Appends `draft` to the chain: its `sequence` and `previous` are set here, then it is signed
/// with `signer` and inserted. Returns the stored report.
pub async fn append(cat: &Catalog, signer: &Signer, draft: &Report) -> Result<SealedReport> {
    for _ in 0..10 {
        let head = head(cat).await?;
        let report = Report {
            sequence: head.as_ref().map_or(1, |(n, _)| n + 1),
            previous: head.map(|(_, d)| d),
            ..draft.clone()
        };
        let sealed = seal(&report, signer);
        let body = String::from_utf8(sealed.bytes.clone())
            .map_err(|_| Error::Refused("a sealed report is not UTF-8".into()))?;
        let inserted = sqlx::query(
            "INSERT INTO verification_reports (sequence, id, cluster, region, outcome, started_at,
                                               digest, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(report.sequence as i64)
        .bind(&report.id)
        .bind(&report.cluster)
        .bind(&report.region)
        .bind(report.outcome.as_str())
        .bind(report.started_at_us)
        .bind(&sealed.digest)
        .bind(body)
        .execute(cat.pool())
        .await;
        match inserted {
            Ok(_) => return Ok(sealed),
            // Another node appended this sequence first: sign again on the new head.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => continue,
            Err(e) => return Err(Error::catalog("append a verification report", e)),
        }
    }
    Err(Error::Refused(
        "could not append the verification report: the chain kept moving (10 tries)".into(),
    ))
}

/// The reports, newest first; `cluster` filters.
pub async fn list(cat: &Catalog, cluster: Option<&str>, limit: i64) -> Result<Vec<ReportRow>> {
    cat.migrate(&crate::schema::COMPONENT).await?;
    let rows = sqlx::query(
        "SELECT sequence, id, cluster, region, outcome, started_at, digest FROM verification_reports
         WHERE ($1 = '' OR cluster = $1) ORDER BY sequence DESC LIMIT $2",
    )
    .bind(cluster.unwrap_or(""))
    .bind(limit)
    .fetch_all(cat.pool())
    .await
    .map_err(|e| Error::catalog("list verification reports", e))?;
    rows.iter()
        .map(|r| {
            Ok(ReportRow {
                sequence: get::<i64>(r, "sequence")? as u64,
                id: get(r, "id")?,
                cluster: get(r, "cluster")?,
                region: get(r, "region")?,
                outcome: get(r, "outcome")?,
                started_at_us: get(r, "started_at")?,
                digest: get(r, "digest")?,
            })
        })
        .collect()
}

/// The stored form of the report named by its sequence number or its run id.
pub async fn stored(cat: &Catalog, which: &str) -> Result<Option<(u64, Vec<u8>)>> {
    cat.migrate(&crate::schema::COMPONENT).await?;
    let seq: i64 = which.parse().unwrap_or(-1);
    let row = sqlx::query(
        "SELECT sequence, body FROM verification_reports WHERE sequence = $1 OR id = $2",
    )
    .bind(seq)
    .bind(which)
    .fetch_optional(cat.pool())
    .await
    .map_err(|e| Error::catalog("read a verification report", e))?;
    row.map(|r| {
        Ok((
            get::<i64>(&r, "sequence")? as u64,
            get::<String>(&r, "body")?.into_bytes(),
        ))
    })
    .transpose()
}

/// Every stored report of the catalog's chain, named as in a region.
pub async fn all_stored(cat: &Catalog) -> Result<Vec<(String, Vec<u8>)>> {
    cat.migrate(&crate::schema::COMPONENT).await?;
    let rows = sqlx::query("SELECT sequence, body FROM verification_reports ORDER BY sequence")
        .fetch_all(cat.pool())
        .await
        .map_err(|e| Error::catalog("read the verification reports", e))?;
    rows.iter()
        .map(|r| {
            Ok((
                file_name(get::<i64>(r, "sequence")? as u64),
                get::<String>(r, "body")?.into_bytes(),
            ))
        })
        .collect()
}

/// Checks the catalog's chain.
pub async fn verify_catalog(cat: &Catalog, trusted: &[[u8; 32]]) -> Result<ChainStatus> {
    Ok(verify_chain(&all_stored(cat).await?, trusted, None))
}

/// Copies to `region` every report of the catalog it lacks. Returns how many were written.
pub async fn publish(cat: &Catalog, region: &Region) -> Result<usize> {
    let present: std::collections::HashSet<u64> = region
        .list(REGION_PREFIX)
        .await?
        .iter()
        .filter_map(|(k, _)| k.rsplit('/').next().and_then(parse_file_name))
        .collect();
    let mut written = 0;
    for (name, bytes) in all_stored(cat).await? {
        if parse_file_name(&name).is_some_and(|n| present.contains(&n)) {
            continue;
        }
        region
            .put_verified(&format!("{REGION_PREFIX}/{name}"), Bytes::from(bytes))
            .await?;
        written += 1;
    }
    Ok(written)
}

/// Every stored report a region holds (untrusted: check it with [`verify_chain`]).
pub async fn region_stored(region: &Region) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for (key, _) in region.list(REGION_PREFIX).await? {
        let name = key.rsplit('/').next().unwrap_or(&key).to_string();
        let bytes = region.get_bounded(&key, MAX_REPORT_BYTES).await?;
        out.push((name, bytes.to_vec()));
    }
    Ok(out)
}

/// Checks a region's copy of the chain against the catalog's head.
pub async fn verify_region(
    cat: &Catalog,
    region: &Region,
    trusted: &[[u8; 32]],
) -> Result<ChainStatus> {
    let head = head(cat).await?;
    let stored = region_stored(region).await?;
    Ok(verify_chain(
        &stored,
        trusted,
        head.as_ref().map(|(n, d)| (*n, d.as_str())),
    ))
}

/// Where a chain was checked, and what was found (or why it could not be read).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlaceStatus {
    /// `catalog`, or `region NAME`.
    pub place: String,
    pub status: Option<ChainStatus>,
    pub error: Option<String>,
}

impl PlaceStatus {
    /// Whether the chain here is whole.
    pub fn intact(&self) -> bool {
        self.error.is_none() && self.status.as_ref().is_some_and(|s| s.broken.is_none())
    }
}

/// The chain checked where it is kept: the catalog, then every region (or only `region`),
/// each against the appliance's trusted signers and the catalog's head.
pub async fn verify_everywhere(
    p: &cairn_backup::Protection,
    region: Option<&str>,
) -> Result<Vec<PlaceStatus>> {
    let cat = &p.engine.catalog;
    let trusted = p.trusted();
    let mut out = vec![PlaceStatus {
        place: "catalog".into(),
        status: Some(verify_catalog(cat, &trusted).await?),
        error: None,
    }];
    let regions: Vec<&Region> = match region {
        Some(name) => vec![p.regions.get(name)?],
        None => p.regions.regions.iter().collect(),
    };
    for r in regions {
        let (status, error) = match verify_region(cat, r, &trusted).await {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e.to_string())),
        };
        out.push(PlaceStatus {
            place: format!("region {}", r.name),
            status,
            error,
        });
    }
    Ok(out)
}

/// When each region last served a verification of `cluster` (start time, Unix µs).
pub async fn last_verified(
    cat: &Catalog,
    cluster: &str,
) -> Result<std::collections::HashMap<String, i64>> {
    cat.migrate(&crate::schema::COMPONENT).await?;
    let rows = sqlx::query(
        "SELECT region, MAX(started_at) AS at FROM verification_reports WHERE cluster = $1
         GROUP BY region",
    )
    .bind(cluster)
    .fetch_all(cat.pool())
    .await
    .map_err(|e| Error::catalog("read when regions were last verified", e))?;
    rows.iter()
        .map(|r| Ok((get(r, "region")?, get(r, "at")?)))
        .collect()
}
