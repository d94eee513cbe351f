//! Tenant roles: what the people who use a compute log in as.
//!
//! A compute is a tenant. The URL Cairn prints logs in as the cluster's owner role,
//! [`OWNER`], never as a superuser:
//!
//! - it can log in, create databases (`CREATEDB`), and create schemas, tables and trusted
//!   extensions in the `postgres` database (`CREATE` on the database and on its `public`
//!   schema), and owns whatever it creates;
//! - it can create, alter and drop ordinary login roles through the `SECURITY DEFINER`
//!   functions of schema `cairn` ([`TENANT_SQL`]). It does not get `CREATEROLE`: in PostgreSQL
//!   15 and older `CREATEROLE` may grant membership in any non-superuser role, including
//!   `pg_execute_server_program` and `pg_read_server_files`, which would hand it the OS user
//!   the server runs as;
//! - it may checkpoint, create restore points and switch WAL files (what applications of a
//!   backup appliance ask for), and signal its own backends;
//! - it is not a superuser and has no `REPLICATION`, `BYPASSRLS` or membership in
//!   `pg_execute_server_program`, `pg_read_server_files`, `pg_write_server_files`: `COPY ... TO
//!   PROGRAM`, server-side file reads, `CREATE TABLESPACE`, `ALTER SYSTEM`, untrusted languages
//!   and the replication slot Cairn keeps are out of its reach.
//!
//! Invariants: [`ensure_tenant`] is idempotent and runs as the superuser on every compute
//! start, so clusters created before tenant roles existed migrate on their next start; the
//! owner's password reaches the server only as a SCRAM verifier (never in clear, never in a
//! statement log); the functions run with a fixed `search_path`, so nothing the owner creates
//! can stand in for what they call; Cairn's own connections pin `search_path` too
//! ([`CONTROL_OPTIONS`]).

use crate::error::{Error, Result};

/// The owner role computes hand to their users.
pub const OWNER: &str = "cairn_owner";

/// Startup options of Cairn's own (superuser) connections to a compute: the owner can set a
/// database's `search_path`, so Cairn never resolves a name through it.
pub const CONTROL_OPTIONS: &str = "-c search_path=pg_catalog,pg_temp";

/// Roles a tenant may never be given, whoever asks.
pub const FORBIDDEN_ROLES: &[&str] = &[
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
];

/// The schema, functions and grants that make [`OWNER`] a tenant. Runs as the superuser in
/// one database (the functions are per database; roles are global).
pub const TENANT_SQL: &str = r#"
CREATE SCHEMA IF NOT EXISTS cairn AUTHORIZATION CURRENT_USER;
ALTER SCHEMA cairn OWNER TO CURRENT_USER;
REVOKE ALL ON SCHEMA cairn FROM PUBLIC;
GRANT USAGE ON SCHEMA cairn TO cairn_owner;

CREATE OR REPLACE FUNCTION cairn.create_role(name text, password text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  IF name IS NULL OR name !~ '^[a-z_][a-z0-9_]{0,62}$' OR name LIKE 'pg\_%' OR name LIKE 'cairn%' THEN
    RAISE EXCEPTION 'role name % is not allowed: use lower-case letters, digits and _, not starting with pg_ or cairn', name;
  END IF;
  EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD %L', name, password);
  EXECUTE format('GRANT %I TO cairn_owner WITH ADMIN OPTION', name);
END $f$;

CREATE OR REPLACE FUNCTION cairn.alter_role_password(name text, password text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  IF NOT pg_has_role('cairn_owner', name, 'USAGE WITH ADMIN OPTION') OR name = 'cairn_owner' THEN
    RAISE EXCEPTION 'role % was not created with cairn.create_role', name;
  END IF;
  EXECUTE format('ALTER ROLE %I PASSWORD %L', name, password);
END $f$;

CREATE OR REPLACE FUNCTION cairn.drop_role(name text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  IF NOT pg_has_role('cairn_owner', name, 'USAGE WITH ADMIN OPTION') OR name = 'cairn_owner' THEN
    RAISE EXCEPTION 'role % was not created with cairn.create_role', name;
  END IF;
  EXECUTE format('DROP ROLE %I', name);
END $f$;

REVOKE ALL ON FUNCTION cairn.create_role(text, text), cairn.alter_role_password(text, text),
  cairn.drop_role(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cairn.create_role(text, text), cairn.alter_role_password(text, text),
  cairn.drop_role(text) TO cairn_owner;

GRANT CREATE, CONNECT, TEMPORARY ON DATABASE postgres TO cairn_owner;
GRANT ALL ON SCHEMA public TO cairn_owner;
GRANT pg_checkpoint, pg_signal_backend TO cairn_owner;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_create_restore_point(text), pg_catalog.pg_switch_wal()
  TO cairn_owner;
"#;

/// A SCRAM-SHA-256 verifier of `password` (what `ALTER ROLE ... PASSWORD` stores), made here
/// so the password itself never reaches the server.
pub fn scram_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

/// Whether the connected role is a superuser (only a superuser can set up tenant roles).
pub async fn is_superuser(client: &tokio_postgres::Client) -> Result<bool> {
    Ok(client
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("look up the connected role", e.to_string()))?
        .get(0))
}

/// Whether the owner role exists on the connected server.
pub async fn has_owner(client: &tokio_postgres::Client) -> Result<bool> {
    Ok(client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&OWNER])
        .await
        .map_err(|e| Error::postgres("look up the owner role", e.to_string()))?
        .is_some())
}

/// Creates the owner role (or puts its attributes back), the `cairn` schema and the grants,
/// and sets the owner's password to `password` (the cluster's owner secret: a branch, or a
/// cluster rebuilt from a region, logs in with the secret the appliance holds now).
pub async fn ensure_tenant(client: &tokio_postgres::Client, password: &str) -> Result<()> {
    let exists = has_owner(client).await?;
    // Utility statements take no parameters: the verifier is made of base64, digits, `$`,
    // `:` and `=`, checked here before it is quoted.
    let verifier = scram_verifier(password);
    if !verifier
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"$:=+/-".contains(&b))
    {
        return Err(Error::postgres(
            "make the owner role's password verifier",
            "unexpected characters in the SCRAM verifier",
        ));
    }
    let role = format!(
        "{} ROLE {OWNER} LOGIN CREATEDB NOSUPERUSER NOCREATEROLE NOREPLICATION NOBYPASSRLS \
         PASSWORD '{verifier}'",
        if exists { "ALTER" } else { "CREATE" }
    );
    let mut sql = format!("BEGIN;\n{role};\n{TENANT_SQL}\n");
    for r in FORBIDDEN_ROLES {
        sql.push_str(&format!("REVOKE {r} FROM {OWNER} CASCADE;\n"));
    }
    sql.push_str("COMMIT;");
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| Error::postgres("set up the owner role", e.to_string()))
}

/// Whether `role` holds superuser or any of [`FORBIDDEN_ROLES`] (directly or through other
/// roles): what a check of a tenant's reach looks at.
pub async fn escalations(client: &tokio_postgres::Client, role: &str) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT r.rolname FROM pg_roles r
              WHERE (r.rolname = ANY($2) AND pg_has_role($1, r.oid, 'MEMBER'))
                 OR (r.rolname = $1 AND (r.rolsuper OR r.rolreplication OR r.rolbypassrls))",
            &[&role, &FORBIDDEN_ROLES],
        )
        .await
        .map_err(|e| Error::postgres("check the owner role's privileges", e.to_string()))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
