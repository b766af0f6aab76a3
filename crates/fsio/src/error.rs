//! The crate's error: every variant names its file.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error on a named file.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The target of a no-replace rename or exclusive create exists.
    #[error("{path}: already exists (not replaced)")]
    Exists {
        /// The name that is taken.
        path: PathBuf,
    },
    /// A file that must be a regular file is something else.
    #[error("{path}: not a regular file ({kind}); refused")]
    NotRegular {
        /// The file concerned.
        path: PathBuf,
        /// What it is: symbolic link, FIFO, device, folder...
        kind: &'static str,
    },
    /// A file that is trusted (executed, or read for secrets) could be changed by others.
    #[error("{path}: {reason} (refused, as sshd's StrictModes would)")]
    Unsafe {
        /// The file or folder concerned.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A swap journal that cannot be understood.
    #[error("{path}: bad swap journal: {reason}")]
    BadJournal {
        /// The journal.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// An I/O error on `path` while doing `op`.
    pub fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            op,
            source,
        }
    }

    /// The underlying OS error, if any.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
