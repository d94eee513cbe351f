//! Computes are tenants: who the URLs Cairn prints log in as, and when a superuser is handed
//! out.
//!
//! The URL of a compute logs in as the cluster's owner role ([`crate::pg::roles::OWNER`]),
//! whose password is the cluster's `owner-password` secret (made on first use, shipped in
//! the secrets object, set on every compute start). Cairn itself keeps using the cluster's
//! superuser, over connections whose `search_path` is pinned.
//!
//! A superuser can run programs and read files as the OS user that runs the server. So a
//! superuser URL is given only when asked for ([`Engine::superuser_credentials`]) and only
//! when that OS user reaches nothing but the cluster's own computes: it is not the OS user
//! Cairn runs as, nothing in the data directory outside `computes/` (keys, secrets, layers,
//! catalog, spool, scratch) is readable or searchable by it, and no other cluster shares it
//! (all clusters' computes run as one OS user today, so only an appliance with a single
//! cluster qualifies). Otherwise the refusal says which of these failed.

use std::path::Path;

use crate::catalog::{ClusterKind, ClusterRow};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::pg::process::RunAs;
use crate::pg::roles;
use crate::pg::scratch::generate_password;
use crate::pg::server::{Credentials, Server};

/// Which role's login an operator asks for (`cairn cluster password`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    Owner,
    Superuser,
    Source,
}

impl Engine {
    /// The login an operator asked for: the superuser only under
    /// [`Engine::superuser_credentials`]'s rule, the source role only for adopted clusters.
    pub async fn login(&self, cluster: &ClusterRow, which: Login) -> Result<Credentials> {
        match which {
            Login::Owner => self.owner_credentials(cluster),
            Login::Superuser => self.superuser_credentials(cluster).await,
            Login::Source => match cluster.kind {
                ClusterKind::Adopted => self.credentials(cluster),
                ClusterKind::Managed => Err(Error::Refused(format!(
                    "cluster '{}' is managed: it has no source role (use --superuser or the \
                     owner role)",
                    cluster.name
                ))),
            },
        }
    }

    /// The cluster's owner password, made and stored (0600) on first use.
    pub fn owner_password(&self, cluster: &ClusterRow) -> Result<String> {
        let p = self.home.secret_path(cluster.id, "owner-password");
        if p.exists() {
            return self.home.read_secret(cluster.id, "owner-password");
        }
        let pw = generate_password();
        self.home.write_secret(cluster.id, "owner-password", &pw)?;
        Ok(pw)
    }

    /// What the users of `cluster`'s computes log in as: the owner role.
    pub fn owner_credentials(&self, cluster: &ClusterRow) -> Result<Credentials> {
        Ok(Credentials {
            user: roles::OWNER.into(),
            password: self.owner_password(cluster)?,
        })
    }

    /// Sets up the owner role on a compute that has just started (as its superuser). Returns
    /// the credentials its URL carries: the owner's, or, for an adopted cluster whose
    /// source role is not a superuser (and so cannot create roles), that source role's.
    pub(crate) async fn setup_tenant(
        &self,
        cluster: &ClusterRow,
        client: &tokio_postgres::Client,
    ) -> Result<Credentials> {
        if cluster.kind == ClusterKind::Adopted && !roles::is_superuser(client).await? {
            tracing::info!(
                cluster = %cluster.name,
                "the adopted source's role is not a superuser: computes hand out that role"
            );
            return self.credentials(cluster);
        }
        let owner = self.owner_credentials(cluster)?;
        roles::ensure_tenant(client, &owner.password).await?;
        Ok(owner)
    }

    /// The credentials a running compute's URL carries (see [`Engine::setup_tenant`]).
    pub(crate) async fn tenant_credentials(
        &self,
        cluster: &ClusterRow,
        server: &Server,
    ) -> Result<Credentials> {
        let control = self.credentials(cluster)?;
        let client = server.connect_control(&control, "postgres").await?;
        if roles::has_owner(&client).await? {
            self.owner_credentials(cluster)
        } else {
            Ok(control)
        }
    }

    /// The superuser credentials of `cluster`'s computes, for an operator who asked for them
    /// (`--superuser`): refused unless the computes' OS user reaches nothing but this cluster.
    pub async fn superuser_credentials(&self, cluster: &ClusterRow) -> Result<Credentials> {
        let refuse = |why: String| {
            Error::Refused(format!(
                "no superuser access to the computes of cluster '{}': {why}. A superuser runs \
                 programs and reads files as that OS user (COPY ... TO PROGRAM, \
                 pg_read_server_files); the owner role in the printed URL can create \
                 databases, roles (cairn.create_role), schemas, tables and trusted extensions",
                cluster.name
            ))
        };
        let Some(run_as) = self.user.run_as else {
            return Err(refuse(format!(
                "computes run as the OS user Cairn runs as ({}), who can read the appliance's \
                 keys and secrets; run Cairn as root so computes run as the postgres OS user",
                self.user.name
            )));
        };
        if let Some(p) = reachable_outside_computes(&self.home.root, run_as)? {
            return Err(refuse(format!(
                "the OS user {} can read {}; run chmod go-rwx on it",
                self.user.name,
                p.display()
            )));
        }
        let others: Vec<String> = self
            .catalog
            .clusters()
            .await?
            .into_iter()
            .filter(|c| c.id != cluster.id)
            .map(|c| c.name)
            .collect();
        if !others.is_empty() {
            return Err(refuse(format!(
                "the computes of every cluster run as the OS user {}, so a superuser here could \
                 read the files of cluster(s) {}; superuser access is given only on an \
                 appliance that holds one cluster",
                self.user.name,
                others.join(", ")
            )));
        }
        self.credentials(cluster)
    }
}

/// The first entry of the data directory, outside `computes/`, that `who` can read (a file)
/// or search (a directory); `None` when there is none.
fn reachable_outside_computes(home: &Path, who: RunAs) -> Result<Option<std::path::PathBuf>> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let entries = std::fs::read_dir(home).map_err(|e| Error::path("read", home, e))?;
    for e in entries {
        let e = e.map_err(|e| Error::path("read", home, e))?;
        if e.file_name() == "computes" {
            continue;
        }
        let md = e
            .metadata()
            .map_err(|err| Error::path("stat", &e.path(), err))?;
        let mode = md.permissions().mode();
        let bits = if md.uid() == who.uid {
            (mode >> 6) & 7
        } else if md.gid() == who.gid {
            (mode >> 3) & 7
        } else {
            mode & 7
        };
        let reachable = if md.is_dir() {
            bits & 0o1 != 0
        } else {
            bits & 0o4 != 0
        };
        if reachable {
            return Ok(Some(e.path()));
        }
    }
    Ok(None)
}
