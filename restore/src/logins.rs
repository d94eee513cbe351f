//! How to log into a data directory a restore wrote: the restore report says it.
//!
//! A restored data directory keeps its roles and their password verifiers; a managed
//! cluster's roles accept only passwords (scram-sha-256). So the report names each role Cairn
//! knows, what it can do and where its password is, and the restore adds one way in that needs
//! no password: the OS user that owns the directory may log in as the cluster's superuser over
//! the Unix socket (peer authentication), through lines it puts at the top of `pg_hba.conf`
//! and a map in `pg_ident.conf`, both marked as written by Cairn. An adopted cluster's
//! authentication files are the source's and are left alone: its roles keep the passwords
//! they had on the source.
//!
//! Invariant: no password is written anywhere by this module; only the file names and
//! commands that lead to one are reported.

use std::path::Path;

use cairn_backup::{Error, Result};
use cairn_engine::catalog::{ClusterKind, ClusterRow};
use cairn_engine::pg::roles::OWNER;

/// One role of a restored data directory and how to log in as it.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct Login {
    pub role: String,
    /// What the role may do.
    pub can: String,
    /// How to get in as it.
    pub how: String,
}

const PEER_MAP: &str = "cairn_restore";

/// Lets `os_user` (the owner of `datadir`) log in as `superuser` over the Unix socket without
/// a password: a `local` peer line first in `pg_hba.conf`, and its map in `pg_ident.conf`.
pub fn grant_peer_login(datadir: &Path, os_user: &str, superuser: &str) -> Result<()> {
    let hba = datadir.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba)
        .map_err(|e| Error::io(format!("read {}", hba.display()), e))?;
    if old.contains(&format!("map={PEER_MAP}")) {
        return Ok(());
    }
    let new = format!(
        "# Added by cairn restore: the OS user {os_user}, who owns this directory, logs in as \
         {superuser} over the Unix socket\n# without a password. Remove this line (and \
         {PEER_MAP} in pg_ident.conf) to require passwords.\nlocal all {superuser} peer \
         map={PEER_MAP}\n\n{old}"
    );
    write_keeping_mode(&hba, &new)?;
    let ident = datadir.join("pg_ident.conf");
    let mut text = std::fs::read_to_string(&ident).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "# Added by cairn restore (see pg_hba.conf).\n{PEER_MAP} {os_user} {superuser}\n"
    ));
    write_keeping_mode(&ident, &text)
}

fn write_keeping_mode(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let md = std::fs::metadata(path).ok();
    let mode = md
        .as_ref()
        .map_or(0o600, |m| m.permissions().mode() & 0o777);
    cairn_engine::fsutil::write_atomic(path, text.as_bytes(), mode)
        .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
    if let Some(m) = md {
        std::os::unix::fs::chown(path, Some(m.uid()), Some(m.gid()))
            .map_err(|e| Error::io(format!("chown {}", path.display()), e))?;
    }
    Ok(())
}

/// The roles of a restored `cluster` and how to log in as each. `peer` names the OS user
/// given peer login by [`grant_peer_login`], if any.
pub fn logins(cluster: &ClusterRow, superuser: &str, peer: Option<&str>) -> Vec<Login> {
    let name = &cluster.name;
    match cluster.kind {
        ClusterKind::Managed => {
            let mut su = format!(
                "password: `cairn cluster password {name} --superuser` on the appliance that \
                 holds cluster '{name}'"
            );
            if let Some(os) = peer {
                su = format!(
                    "as the OS user {os} over the Unix socket, no password (e.g. `runuser -u \
                     {os} -- psql -h /var/run/postgresql -p PORT -U {superuser} postgres`); or \
                     {su}"
                );
            }
            vec![
                Login {
                    role: superuser.to_string(),
                    can: "everything (superuser)".into(),
                    how: su,
                },
                Login {
                    role: OWNER.to_string(),
                    can: "the cluster's owner role: databases, roles (cairn.create_role), \
                          schemas, tables, trusted extensions"
                        .into(),
                    how: format!(
                        "password: `cairn cluster password {name}` on the appliance that holds \
                         cluster '{name}', or set one as the superuser (ALTER ROLE {OWNER} \
                         PASSWORD ...)"
                    ),
                },
            ]
        }
        ClusterKind::Adopted => vec![Login {
            role: "the source's roles".into(),
            can: "what they could do on the source".into(),
            how: format!(
                "the passwords they had on the source (authentication files are the source's); \
                 the password of Cairn's source role {superuser}: `cairn cluster password {name} \
                 --source`"
            ),
        }],
    }
}
