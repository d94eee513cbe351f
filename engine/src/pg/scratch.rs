//! Scratch servers: a fresh PostgreSQL cluster in a directory of its own, on a free loopback
//! port, stopped when dropped. Tests use them as sources and catalogs; the verifier will use
//! them to prove restores.

use std::path::{Path, PathBuf};

use super::process::OsUser;
use super::server::{free_port, Credentials, Server};
use super::PgBinaries;
use crate::error::{IoContext, Result};

pub struct ScratchServer {
    pub server: Server,
    pub creds: Credentials,
    stopped: bool,
}

/// A random password of 32 hex characters.
pub fn generate_password() -> String {
    let mut b = [0u8; 16];
    crate::ids::random_bytes(&mut b);
    hex::encode(b)
}

impl ScratchServer {
    /// Creates and starts a server whose data directory is `dir/data` (`dir` is created and
    /// made reachable for the postgres OS user).
    pub fn start(dir: &Path, settings: &[(&str, String)]) -> Result<ScratchServer> {
        let bins = PgBinaries::locate(std::env::var_os("CAIRN_PG_BIN").as_deref().map(Path::new))?;
        let user = OsUser::for_postgres()?;
        std::fs::create_dir_all(dir).ctx("create directory", dir)?;
        crate::fsutil::create_dir_mode(dir, 0o711).ctx("set mode", dir)?;
        let datadir: PathBuf = dir.join("data");
        let creds = Credentials {
            user: "postgres".into(),
            password: generate_password(),
        };
        let mut server = Server::new(
            &bins,
            &user,
            &datadir,
            free_port()?,
            &dir.join("server.log"),
        );
        server.initdb(&creds)?;
        server.start_on_free_port(settings)?;
        Ok(ScratchServer {
            server,
            creds,
            stopped: false,
        })
    }

    pub fn url(&self, db: &str) -> String {
        self.server.url(&self.creds, db)
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    pub async fn connect(&self, db: &str) -> Result<tokio_postgres::Client> {
        self.server.connect(&self.creds, db).await
    }

    pub fn stop(&mut self) -> Result<()> {
        if !self.stopped {
            self.stopped = true;
            self.server.stop("fast")?;
        }
        Ok(())
    }
}

impl Drop for ScratchServer {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.server.stop("immediate");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    /// A port another program takes between `free_port` and the start: `start` names it,
    /// `start_on_free_port` moves to another port and the server answers there.
    #[tokio::test]
    async fn a_port_taken_before_the_start_is_named_or_left_for_another() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ScratchServer::start(&dir.path().join("pg"), &[]).expect("start PostgreSQL");
        s.stop().unwrap();
        let taken = s.server.port;
        let _holder = std::net::TcpListener::bind(("127.0.0.1", taken)).unwrap();
        match s.server.start(&[]) {
            Err(Error::PortInUse(p)) => assert_eq!(p, taken),
            other => panic!("expected PortInUse({taken}), got {other:?}"),
        }
        s.server.start_on_free_port(&[]).unwrap();
        s.stopped = false;
        assert_ne!(s.server.port, taken);
        let c = s.connect("postgres").await.unwrap();
        let port: String = c
            .query_one("SHOW port", &[])
            .await
            .unwrap()
            .get::<_, String>(0);
        assert_eq!(port, s.server.port.to_string());
    }
}
