//! Reaching a server the verifier checks: the restored copy (a private socket, trusted) or the
//! local scratch branch (loopback, the cluster's superuser password).
//!
//! Invariant: the data on either server is the tenant's, and so is anything its owner
//! defined (functions, operators, casts of its own types). The superuser's connections that
//! query pin `search_path` ([`Server::connect_control`]) and call nothing that resolves
//! through a type the owner owns; what runs the policy's own SQL runs as a role that is no
//! superuser ([`Server::connect_as`]).

use std::path::PathBuf;
use std::time::Duration;

/// How to reach a server.
#[derive(Debug, Clone)]
pub enum Server {
    Socket {
        dir: PathBuf,
        port: u16,
        user: String,
    },
    Loopback {
        port: u16,
        user: String,
        password: String,
    },
}

impl Server {
    fn config(&self, db: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.dbname(db)
            .application_name("cairn-verify")
            .connect_timeout(Duration::from_secs(30));
        match self {
            Server::Socket { dir, port, user } => {
                c.host_path(dir).port(*port).user(user);
            }
            Server::Loopback {
                port,
                user,
                password,
            } => {
                c.host("127.0.0.1")
                    .port(*port)
                    .user(user)
                    .password(password);
            }
        }
        c
    }

    /// A connection to database `db`; its task ends when the client is dropped. Only for
    /// what resolves no name the copy's owner could have planted (the first answer); anything
    /// that queries goes through [`Server::connect_control`] or [`Server::connect_as`].
    pub async fn connect(&self, db: &str) -> Result<tokio_postgres::Client, String> {
        self.open(self.config(db), db).await
    }

    /// A connection to database `db` as `role` instead of the superuser, over the restored
    /// copy's private socket (which trusts every role); a loopback server has no such way in.
    pub async fn connect_as(&self, db: &str, role: &str) -> Result<tokio_postgres::Client, String> {
        match self {
            Server::Socket { dir, port, .. } => {
                let mut c = tokio_postgres::Config::new();
                c.dbname(db)
                    .application_name("cairn-verify")
                    .connect_timeout(Duration::from_secs(30))
                    .host_path(dir)
                    .port(*port)
                    .user(role);
                self.open(c, db).await
            }
            Server::Loopback { .. } => Err(format!(
                "connect to database {db} as {role}: only the restored copy's socket lets \
                 another role in"
            )),
        }
    }

    /// A connection to database `db` whose `search_path` is pinned
    /// ([`cairn_engine::pg::roles::CONTROL_OPTIONS`]): for reading what the restored copy's
    /// owner must not be able to stand in for.
    pub async fn connect_control(&self, db: &str) -> Result<tokio_postgres::Client, String> {
        let mut c = self.config(db);
        c.options(cairn_engine::pg::roles::CONTROL_OPTIONS);
        self.open(c, db).await
    }

    async fn open(
        &self,
        config: tokio_postgres::Config,
        db: &str,
    ) -> Result<tokio_postgres::Client, String> {
        let (client, conn) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("connect to database {db}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// The databases that accept connections, by name.
    pub async fn databases(&self) -> Result<Vec<String>, String> {
        let c = self.connect_control("postgres").await?;
        let rows = c
            .query(
                "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname",
                &[],
            )
            .await
            .map_err(|e| format!("list databases: {e}"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
