//! The data directory (`--home`): where everything an appliance owns lives.
//!
//! ```text
//! HOME/                      0711: the postgres OS user may traverse to computes/, nothing else
//!   catalog.db               embedded SQLite catalog (unless --catalog points elsewhere)
//!   layers/CLUSTER/TIMELINE/ immutable layer files, named by SHA-256
//!   computes/TIMELINE/       a running compute: pgdata/ (owned by postgres), postgres.log
//!   secrets/                 0700: per-cluster superuser passwords, 0600 each
//!   locks/                   advisory lock files (flock)
//!   spool/CLUSTER/           WAL received from adopted clusters, not yet in a layer
//! ```
//!
//! When Cairn runs as root and the postgres OS user cannot reach `HOME` (a home under `/root`,
//! say), computes live in `/var/lib/cairn/computes/<hash of HOME>/` instead; see
//! [`Home::relocate_computes`].

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::ids::{ClusterId, LayerId, TimelineId};
use crate::layer::file::{file_name, LayerKind};

#[derive(Debug, Clone)]
pub struct Home {
    pub root: PathBuf,
    /// Where compute data directories live (normally `HOME/computes`).
    pub computes: PathBuf,
}

impl Home {
    /// Opens `root`, creating the layout on first use.
    pub fn open(root: &Path) -> Result<Home> {
        let root = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| Error::io("read current directory", e))?
                .join(root)
        };
        // "/work/./cairn-data" -> "/work/cairn-data" (for messages and hashes).
        let root: PathBuf = root
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect();
        let fresh = !root.exists();
        fsutil::create_dir_mode(&root, 0o711).ctx("create data directory", &root)?;
        for (d, mode) in [
            ("layers", 0o700),
            ("computes", 0o711),
            ("secrets", 0o700),
            ("locks", 0o700),
            ("spool", 0o700),
        ] {
            let p = root.join(d);
            if !p.exists() {
                fsutil::create_dir_mode(&p, mode).ctx("create directory", &p)?;
            }
        }
        if fresh {
            tracing::debug!(home = %root.display(), "created data directory");
        }
        let computes = root.join("computes");
        Ok(Home { root, computes })
    }

    /// Moves the computes of this home to `/var/lib/cairn/computes/<hash>` (for a home the
    /// postgres OS user cannot reach).
    pub fn relocate_computes(&mut self) -> Result<()> {
        use sha2::{Digest, Sha256};
        let h = hex::encode(&Sha256::digest(self.root.to_string_lossy().as_bytes())[..8]);
        let base = Path::new("/var/lib/cairn");
        let dir = base.join("computes").join(h);
        for d in [base.to_path_buf(), base.join("computes"), dir.clone()] {
            if !d.exists() {
                fsutil::create_dir_mode(&d, 0o711).ctx("create directory", &d)?;
            }
        }
        tracing::info!(
            dir = %dir.display(),
            "the postgres OS user cannot reach the data directory: computes live elsewhere"
        );
        self.computes = dir;
        Ok(())
    }

    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    pub fn cluster_dir(&self, c: ClusterId) -> PathBuf {
        self.layers_dir().join(c.to_string())
    }

    pub fn timeline_dir(&self, c: ClusterId, t: TimelineId) -> PathBuf {
        self.cluster_dir(c).join(t.to_string())
    }

    pub fn layer_path(&self, c: ClusterId, t: TimelineId, kind: LayerKind, id: LayerId) -> PathBuf {
        self.timeline_dir(c, t).join(file_name(kind, id))
    }

    pub fn compute_dir(&self, t: TimelineId) -> PathBuf {
        self.computes.join(t.to_string())
    }

    pub fn spool_dir(&self, c: ClusterId) -> PathBuf {
        self.root.join("spool").join(c.to_string())
    }

    pub(crate) fn secret_path(&self, c: ClusterId, what: &str) -> PathBuf {
        self.root.join("secrets").join(format!("{c}.{what}"))
    }

    /// Stores a secret (mode 0600).
    pub fn write_secret(&self, c: ClusterId, what: &str, value: &str) -> Result<()> {
        let p = self.secret_path(c, what);
        fsutil::write_atomic(&p, value.as_bytes(), 0o600).ctx("write secret", &p)
    }

    pub fn read_secret(&self, c: ClusterId, what: &str) -> Result<String> {
        let p = self.secret_path(c, what);
        fs::read_to_string(&p)
            .map(|s| s.trim().to_string())
            .map_err(|e| {
                Error::Refused(format!(
                    "cannot read the {what} of cluster {c} from {}: {e}; the data directory is \
                     incomplete (was secrets/ copied?)",
                    p.display()
                ))
            })
    }

    pub fn remove_secrets(&self, c: ClusterId) {
        for what in ["password", "source-password", "owner-password"] {
            let _ = fs::remove_file(self.secret_path(c, what));
        }
    }

    /// Takes the exclusive lock named `name`, waiting up to `wait`.
    pub fn lock(&self, name: &str, what: &str, wait: Duration) -> Result<LockGuard> {
        let path = self.root.join("locks").join(format!("{name}.lock"));
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .ctx("open lock file", &path)?;
        let deadline = Instant::now() + wait;
        loop {
            match f.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) => {
                    if Instant::now() >= deadline {
                        return Err(Error::Busy(what.to_string()));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(fs::TryLockError::Error(e)) => return Err(Error::path("lock", &path, e)),
            }
        }
        let _ = f.set_len(0);
        let _ = writeln!(f, "{}", std::process::id());
        Ok(LockGuard { _file: f })
    }

    fn scratch_lock_name(area: &str, name: &str) -> String {
        format!("scratch-{area}-{name}")
    }

    /// Creates `HOME/area/name` (the area with `area_mode`, the directory with `mode`) and
    /// locks it for the life of the returned guard.
    pub fn scratch_dir(
        &self,
        area: &str,
        name: &str,
        area_mode: u32,
        mode: u32,
    ) -> Result<ScratchDir> {
        let root = self.root.join(area);
        fsutil::create_dir_mode(&root, area_mode).ctx("create directory", &root)?;
        let lock = self.lock(
            &Self::scratch_lock_name(area, name),
            "a scratch directory",
            Duration::ZERO,
        )?;
        let path = root.join(name);
        fs::create_dir(&path).ctx("create directory", &path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).ctx("set mode", &path)?;
        Ok(ScratchDir {
            path,
            _lock: lock,
            kept: false,
        })
    }

    /// Removes the scratch directories of restores, exports and verifications that no longer
    /// run (their process was killed), first stopping a server still running on one
    /// ([`crate::pg::leftover`]): plaintext is never left behind for longer than until the
    /// next `cairn up`, restore, export or verification. Returns how many were removed.
    /// Kept copies ([`crate::kept`]) stay until their deadline.
    pub fn sweep_scratch(&self) -> usize {
        let now_us = crate::catalog::now_us();
        let mut removed = 0;
        for area in SCRATCH_AREAS {
            for e in fs::read_dir(self.root.join(area))
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = e.file_name().to_string_lossy().into_owned();
                if !e.path().is_dir() || name.starts_with('.') {
                    continue;
                }
                if self.remove_scratch(area, &name, Some(now_us)) {
                    removed += 1;
                }
            }
            // Markers whose copy is gone.
            for e in fs::read_dir(self.root.join(area))
                .into_iter()
                .flatten()
                .flatten()
            {
                let file = e.file_name().to_string_lossy().into_owned();
                if let Some(dir) = crate::kept::dir_name_of_marker(&file) {
                    if !self.root.join(area).join(dir).exists() {
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
        }
        removed
    }

    /// Removes every kept copy of `owner` in `area` whatever its deadline (a newer run
    /// replaces it). Returns how many went.
    pub fn release_kept(&self, area: &str, owner: &str) -> usize {
        let mut removed = 0;
        for e in fs::read_dir(self.root.join(area))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !e.path().is_dir() {
                continue;
            }
            if crate::kept::read(&e.path()).is_some_and(|k| k.owner == owner)
                && self.remove_scratch(area, &name, None)
            {
                removed += 1;
            }
        }
        removed
    }

    /// Removes scratch directory `HOME/area/name` and its marker unless a live process holds
    /// it or (with `unless_kept_at`) it is kept at that time, stopping a server still running
    /// there first. Whether it went.
    fn remove_scratch(&self, area: &str, name: &str, unless_kept_at: Option<i64>) -> bool {
        let Ok(_g) = self.lock(
            &Self::scratch_lock_name(area, name),
            "a scratch directory",
            Duration::ZERO,
        ) else {
            return false; // in use
        };
        let path = self.root.join(area).join(name);
        // Under the lock: a run writes its marker before it lets go.
        if unless_kept_at.is_some_and(|now| crate::kept::is_kept(&path, now)) {
            return false;
        }
        // A data directory the killed process had started a server on.
        crate::pg::leftover::stop_leftover(&path);
        match fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(dir = %path.display(), "removed a scratch directory (left by a killed process, or kept until now)");
                if let Some(m) = crate::kept::marker_path(&path) {
                    let _ = fs::remove_file(m);
                }
                let _ = fs::remove_file(
                    self.root
                        .join("locks")
                        .join(format!("{}.lock", Self::scratch_lock_name(area, name))),
                );
                true
            }
            Err(err) => {
                tracing::warn!(dir = %path.display(), error = %err, "could not remove a scratch directory");
                false
            }
        }
    }

    /// Lock serialising all changes to one timeline (its layers, head and compute).
    pub fn lock_timeline(&self, t: TimelineId, what: &str) -> Result<LockGuard> {
        self.lock(&format!("timeline-{t}"), what, Duration::from_secs(600))
    }

    pub fn try_lock_timeline(&self, t: TimelineId) -> Option<LockGuard> {
        self.lock(&format!("timeline-{t}"), "timeline", Duration::ZERO)
            .ok()
    }

    /// Lock serialising cluster-wide changes (creation, deletion, branch tree edits).
    pub fn lock_cluster(&self, c: ClusterId, what: &str) -> Result<LockGuard> {
        self.lock(&format!("cluster-{c}"), what, Duration::from_secs(600))
    }

    /// Lock serialising changes to the list of clusters (creating a name).
    pub fn lock_clusters(&self) -> Result<LockGuard> {
        self.lock("clusters", "the cluster list", Duration::from_secs(600))
    }
}

/// Held while a lock is owned; released on drop (or when the process dies).
pub struct LockGuard {
    _file: File,
}

/// Where plaintext lives while a restore, an export or a verification runs.
pub const SCRATCH_AREAS: [&str; 3] = ["restore", "export", "verify"];

/// A directory holding plaintext for the life of one restore or export (a staging area, a
/// dump, a scratch data directory): created under `HOME/AREA/`, locked while it lives, removed
/// when dropped. One that a killed process left behind has a free lock, and
/// [`Home::sweep_scratch`] removes it.
pub struct ScratchDir {
    pub path: PathBuf,
    _lock: LockGuard,
    kept: bool,
}

impl ScratchDir {
    /// Leaves the directory in place for `owner` until `until_us` ([`crate::kept`]): the
    /// marker is made durable before the lock goes. On error the directory is removed as if
    /// dropped.
    pub fn keep(mut self, owner: &str, until_us: i64) -> Result<PathBuf> {
        let marker = crate::kept::marker_path(&self.path)
            .ok_or_else(|| Error::Refused(format!("{} has no parent", self.path.display())))?;
        let body = serde_json::to_vec(&crate::kept::Kept {
            format: crate::kept::FORMAT,
            owner: owner.to_string(),
            until_us,
        })
        .map_err(|e| Error::io("encode a kept marker", std::io::Error::other(e)))?;
        fsutil::write_atomic(&marker, &body, 0o600).ctx("write", &marker)?;
        self.kept = true;
        Ok(self.path.clone())
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.path.display(), error = %e, "could not remove a scratch directory");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_directories_live_while_locked_and_are_swept_after() {
        let d = tempfile::tempdir().unwrap();
        let home = Home::open(d.path()).unwrap();
        let live = home
            .scratch_dir("restore", "staging-live", 0o700, 0o700)
            .unwrap();
        std::fs::write(live.path.join("plain"), b"plaintext").unwrap();
        // What a killed export left: a directory nobody holds the lock of.
        let dead = d.path().join("export/work-dead");
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::write(dead.join("dump"), b"plaintext").unwrap();
        assert_eq!(home.sweep_scratch(), 1);
        assert!(!dead.exists(), "the dead one is gone");
        assert!(live.path.join("plain").exists(), "the live one is kept");
        let p = live.path.clone();
        drop(live);
        assert!(!p.exists(), "removed when dropped");
    }

    #[test]
    fn kept_copies_stay_until_their_deadline_one_per_owner() {
        let d = tempfile::tempdir().unwrap();
        let home = Home::open(d.path()).unwrap();
        let now = crate::catalog::now_us();
        let keep = |name: &str, owner: &str, until_us: i64| {
            let s = home.scratch_dir("verify", name, 0o711, 0o700).unwrap();
            std::fs::write(s.path.join("PG_VERSION"), b"15").unwrap();
            s.keep(owner, until_us).unwrap()
        };
        let shop = keep("data-shop", "shop", now + 3_600_000_000);
        let old = keep("data-old", "blog", now - 1);
        let blog = keep("data-blog", "blog", now + 3_600_000_000);
        assert!(
            shop.join("PG_VERSION").exists(),
            "kept, not removed on drop"
        );
        assert_eq!(home.sweep_scratch(), 1, "only the expired one");
        assert!(!old.exists());
        assert!(!d.path().join("verify/.kept-data-old.json").exists());
        assert!(shop.exists() && blog.exists());

        // A newer run of the same owner replaces the kept copy; others stay.
        assert_eq!(home.release_kept("verify", "blog"), 1);
        assert!(!blog.exists() && shop.exists());
        assert!(!d.path().join("verify/.kept-data-blog.json").exists());

        // A live run's directory is never released, kept marker or not.
        let live = home
            .scratch_dir("verify", "data-live", 0o711, 0o700)
            .unwrap();
        std::fs::write(
            crate::kept::marker_path(&live.path).unwrap(),
            format!(r#"{{"format":1,"owner":"shop","until_us":{}}}"#, now - 1),
        )
        .unwrap();
        assert_eq!(home.release_kept("verify", "shop"), 1, "only the kept one");
        assert!(live.path.exists());
        // A marker left without its directory goes with the next sweep.
        let orphan = d.path().join("verify/.kept-data-gone.json");
        std::fs::write(&orphan, b"{}").unwrap();
        home.sweep_scratch();
        assert!(!orphan.exists());
        assert!(live.path.exists(), "still in use");
    }
}
