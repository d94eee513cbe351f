//! Where a restored data directory's tablespaces go (`--tablespace-map OID|NAME=DIR`).
//!
//! Invariants:
//! - Every tablespace of the point gets a directory of its own: the one the map names, else
//!   `ROOT/<OID>` with ROOT `DIR.tablespaces` beside the data directory (not inside it:
//!   `pg_basebackup` of the restored server would copy the files twice, and PostgreSQL warns
//!   against tablespaces in the data directory). `pg_tblspc/<OID>` links to it, and the WAL
//!   left to replay has its create records blanked, so no restore ever writes where the source
//!   kept a tablespace.
//! - A map's directories are absolute, not inside or around the data directory, not inside
//!   the appliance's home, distinct from each other, and empty (or an earlier restore's, with
//!   `--delta`). A key is an OID when it is all digits, else a tablespace name the image
//!   records; a name nobody knows, or one tablespace mapped to two places, is refused with the
//!   tablespaces there are. A key that matches no tablespace of the point is refused once the
//!   point is known.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cairn_backup::{Error, Result};
use cairn_engine::layer::image::TablespaceInfo;
use cairn_engine::tablespace::Placement;

/// `--tablespace-map` entries as given, and where unmapped tablespaces go.
#[derive(Debug, Clone, Default)]
pub struct TablespaceMap {
    /// (OID or name, directory).
    pub entries: Vec<(String, PathBuf)>,
    /// Parent of the unmapped ones (default: `DIR.tablespaces`).
    pub root: Option<PathBuf>,
}

/// A tablespace of a restored data directory, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoredTablespace {
    pub oid: u32,
    /// Unknown for a tablespace created after the image (WAL records carry no name).
    pub name: Option<String>,
    pub directory: PathBuf,
    /// Where the source kept it.
    pub source_location: Option<String>,
}

/// Parses one `OID|NAME=DIR` argument.
pub fn parse_entry(s: &str) -> std::result::Result<(String, PathBuf), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not OID=DIR or NAME=DIR"))?;
    if k.is_empty() || v.is_empty() {
        return Err(format!("'{s}' is not OID=DIR or NAME=DIR"));
    }
    let dir = PathBuf::from(v);
    if !dir.is_absolute() {
        return Err(format!(
            "tablespace directory '{v}' is not an absolute path; give it as /path/to/dir"
        ));
    }
    Ok((k.to_string(), dir))
}

impl TablespaceMap {
    /// The parent of unmapped tablespaces for data directory `dir`.
    pub fn root_for(&self, dir: &Path) -> PathBuf {
        self.root.clone().unwrap_or_else(|| {
            let mut s = dir.as_os_str().to_owned();
            s.push(".tablespaces");
            PathBuf::from(s)
        })
    }

    /// Checks the directories before anything is fetched or written.
    pub fn check(&self, dir: &Path, home: &[&Path], delta: bool) -> Result<()> {
        let mut seen: Vec<(&str, &Path)> = Vec::new();
        for (key, d) in &self.entries {
            if !d.is_absolute() {
                return Err(Error::Refused(format!(
                    "--tablespace-map {key}={}: give an absolute directory",
                    d.display()
                )));
            }
            if d.starts_with(dir) || dir.starts_with(d) {
                return Err(Error::Refused(format!(
                    "--tablespace-map {key}={}: a tablespace directory must be outside the data \
                     directory {} and not contain it",
                    d.display(),
                    dir.display()
                )));
            }
            if let Some(h) = home.iter().find(|h| d.starts_with(h) || h.starts_with(d)) {
                return Err(Error::Refused(format!(
                    "--tablespace-map {key}={}: it overlaps the appliance's own directory {}; \
                     choose a directory outside it",
                    d.display(),
                    h.display()
                )));
            }
            if let Some((k2, d2)) = seen
                .iter()
                .find(|(_, d2)| d.starts_with(d2) || d2.starts_with(d))
            {
                return Err(Error::Refused(format!(
                    "--tablespace-map {key}={} and {k2}={}: two tablespaces cannot share or nest \
                     directories",
                    d.display(),
                    d2.display()
                )));
            }
            seen.push((key, d));
            if !delta {
                check_empty(&format!("--tablespace-map {key}={}", d.display()), d)?;
            }
        }
        let root = self.root_for(dir);
        if root.starts_with(dir) {
            return Err(Error::Refused(format!(
                "tablespace directory {} is inside the data directory {}",
                root.display(),
                dir.display()
            )));
        }
        if !delta {
            check_empty(
                &format!(
                    "{}, where tablespaces without --tablespace-map go",
                    root.display()
                ),
                &root,
            )?;
        }
        Ok(())
    }

    /// Resolves the map against the point's tablespaces: `known` from the image (with names),
    /// `image_oids` the OIDs its files are under. Keys that are OIDs of tablespaces created by
    /// the WAL after the image are kept as given; [`TablespaceMap::check_used`] refuses the
    /// ones that matched nothing once the WAL is known.
    pub fn placement(&self, dir: &Path, known: &[TablespaceInfo]) -> Result<Placement> {
        let mut map: BTreeMap<u32, PathBuf> = BTreeMap::new();
        for (key, d) in &self.entries {
            let oid = if key.bytes().all(|b| b.is_ascii_digit()) {
                key.parse::<u32>().map_err(|_| {
                    Error::Refused(format!("--tablespace-map {key}: not a tablespace OID"))
                })?
            } else {
                match known.iter().find(|t| t.name == *key) {
                    Some(t) => t.oid,
                    None => {
                        return Err(Error::Refused(format!(
                            "--tablespace-map {key}: the point has no tablespace named '{key}'; \
                             it has {}. A tablespace created after the point's image is known \
                             only by its OID: map it as OID=DIR",
                            describe(known)
                        )))
                    }
                }
            };
            if let Some(other) = map.get(&oid) {
                if other != d {
                    return Err(Error::Refused(format!(
                        "--tablespace-map maps tablespace {oid} twice, to {} and {}",
                        other.display(),
                        d.display()
                    )));
                }
            }
            map.insert(oid, d.clone());
        }
        Ok(Placement {
            root: self.root_for(dir),
            map,
        })
    }

    /// Refuses map entries that matched no tablespace of the restored point.
    pub fn check_used(&self, placement: &Placement, placed: &[(u32, PathBuf)]) -> Result<()> {
        for (oid, d) in &placement.map {
            if !placed.iter().any(|(o, _)| o == oid) {
                let key = self
                    .entries
                    .iter()
                    .find(|(_, e)| e == d)
                    .map_or_else(|| oid.to_string(), |(k, _)| k.clone());
                return Err(Error::Refused(format!(
                    "--tablespace-map {key}: the point has no tablespace {oid}; it has {}",
                    if placed.is_empty() {
                        "none".to_string()
                    } else {
                        placed
                            .iter()
                            .map(|(o, _)| o.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                )));
            }
        }
        Ok(())
    }
}

/// Refuses a directory that exists and holds something; `what` names it for the message.
fn check_empty(what: &str, d: &Path) -> Result<()> {
    match std::fs::read_dir(d) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(Error::Refused(format!(
                    "{what}: the directory is not empty; choose an empty or new one (or map \
                     each tablespace elsewhere with --tablespace-map)"
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("read {}", d.display()), e)),
    }
}

fn describe(known: &[TablespaceInfo]) -> String {
    if known.is_empty() {
        return "no named tablespaces in its image".into();
    }
    known
        .iter()
        .map(|t| format!("{} (OID {}, was at {})", t.name, t.oid, t.location))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report's view of where each tablespace went.
pub fn report(
    placed: &[(u32, PathBuf)],
    known: &[TablespaceInfo],
    from_wal: &[(u32, String)],
) -> Vec<RestoredTablespace> {
    placed
        .iter()
        .map(|(oid, d)| {
            let k = known.iter().find(|t| t.oid == *oid);
            RestoredTablespace {
                oid: *oid,
                name: k.map(|t| t.name.clone()),
                directory: d.clone(),
                source_location: k.map(|t| t.location.clone()).or_else(|| {
                    from_wal
                        .iter()
                        .rev()
                        .find(|(o, _)| o == oid)
                        .map(|(_, l)| l.clone())
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<TablespaceInfo> {
        vec![
            TablespaceInfo {
                oid: 16384,
                name: "fast".into(),
                location: "/ssd/a".into(),
            },
            TablespaceInfo {
                oid: 16390,
                name: "16384".into(),
                location: "/ssd/b".into(),
            },
        ]
    }

    #[test]
    fn keys_resolve_by_oid_then_name_and_conflicts_are_refused() {
        let dir = Path::new("/srv/pg");
        let m = TablespaceMap {
            entries: vec![
                ("fast".into(), "/x/fast".into()),
                ("16500".into(), "/x/later".into()),
            ],
            root: None,
        };
        let p = m.placement(dir, &known()).unwrap();
        assert_eq!(p.dir(16384), PathBuf::from("/x/fast"));
        assert_eq!(p.dir(16500), PathBuf::from("/x/later"));
        assert_eq!(p.dir(16390), PathBuf::from("/srv/pg.tablespaces/16390"));
        // A digits-only key is an OID even when a tablespace is named like that.
        let m = TablespaceMap {
            entries: vec![("16384".into(), "/x/a".into())],
            root: None,
        };
        assert_eq!(
            m.placement(dir, &known()).unwrap().dir(16384),
            PathBuf::from("/x/a")
        );
        // Mapped twice to different places, by OID and by name.
        let m = TablespaceMap {
            entries: vec![
                ("16384".into(), "/x/a".into()),
                ("fast".into(), "/x/b".into()),
            ],
            root: None,
        };
        let e = m.placement(dir, &known()).unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
        let m = TablespaceMap {
            entries: vec![("slow".into(), "/x/a".into())],
            root: None,
        };
        let e = m.placement(dir, &known()).unwrap_err().to_string();
        assert!(
            e.contains("no tablespace named 'slow'") && e.contains("fast (OID 16384"),
            "{e}"
        );
        // A mapped OID the point does not have.
        let m = TablespaceMap {
            entries: vec![("99999".into(), "/x/a".into())],
            root: None,
        };
        let p = m.placement(dir, &known()).unwrap();
        let e = m
            .check_used(&p, &[(16384, "/x/y".into())])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no tablespace 99999") && e.contains("16384"),
            "{e}"
        );
    }

    #[test]
    fn directories_are_checked_before_anything_is_written() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("data");
        let home = t.path().join("home");
        let full = t.path().join("full");
        std::fs::create_dir_all(&full).unwrap();
        std::fs::write(full.join("f"), "x").unwrap();
        let check = |entries: Vec<(&str, PathBuf)>, delta: bool| {
            TablespaceMap {
                entries: entries
                    .into_iter()
                    .map(|(k, d)| (k.to_string(), d))
                    .collect(),
                root: None,
            }
            .check(&dir, &[home.as_path()], delta)
        };
        let err = |entries, delta| check(entries, delta).unwrap_err().to_string();
        assert!(check(vec![("1", t.path().join("ts1"))], false).is_ok());
        assert!(err(vec![("1", dir.join("in"))], false).contains("outside the data directory"));
        assert!(err(vec![("1", t.path().to_path_buf())], false).contains("not contain it"));
        assert!(err(vec![("1", home.join("x"))], false).contains("appliance's own"));
        assert!(err(vec![("1", full.clone())], false).contains("not empty"));
        // The default place of unmapped tablespaces, beside the data directory, too.
        let beside = t.path().join("data.tablespaces");
        std::fs::create_dir_all(beside.join("16384")).unwrap();
        let e = err(vec![], false);
        assert!(
            e.contains("data.tablespaces, where tablespaces without --tablespace-map go"),
            "{e}"
        );
        assert!(check(vec![], true).is_ok());
        std::fs::remove_dir_all(&beside).unwrap();
        assert!(check(vec![("1", full.clone())], true).is_ok());
        assert!(err(
            vec![("1", t.path().join("a")), ("2", t.path().join("a/b"))],
            false
        )
        .contains("share or nest"));
        assert!(parse_entry("fast=relative/dir")
            .unwrap_err()
            .contains("absolute"));
        assert!(parse_entry("nokey").is_err());
        assert_eq!(
            parse_entry("fast=/a=b").unwrap(),
            ("fast".to_string(), PathBuf::from("/a=b"))
        );
    }
}
