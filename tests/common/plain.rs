//! PostgreSQL servers a test starts itself with `pg_ctl` (adopt sources, restored copies), not
//! through cairn: on a free port of 127.0.0.1, stopped when dropped.

use std::path::{Path, PathBuf};

use super::{chown_postgres, free_port, pg_command};

/// Starts PostgreSQL on `datadir` with `pg_ctl` (as the postgres OS user when root), with the
/// server options `opts` and a free port of 127.0.0.1, logging to `log`; returns the port. A
/// port is free when chosen: if another process binds it before the server does, the server
/// fails to bind and another port is chosen (up to five tries).
#[track_caller]
pub fn pg_ctl_start(datadir: &Path, log: &Path, opts: &str) -> u16 {
    for attempt in 1.. {
        let port = free_port();
        std::fs::write(log, b"").unwrap();
        chown_postgres(log);
        let out = pg_command("pg_ctl")
            .arg("start")
            .arg("-D")
            .arg(datadir)
            .args(["-w", "-l"])
            .arg(log)
            .arg("-o")
            .arg(format!("-c port={port} {opts}"))
            .output()
            .unwrap();
        let log_text = std::fs::read_to_string(log).unwrap_or_default();
        if !out.status.success() && log_text.contains("could not bind") && attempt < 5 {
            continue;
        }
        assert!(
            out.status.success(),
            "start {}: {}\n{log_text}",
            datadir.display(),
            String::from_utf8_lossy(&out.stderr),
        );
        return port;
    }
    unreachable!("the loop returns or panics")
}

/// A plain data directory, started by the test with pg_ctl (not by cairn).
pub struct Plain {
    pub dir: PathBuf,
    pub port: u16,
}

impl Plain {
    pub fn start(dir: &Path) -> Plain {
        Plain::start_with_socket(dir, None)
    }

    /// [`Plain::start`], also listening on a Unix socket in `socket` (reachable by postgres).
    pub fn start_with_socket(dir: &Path, socket: Option<&Path>) -> Plain {
        let sockets = socket.map_or(String::new(), |p| p.display().to_string());
        let name = dir.file_name().unwrap().to_string_lossy();
        let log = dir.parent().unwrap().join(format!("{name}.log"));
        let port = pg_ctl_start(
            dir,
            &log,
            &format!("-c listen_addresses=127.0.0.1 -c unix_socket_directories='{sockets}'"),
        );
        Plain {
            dir: dir.to_path_buf(),
            port,
        }
    }

    pub fn url(&self, password: &str) -> String {
        format!(
            "postgresql://postgres:{password}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// A URL that logs in as `login` (`user:password`, see [`super::login_of`]).
    pub fn url_as(&self, login: &str) -> String {
        format!("postgresql://{login}@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Plain {
    fn drop(&mut self) {
        let _ = pg_command("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "fast", "-w"])
            .output();
    }
}
