//! Cairn's own connections to PostgreSQL servers it does not run — adopted sources and a
//! PostgreSQL catalog — over TLS as `sslmode` asks, and never with a password in clear.
//!
//! Invariants:
//! - `sslmode` is honoured: `disable`; `require` (encrypted, any certificate); `verify-ca` (a
//!   chain to `sslrootcert`, or to the system's roots); `verify-full` (that, and the host name).
//!   `allow` and `prefer` are taken as `require` for a remote host: a connection that a
//!   network attacker can silently downgrade to plain text is never chosen, and `disable` is
//!   refused for a remote host. Without an `sslmode`, a loopback host or a socket directory
//!   means `disable`, any other host `require`.
//! - No password leaves in clear: on a connection without verified TLS, a server that asks for
//!   a cleartext or MD5 password is refused before anything is sent (the authentication
//!   request is read on the way in, [`AuthWatch`]). SCRAM (with channel binding over TLS),
//!   trust and certificates work everywhere.
//! - The same rules reach `pg_basebackup` and `pg_receivewal` through the connection string
//!   ([`TlsPolicy::libpq_params`]); Cairn's own connection to the source is made, and vetted,
//!   before they are started.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's identity is proven (a password may then travel inside TLS).
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// How one connection is secured, read from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicy {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
}

/// Whether `host` is this machine (or a socket directory).
pub fn is_local(host: &str) -> bool {
    host.is_empty()
        || host.starts_with('/')
        || host == "localhost"
        || host == "::1"
        || host == "[::1]"
        || host.starts_with("127.")
}

impl TlsPolicy {
    /// Reads `sslmode` and `sslrootcert` from a `postgres://` URL's query, with the default
    /// for `host`. Returns the policy and the URL without those two parameters (which
    /// `tokio-postgres` would refuse).
    pub fn from_url(url: &str, host: &str) -> Result<(TlsPolicy, String)> {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut mode = None;
        let mut root_cert = None;
        let mut kept = Vec::new();
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "sslmode" => {
                    mode = Some(match v {
                        "disable" => SslMode::Disable,
                        "allow" | "prefer" if is_local(host) => SslMode::Disable,
                        "allow" | "prefer" | "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        other => {
                            return Err(Error::Refused(format!(
                                "sslmode={other} is not one of disable, allow, prefer, require, \
                                 verify-ca, verify-full"
                            )))
                        }
                    })
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(percent_decode(v))),
                _ => kept.push(kv),
            }
        }
        let mode = mode.unwrap_or(if is_local(host) {
            SslMode::Disable
        } else {
            SslMode::Require
        });
        if mode == SslMode::Disable && !is_local(host) {
            // libpq tools (before PostgreSQL 16) answer any password request: across a
            // network without TLS, an attacker in the middle could ask for it in clear.
            return Err(Error::Refused(format!(
                "sslmode=disable for {host}: a password would cross the network without TLS; \
                 use sslmode=verify-full (with sslrootcert=FILE) or at least require"
            )));
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok((TlsPolicy { mode, root_cert }, rest))
    }

    /// The parameters that make libpq tools (`pg_basebackup`, `pg_receivewal`) follow this
    /// policy, to append to their connection string.
    pub fn libpq_params(&self) -> String {
        let mut p = format!("sslmode={}", self.mode.as_str());
        if let Some(c) = &self.root_cert {
            p.push_str(&format!("&sslrootcert={}", c.display()));
        }
        p
    }

    fn roots(&self) -> Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        match &self.root_cert {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                    .map_err(|e| {
                        Error::Refused(format!(
                            "sslrootcert {}: not a readable PEM certificate file ({e})",
                            path.display()
                        ))
                    })?;
                for c in certs {
                    roots.add(c).map_err(|e| {
                        Error::Refused(format!("sslrootcert {}: {e}", path.display()))
                    })?;
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
            }
        }
        if roots.is_empty() {
            return Err(Error::Refused(
                "no root certificate to verify the server with: pass sslrootcert=FILE in the URL"
                    .into(),
            ));
        }
        Ok(roots)
    }

    fn client_config(&self) -> Result<Arc<ClientConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Refused(format!("TLS: {e}")))?;
        let config = match self.mode {
            SslMode::VerifyFull => builder
                .with_root_certificates(self.roots()?)
                .with_no_client_auth(),
            SslMode::VerifyCa | SslMode::Require => {
                let full = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(self.roots().or_else(|e| {
                        // `require` proves nothing about the server: no roots are needed.
                        if self.mode == SslMode::Require {
                            Ok(RootCertStore::empty())
                        } else {
                            Err(e)
                        }
                    })?),
                    provider.clone(),
                )
                .build();
                let verifier = Lenient {
                    full: full.ok(),
                    check_chain: self.mode == SslMode::VerifyCa,
                    provider,
                };
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_no_client_auth()
            }
            SslMode::Disable => return Err(Error::Refused("TLS is disabled".into())),
        };
        Ok(Arc::new(config))
    }
}

/// Decodes `%XX` escapes (anything else, invalid escapes included, is kept as it is).
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `verify-ca` (a chain to a trusted root, any name) and `require` (no proof at all, but a
/// correct handshake) over rustls.
#[derive(Debug)]
struct Lenient {
    full: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    check_chain: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if !self.check_chain {
            return Ok(ServerCertVerified::assertion());
        }
        let full = self.full.as_ref().ok_or(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ))?;
        match full.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Ok(v) => Ok(v),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Watches the server's side of the startup exchange and refuses a request for a cleartext
/// (3) or MD5 (5) password when `refuse` is set; falls silent once authentication succeeded.
#[derive(Debug, Default)]
pub struct AuthWatch {
    refuse: bool,
    done: bool,
    header: [u8; 9],
    have: usize,
    skip: u64,
}

pub const CLEARTEXT_REFUSED: &str = "the server asked for a cleartext or MD5 password on a \
    connection without verified TLS: refused, no password was sent (use SCRAM on the server, \
    or connect with sslmode=verify-full)";

impl AuthWatch {
    pub fn new(refuse: bool) -> AuthWatch {
        AuthWatch {
            refuse,
            ..AuthWatch::default()
        }
    }

    /// Feeds bytes the server sent; an error means: close, send nothing.
    pub fn feed(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() && !self.done {
            if self.skip > 0 {
                let n = (self.skip.min(data.len() as u64)) as usize;
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let need = if self.have > 0 && self.header[0] == b'R' {
                9
            } else {
                5
            };
            let n = (need - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have < need {
                continue;
            }
            if need == 5 && self.header[0] == b'R' {
                continue; // the auth code follows
            }
            let len = u32::from_be_bytes(self.header[1..5].try_into().expect("4")) as u64;
            if self.header[0] == b'R' {
                let code = u32::from_be_bytes(self.header[5..9].try_into().expect("4"));
                if self.refuse && (code == 3 || code == 5) {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        CLEARTEXT_REFUSED,
                    ));
                }
                if code == 0 {
                    self.done = true;
                }
                self.skip = len.saturating_sub(8);
            } else {
                self.skip = len.saturating_sub(4);
            }
            self.have = 0;
        }
        Ok(())
    }
}

/// A stream whose incoming bytes pass through an [`AuthWatch`].
pub struct Watched<S> {
    inner: S,
    watch: AuthWatch,
    channel_binding: Option<Vec<u8>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                Poll::Ready(this.watch.feed(fresh))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Watched<S> {
    fn channel_binding(&self) -> ChannelBinding {
        match &self.channel_binding {
            Some(h) => ChannelBinding::tls_server_end_point(h.clone()),
            None => ChannelBinding::none(),
        }
    }
}

/// The TLS connector tokio-postgres calls once the server agreed to TLS.
struct Connector {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    refuse_cleartext: bool,
}

type TlsIo<S> = tokio_rustls::client::TlsStream<S>;

impl<S> TlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Watched<TlsIo<S>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Stream>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            // tls-server-end-point (RFC 5929): the hash of the server's certificate.
            let channel_binding = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Sha256::digest(c.as_ref()).to_vec());
            Ok(Watched {
                inner: tls,
                watch: AuthWatch::new(self.refuse_cleartext),
                channel_binding,
            })
        })
    }
}

/// A plain stream "upgraded" to nothing: for `sslmode=disable`, with the watch on.
struct Plain;

impl<S> TlsConnect<S> for Plain
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Watched<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Stream>> + Send>>;

    fn connect(self, _stream: S) -> Self::Future {
        Box::pin(async { Err(io::Error::other("TLS is disabled")) })
    }
}

/// Connects as `config` says to `host:port` under `policy`; the connection runs on a task of
/// its own. `host` may be a socket directory.
pub async fn connect(
    mut config: tokio_postgres::Config,
    host: &str,
    port: u16,
    policy: &TlsPolicy,
    what: &str,
) -> Result<tokio_postgres::Client> {
    let fail = |e: String| Error::Refused(format!("cannot connect to {what}: {e}"));
    if host.starts_with('/') {
        // A socket directory on this machine: nothing crosses a network.
        let path = Path::new(host).join(format!(".s.PGSQL.{port}"));
        let s = tokio::net::UnixStream::connect(&path)
            .await
            .map_err(|e| fail(format!("{}: {e}", path.display())))?;
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        let (client, conn) = config
            .connect_raw(s, tokio_postgres::NoTls)
            .await
            .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        return Ok(client);
    }
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| fail("no answer within 15 s".into()))?
    .map_err(|e| fail(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    match policy.mode {
        SslMode::Disable => {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            let watched = Watched {
                inner: tcp,
                watch: AuthWatch::new(true),
                channel_binding: None,
            };
            let (client, conn) = config
                .connect_raw(watched, Plain)
                .await
                .map_err(|e| fail(explain(e)))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(client)
        }
        mode => {
            let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .map_err(|e| fail(format!("'{host}' is not a host name for TLS ({e})")))?;
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            let connector = Connector {
                config: policy.client_config()?,
                name,
                refuse_cleartext: !mode.verifies(),
            };
            let (client, conn) = config
                .connect_raw(tcp, connector)
                .await
                .map_err(|e| fail(explain(e)))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(client)
        }
    }
}

/// The message of a connection error, with its causes (TLS errors hide there).
fn explain(e: tokio_postgres::Error) -> String {
    let mut out = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(code: u32) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&8u32.to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m
    }

    #[test]
    fn cleartext_and_md5_requests_are_refused_in_any_split() {
        for code in [3u32, 5] {
            let m = auth(code);
            for cut in 0..m.len() {
                let mut w = AuthWatch::new(true);
                let first = w.feed(&m[..cut]);
                let second = w.feed(&m[cut..]);
                assert!(first.is_ok() && second.is_err(), "code {code} cut {cut}");
            }
            assert!(AuthWatch::new(false).feed(&m).is_ok());
        }
        // SCRAM (10) then its continuation, then AuthenticationOk: passes; afterwards the
        // watch is silent whatever follows.
        let mut w = AuthWatch::new(true);
        let mut sasl = vec![b'R'];
        sasl.extend_from_slice(&23u32.to_be_bytes());
        sasl.extend_from_slice(&10u32.to_be_bytes());
        sasl.extend_from_slice(b"SCRAM-SHA-256\0\0");
        assert!(w.feed(&sasl).is_ok());
        assert!(w.feed(&auth(0)).is_ok());
        assert!(w.feed(&auth(3)).is_ok(), "after authentication");
        // An error message before authentication is skipped over.
        let mut w = AuthWatch::new(true);
        let mut e = vec![b'E'];
        e.extend_from_slice(&9u32.to_be_bytes());
        e.extend_from_slice(b"oops\0");
        e.extend_from_slice(&auth(3));
        assert!(w.feed(&e).is_err());
    }

    #[test]
    fn sslmode_defaults_and_parsing() {
        let (p, rest) = TlsPolicy::from_url(
            "postgres://u@db1:5432/x?sslmode=verify-full&sslrootcert=%2Fca.pem&application_name=a",
            "db1",
        )
        .unwrap();
        assert_eq!(p.mode, SslMode::VerifyFull);
        assert_eq!(p.root_cert.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(rest, "postgres://u@db1:5432/x?application_name=a");
        assert_eq!(
            TlsPolicy::from_url("postgres://u@db1/x", "db1")
                .unwrap()
                .0
                .mode,
            SslMode::Require,
            "remote hosts get TLS by default"
        );
        assert_eq!(
            TlsPolicy::from_url("postgres://u@db1/x?sslmode=prefer", "db1")
                .unwrap()
                .0
                .mode,
            SslMode::Require,
            "prefer could be downgraded silently"
        );
        assert_eq!(
            TlsPolicy::from_url("postgres://u@127.0.0.1/x", "127.0.0.1")
                .unwrap()
                .0
                .mode,
            SslMode::Disable
        );
        assert!(TlsPolicy::from_url("postgres://u@db1/x?sslmode=bogus", "db1").is_err());
        let e = TlsPolicy::from_url("postgres://u@db1/x?sslmode=disable", "db1").unwrap_err();
        assert!(e.to_string().contains("without TLS"), "{e}");
        assert_eq!(percent_decode("%41%zz%4"), "A%zz%4");
        assert_eq!(percent_decode("%aé"), "%aé");
    }
}
