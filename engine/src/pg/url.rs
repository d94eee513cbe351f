//! Connection URLs of PostgreSQL servers Cairn does not run (adopted sources, a PostgreSQL
//! catalog): the password taken out — from the user part or a `password` parameter — so that
//! what is stored, shown, logged and written to regions never holds it; the TLS policy read
//! from `sslmode` and `sslrootcert` ([`crate::pg::tls`]).

use std::str::FromStr;

use crate::error::{Error, Result};
use crate::pg::tls::{percent_decode, TlsPolicy};

/// A connection URL split into its password and the rest.
#[derive(Clone)]
pub struct PgUrl {
    /// The URL without its password (neither in the user part nor as a `password`
    /// parameter): safe to store and show. It keeps `sslmode` and `sslrootcert`.
    pub public: String,
    pub password: Option<String>,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgUrl({})", self.public)
    }
}

impl PgUrl {
    pub fn parse(url: &str) -> Result<PgUrl> {
        let bad = || {
            Error::Refused(
                "expected a URL such as postgres://cairn@db1:5432/postgres (the password from \
                 --password-file or an environment variable)"
                    .to_string(),
            )
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        if scheme != "postgres" && scheme != "postgresql" {
            return Err(bad());
        }
        // The authority ends at the first '/', '?' or '#': an '@' after it (in a query
        // value) names no host.
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (mut password, authority) = match authority.rsplit_once('@') {
            Some((creds, host)) => match creds.split_once(':') {
                Some((user, pw)) => (Some(percent_decode(pw)), format!("{user}@{host}")),
                None => (None, authority.to_string()),
            },
            None => (None, authority.to_string()),
        };
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, q),
            None => (tail, ""),
        };
        let mut kept = Vec::new();
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            match kv.split_once('=') {
                Some(("password", v)) => password = Some(percent_decode(v)),
                _ => kept.push(kv),
            }
        }
        let public = if kept.is_empty() {
            format!("{scheme}://{authority}{path}")
        } else {
            format!("{scheme}://{authority}{path}?{}", kept.join("&"))
        };
        let s = PgUrl { public, password };
        s.config()?;
        Ok(s)
    }

    /// Host (or socket directory) and port.
    pub fn host_port(&self) -> Result<(String, u16)> {
        let (cfg, _) = self.config()?;
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_string(),
        };
        Ok((host, cfg.get_ports().first().copied().unwrap_or(5432)))
    }

    fn host_of_public(&self) -> String {
        let rest = self.public.split_once("://").map_or("", |x| x.1);
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = rest[..end].rsplit_once('@').map_or(&rest[..end], |x| x.1);
        let host = if authority.starts_with('[') {
            authority.split(']').next().unwrap_or("").to_string() + "]"
        } else {
            authority.split(':').next().unwrap_or("").to_string()
        };
        if host.is_empty() {
            // No host: libpq's default, a local socket.
            "/".into()
        } else {
            host
        }
    }

    /// The TLS policy and a tokio-postgres configuration (password included).
    pub fn config(&self) -> Result<(tokio_postgres::Config, TlsPolicy)> {
        let host = self.host_of_public();
        let (policy, rest) = TlsPolicy::from_url(&self.public, &host)?;
        let mut cfg = tokio_postgres::Config::from_str(&rest).map_err(|e| {
            Error::Refused(format!(
                "the URL does not parse ({e}); expected postgres://USER@HOST:PORT/DB"
            ))
        })?;
        if let Some(pw) = &self.password {
            cfg.password(pw);
        }
        Ok((cfg, policy))
    }

    /// The connection string for libpq tools: the public URL with the effective `sslmode`
    /// (so that they never negotiate less than Cairn does).
    pub fn libpq(&self) -> Result<String> {
        let host = self.host_of_public();
        let (policy, rest) = TlsPolicy::from_url(&self.public, &host)?;
        let sep = if rest.contains('?') { '&' } else { '?' };
        Ok(format!("{rest}{sep}{}", policy.libpq_params()))
    }
    /// The URL with its password and the effective `sslmode` spelled out, for a driver
    /// that reads both from the URL (sqlx). Never to be shown.
    pub fn with_password_and_tls(&self, original: &str) -> Result<String> {
        let host = self.host_of_public();
        let (policy, rest) = TlsPolicy::from_url(original, &host)?;
        let sep = if rest.contains('?') { '&' } else { '?' };
        Ok(format!("{rest}{sep}{}", policy.libpq_params()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_url_never_holds_the_password() {
        let u = PgUrl::parse(
            "postgres://cat:pw@db1:5432/cairn?sslmode=verify-full&sslrootcert=/ca.pem",
        )
        .unwrap();
        assert_eq!(
            u.public,
            "postgres://cat@db1:5432/cairn?sslmode=verify-full&sslrootcert=/ca.pem"
        );
        let full = u
            .with_password_and_tls(
                "postgres://cat:pw@db1:5432/cairn?sslmode=verify-full&sslrootcert=/ca.pem",
            )
            .unwrap();
        assert_eq!(
            full,
            "postgres://cat:pw@db1:5432/cairn?sslmode=verify-full&sslrootcert=/ca.pem"
        );
        assert!(!format!("{u:?}").contains("pw@"));
    }
}
