//! The protection layer's errors. Each names the region, object and reason; `retryable` tells
//! transient region trouble (which the shipper retries) from damage (which it reports).

use std::io;

pub use cairn_engine::error::ErrorKind;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An object failed a check: hash, AEAD tag, signature, generation, format.
    #[error("{object}: {reason}")]
    Tampered { object: String, reason: String },
    /// No identity at hand can open an object's data key.
    #[error("{object} cannot be opened with {given}; its data key is wrapped for {can_open}")]
    WrongKey {
        object: String,
        given: String,
        can_open: String,
    },
    /// A region failed an operation.
    #[error("region '{region}': {context}: {source}")]
    Region {
        region: String,
        context: String,
        #[source]
        source: object_store::Error,
    },
    /// A rebuilt appliance that was not promoted refuses to write to the regions.
    #[error("{0}")]
    Fenced(String),
    /// Configuration or request that cannot be carried out as given.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Engine(#[from] cairn_engine::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub fn tampered(object: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Tampered {
            object: object.into(),
            reason: reason.into(),
        }
    }

    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn region(region: &str, context: impl Into<String>, source: object_store::Error) -> Error {
        Error::Region {
            region: region.to_string(),
            context: context.into(),
            source,
        }
    }

    pub fn catalog(context: &str, e: sqlx::Error) -> Error {
        Error::Engine(cairn_engine::Error::catalog(context, e))
    }

    /// The kind of failure, for callers that act on it (see [`ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Tampered { .. } => ErrorKind::Corrupt,
            Error::WrongKey { .. } | Error::Fenced(_) | Error::Refused(_) => {
                ErrorKind::Precondition
            }
            Error::Region { source, .. } => match source {
                object_store::Error::NotFound { .. } => ErrorKind::NotFound,
                object_store::Error::InvalidPath { .. } => ErrorKind::InvalidInput,
                _ => ErrorKind::Unavailable,
            },
            Error::Engine(e) => e.kind(),
            Error::Io { .. } => ErrorKind::Internal,
        }
    }

    /// Whether trying again later can help (a region that is down, a timeout).
    pub fn retryable(&self) -> bool {
        match self {
            Error::Region { source, .. } => !matches!(
                source,
                object_store::Error::NotFound { .. } | object_store::Error::InvalidPath { .. }
            ),
            Error::Io { .. } => true,
            Error::Engine(e) => e.retryable(),
            _ => false,
        }
    }
}
