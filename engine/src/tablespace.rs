//! Tablespaces: every data directory Cairn writes gets tablespace directories of its own.
//!
//! Invariants:
//! - Image layers hold a tablespace's files under `pg_tblspc/<OID>/PG_<major>_<catver>/…`,
//!   keyed by OID; the location the source chose is recorded for information only
//!   ([`crate::layer::image::TablespaceInfo`]) and never used to place a file.
//! - In a materialised data directory `pg_tblspc/<OID>` is a link to a directory the
//!   [`Placement`] chooses (a compute's `tablespaces/<OID>`, or what `restore
//!   --tablespace-map` names), made before PostgreSQL starts, for every tablespace of the image
//!   and every tablespace the replayed WAL creates. Never a real directory: recovery from a
//!   backup label refuses those at its consistency point.
//! - The WAL written into `pg_wal` has the path of every create record blanked
//!   ([`crate::wal::TablespaceRecord::blanked`]), so redo keeps the link instead of pointing
//!   it at the source's path: no materialisation ever reads or writes a directory another
//!   server uses. Layers and regions keep the WAL as PostgreSQL wrote it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::ids::Lsn;
use crate::wal::{DirSource, ParseLimits, StopReason, WalParser};

/// Where each tablespace of a materialised data directory goes.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// Tablespaces not in `map` go to `root/<OID>`.
    pub root: PathBuf,
    pub map: BTreeMap<u32, PathBuf>,
}

impl Placement {
    /// Every tablespace under `root`.
    pub fn under(root: PathBuf) -> Placement {
        Placement {
            root,
            map: BTreeMap::new(),
        }
    }

    pub fn dir(&self, oid: u32) -> PathBuf {
        self.map
            .get(&oid)
            .cloned()
            .unwrap_or_else(|| self.root.join(oid.to_string()))
    }
}

/// The OID of a `pg_tblspc/<OID>` path (or of a path below one).
pub fn oid_of(rel: &str) -> Option<u32> {
    let mut parts = rel.split('/');
    if parts.next()? != "pg_tblspc" {
        return None;
    }
    let oid = parts.next()?;
    if oid.is_empty() || !oid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    oid.parse().ok()
}

/// Makes `datadir/pg_tblspc/<oid>` a link to the placement's directory for it (created 0700
/// when missing). An existing link to that directory is kept; anything else there is
/// replaced. Returns the directory.
pub fn link(datadir: &Path, placement: &Placement, oid: u32) -> Result<PathBuf> {
    let dir = placement.dir(oid);
    if !dir.is_absolute() {
        return Err(Error::Refused(format!(
            "tablespace directory {} is not an absolute path",
            dir.display()
        )));
    }
    if !dir.exists() {
        crate::fsutil::create_dir_mode(&dir, 0o700).ctx("create directory", &dir)?;
    }
    let at = datadir.join("pg_tblspc").join(oid.to_string());
    match fs::symlink_metadata(&at) {
        Ok(m) if m.file_type().is_symlink() => {
            if fs::read_link(&at).ctx("read link", &at)? == dir {
                return Ok(dir);
            }
            fs::remove_file(&at).ctx("remove", &at)?;
        }
        Ok(m) if m.is_dir() => crate::engine::remove_tree(&at)?,
        Ok(_) => fs::remove_file(&at).ctx("remove", &at)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::path("stat", &at, e)),
    }
    let parent = datadir.join("pg_tblspc");
    fs::create_dir_all(&parent).ctx("create directory", &parent)?;
    std::os::unix::fs::symlink(&dir, &at).ctx("create link", &at)?;
    Ok(dir)
}

/// What the WAL of a materialised range did with tablespaces.
#[derive(Debug, Clone, Default)]
pub struct WalTablespaces {
    /// Tablespaces created in the range: OID and the location the source gave.
    pub created: Vec<(u32, String)>,
    pub dropped: Vec<u32>,
    /// Create records whose path was blanked.
    pub blanked: usize,
}

/// Finds the tablespace records in `[from, to)` of the segments in `wal_dir` (written by
/// materialise) and blanks the path of every create record in place.
pub fn neutralise_wal(
    wal_dir: &Path,
    tli: u32,
    segment_size: u64,
    major: u32,
    from: Lsn,
    to: Lsn,
) -> Result<WalTablespaces> {
    let mut out = WalTablespaces::default();
    if from >= to {
        return Ok(out);
    }
    let mut src = DirSource::new(wal_dir, tli, segment_size);
    let mut parser = WalParser {
        segment_size,
        major,
        tli: Some(tli),
        system_id: None,
        magic: None,
    };
    let parsed = parser
        .parse(
            &mut src,
            from,
            None,
            ParseLimits {
                end: Some(to),
                ..Default::default()
            },
        )
        .ctx("read WAL", wal_dir)?;
    let complete = match &parsed.stop {
        StopReason::Limit => true,
        StopReason::EndOfAvailable { at } | StopReason::Invalid { at, .. } => *at >= to,
        StopReason::MaxBytes => false,
    };
    if !complete && parsed.end < to {
        return Err(Error::corrupt(
            format!("WAL written to {}", wal_dir.display()),
            format!(
                "it does not parse from {from} to {to} (stopped at {}: {:?}); its tablespace \
                 records cannot be checked",
                parsed.end, parsed.stop
            ),
        ));
    }
    let mut edits: HashMap<PathBuf, Vec<(u64, u8)>> = HashMap::new();
    for r in &parsed.tablespaces {
        match &r.create {
            Some(path) => {
                out.created.push((r.oid, path.clone()));
                let e = r.blanked(major, segment_size);
                if !e.is_empty() {
                    out.blanked += 1;
                }
                for (at, b) in e {
                    edits
                        .entry(src.segment_path(at))
                        .or_default()
                        .push((at.segment_offset(segment_size), b));
                }
            }
            None => out.dropped.push(r.oid),
        }
    }
    for (seg, e) in edits {
        let f = OpenOptions::new()
            .write(true)
            .open(&seg)
            .ctx("open WAL segment", &seg)?;
        for (off, b) in e {
            f.write_all_at(&[b], off).ctx("write WAL segment", &seg)?;
        }
        f.sync_data().ctx("sync WAL segment", &seg)?;
    }
    if out.blanked > 0 {
        tracing::debug!(blanked = out.blanked, "tablespace paths blanked in the WAL");
    }
    Ok(out)
}

/// The tablespace OIDs a data directory's image holds (from its directory list).
pub fn image_oids<'a>(dirs: impl Iterator<Item = &'a str>) -> BTreeSet<u32> {
    dirs.filter_map(oid_of).collect()
}

/// The tablespaces `pg_tblspc` of a data directory links to: (OID, target).
pub fn links(datadir: &Path) -> Result<Vec<(u32, PathBuf)>> {
    let dir = datadir.join("pg_tblspc");
    let mut out = Vec::new();
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::path("read directory", &dir, e)),
    };
    for e in rd {
        let e = e.ctx("read directory", &dir)?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(oid) = name.parse::<u32>() else {
            continue;
        };
        if let Ok(t) = fs::read_link(e.path()) {
            out.push((oid, t));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_are_read_only_from_pg_tblspc_paths() {
        assert_eq!(oid_of("pg_tblspc/16384"), Some(16384));
        assert_eq!(
            oid_of("pg_tblspc/16384/PG_15_202209061/5/16385"),
            Some(16384)
        );
        assert_eq!(oid_of("base/5/16385"), None);
        assert_eq!(oid_of("pg_tblspc"), None);
        assert_eq!(oid_of("pg_tblspc/x1"), None);
        assert_eq!(oid_of("pg_tblspc/+1"), None);
    }

    #[test]
    fn links_point_at_the_placement_and_replace_what_was_there() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        fs::create_dir_all(data.join("pg_tblspc")).unwrap();
        let mut p = Placement::under(t.path().join("ts"));
        fs::create_dir_all(&p.root).unwrap();
        p.map.insert(7, t.path().join("seven"));
        // Something stale at both places: a foreign link and a real directory.
        std::os::unix::fs::symlink("/etc", data.join("pg_tblspc/7")).unwrap();
        fs::create_dir_all(data.join("pg_tblspc/8/PG_15_1")).unwrap();
        assert_eq!(link(&data, &p, 7).unwrap(), t.path().join("seven"));
        assert_eq!(link(&data, &p, 8).unwrap(), t.path().join("ts/8"));
        assert_eq!(
            links(&data).unwrap(),
            vec![(7, t.path().join("seven")), (8, t.path().join("ts/8"))]
        );
        assert!(t.path().join("seven").is_dir());
        // Linking again keeps the link.
        link(&data, &p, 8).unwrap();
        let rel = Placement::under("relative".into());
        assert!(link(&data, &rel, 9).is_err());
    }
}
