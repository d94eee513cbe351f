//! The catalog's rows as Rust sees them, and how each is read from a SQL row.
//!
//! Invariants:
//! - Every column is decoded through [`get`] or [`parse_col`], whose errors name the column;
//!   an unknown `kind` or an unparsable id is corrupt catalog data, never a default.

use std::path::PathBuf;
use std::str::FromStr;

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::error::{Error, Result};
use crate::ids::{ClusterId, LayerId, Lsn, TimelineId};
use crate::layer::LayerKind;

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

pub(super) fn parse_col<T: FromStr>(row: &AnyRow, col: &str) -> Result<T> {
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

/// Column `col` of a row, the error naming the column.
pub fn get<T>(row: &AnyRow, col: &str) -> Result<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(col)
        .map_err(|e| Error::catalog(format!("read column {col}"), e))
}

pub(super) fn cluster_row(r: &AnyRow) -> Result<ClusterRow> {
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

pub(super) fn timeline_row(r: &AnyRow) -> Result<TimelineRow> {
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

pub(super) fn branch_row(r: &AnyRow) -> Result<BranchRow> {
    Ok(BranchRow {
        cluster_id: parse_col(r, "cluster_id")?,
        name: get(r, "name")?,
        timeline_id: parse_col(r, "timeline_id")?,
        protected: get::<i64>(r, "protected")? != 0,
        created_at_us: get(r, "created_at")?,
    })
}

pub(super) fn layer_row(r: &AnyRow) -> Result<LayerRow> {
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

pub(super) fn compute_row(r: &AnyRow) -> Result<ComputeRow> {
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
