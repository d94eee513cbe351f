//! The engine's error type. Every error names the thing it is about (a path, a branch, an
//! LSN, a relation and block) and, where there is one, the fix; [`Error::retryable`] says
//! whether trying again can help.

use std::io;
use std::path::Path;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an error is, for callers that act on it (the API's status codes, a
/// report's classification) rather than print it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request itself is malformed (a bad name, LSN, time or option).
    InvalidInput,
    /// Something the request names does not exist.
    NotFound,
    /// Another process or program holds what the request needs (a lock, a port).
    Conflict,
    /// The request is understood but the state does not allow it now (refusals).
    Precondition,
    /// Stored or received data failed a check.
    Corrupt,
    /// A dependency (catalog, region) cannot be reached now; trying later may help.
    Unavailable,
    /// Anything else: a local I/O failure, PostgreSQL failing.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The SQL catalog failed.
    #[error("catalog: {context}: {source}")]
    Catalog {
        context: String,
        #[source]
        source: sqlx::Error,
    },
    /// Stored or incoming data failed a check (hash, AEAD, page checksum, WAL CRC...).
    #[error("{object}: {reason}")]
    Corrupt { object: String, reason: String },
    /// A name the user gave does not exist.
    #[error("{what} not found{hint}")]
    NotFound { what: String, hint: String },
    /// The request is understood but cannot be carried out as asked.
    #[error("{0}")]
    Refused(String),
    /// PostgreSQL (a binary or a server) failed.
    #[error("{context}: {detail}")]
    Postgres { context: String, detail: String },
    /// A point its layers cannot rebuild (a WAL gap, no image before it, beyond the head);
    /// `windows` says which points can be.
    #[error("{what} cannot be reconstructed: {cause} ({windows})")]
    Unreconstructible {
        what: String,
        cause: crate::layer_map::Unreconstructible,
        windows: String,
    },
    /// A port on 127.0.0.1 that a server was to listen on is taken by another program.
    #[error(
        "port {0} on 127.0.0.1 is already in use by another program; pick another with --port, \
         or stop what listens there"
    )]
    PortInUse(u16),
    /// Another process holds a lock on the object.
    #[error("{0} is busy: another cairn process is working on it; try again when it finishes")]
    Busy(String),
}

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// An I/O error about a path: "`verb` `path`: cause".
    pub fn path(verb: &str, path: &Path, source: io::Error) -> Error {
        Error::Io {
            context: format!("{verb} {}", path.display()),
            source,
        }
    }

    pub fn catalog(context: impl Into<String>, source: sqlx::Error) -> Error {
        Error::Catalog {
            context: context.into(),
            source,
        }
    }

    pub fn corrupt(object: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            object: object.into(),
            reason: reason.into(),
        }
    }

    pub fn not_found(what: impl Into<String>, hint: impl Into<String>) -> Error {
        let hint = hint.into();
        Error::NotFound {
            what: what.into(),
            hint: if hint.is_empty() {
                hint
            } else {
                format!("; {hint}")
            },
        }
    }

    pub fn postgres(context: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::Postgres {
            context: context.into(),
            detail: detail.into(),
        }
    }

    /// The kind of failure, for callers that act on it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } | Error::Postgres { .. } => ErrorKind::Internal,
            Error::Catalog { .. } => ErrorKind::Unavailable,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Refused(_) | Error::Unreconstructible { .. } => ErrorKind::Precondition,
            Error::PortInUse(_) | Error::Busy(_) => ErrorKind::Conflict,
        }
    }

    /// Whether the same operation may succeed if simply tried again later.
    pub fn retryable(&self) -> bool {
        match self {
            Error::Busy(_) => true,
            Error::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            Error::Catalog { source, .. } => {
                matches!(source, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_))
            }
            _ => false,
        }
    }
}

/// Adds a path to an `io::Result`.
pub trait IoContext<T> {
    fn ctx(self, verb: &str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, verb: &str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::path(verb, path, e))
    }
}
