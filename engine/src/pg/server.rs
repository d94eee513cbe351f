//! A PostgreSQL server process Cairn starts and stops: computes, scratch servers, test servers.
//!
//! Servers listen on 127.0.0.1 only (no Unix socket) and require a password (scram-sha-256).
//! Starting waits until the server accepts connections; a port already in use is reported as
//! such, with the fix.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::binaries::PgBinaries;
use super::process::{run, OsUser};
use crate::error::{Error, IoContext, Result};

/// The superuser a server is created with.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, password: <redacted> }}",
            self.user
        )
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; another program may take it before a server
/// binds it: [`Server::start`] reports that as [`Error::PortInUse`], and
/// [`Server::start_on_free_port`] then moves to another port).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("find a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| Error::io("find a free port", e))?
        .port())
}

/// True when something already listens on 127.0.0.1:`port`.
pub fn port_in_use(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_err()
}

#[derive(Debug, Clone)]
pub struct Server {
    pub bins: PgBinaries,
    pub user: OsUser,
    pub datadir: PathBuf,
    pub port: u16,
    pub log: PathBuf,
}

/// What `pg_controldata` reports.
#[derive(Debug, Clone)]
pub struct ControlData {
    pub system_id: u64,
    pub segment_size: u64,
    pub checkpoint: crate::ids::Lsn,
    pub redo: crate::ids::Lsn,
    pub tli: u32,
    pub state: String,
    pub checksums: bool,
}

impl Server {
    pub fn new(bins: &PgBinaries, user: &OsUser, datadir: &Path, port: u16, log: &Path) -> Server {
        Server {
            bins: bins.clone(),
            user: user.clone(),
            datadir: datadir.to_path_buf(),
            port,
            log: log.to_path_buf(),
        }
    }

    /// Creates a new cluster in `datadir` (which must not exist or be empty) with data
    /// checksums on and password authentication everywhere.
    pub fn initdb(&self, creds: &Credentials) -> Result<()> {
        let parent = self.datadir.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(parent).ctx("create directory", parent)?;
        self.user.check_reachable(parent)?;
        crate::fsutil::create_dir_mode(&self.datadir, 0o700)
            .ctx("create directory", &self.datadir)?;
        self.user.chown(&self.datadir)?;
        let pwfile = parent.join(format!(".pwfile-{}", std::process::id()));
        crate::fsutil::write_atomic(&pwfile, creds.password.as_bytes(), 0o600)
            .ctx("write password file", &pwfile)?;
        self.user.chown(&pwfile)?;
        let res = run(
            self.user
                .command(&self.bins.bin("initdb"))
                .arg("-D")
                .arg(&self.datadir)
                .arg("-U")
                .arg(&creds.user)
                .arg(format!("--pwfile={}", pwfile.display()))
                .args([
                    "--auth=scram-sha-256",
                    "--data-checksums",
                    "--encoding=UTF8",
                    "--locale=C",
                ]),
            &format!("initdb {}", self.datadir.display()),
        );
        let _ = fs::remove_file(&pwfile);
        res.map(|_| ())
    }

    /// Starts the server and waits until it accepts connections. `settings` are plain
    /// values (no quoting): they override every configuration file, and are quoted here for
    /// the shell `pg_ctl` passes them through.
    pub fn start(&self, settings: &[(&str, String)]) -> Result<()> {
        if port_in_use(self.port) {
            return Err(Error::PortInUse(self.port));
        }
        for p in [&self.datadir, &self.log] {
            shell_safe_path(p)?;
        }
        if !self.log.exists() {
            fs::write(&self.log, b"").ctx("create log file", &self.log)?;
        }
        // Server logs can quote SQL and key values: the server's OS user only.
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&self.log, fs::Permissions::from_mode(0o600))
                .ctx("set mode", &self.log)?;
        }
        self.user.chown(&self.log)?;
        let base = [
            ("port", self.port.to_string()),
            ("listen_addresses", "127.0.0.1".to_string()),
            ("unix_socket_directories", String::new()),
        ];
        let mut opts = String::new();
        for (k, v) in base
            .iter()
            .map(|(k, v)| (*k, v))
            .chain(settings.iter().map(|(k, v)| (*k, v)))
        {
            if !k
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
            {
                return Err(Error::Refused(format!("'{k}' is not a setting name")));
            }
            opts.push_str(" -c ");
            opts.push_str(&shell_quote(&format!("{k}={v}")));
        }
        let res = run(
            self.user
                .command(&self.bins.bin("pg_ctl"))
                .arg("start")
                .arg("-D")
                .arg(&self.datadir)
                .args(["-w", "-t", "600", "-s"])
                .arg("-l")
                .arg(&self.log)
                .arg("-o")
                .arg(opts),
            &format!("start PostgreSQL in {}", self.datadir.display()),
        );
        if let Err(e) = res {
            let tail = self.log_tail(20);
            if tail.contains("could not bind") || tail.contains("Address already in use") {
                return Err(Error::PortInUse(self.port));
            }
            return Err(Error::postgres(
                format!("start PostgreSQL in {}", self.datadir.display()),
                format!("{e}\nlast lines of {}:\n{tail}", self.log.display()),
            ));
        }
        Ok(())
    }

    /// [`Server::start`] on a port Cairn chose: when another program took the port between
    /// [`free_port`] and the start, the server moves to another free port (up to five tries).
    /// `self.port` is the port it listens on afterwards.
    pub fn start_on_free_port(&mut self, settings: &[(&str, String)]) -> Result<()> {
        let mut tries = 1;
        loop {
            match self.start(settings) {
                Err(Error::PortInUse(taken)) if tries < 5 => {
                    tries += 1;
                    self.port = free_port()?;
                    tracing::info!(taken, port = self.port, "port taken meanwhile; another one");
                }
                result => return result,
            }
        }
    }

    /// Stops the server: `fast` rolls back sessions and shuts down cleanly (a shutdown
    /// checkpoint is written); `immediate` is a crash.
    pub fn stop(&self, mode: &str) -> Result<()> {
        run(
            self.user
                .command(&self.bins.bin("pg_ctl"))
                .arg("stop")
                .arg("-D")
                .arg(&self.datadir)
                .args(["-w", "-t", "600", "-s", "-m", mode]),
            &format!("stop PostgreSQL in {}", self.datadir.display()),
        )
        .map(|_| ())
    }

    /// Whether a postmaster is running on this data directory.
    pub fn running(&self) -> bool {
        self.pid().is_some()
    }

    /// The postmaster's pid, if it is alive.
    pub fn pid(&self) -> Option<i64> {
        let pidfile = fs::read_to_string(self.datadir.join("postmaster.pid")).ok()?;
        let pid: i32 = pidfile.lines().next()?.trim().parse().ok()?;
        // SAFETY: kill with signal 0 only checks for existence.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        alive.then_some(pid as i64)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let s = fs::read_to_string(&self.log).unwrap_or_default();
        let v: Vec<&str> = s.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// A libpq URL for `db`. It contains the password: never log it.
    pub fn url(&self, creds: &Credentials, db: &str) -> String {
        url(self.port, creds, db)
    }

    pub async fn connect(&self, creds: &Credentials, db: &str) -> Result<tokio_postgres::Client> {
        connect(self.port, creds, db).await
    }

    /// Cairn's own connection to a compute it runs: `search_path` pinned to the catalog, so
    /// nothing a tenant creates stands in for what Cairn calls.
    pub async fn connect_control(
        &self,
        creds: &Credentials,
        db: &str,
    ) -> Result<tokio_postgres::Client> {
        connect_with(self.port, creds, db, Some(super::roles::CONTROL_OPTIONS)).await
    }

    pub fn control_data(&self) -> Result<ControlData> {
        control_data(&self.bins, &self.user, &self.datadir)
    }
}

/// The connection URL of a server on 127.0.0.1:`port`, password included.
pub fn url(port: u16, creds: &Credentials, db: &str) -> String {
    format!(
        "postgresql://{}:{}@127.0.0.1:{}/{}",
        urlencode(&creds.user),
        urlencode(&creds.password),
        port,
        db
    )
}

/// Percent-encodes a URL component.
pub fn urlencode(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// Connects to a server on 127.0.0.1, retrying briefly while it finishes starting.
pub async fn connect(port: u16, creds: &Credentials, db: &str) -> Result<tokio_postgres::Client> {
    connect_with(port, creds, db, None).await
}

/// [`connect`] with startup `options` (e.g. `-c search_path=...`).
pub async fn connect_with(
    port: u16,
    creds: &Credentials,
    db: &str,
    options: Option<&str>,
) -> Result<tokio_postgres::Client> {
    let mut cfg = tokio_postgres::Config::new();
    if let Some(o) = options {
        cfg.options(o);
    }
    cfg.host("127.0.0.1")
        .port(port)
        .user(&creds.user)
        .password(&creds.password)
        .dbname(db)
        .application_name("cairn")
        .connect_timeout(Duration::from_secs(10));
    let mut last = None;
    for _ in 0..50 {
        match cfg.connect(tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "postgres connection ended");
                    }
                });
                return Ok(client);
            }
            Err(e) => {
                let starting = e.as_db_error().is_some_and(|d| {
                    d.code() == &tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW
                });
                last = Some(e);
                if !starting {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Err(Error::postgres(
        format!(
            "connect to PostgreSQL on 127.0.0.1:{port} as {}",
            creds.user
        ),
        last.map(|e| e.to_string()).unwrap_or_default(),
    ))
}

/// Reads a data directory's control file through `pg_controldata`.
pub fn control_data(bins: &PgBinaries, user: &OsUser, datadir: &Path) -> Result<ControlData> {
    let out = run(
        user.command(&bins.bin("pg_controldata"))
            .arg("-D")
            .arg(datadir),
        &format!("read control file of {}", datadir.display()),
    )?;
    parse_control_data(&out)
        .map_err(|why| Error::postgres(format!("read control file of {}", datadir.display()), why))
}

pub fn parse_control_data(out: &str) -> std::result::Result<ControlData, String> {
    let field = |name: &str| -> std::result::Result<String, String> {
        out.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
            .ok_or_else(|| format!("pg_controldata did not print '{name}'"))
    };
    let num = |name: &str| -> std::result::Result<u64, String> {
        field(name)?
            .parse()
            .map_err(|_| format!("'{name}' is not a number"))
    };
    let lsn = |name: &str| -> std::result::Result<crate::ids::Lsn, String> { field(name)?.parse() };
    Ok(ControlData {
        system_id: num("Database system identifier")?,
        segment_size: num("Bytes per WAL segment")?,
        checkpoint: lsn("Latest checkpoint location")?,
        redo: lsn("Latest checkpoint's REDO location")?,
        tli: num("Latest checkpoint's TimeLineID")? as u32,
        state: field("Database cluster state")?,
        checksums: num("Data page checksum version")? != 0,
    })
}

/// Settings that neutralise what a data directory's own configuration could make the
/// appliance run or load: its `postgresql.conf` and `postgresql.auto.conf` come from a source
/// whose administrators are not the appliance's (an adopted cluster), or from a region (a
/// restore). Command-line settings override both files.
pub fn untrusted_config_overrides(pg_major: u32) -> Vec<(&'static str, String)> {
    let mut v: Vec<(&'static str, String)> = vec![
        ("ssl", "off".into()),
        ("ssl_passphrase_command", String::new()),
        ("shared_preload_libraries", String::new()),
        ("local_preload_libraries", String::new()),
        ("session_preload_libraries", String::new()),
        ("dynamic_library_path", "$libdir".into()),
        ("archive_command", String::new()),
        ("restore_command", String::new()),
        ("archive_cleanup_command", String::new()),
        ("recovery_end_command", String::new()),
    ];
    if pg_major >= 15 {
        v.push(("archive_library", String::new()));
    }
    v
}

/// One shell word: `pg_ctl` hands `-o` to `/bin/sh`, so every setting is single-quoted (a
/// quote inside becomes `'"'"'`) and nothing in it can be run.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\"'\"'"))
}

/// `pg_ctl` puts the data directory and the log file inside double quotes of a shell
/// command: refuse paths that could end them or expand there.
pub fn shell_safe_path(p: &Path) -> Result<()> {
    let s = p.to_string_lossy();
    if s.chars()
        .any(|c| matches!(c, '"' | '$' | '`' | '\\' | '\n' | '\r'))
    {
        return Err(Error::Refused(format!(
            "{}: PostgreSQL is started through a shell by pg_ctl, and this path holds one of \
             \" $ ` \\ or a line break; choose a path without them",
            p.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pg_controldata() {
        let out = "pg_control version number:            1300\n\
            Database system identifier:           7441431976000000123\n\
            Database cluster state:               shut down\n\
            Latest checkpoint location:           0/3000188\n\
            Latest checkpoint's REDO location:    0/3000188\n\
            Latest checkpoint's TimeLineID:       1\n\
            Bytes per WAL segment:                16777216\n\
            Data page checksum version:           1\n";
        let c = parse_control_data(out).unwrap();
        assert_eq!(c.system_id, 7441431976000000123);
        assert_eq!(c.segment_size, 16 << 20);
        assert_eq!(c.checkpoint.to_string(), "0/3000188");
        assert_eq!(c.state, "shut down");
        assert!(c.checksums);
        assert!(parse_control_data("nothing").is_err());
    }

    #[test]
    fn url_encoding_and_redaction() {
        assert_eq!(urlencode("a b/c@d"), "a%20b%2Fc%40d");
        let c = Credentials {
            user: "postgres".into(),
            password: "s3cret".into(),
        };
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}

#[cfg(test)]
mod shell_tests {
    use super::*;

    #[test]
    fn settings_are_quoted_for_the_shell() {
        // What /bin/sh makes of the quoted word is the word itself.
        for v in [
            "plain",
            "with space",
            "it's",
            "$(touch /tmp/x)",
            "`x`",
            "a\"b",
            "",
        ] {
            let word = shell_quote(&format!("k={v}"));
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(format!("printf %s {word}"))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), format!("k={v}"));
        }
        assert!(shell_safe_path(Path::new("/srv/pg data/x")).is_ok());
        for bad in ["/srv/\"x", "/srv/$HOME", "/srv/`id`", "/srv/a\\b"] {
            assert!(shell_safe_path(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
