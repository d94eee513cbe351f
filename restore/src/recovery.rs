//! Bringing a restored data directory to its point: a private PostgreSQL replays the WAL.
//!
//! The server listens on no TCP address; its only socket lives in a fresh directory that only
//! the PostgreSQL OS user can enter, and the authentication file (outside the data directory,
//! so the restored one is left as it was) trusts local connections there. It replays the WAL
//! handed to it up to the target, Cairn connects once and checks where recovery ended, and
//! the server is shut down cleanly: what remains is a consistent data directory at the point,
//! ready to start with no recovery pending.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_backup::{Error, Result};
use cairn_engine::catalog::ClusterRow;
use cairn_engine::compute::superuser;
use cairn_engine::pg::server::{free_port, Server};
use cairn_engine::{Engine, Lsn};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Replay {
    /// Seconds from starting PostgreSQL until it accepted connections (the WAL replay).
    pub replay_seconds: f64,
    /// Seconds to open the first connection and run the first query.
    pub first_connection_seconds: f64,
    /// Where recovery ended (the end-of-recovery checkpoint).
    pub ended_at: Lsn,
}

struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A PostgreSQL server on a restored data directory, reachable only through a socket in a
/// private directory, trusting local connections there.
pub struct PrivateServer {
    server: Server,
    run: RunDir,
    pub port: u16,
    pub user: String,
    /// Seconds from starting PostgreSQL until it accepted connections (the WAL replay).
    pub start_seconds: f64,
}

impl PrivateServer {
    /// Starts PostgreSQL on `datadir` (a data directory of `cluster`).
    pub fn start(engine: &Engine, cluster: &ClusterRow, datadir: &Path) -> Result<PrivateServer> {
        let bins = engine.bins_for(cluster)?;
        let user = &engine.user;
        // A short path: socket names are limited to about 100 bytes.
        let run = RunDir(std::env::temp_dir().join(format!(
            "cairn-restore-{}",
            &cairn_engine::TimelineId::generate().to_string()[..12]
        )));
        cairn_engine::fsutil::create_dir_mode(&run.0, 0o700)
            .map_err(|e| Error::io(format!("create {}", run.0.display()), e))?;
        let hba = run.0.join("pg_hba.conf");
        std::fs::write(
            &hba,
            "# cairn restore: local socket in a private directory only\nlocal all all trust\n",
        )
        .map_err(|e| Error::io(format!("write {}", hba.display()), e))?;
        user.chown_tree(&run.0)?;
        user.chown_tree(datadir)?;
        user.check_reachable(datadir)?;
        let port = free_port()?;
        let server = Server::new(bins, user, datadir, port, &run.0.join("postgres.log"));
        let mut settings = vec![
            ("listen_addresses", String::new()),
            ("unix_socket_directories", run.0.display().to_string()),
            ("hba_file", hba.display().to_string()),
            ("archive_mode", "off".into()),
            // A real directory in pg_tblspc (a tablespace re-created in the replayed WAL after
            // a drop) must not stop recovery.
            ("allow_in_place_tablespaces", "on".into()),
        ];
        // The data directory came from a region (and perhaps from an adopted source): its
        // configuration runs nothing here.
        settings.extend(cairn_engine::pg::server::untrusted_config_overrides(
            cluster.pg_major,
        ));
        let started = Instant::now();
        if let Err(e) = server.start(&settings) {
            let _ = server.stop("immediate");
            return Err(e.into());
        }
        Ok(PrivateServer {
            start_seconds: started.elapsed().as_secs_f64(),
            server,
            run,
            port,
            user: superuser(cluster),
        })
    }

    /// The directory holding the server's socket (a `host` for clients).
    pub fn socket_dir(&self) -> &Path {
        &self.run.0
    }

    /// Last lines of the server's log, for errors.
    pub fn log_tail(&self, n: usize) -> String {
        self.server.log_tail(n)
    }

    /// Stops the server cleanly (a shutdown checkpoint) and forgets this run's settings.
    pub fn stop(self) -> Result<()> {
        let r = self.server.stop("fast");
        if r.is_err() {
            let _ = self.server.stop("immediate");
        }
        r?;
        // It records this run's private socket and authentication settings: not the user's.
        let _ = std::fs::remove_file(self.server.datadir.join("postmaster.opts"));
        Ok(())
    }
}

/// Runs recovery on `datadir` (materialised at `target`) and shuts the server down cleanly.
pub async fn recover(
    engine: &Engine,
    cluster: &ClusterRow,
    datadir: &Path,
    target: Lsn,
) -> Result<Replay> {
    let server = PrivateServer::start(engine, cluster, datadir)?;
    cairn_engine::failpoint::stall("restore-recovering").await;
    let result = first_connection(server.socket_dir(), server.port, &server.user).await;
    let (first_connection_seconds, ended_at) = match result {
        Ok(v) => v,
        Err(e) => {
            let tail = server.log_tail(20);
            let _ = server.stop();
            return Err(Error::Refused(format!(
                "the restored data directory {} did not come up: {e}\nlast lines of its log:\n{tail}",
                datadir.display(),
            )));
        }
    };
    let replay_seconds = server.start_seconds;
    server.stop()?;
    if ended_at < target || ended_at.0 > target.0 + cairn_engine::wal::LONG_PHD {
        return Err(Error::RecoveryEnded {
            datadir: datadir.display().to_string(),
            ended_at: ended_at.to_string(),
            target: target.to_string(),
        });
    }
    Ok(Replay {
        replay_seconds,
        first_connection_seconds,
        ended_at,
    })
}

async fn first_connection(sock: &Path, port: u16, user: &str) -> Result<(f64, Lsn)> {
    let started = Instant::now();
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(sock)
        .port(port)
        .user(user)
        .dbname("postgres")
        .application_name("cairn-restore")
        .connect_timeout(Duration::from_secs(30));
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| Error::Refused(format!("connect as {user}: {e}")))?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let row = client
        .query_one(
            "SELECT checkpoint_lsn::text FROM pg_control_checkpoint()",
            &[],
        )
        .await
        .map_err(|e| Error::Refused(format!("first query: {e}")))?;
    let secs = started.elapsed().as_secs_f64();
    let lsn: Lsn = row
        .get::<_, String>(0)
        .parse()
        .map_err(|e: String| Error::Refused(format!("first query: {e}")))?;
    drop(client);
    task.abort();
    Ok((secs, lsn))
}
