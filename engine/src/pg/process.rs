//! Running PostgreSQL programs, as the `postgres` OS user when Cairn runs as root
//! (PostgreSQL refuses to run as root).

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, IoContext, Result};

/// The identity PostgreSQL programs run under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone)]
pub struct OsUser {
    pub run_as: Option<RunAs>,
    pub home: Option<PathBuf>,
    pub name: String,
}

impl OsUser {
    /// `postgres` when running as root, else the current user.
    pub fn for_postgres() -> Result<OsUser> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(OsUser {
                run_as: None,
                home: None,
                name: std::env::var("USER").unwrap_or_else(|_| "current user".into()),
            });
        }
        let name = CString::new("postgres").expect("no NUL");
        // SAFETY: getpwnam returns NULL or a pointer to static storage valid until the next
        // call; we copy what we need immediately.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if pw.is_null() {
            return Err(Error::Refused(
                "cairn runs as root, and PostgreSQL refuses to run as root, but there is no \
                 'postgres' OS user to run it as; create one (useradd --system postgres) or run \
                 cairn as an ordinary user"
                    .into(),
            ));
        }
        // SAFETY: pw is non-null and points to a valid passwd struct.
        let (uid, gid, home) = unsafe {
            let p = &*pw;
            let dir = std::ffi::CStr::from_ptr(p.pw_dir)
                .to_string_lossy()
                .into_owned();
            (p.pw_uid, p.pw_gid, dir)
        };
        Ok(OsUser {
            run_as: Some(RunAs { uid, gid }),
            home: Some(PathBuf::from(home)),
            name: "postgres".into(),
        })
    }

    /// A command that runs `program` as this user, with a clean PostgreSQL environment.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("PG") {
                c.env_remove(k.as_ref());
            }
        }
        c.env("LC_ALL", "C");
        if let Some(r) = self.run_as {
            // std drops root's supplementary groups (setgroups(0)) before switching uid.
            c.uid(r.uid).gid(r.gid);
            if let Some(h) = &self.home {
                c.env("HOME", h);
            }
        }
        c
    }

    /// Hands `path` (and everything under it) to this user.
    pub fn chown_tree(&self, path: &Path) -> Result<()> {
        let Some(r) = self.run_as else {
            return Ok(());
        };
        chown_tree(path, r.uid, r.gid)
    }

    pub fn chown(&self, path: &Path) -> Result<()> {
        if let Some(r) = self.run_as {
            std::os::unix::fs::chown(path, Some(r.uid), Some(r.gid)).ctx("chown", path)?;
        }
        Ok(())
    }

    /// Checks that this user can reach `dir` (every parent must be searchable), so that a
    /// server started there will not fail obscurely.
    pub fn check_reachable(&self, dir: &Path) -> Result<()> {
        let Some(r) = self.run_as else {
            return Ok(());
        };
        let mut cur = PathBuf::new();
        for comp in dir.components() {
            cur.push(comp);
            let Ok(md) = std::fs::metadata(&cur) else {
                break;
            };
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let mode = md.permissions().mode();
            let ok = if md.uid() == r.uid {
                mode & 0o100 != 0
            } else if md.gid() == r.gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !ok {
                return Err(Error::Refused(format!(
                    "the postgres OS user cannot reach {} (no search permission on {}); use a \
                     --home outside private directories such as /root, or run chmod o+x {}",
                    dir.display(),
                    cur.display(),
                    cur.display()
                )));
            }
        }
        Ok(())
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).ctx("chown", path)?;
    let md = std::fs::symlink_metadata(path).ctx("stat", path)?;
    if md.is_dir() {
        for e in std::fs::read_dir(path).ctx("read directory", path)? {
            let e = e.ctx("read directory", path)?;
            chown_tree(&e.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Runs a command to completion; a failure carries its stderr.
pub fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| Error::postgres(what.to_string(), format!("cannot start: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let so = String::from_utf8_lossy(&out.stdout);
        return Err(Error::postgres(
            what.to_string(),
            format!("{} {}", err.trim(), so.trim()).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
