//! The appliance's errors: the engine's and the protection layer's, plus what only the
//! appliance as a whole can say (a backup that is not durable). Each has a kind
//! ([`ErrorKind`]) and, for the API, an HTTP status code.

use std::path::PathBuf;

pub use cairn_engine::error::ErrorKind;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Engine(#[from] cairn_engine::Error),
    #[error(transparent)]
    Backup(#[from] cairn_backup::Error),
    #[error(transparent)]
    Verifier(#[from] cairn_verifier::Error),
    /// The data directory (or its keys) could not be opened.
    #[error("cannot open the data directory {}: {source}", home.display())]
    Open {
        home: PathBuf,
        #[source]
        source: Box<cairn_backup::Error>,
    },
    /// A backup finished but is not in `min_copies` regions.
    #[error(
        "backup of cluster '{cluster}' is DEGRADED: {layers} layer(s) are in fewer than \
         {min_copies} region(s) ({reasons}); `cairn up` keeps retrying"
    )]
    NotDurable {
        cluster: String,
        layers: usize,
        min_copies: u32,
        reasons: String,
    },
    /// Policy files with problems: every one of them, `FILE:LINE:COLUMN: MESSAGE`.
    #[error("{} problem(s) in the policies of {}:\n{errors}", errors.len(), dir.display())]
    Policies {
        dir: PathBuf,
        errors: cairn_policies::Errors,
    },
    /// A request the appliance cannot carry out as given.
    #[error("{0}")]
    Refused(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Engine(e) => e.kind(),
            Error::Backup(e) => e.kind(),
            Error::Verifier(e) => e.kind(),
            Error::Open { source, .. } => source.kind(),
            Error::NotDurable { .. } => ErrorKind::Unavailable,
            Error::Policies { .. } => ErrorKind::InvalidInput,
            Error::Refused(_) => ErrorKind::Precondition,
        }
    }

    /// The HTTP status code the API answers this error with.
    pub fn http_status(&self) -> u16 {
        status_of(self.kind())
    }
}

/// The HTTP status code of a kind of failure.
pub fn status_of(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::InvalidInput => 400,
        ErrorKind::NotFound => 404,
        ErrorKind::Conflict | ErrorKind::Precondition => 409,
        ErrorKind::Corrupt | ErrorKind::Internal => 500,
        ErrorKind::Unavailable => 503,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_status_codes_and_wrapped_errors_keep_their_kind() {
        let nf = Error::from(cairn_engine::Error::not_found("branch 'x'", ""));
        assert_eq!((nf.kind(), nf.http_status()), (ErrorKind::NotFound, 404));
        let busy = Error::from(cairn_backup::Error::Engine(cairn_engine::Error::Busy(
            "cluster 'shop'".into(),
        )));
        assert_eq!(
            (busy.kind(), busy.http_status()),
            (ErrorKind::Conflict, 409)
        );
        let bad = Error::from(cairn_backup::Error::tampered("index-1", "bad signature"));
        assert_eq!((bad.kind(), bad.http_status()), (ErrorKind::Corrupt, 500));
        let refused = Error::Refused("no cluster".into());
        assert_eq!(refused.http_status(), 409);
        let degraded = Error::NotDurable {
            cluster: "shop".into(),
            layers: 2,
            min_copies: 2,
            reasons: "region-b: unreachable".into(),
        };
        assert_eq!(degraded.http_status(), 503);
        assert!(degraded
            .to_string()
            .contains("2 layer(s) are in fewer than 2 region(s)"));
        assert_eq!(status_of(ErrorKind::InvalidInput), 400);
        assert_eq!(status_of(ErrorKind::Internal), 500);
    }
}
