//! Servers a killed process left running: a restore, an export or a verification that was
//! killed (kill -9) leaves the PostgreSQL it started on its scratch data directory running,
//! holding a port and a socket. Before such a directory is removed, its server is stopped.
//!
//! Invariants:
//! - Only a process whose pid the directory's `postmaster.pid` names *and* whose working
//!   directory is that data directory is signalled (a postmaster works in its data directory;
//!   a recycled pid does not), so no other process is ever touched.
//! - Immediate shutdown (SIGQUIT), then SIGKILL if it is still there after 10 s: the data
//!   directory is scratch and about to be removed.
//! - The private socket directory it named (`unix_socket_directories` in `postmaster.opts`) is
//!   removed too when it is one of Cairn's (`TMPDIR/cairn-restore-*`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The pid of the postmaster running on `datadir`, if one runs.
pub fn running_postmaster(datadir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(datadir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()?;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    let dir = std::fs::canonicalize(datadir).ok()?;
    (cwd == dir).then_some(pid)
}

/// The private socket directory `datadir`'s last start named, when it is one of Cairn's.
fn private_socket_dir(datadir: &Path) -> Option<PathBuf> {
    let opts = std::fs::read_to_string(datadir.join("postmaster.opts")).ok()?;
    // The last one counts (the server's defaults come first, the caller's after).
    let at = opts.rfind("unix_socket_directories=")?;
    let rest = &opts[at + "unix_socket_directories=".len()..];
    let value = rest
        .trim_start_matches('"')
        .split(['"', ' ', '\n'])
        .next()?;
    let p = PathBuf::from(value);
    let tmp = std::env::temp_dir();
    let ours = p.parent() == Some(tmp.as_path())
        && p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("cairn-restore-"));
    ours.then_some(p)
}

/// Stops the server a killed process left on `datadir` (see the module's invariants).
/// Returns whether one was running.
pub fn stop_leftover(datadir: &Path) -> bool {
    let socket = private_socket_dir(datadir);
    let Some(pid) = running_postmaster(datadir) else {
        if let Some(s) = socket {
            let _ = std::fs::remove_dir_all(s);
        }
        return false;
    };
    tracing::info!(datadir = %datadir.display(), pid, "stopping a server a killed process left");
    // SAFETY: kill has no memory preconditions; `pid` is the postmaster checked above.
    unsafe { libc::kill(pid, libc::SIGQUIT) };
    let started = Instant::now();
    let gone = |pid: i32| !Path::new(&format!("/proc/{pid}")).exists() || zombie(pid);
    while !gone(pid) && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !gone(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let started = Instant::now();
        while !gone(pid) && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if let Some(s) = socket {
        let _ = std::fs::remove_dir_all(s);
    }
    true
}

/// Whether `pid` has exited but was not reaped yet.
fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}
