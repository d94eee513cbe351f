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
    /// No region could serve an object intact; `detail` has each region's failure.
    #[error(
        "{object} could not be fetched intact from any region ({detail}); run `cairn regions \
         check --full` and `cairn regions repair`"
    )]
    Unfetchable {
        object: String,
        holds: Holds,
        detail: String,
    },
    /// PostgreSQL ended recovery of a restored copy elsewhere than at its point: the WAL
    /// handed to it does not reach the point (or runs past it).
    #[error(
        "restored data directory {datadir}: PostgreSQL ended recovery at {ended_at}, not at the \
         restore point {target}: the WAL handed to it is incomplete"
    )]
    RecoveryEnded {
        datadir: String,
        ended_at: String,
        target: String,
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

/// What an object holds, for callers that diagnose by it (a verification tells a broken WAL
/// chain from damaged data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
    /// WAL: a WAL layer or its metadata.
    Wal,
    /// Anything else: an image layer, an index, a key object.
    Data,
}

impl Error {
    /// Whether the error is about the WAL from the image to the point: a WAL object no region
    /// could serve, a gap in the WAL the indexes list, or recovery that did not reach the
    /// point.
    pub fn is_wal_chain(&self) -> bool {
        matches!(
            self,
            Error::Unfetchable {
                holds: Holds::Wal,
                ..
            } | Error::RecoveryEnded { .. }
                | Error::Engine(cairn_engine::Error::Unreconstructible {
                    cause: cairn_engine::layer_map::Unreconstructible::WalGap { .. },
                    ..
                })
        )
    }

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
            Error::Tampered { .. } | Error::RecoveryEnded { .. } => ErrorKind::Corrupt,
            Error::WrongKey { .. }
            | Error::Fenced(_)
            | Error::Refused(_)
            | Error::Unfetchable { .. } => ErrorKind::Precondition,
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
