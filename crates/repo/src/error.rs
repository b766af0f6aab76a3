//! The repository's errors: each names the object or location it is about, in one line.

use std::path::PathBuf;

/// Result alias of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong with a backend request, for callers that decide by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// The object does not exist.
    NotFound,
    /// A conditional create found the object already there.
    AlreadyExists,
    /// The storage is full (ENOSPC, quota, an SFTP server's failure on write).
    StorageFull,
    /// Access refused.
    PermissionDenied,
    /// Anything else (transport, server error).
    Other,
}

/// Errors of the repository.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A backend request failed.
    #[error("{location}: {op} {object}: {detail}")]
    Backend {
        /// The repository (path or URL).
        location: String,
        /// What was being done (`get`, `put`, `list`...).
        op: &'static str,
        /// The object's name inside the repository.
        object: String,
        /// Classification.
        kind: BackendKind,
        /// The backend's own message.
        detail: String,
    },
    /// No repository at the location.
    #[error("{location}: not a vcb repository ({reason})")]
    NotARepository {
        /// The location.
        location: String,
        /// Why not.
        reason: String,
    },
    /// `init` found a repository (or other files) already there.
    #[error("{location}: already holds a repository or other files; refusing to initialize")]
    AlreadyInitialized {
        /// The location.
        location: String,
    },
    /// A format version this build does not read.
    #[error("{location}: repository format version {found} is not supported (this vcb reads version {supported})")]
    UnknownVersion {
        /// The location.
        location: String,
        /// The version found.
        found: u32,
        /// The major version supported.
        supported: u32,
    },
    /// No key of the repository opens with the passphrase given.
    #[error("{location}: wrong passphrase (no key of the repository opens with it)")]
    WrongPassphrase {
        /// The location.
        location: String,
    },
    /// The repository is encrypted and no passphrase was given.
    #[error("{location}: the repository is encrypted and no passphrase was given (use --password-file or VCB_PASSWORD_FILE, or run on a terminal)")]
    PassphraseNeeded {
        /// The location.
        location: String,
    },
    /// An object failed authentication or its format is wrong: it is damaged or was
    /// tampered with.
    #[error("{object}: damaged or tampered with: {reason}")]
    Corrupt {
        /// The object's name (`chunks/ab/ab12...`, `points/...`).
        object: String,
        /// What is wrong.
        reason: String,
    },
    /// An object the repository needs is missing.
    #[error("{object}: missing from the repository ({what})")]
    Missing {
        /// The object's name.
        object: String,
        /// What it is, and what needs it.
        what: String,
    },
    /// No backup point matches.
    #[error("{location}: no backup point matches {spec:?}")]
    PointNotFound {
        /// The location.
        location: String,
        /// What was asked for.
        spec: String,
    },
    /// Several backup points match.
    #[error("{location}: {spec:?} matches {count} backup points; give more of the id")]
    AmbiguousPoint {
        /// The location.
        location: String,
        /// What was asked for.
        spec: String,
        /// How many match.
        count: usize,
    },
    /// Another process holds a lock the operation needs.
    #[error("{location}: {what} (held by {holder})")]
    Locked {
        /// The location.
        location: String,
        /// What is locked.
        what: String,
        /// Who holds it.
        holder: String,
    },
    /// A repository location or option that cannot be used.
    #[error("{0}")]
    InvalidArgument(String),
    /// Reading the disk being backed up failed.
    #[error(transparent)]
    Disk(#[from] vmdk::Error),
    /// A local file operation failed.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operation.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The user asked to stop.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// An I/O error on a local file.
    pub fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            op,
            source,
        }
    }

    /// A corrupt object.
    pub fn corrupt(object: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            object: object.into(),
            reason: reason.into(),
        }
    }

    /// The backend classification of this error, if it is a backend error.
    pub fn backend_kind(&self) -> Option<BackendKind> {
        match self {
            Error::Backend { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// True for a backend "not found".
    pub fn is_not_found(&self) -> bool {
        self.backend_kind() == Some(BackendKind::NotFound)
    }
}

impl From<fsio::Error> for Error {
    fn from(e: fsio::Error) -> Error {
        match e {
            fsio::Error::Io { path, op, source } => Error::Io { path, op, source },
            other => Error::InvalidArgument(other.to_string()),
        }
    }
}
