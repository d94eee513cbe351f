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
        chown_tree_at(path, r.uid, r.gid)
    }

    /// Before root writes into a tree this user owns (a delta restore over an earlier
    /// restore): takes it over, so that this user can no longer swap a path for a link while
    /// root writes through it, and checks nothing was left behind. A no-op without root.
    pub fn take_over_tree(&self, path: &Path) -> Result<()> {
        if self.run_as.is_none() {
            return Ok(());
        }
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        chown_tree_at(path, uid, gid)?;
        check_owned_tree(path, uid)
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

/// An open directory, walked by file descriptor: nothing a concurrent writer does to the
/// paths (a directory swapped for a symbolic link) redirects the walk.
struct DirFd(std::os::fd::OwnedFd);

impl DirFd {
    /// Opens directory `name` of `parent` (or the path itself), never through a link.
    fn open(parent: Option<&DirFd>, name: &std::ffi::OsStr) -> std::io::Result<DirFd> {
        use std::os::fd::{AsRawFd, FromRawFd};
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(name.as_bytes())
            .map_err(|_| std::io::Error::other("a name holds a NUL byte"))?;
        let at = parent.map_or(libc::AT_FDCWD, |p| p.0.as_raw_fd());
        // SAFETY: a valid C string and directory descriptor; the result is checked.
        let fd = unsafe {
            libc::openat(
                at,
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor just returned to us, owned from here on.
        Ok(DirFd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    fn entries(&self) -> std::io::Result<Vec<std::ffi::OsString>> {
        use std::os::fd::AsRawFd;
        std::fs::read_dir(format!("/proc/self/fd/{}", self.0.as_raw_fd()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }

    /// Owner of entry `name`, not following a link.
    fn owner_of(&self, name: &std::ffi::OsStr) -> std::io::Result<u32> {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(name.as_bytes())
            .map_err(|_| std::io::Error::other("a name holds a NUL byte"))?;
        // SAFETY: zeroed stat is a valid out-parameter.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor, C string and out-parameter.
        let r = unsafe {
            libc::fstatat(
                self.0.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(st.st_uid)
    }

    fn chown_entry(&self, name: &std::ffi::OsStr, uid: u32, gid: u32) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(name.as_bytes())
            .map_err(|_| std::io::Error::other("a name holds a NUL byte"))?;
        // SAFETY: valid descriptor and C string; AT_SYMLINK_NOFOLLOW changes a link itself.
        let r = unsafe {
            libc::fchownat(
                self.0.as_raw_fd(),
                c.as_ptr(),
                uid,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Changes the owner of `path` and everything under it, never following a symbolic link,
/// walking by directory descriptors (a tree another user writes to cannot redirect it).
pub fn chown_tree_at(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).ctx("chown", path)?;
    let dir = match DirFd::open(None, path.as_os_str()) {
        Ok(d) => d,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP)) => {
            return Ok(());
        }
        Err(e) => return Err(e).ctx("open directory", path),
    };
    walk_chown(&dir, path, uid, gid)
}

fn walk_chown(dir: &DirFd, path: &Path, uid: u32, gid: u32) -> Result<()> {
    for name in dir.entries().ctx("read directory", path)? {
        let p = path.join(&name);
        match dir.chown_entry(&name, uid, gid) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e).ctx("chown", &p),
        }
        match DirFd::open(Some(dir), &name) {
            Ok(child) => walk_chown(&child, &p, uid, gid)?,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOTDIR) | Some(libc::ELOOP) | Some(libc::ENOENT)
                ) => {}
            Err(e) => return Err(e).ctx("open directory", &p),
        }
    }
    Ok(())
}

/// Checks that every entry below `path` belongs to `uid` (not following links): after a tree
/// was taken over, nothing another user still owns is left in it.
pub fn check_owned_tree(path: &Path, uid: u32) -> Result<()> {
    let dir = DirFd::open(None, path.as_os_str()).ctx("open directory", path)?;
    walk_check(&dir, path, uid)
}

fn walk_check(dir: &DirFd, path: &Path, uid: u32) -> Result<()> {
    for name in dir.entries().ctx("read directory", path)? {
        let p = path.join(&name);
        if dir.owner_of(&name).ctx("stat", &p)? != uid {
            return Err(Error::Refused(format!(
                "{} changed owner while cairn took the directory over: another process writes \
                 to it; stop it and try again",
                p.display()
            )));
        }
        if let Ok(child) = DirFd::open(Some(dir), &name) {
            walk_check(&child, &p, uid)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn chowning_a_tree_never_follows_a_link_out_of_it() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: changing owners needs root (CI runs as root)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, b"root's").unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("sub/f"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();
        std::os::unix::fs::symlink(d.path(), tree.join("sub/up")).unwrap();
        chown_tree_at(&tree, 4242, 4242).unwrap();
        assert_eq!(std::fs::metadata(tree.join("sub/f")).unwrap().uid(), 4242);
        assert_eq!(
            std::fs::symlink_metadata(tree.join("link")).unwrap().uid(),
            4242
        );
        assert_eq!(
            std::fs::metadata(&outside).unwrap().uid(),
            0,
            "followed a link"
        );
        assert_eq!(
            std::fs::metadata(d.path()).unwrap().uid(),
            0,
            "followed a link"
        );
        // Taken back: everything is root's again, and the check sees a stranger.
        chown_tree_at(&tree, 0, 0).unwrap();
        check_owned_tree(&tree, 0).unwrap();
        std::os::unix::fs::lchown(tree.join("sub/f"), Some(4242), None).unwrap();
        let e = check_owned_tree(&tree, 0).unwrap_err().to_string();
        assert!(e.contains("changed owner"), "{e}");
    }
}
