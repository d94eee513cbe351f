//! The verifier's errors: what failed, named, and what to do.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Engine(#[from] cairn_engine::Error),
    #[error(transparent)]
    Backup(#[from] cairn_backup::Error),
    /// A stored report that fails its own checks (edited, unsigned, out of place).
    #[error("{what}: {why}")]
    Tampered { what: String, why: String },
    /// A request the verifier cannot carry out as given.
    #[error("{0}")]
    Refused(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The kind of failure, for callers that act on it.
    pub fn kind(&self) -> cairn_engine::error::ErrorKind {
        use cairn_engine::error::ErrorKind;
        match self {
            Error::Engine(e) => e.kind(),
            Error::Backup(e) => e.kind(),
            Error::Tampered { .. } => ErrorKind::Corrupt,
            Error::Refused(_) => ErrorKind::Precondition,
        }
    }

    pub(crate) fn catalog(what: &str, e: sqlx::Error) -> Error {
        Error::Engine(cairn_engine::Error::catalog(what, e))
    }
}
