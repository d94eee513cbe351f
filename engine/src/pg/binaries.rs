//! Locating PostgreSQL's server binaries (DESIGN.md principle 1: from an explicit directory,
//! `pg_config`, `PATH` or the distribution's standard places — never bundled).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct PgBinaries {
    pub bindir: PathBuf,
    pub major: u32,
    /// What `postgres --version` printed.
    pub version: String,
}

const NEEDED: &[&str] = &["postgres", "initdb", "pg_ctl", "pg_controldata"];

impl PgBinaries {
    /// Finds the binaries: `explicit` (from `--pg-bin` or `CAIRN_PG_BIN`) if given, else
    /// `pg_config --bindir`, else `initdb` on `PATH`, else `/usr/lib/postgresql/*/bin` and
    /// `/usr/pgsql-*/bin` (newest first).
    pub fn locate(explicit: Option<&Path>) -> Result<PgBinaries> {
        if let Some(dir) = explicit {
            return Self::at(dir).map_err(|why| {
                Error::Refused(format!(
                    "PostgreSQL server binaries not found in {} ({why}); point --pg-bin (or \
                     CAIRN_PG_BIN) at the directory holding postgres and initdb, e.g. \
                     /usr/lib/postgresql/15/bin",
                    dir.display()
                ))
            });
        }
        let mut tried = Vec::new();
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            if out.status.success() {
                candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                let initdb = dir.join("initdb");
                if initdb.exists() {
                    // Distributions often symlink a few binaries into PATH: follow the link to
                    // the directory that has all of them.
                    match std::fs::canonicalize(&initdb) {
                        Ok(real) => candidates.push(real.parent().unwrap_or(&dir).to_path_buf()),
                        Err(_) => candidates.push(dir),
                    }
                }
            }
        }
        let mut versioned: Vec<(u32, PathBuf)> = Vec::new();
        for root in ["/usr/lib/postgresql", "/usr/local/pgsql"] {
            if let Ok(rd) = std::fs::read_dir(root) {
                for e in rd.flatten() {
                    if let Ok(v) = e.file_name().to_string_lossy().parse::<u32>() {
                        versioned.push((v, e.path().join("bin")));
                    }
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir("/usr") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(v) = name.strip_prefix("pgsql-").and_then(|v| v.parse().ok()) {
                    versioned.push((v, e.path().join("bin")));
                }
            }
        }
        versioned.sort_by_key(|v| std::cmp::Reverse(v.0));
        candidates.extend(versioned.into_iter().map(|(_, p)| p));
        for dir in candidates {
            match Self::at(&dir) {
                Ok(b) => return Ok(b),
                Err(why) => tried.push(format!("{} ({why})", dir.display())),
            }
        }
        Err(Error::Refused(format!(
            "PostgreSQL server binaries (postgres, initdb, pg_ctl) not found; looked at: {}. \
             Install them (Debian/Ubuntu: apt-get install postgresql-15) or pass --pg-bin DIR",
            if tried.is_empty() {
                "pg_config, PATH, /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin".to_string()
            } else {
                tried.join(", ")
            }
        )))
    }

    fn at(dir: &Path) -> std::result::Result<PgBinaries, String> {
        for b in NEEDED {
            if !dir.join(b).is_file() {
                return Err(format!("no {b}"));
            }
        }
        let out = Command::new(dir.join("postgres"))
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run postgres --version: {e}"))?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let major =
            parse_major(&version).ok_or_else(|| format!("unrecognised version '{version}'"))?;
        if !(14..=17).contains(&major) {
            return Err(format!(
                "PostgreSQL {major} is not supported (cairn supports 14 to 17)"
            ));
        }
        Ok(PgBinaries {
            bindir: dir.to_path_buf(),
            major,
            version,
        })
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    /// Checks that an optional client binary (pg_basebackup, pg_dump...) is present.
    pub fn require(&self, name: &str) -> Result<PathBuf> {
        let p = self.bin(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(Error::Refused(format!(
                "{name} is missing from {}; install the full PostgreSQL {} server package",
                self.bindir.display(),
                self.major
            )))
        }
    }
}

/// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" → 15.
pub fn parse_major(version: &str) -> Option<u32> {
    let after = version.split(')').nth(1)?.trim();
    let num = after.split(|c: char| !c.is_ascii_digit()).next()?;
    num.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(
            parse_major("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 17beta1"), Some(17));
        assert_eq!(parse_major("garbage"), None);
    }

    #[test]
    fn explicit_missing_directory_is_a_clear_error() {
        let e = PgBinaries::locate(Some(Path::new("/nonexistent/pg"))).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/pg"), "{msg}");
        assert!(msg.contains("--pg-bin"), "{msg}");
    }
}
