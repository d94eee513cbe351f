//! The engine facade: one data directory, one catalog, and the operations on them.
//!
//! Locking: every change to a timeline (new layers, head, compute) happens under that
//! timeline's lock; changes to a cluster's branch tree under the cluster's lock; creating a
//! cluster under the cluster-list lock. Locks are `flock`s on files in `HOME/locks`, so they
//! are released when a process dies, and the garbage a dead process leaves (temporary files,
//! layer files it never committed) is removed by the next process that takes the same lock.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::catalog::{BranchRow, Catalog, ClusterRow, LayerRow, TimelineRow};
use crate::error::{Error, Result};
use crate::home::Home;
use crate::ids::{LayerId, Lsn, TimelineId};
use crate::layer::file::LayerKind;
use crate::layer_map::{ImageDesc, LayerMap, TimelineDesc, Unreconstructible, WalDesc};
use crate::pg::{OsUser, PgBinaries};
use crate::wal_events::WalEvents;

/// How to open an engine.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub home: PathBuf,
    /// `None`: the embedded SQLite catalog in the data directory.
    pub catalog_url: Option<String>,
    /// Directory of PostgreSQL's binaries; `None`: search for them.
    pub pg_bin: Option<PathBuf>,
}

pub struct Engine {
    pub home: Home,
    pub catalog: Catalog,
    pub user: OsUser,
    pg_bin: Option<PathBuf>,
    bins: OnceLock<PgBinaries>,
    /// WAL layers' events held in memory for point resolution ([`crate::wal_index`]).
    pub wal_events: WalEvents,
}

/// A segment of a timeline's history: LSNs `(from, to]` belong to `timeline`.
#[derive(Debug, Clone, Copy)]
pub struct HistorySegment {
    pub timeline: TimelineId,
    pub from: Lsn,
    pub to: Lsn,
}

/// Checks a user-chosen name (cluster, branch).
pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Error::Refused(format!(
            "'{name}' is not a valid {kind} name: use 1 to 63 lowercase letters, digits, '-' or \
             '_', starting with a letter or digit"
        )))
    }
}

impl Engine {
    pub async fn open(opts: EngineOptions) -> Result<Engine> {
        let mut home = Home::open(&opts.home)?;
        let url = opts
            .catalog_url
            .clone()
            .unwrap_or_else(|| Catalog::sqlite_url(&home.root));
        let catalog = Catalog::open(&url).await?;
        let user = OsUser::for_postgres()?;
        if user.check_reachable(&home.computes).is_err() {
            home.relocate_computes()?;
        }
        Ok(Engine {
            home,
            catalog,
            user,
            pg_bin: opts.pg_bin,
            bins: OnceLock::new(),
            wal_events: WalEvents::default(),
        })
    }

    /// PostgreSQL's binaries, located on first use.
    pub fn bins(&self) -> Result<&PgBinaries> {
        if let Some(b) = self.bins.get() {
            return Ok(b);
        }
        let b = PgBinaries::locate(self.pg_bin.as_deref())?;
        Ok(self.bins.get_or_init(|| b))
    }

    /// The binaries, checked against a cluster's major version.
    pub fn bins_for(&self, cluster: &ClusterRow) -> Result<&PgBinaries> {
        let b = self.bins()?;
        if b.major != cluster.pg_major {
            return Err(Error::Refused(format!(
                "cluster '{}' is PostgreSQL {}, but the binaries in {} are PostgreSQL {}; point \
                 --pg-bin at PostgreSQL {} binaries",
                cluster.name,
                cluster.pg_major,
                b.bindir.display(),
                b.major,
                cluster.pg_major
            )));
        }
        Ok(b)
    }

    /// The named cluster, or the only one when no name is given.
    pub async fn resolve_cluster(&self, name: Option<&str>) -> Result<ClusterRow> {
        match name {
            Some(n) => self.catalog.cluster_by_name(n).await?.ok_or_else(|| {
                Error::not_found(
                    format!("cluster '{n}'"),
                    "list clusters with `cairn cluster list`",
                )
            }),
            None => {
                let all = self.catalog.clusters().await?;
                match all.len() {
                    1 => Ok(all.into_iter().next().expect("one")),
                    0 => Err(Error::not_found(
                        "any cluster",
                        "create one with `cairn cluster create NAME` or `cairn cluster adopt`",
                    )),
                    _ => Err(Error::Refused(format!(
                        "there are several clusters ({}); say which with --cluster",
                        all.iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))),
                }
            }
        }
    }

    /// A branch and its timeline.
    pub async fn resolve_branch(
        &self,
        cluster: &ClusterRow,
        name: &str,
    ) -> Result<(BranchRow, TimelineRow)> {
        let b = match self.catalog.branch(cluster.id, name).await? {
            Some(b) => b,
            None => {
                let names: Vec<String> = self
                    .catalog
                    .branches(cluster.id)
                    .await?
                    .into_iter()
                    .map(|b| b.name)
                    .collect();
                return Err(Error::not_found(
                    format!("branch '{name}' in cluster '{}'", cluster.name),
                    format!("its branches are: {}", names.join(", ")),
                ));
            }
        };
        let t = self.catalog.timeline(b.timeline_id).await?;
        Ok((b, t))
    }

    /// The layer map of a cluster, from the catalog.
    pub async fn layer_map(&self, cluster: &ClusterRow) -> Result<LayerMap> {
        let tls = self.catalog.timelines(cluster.id).await?;
        let layers = self.catalog.layers(cluster.id).await?;
        Ok(layer_map_of(&tls, &layers))
    }

    pub fn layer_path(&self, l: &LayerRow) -> PathBuf {
        self.home
            .layer_path(l.cluster_id, l.timeline_id, l.kind, l.id)
    }

    /// The history of `tl` up to `x`, nearest timeline first, as catalog rows.
    pub async fn history(&self, tl: &TimelineRow, x: Lsn) -> Result<Vec<HistorySegment>> {
        let mut out = Vec::new();
        let mut cur = tl.clone();
        let mut upper = x;
        loop {
            if out.len() > 10_000 {
                return Err(Error::corrupt("catalog", "timeline ancestry has a loop"));
            }
            match cur.ancestor {
                Some((parent, at)) => {
                    let lower = at.min(upper);
                    out.push(HistorySegment {
                        timeline: cur.id,
                        from: lower,
                        to: upper,
                    });
                    upper = lower;
                    cur = self.catalog.timeline(parent).await?;
                }
                None => {
                    out.push(HistorySegment {
                        timeline: cur.id,
                        from: Lsn(0),
                        to: upper,
                    });
                    return Ok(out);
                }
            }
        }
    }

    /// Image layers on the ancestry of `tl` (oldest first), the deduplication scope.
    pub async fn ancestry_images(&self, tl: &TimelineRow) -> Result<Vec<(LayerId, PathBuf)>> {
        let hist = self.history(tl, tl.head).await?;
        let mut out = Vec::new();
        for seg in hist.iter().rev() {
            for l in self.catalog.timeline_layers(seg.timeline).await? {
                if l.kind == LayerKind::Image {
                    out.push((l.id, self.layer_path(&l)));
                }
            }
        }
        Ok(out)
    }

    /// Describes why a point is not reconstructible, with the windows that are.
    pub fn explain(
        &self,
        map: &LayerMap,
        what: &str,
        tl: TimelineId,
        e: Unreconstructible,
    ) -> Error {
        let windows = map.reconstructible_windows(tl);
        let w = if windows.is_empty() {
            "no point of it is reconstructible".to_string()
        } else {
            format!(
                "reconstructible: {}",
                windows
                    .iter()
                    .map(|(a, b)| format!("{a} to {b}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Error::Unreconstructible {
            what: what.to_string(),
            cause: e,
            windows: w,
        }
    }

    /// Path of a compute's data directory.
    pub fn compute_datadir(&self, tl: TimelineId) -> PathBuf {
        self.home.compute_dir(tl).join("pgdata")
    }
}

/// Builds a layer map from catalog rows.
pub fn layer_map_of(tls: &[TimelineRow], layers: &[LayerRow]) -> LayerMap {
    LayerMap::new(
        tls.iter().map(|t| TimelineDesc {
            id: t.id,
            ancestor: t.ancestor,
            head: t.head,
        }),
        layers
            .iter()
            .filter(|l| l.kind == LayerKind::Image)
            .map(|l| ImageDesc {
                id: l.id,
                timeline: l.timeline_id,
                start: l.start,
                end: l.end,
            }),
        layers
            .iter()
            .filter(|l| l.kind == LayerKind::Wal)
            .map(|l| WalDesc {
                id: l.id,
                timeline: l.timeline_id,
                start: l.start,
                end: l.end,
            }),
    )
}

pub use cairn_units::fmt_time;

/// Removes a directory tree if it exists.
pub fn remove_tree(p: &Path) -> Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::path("remove", p, e)),
    }
}
